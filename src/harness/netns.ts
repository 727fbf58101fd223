// Network namespaces on one machine (root), with no link to the host; processes run in them through
// `ip netns exec`, as the real command-line entry points. Addresses come from 11.0.0.0/8 and exist only
// inside these namespaces.
// - NatNetwork: volunteers behind NATs: a public namespace for the coordinator and two homes, each a node
//   behind its own NAT router (nftables masquerade). Both homes use 192.168.1.0/24, as many real ones do,
//   so a private address handed to the other home reaches the wrong host. Used by test/swarm/nat.test.ts
//   and bench/links.ts.
// - StarNetwork: hosts on shaped links: a hub namespace routing between hosts, each host on its own veth
//   link (its uplink and downlink shaped with tbf). Used by bench/scaling.ts --links.
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
        shape(this.public, `to-${name}`, rate);
        shape(home.router, 'wan', rate);
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

  start(ns: string, name: string, script: string, args: string[], logDir: string): Proc {
    return startIn(ns, name, script, args, logDir);
  }

  remove(): void {
    removeNamespaces((name) => name.startsWith(`${this.prefix}-`));
  }
}

/** A host of a StarNetwork. */
export interface StarHost {
  ns: string;
  /** Its address on its link: what the other hosts reach it at. */
  ip: string;
  /** An address on its loopback that no other host can route to: for a listener only a local proxy should reach. */
  localIp: string;
}

/** Hosts (each a namespace) linked through a hub namespace that routes between them; every link shaped both ways. */
export class StarNetwork {
  readonly hub: string;
  readonly hosts: Record<string, StarHost> = {};

  /** Names start with stlnk<pid>-: namespaces of a run whose process is gone are removed by the next one. */
  private constructor(private readonly prefix: string) {
    this.hub = `${prefix}-hub`;
  }

  /** Builds the hub and one host per name; `rate` (e.g. 20mbit) shapes each host's link with tbf in both directions. */
  static build(names: readonly string[], options: { rate?: string } = {}): StarNetwork {
    removeStale();
    const network = new StarNetwork(`stlnk${process.pid}`);
    try {
      network.create(names, options.rate);
    } catch (err) {
      network.remove();
      throw err;
    }
    return network;
  }

  private create(names: readonly string[], rate: string | undefined): void {
    ip('netns', 'add', this.hub);
    ip('-n', this.hub, 'link', 'set', 'lo', 'up');
    inNamespace(this.hub, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    names.forEach((name, i) => {
      const host: StarHost = { ns: `${this.prefix}-${name}`, ip: `11.0.${i + 1}.2`, localIp: `11.1.${i + 1}.1` };
      this.hosts[name] = host;
      ip('netns', 'add', host.ns);
      ip('-n', host.ns, 'link', 'set', 'lo', 'up');
      ip('-n', host.ns, 'addr', 'add', `${host.localIp}/32`, 'dev', 'lo');
      link(this.hub, `to-${name}`, `11.0.${i + 1}.1/24`, host.ns, 'eth0', `${host.ip}/24`);
      // Only the hosts' links are routed: another host's localIp is unreachable (an immediate ENETUNREACH).
      ip('-n', host.ns, 'route', 'add', '11.0.0.0/16', 'via', `11.0.${i + 1}.1`);
      if (rate) {
        shape(this.hub, `to-${name}`, rate);
        shape(host.ns, 'eth0', rate);
      }
    });
  }

  start(ns: string, name: string, script: string, args: string[], logDir: string): Proc {
    return startIn(ns, name, script, args, logDir);
  }

  remove(): void {
    removeNamespaces((name) => name.startsWith(`${this.prefix}-`));
  }
}

/** Shapes what leaves `dev` in namespace `ns` to `rate` with a token bucket (tbf). */
function shape(ns: string, dev: string, rate: string): void {
  inNamespace(ns, ['tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', rate, 'burst', '64kb', 'latency', '50ms']);
}

/**
 * Starts a script inside namespace `ns`: a command-line entry point (coordinator/bin.mjs, node/bin.mjs),
 * or TypeScript through tsx's loader in the same process (so a kill reaches it, not only a launcher).
 */
function startIn(ns: string, name: string, script: string, args: string[], logDir: string): Proc {
  const loader = script.endsWith('.ts') ? ['--import', 'tsx'] : [];
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...loader, join(repoRoot, script), ...args], {
    cwd: repoRoot, env: { ...process.env, FORCE_COLOR: '0' },
  });
  return new Proc(name, child, logDir);
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
    const pid = /^st(?:nat|lnk)(\d+)-/.exec(name)?.[1];
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
