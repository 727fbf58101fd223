// Bytes this node puts on and takes off the wire, counted at the codec: every encoded request
// or reply is sent, every decoded one received (payloads; libp2p's framing and encryption add
// a few percent on top).
import type { MessageCodec, ProtocolName, Reply, RequestOf, ResponseOf } from '../proto/index.ts';

export interface Traffic {
  sent: number;
  received: number;
}

export function countingCodec(codec: MessageCodec, traffic: Traffic): MessageCodec {
  return {
    encodeRequest<P extends ProtocolName>(protocol: P, message: RequestOf<P>): Uint8Array {
      const bytes = codec.encodeRequest(protocol, message);
      traffic.sent += bytes.byteLength;
      return bytes;
    },
    decodeRequest<P extends ProtocolName>(protocol: P, bytes: Uint8Array): RequestOf<P> {
      traffic.received += bytes.byteLength;
      return codec.decodeRequest(protocol, bytes);
    },
    encodeReply<P extends ProtocolName>(protocol: P, reply: Reply<ResponseOf<P>>): Uint8Array {
      const bytes = codec.encodeReply(protocol, reply);
      traffic.sent += bytes.byteLength;
      return bytes;
    },
    decodeReply<P extends ProtocolName>(protocol: P, bytes: Uint8Array): Reply<ResponseOf<P>> {
      traffic.received += bytes.byteLength;
      return codec.decodeReply(protocol, bytes);
    },
  };
}
