import { describe, expect, it } from 'vitest';
import { Membership, type MembershipEvent, type NodeStats } from '../../coordinator/membership.ts';

function setup(timeoutMs = 1000) {
  let clock = 5000;
  const membership = new Membership({ timeoutMs, now: () => clock });
  const events: MembershipEvent[] = [];
  membership.onChange((e) => events.push(e));
  return { membership, events, advance: (ms: number) => (clock += ms), time: () => clock };
}

const info = (nodeId: string, memoryBytes = 1e9) => ({ nodeId, cores: 2, gemmGflops: 40, memoryBytes });
const stats = (step: number) =>
  ({ step, loss: 3 - step / 100, tokensPerSecond: 400, bytesSent: 10 * step, bytesReceived: 20 * step, staleness: 1, droppedExpertCalls: 0, planVersion: 1 }) as NodeStats;

describe('membership', () => {
  it('admits nodes and records heartbeats', () => {
    const { membership, events, advance, time } = setup();
    expect(membership.join(info('a'))).toBe('joined');
    advance(300);
    expect(membership.heartbeat('a', stats(7))).toBe(true);
    const a = membership.get('a')!;
    expect(a).toMatchObject({ status: 'alive', cores: 2, gemmGflops: 40, lastSeen: time(), firstJoinedAt: time() - 300, joins: 1 });
    expect(a.stats).toEqual(stats(7));
    expect(events.map((e) => [e.type, e.node.nodeId])).toEqual([['joined', 'a']]);
    expect(membership.heartbeat('stranger', stats(1))).toBe(false);
  });

  it('declares a silent node dead after the timeout, once, and heartbeats keep a node alive', () => {
    const { membership, events, advance } = setup(1000);
    membership.join(info('quiet'));
    membership.join(info('chatty'));
    for (let i = 0; i < 5; i++) {
      advance(500);
      membership.heartbeat('chatty', stats(i));
      if (i === 1) expect(membership.sweep()).toEqual([]); // quiet: exactly 1000 ms, not yet over the timeout
    }
    const died = membership.sweep();
    expect(died.map((r) => r.nodeId)).toEqual(['quiet']);
    expect(died[0].status).toBe('dead');
    expect(membership.sweep()).toEqual([]);
    expect(membership.alive().map((r) => r.nodeId)).toEqual(['chatty']);
    expect(events.map((e) => `${e.type}:${e.node.nodeId}`)).toEqual(['joined:quiet', 'joined:chatty', 'died:quiet']);
    // A dead node's heartbeats do not revive it: it has to join again.
    expect(membership.heartbeat('quiet', stats(9))).toBe(false);
    expect(membership.get('quiet')!.status).toBe('dead');
  });

  it('counts the live nodes through joins, rejoins, departures and deaths as alive() does', () => {
    const { membership, advance } = setup(1000);
    const counted = () => expect(membership.aliveCount).toBe(membership.alive().length);
    for (const id of ['a', 'b', 'c', 'd']) membership.join(info(id));
    membership.join(info('a')); // joining again while alive is not a second node
    counted();
    membership.leave('b');
    membership.leave('b');
    advance(600);
    membership.heartbeat('c', stats(1));
    advance(600);
    membership.sweep(); // a and d died
    counted();
    membership.join(info('d')); // back from the dead
    membership.join(info('b')); // back after leaving
    counted();
    expect(membership.aliveCount).toBe(3);
  });

  it('a sweep that comes late (this process stalled) declares nobody dead; heartbeats read after it count', () => {
    const { membership, events, advance } = setup(1000);
    membership.join(info('a'));
    membership.join(info('b'));
    expect(membership.sweep(250)).toEqual([]);
    advance(5000); // stalled far past the timeout: the nodes' heartbeats are queued, not read
    expect(membership.sweep(250)).toEqual([]);
    membership.heartbeat('a', stats(1)); // read right after the late sweep
    advance(250);
    const died = membership.sweep(250);
    expect(died.map((r) => r.nodeId)).toEqual(['b']); // b's silence is real: nothing came from it
    expect(events.map((e) => `${e.type}:${e.node.nodeId}`)).toEqual(['joined:a', 'joined:b', 'died:b']);
  });

  it('a rejoin brings the same node back with its record and new resources', () => {
    const { membership, events, advance, time } = setup(1000);
    membership.join(info('a', 1e9));
    const firstJoin = time();
    membership.heartbeat('a', stats(3));
    advance(1001);
    membership.sweep();
    advance(50);
    expect(membership.join(info('a', 5e8))).toBe('rejoined');
    const a = membership.get('a')!;
    expect(a).toMatchObject({ status: 'alive', memoryBytes: 5e8, joins: 2, firstJoinedAt: firstJoin, lastJoinedAt: time(), lastSeen: time() });
    expect(a.stats).toEqual(stats(3));
    expect(membership.all()).toHaveLength(1);
    expect(membership.heartbeat('a', stats(4))).toBe(true);
    expect(events.map((e) => e.type)).toEqual(['joined', 'died', 'rejoined']);
    expect(events[2].node.memoryBytes).toBe(5e8);
  });

  it('a node that leaves emits left, and can come back', () => {
    const { membership, events } = setup();
    membership.join(info('a'));
    expect(membership.leave('a')).toBe(true);
    expect(membership.leave('a')).toBe(false);
    expect(membership.sweep()).toEqual([]); // a departed node does not die as well
    expect(membership.alive()).toEqual([]);
    expect(membership.join(info('a'))).toBe('rejoined');
    expect(events.map((e) => e.type)).toEqual(['joined', 'left', 'rejoined']);
  });

  it('listeners can unsubscribe, and records handed out are copies', () => {
    const { membership, events } = setup();
    const mine: string[] = [];
    const stop = membership.onChange((e) => mine.push(e.type));
    membership.join(info('a'));
    stop();
    membership.leave('a');
    expect(mine).toEqual(['joined']);
    expect(events).toHaveLength(2);
    membership.get('a')!.status = 'alive';
    expect(membership.get('a')!.status).toBe('left');
  });

  it('refuses bad arguments', () => {
    expect(() => new Membership({ timeoutMs: 0 })).toThrow(/timeoutMs/);
    const { membership } = setup();
    expect(() => membership.join({ ...info('a'), cores: 0 })).toThrow(/cores/);
    expect(() => membership.join({ ...info('a'), gemmGflops: NaN })).toThrow(/gemmGflops/);
    expect(() => membership.join({ ...info('a'), memoryBytes: -1 })).toThrow(/memoryBytes/);
    expect(() => membership.join({ ...info(''), cores: 1 })).toThrow(/nodeId/);
    membership.join(info('a'));
    expect(() => membership.heartbeat('a', { ...stats(1), bytesSent: -5 })).toThrow(/bytesSent/);
  });
});
