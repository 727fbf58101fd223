// Volunteers behind NATs on one machine (root): network namespaces with a public one for the
// coordinator and two homes, each a node behind its own NAT router (nftables masquerade). Both homes
// use 192.168.1.0/24, as many real ones do, so a private address handed to the other home reaches the
// wrong host. Public addresses come from 11.0.0.0/8 and exist only inside these namespaces, which have
// no link to the host. Used by test/swarm/nat.test.ts and bench/links.ts; processes run in them through
// `ip netns exec`, as the real command-line entry points.
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Proc } from './local-swarm.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export const COORDINATOR_IP = '11.0.0.1';
export const NODE_IP = '192.168.1.2';
export const NODE_PORT = 4002;
const ROUTER_LAN_IP = '192.168.1.1';

export interface Home {
  router: string;
  node: string;
  /** The router's public address: where the home's node is seen from, and its forwarded port's address. */
  wanIp: string;
  /** The public namespace's end of the link to this home. */
  pubIp: string;
}

export interface NatOptions {
  /** masquerade random: a new source port per destination (a symmetric NAT); otherwise port-preserving. */
  symmetric: boolean;
  /** Forward NODE_PORT on the router's public address to the home's node. */
  forward: boolean;
}

/** Whether this process may build namespaces: root, with ip (iproute2) and nft (nftables). */
export function canUseNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('ip', ['netns', 'list'], { stdio: 'ignore' });
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const inNamespace = (ns: string, command: string[], input?: string) =>
  execFileSync('ip', ['netns', 'exec', ns, ...command], { input, stdio: ['pipe', 'ignore', 'pipe'] });

export class NatNetwork {
  readonly public: string;
  readonly homes: { a: Home; b: Home };

  /** Names start with stnat<pid>-: namespaces of a run whose process is gone are removed by the next one. */
  private constructor(private readonly prefix: string) {
    this.public = `${prefix}-pub`;
    this.homes = {
      a: { router: `${prefix}-ra`, node: `${prefix}-na`, wanIp: '11.0.1.2', pubIp: '11.0.1.1' },
      b: { router: `${prefix}-rb`, node: `${prefix}-nb`, wanIp: '11.0.2.2', pubIp: '11.0.2.1' },
    };
  }

  /** Builds the namespaces; `rate` (e.g. 20mbit) shapes both directions of each home's public link with tbf. */
  static build(options: { rate?: string } = {}): NatNetwork {
    removeStale();
    const network = new NatNetwork(`stnat${process.pid}`);
    try {
      network.create(options.rate);
    } catch (err) {
      network.remove();
      throw err;
    }
    return network;
  }

  private create(rate: string | undefined): void {
    const { homes } = this;
    for (const ns of [this.public, ...Object.values(homes).flatMap((h) => [h.router, h.node])]) {
      ip('netns', 'add', ns);
      ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    ip('-n', this.public, 'addr', 'add', `${COORDINATOR_IP}/32`, 'dev', 'lo');
    inNamespace(this.public, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    for (const [name, home] of Object.entries(homes)) {
      link(this.public, `to-${name}`, `${home.pubIp}/24`, home.router, 'wan', `${home.wanIp}/24`);
      link(home.router, 'lan', `${ROUTER_LAN_IP}/24`, home.node, 'eth0', `${NODE_IP}/24`);
      ip('-n', home.router, 'route', 'add', 'default', 'via', home.pubIp);
      ip('-n', home.node, 'route', 'add', 'default', 'via', ROUTER_LAN_IP);
      inNamespace(home.router, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
      if (rate) {
        for (const [ns, dev] of [[this.public, `to-${name}`], [home.router, 'wan']] as const) {
          inNamespace(ns, ['tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '64kb', 'latency', '50ms']);
        }
      }
    }
  }

  /** Sets a home router's NAT (replacing its rules). */
  setNat(home: Home, options: NatOptions): void {
    const forward = options.forward ? `iifname "wan" tcp dport ${NODE_PORT} dnat to ${NODE_IP}:${NODE_PORT};` : '';
    inNamespace(home.router, ['nft', '-f', '-'], `flush ruleset
table ip nat {
  chain prerouting { type nat hook prerouting priority dstnat; ${forward} }
  chain postrouting { type nat hook postrouting priority srcnat; oifname "wan" masquerade${options.symmetric ? ' random' : ''}; }
}
`);
  }

  /**
   * Starts a script inside namespace `ns`: a command-line entry point (coordinator/bin.mjs, node/bin.mjs),
   * or TypeScript through tsx's loader in the same process (so a kill reaches it, not only a launcher).
   */
  start(ns: string, name: string, script: string, args: string[], logDir: string): Proc {
    const loader = script.endsWith('.ts') ? ['--import', 'tsx'] : [];
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...loader, join(repoRoot, script), ...args], {
      cwd: repoRoot, env: { ...process.env, FORCE_COLOR: '0' },
    });
    return new Proc(name, child, logDir);
  }

  remove(): void {
    removeNamespaces((name) => name.startsWith(`${this.prefix}-`));
  }
}

/** A veth pair from namespace `a` (interface `ifA`, address `addrA`) to `b`. */
function link(a: string, ifA: string, addrA: string, b: string, ifB: string, addrB: string): void {
  ip('-n', a, 'link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB, 'netns', b);
  ip('-n', a, 'addr', 'add', addrA, 'dev', ifA);
  ip('-n', b, 'addr', 'add', addrB, 'dev', ifB);
  ip('-n', a, 'link', 'set', ifA, 'up');
  ip('-n', b, 'link', 'set', ifB, 'up');
}

/** Namespaces of earlier runs whose process is gone (killed before it could clean up). */
function removeStale(): void {
  removeNamespaces((name) => {
    const pid = /^stnat(\d+)-/.exec(name)?.[1];
    return pid !== undefined && !alive(Number(pid));
  });
}

function removeNamespaces(match: (name: string) => boolean): void {
  const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((line) => line.split(' ')[0] ?? '');
  for (const ns of names.filter((name) => name !== '' && match(name))) {
    try {
      ip('netns', 'del', ns);
    } catch {
      // already gone
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
