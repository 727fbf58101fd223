// What every view reads: the live swarm, the token (absent: read-only), and hooks that follow them.
import { createContext } from 'preact';
import { useContext, useEffect, useState } from 'preact/hooks';
import type { LiveState, LiveSwarm } from '../live.ts';

export interface Session {
  live: LiveSwarm;
  token: string | undefined;
  setToken(token: string | undefined): void;
}

export const SessionContext = createContext<Session | undefined>(undefined);

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error('useSession: no SessionContext above this component');
  return session;
}

/** The live state, re-rendering on every change. */
export function useLiveState(): LiveState {
  const { live } = useSession();
  const [state, setState] = useState(live.state);
  useEffect(() => live.subscribe(setState), [live]);
  return state;
}

/** The clock, ticking every `everyMs` (for "12s ago"). */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  return now;
}
