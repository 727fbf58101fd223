// A swarm peer in its own process, for the multi-process p2p tests:
//   node --import tsx test/p2p/peer.ts <key file> <io timeout ms>
// Prints {"peerId", "addrs"} once listening, then one {"rejection"} line per refused message.
// Serves the toy protocols until its stdin closes.
import '../../src/p2p/polyfill.ts';
import { msgpackCodec } from '../../proto/index.ts';
import { createHost, Rpc } from '../../src/p2p/index.ts';
import { serveToy } from './peers.ts';

const [keyFile, ioTimeoutMs] = process.argv.slice(2);
const print = (line: object) => process.stdout.write(`${JSON.stringify(line)}\n`);

const host = await createHost({ keyFile });
const rpc = new Rpc({ transport: host, codec: msgpackCodec, onReject: (rejection) => print({ rejection }) }, { ioTimeoutMs: Number(ioTimeoutMs) });
await serveToy(rpc);
print({ peerId: host.peerId.toString(), addrs: host.getMultiaddrs().map(String) });

process.stdin.resume();
process.stdin.on('end', async () => {
  await host.stop();
  process.exit(0);
});
