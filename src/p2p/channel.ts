// The requester's end of a channel (CHANNEL in proto/protocols.ts): one long-lived stream to a peer
// carrying many requests, each a length-prefixed frame, the replies read back in the order sent.
// Rpc.request uses it for the protocols that travel on it; Rpc.handleChannel serves the other end.
import type { Stream } from '@libp2p/interface';
import { CancelledError, MalformedError, RemoteError } from './errors.ts';
import { frameStream, toRpcError } from './framing.ts';

/**
 * Bytes that may wait unread on a channel beyond one largest frame: requests pipelined behind one being answered,
 * replies read as they come (eight small ones, or a few expert calls of a split batch).
 */
export const CHANNEL_SLACK_BYTES = 512 * 1024;

interface Waiting {
  resolve(reply: Uint8Array): void;
  reject(err: Error): void;
}

export class Channel {
  private readonly frames: ReturnType<typeof frameStream>;
  /** Requests sent and not answered yet, oldest first: the next reply is the first one's. */
  private readonly waiting: Waiting[] = [];
  private closedBy?: Error;

  /** onClose: called once, when the channel breaks or closes. */
  constructor(private readonly stream: Stream, maxReplyBytes: number, private readonly onClose: () => void) {
    this.frames = frameStream(stream, maxReplyBytes, CHANNEL_SLACK_BYTES);
    void this.readReplies();
  }

  /**
   * Sends one request frame (its parts joined) and resolves with its reply frame. An aborted request (its deadline)
   * closes the channel: its reply may still come, and every reply after it would be taken for the next request's.
   */
  async request(frame: readonly Uint8Array[], signal: AbortSignal): Promise<Uint8Array> {
    if (this.closedBy) throw this.closedBy;
    // Past its deadline while the channel opened: never sent (the write would go out before it looks at the signal).
    if (signal.aborted) throw new CancelledError('channel: the request was abandoned before it was sent');
    const reply = new Promise<Uint8Array>((resolve, reject) => this.waiting.push({ resolve, reject }));
    reply.catch(() => {}); // a write that fails is this request's error; the channel's closing rejects the reply too
    const abandon = () => this.close(new RemoteError('reset', 'channel closed: a request on it was abandoned'));
    signal.addEventListener('abort', abandon, { once: true });
    try {
      try {
        await this.frames.write(frame, { signal });
      } catch (err) {
        // Its place among the waiting replies is taken: every later reply would go to the wrong request.
        this.close(toRpcError(err, 'channel'));
        throw err;
      }
      return await reply;
    } finally {
      signal.removeEventListener('abort', abandon);
    }
  }

  private async readReplies(): Promise<void> {
    try {
      for (;;) {
        const reply = (await this.frames.read()).subarray();
        const next = this.waiting.shift();
        if (!next) throw new MalformedError('channel: a reply to no request');
        next.resolve(reply);
      }
    } catch (err) {
      this.close(toRpcError(err, 'channel'));
    }
  }

  private close(reason: Error): void {
    if (this.closedBy) return;
    this.closedBy = reason;
    this.stream.abort(reason);
    for (const waiting of this.waiting.splice(0)) waiting.reject(reason);
    this.onClose();
  }
}
