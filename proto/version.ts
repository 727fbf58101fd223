// The swarm's protocol version, carried in the join handshake. Peers with different major
// versions cannot talk; a minor bump only adds protocols or optional fields.
export const PROTOCOL_VERSION = '1.0.0';

export interface Version {
  major: number;
  minor: number;
  patch: number;
}

const VERSION_PATTERN = /^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$/;

export function parseVersion(text: string): Version | undefined {
  const match = VERSION_PATTERN.exec(text);
  if (match === null) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]), patch: Number(match[3]) };
}

/** Why a peer speaking `theirs` cannot talk to us, or undefined when it can. */
export function versionMismatch(theirs: string, ours: string = PROTOCOL_VERSION): string | undefined {
  const remote = parseVersion(theirs);
  const local = parseVersion(ours);
  if (local === undefined) throw new RangeError(`local protocol version ${JSON.stringify(ours)} is not major.minor.patch`);
  if (remote === undefined) return `peer protocol version ${JSON.stringify(theirs.slice(0, 40))} is not major.minor.patch; this node speaks ${ours}`;
  if (remote.major !== local.major) {
    return `peer speaks swarmtrain protocol ${theirs}, this node speaks ${ours}: major versions differ, upgrade the older one`;
  }
  return undefined;
}
