// Signatures by a host's identity key: the coordinator signs each plan with the Ed25519 key
// behind its peer id, and a node checks the signature against the peer id it was told to join,
// so membership (who may send updates, call experts, fetch state) is what the coordinator said.
import type { PrivateKey } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';

/** Signs `data`; only keys that sign synchronously (Ed25519, the libp2p default) are supported. */
export function signSync(key: PrivateKey, data: Uint8Array): Uint8Array {
  const signature = key.sign(data);
  if (signature instanceof Promise) throw new TypeError(`a ${key.type} key signs asynchronously: use an Ed25519 identity key`);
  return signature;
}

/** Whether `signature` is `signer`'s signature of `data` (false for a malformed signature, or a peer id that embeds no public key). */
export function signedBy(signer: string, data: Uint8Array, signature: Uint8Array): boolean {
  const publicKey = peerIdFromString(signer).publicKey;
  if (publicKey === undefined) return false;
  let valid: boolean | Promise<boolean>;
  try {
    valid = publicKey.verify(data, signature);
  } catch {
    return false; // wrong length or encoding
  }
  if (valid instanceof Promise) throw new TypeError(`a ${publicKey.type} key verifies asynchronously: the signer needs an Ed25519 identity key`);
  return valid;
}
