#!/bin/sh
# Entry point of the swarmtrain image (see Dockerfile, docker-compose.yml): runs a volunteer node,
# `swarmtrain node`, configured by SWARMTRAIN_* variables; arguments given to the container come
# last, so they override. exec, so SIGTERM from `docker stop` reaches Node, which hands back its
# leases before exiting.
set -eu
cd "$(dirname "$0")/.."

if [ -z "${SWARMTRAIN_JOIN:-}" ]; then
  echo "swarmtrain node: set SWARMTRAIN_JOIN to the coordinator's multiaddr, /ip4/<host>/tcp/4001/p2p/<peerId> (e.g. in .env)" >&2
  exit 2
fi

# Identity: the replicas of a scaled service share one keys folder (a volume). Each holds a lock on
# the lowest free slot for as long as it runs (fd 9 stays open through exec) and uses that slot's
# key and port: `--scale node=3` runs three identities, and a restarted replica, a `down` + `up` or a
# new image finds the same ones again.
keys="${SWARMTRAIN_KEYS:-/data/keys}"
mkdir -p "$keys"
slot=1
while :; do
  exec 9>>"$keys/node-$slot.lock"
  if flock -n 9; then break; fi
  slot=$((slot + 1))
  if [ "$slot" -gt 256 ]; then
    echo "swarmtrain node: no free identity in $keys (256 replicas hold one)" >&2
    exit 1
  fi
done
listen="${SWARMTRAIN_LISTEN:-/ip4/0.0.0.0/tcp/$((4001 + slot))}"

# Kernel threads: one per CPU this container may use (the node accepts 1 to 64).
threads="${SWARMTRAIN_THREADS:-$(nproc)}"
if [ "$threads" -gt 64 ] 2>/dev/null; then threads=64; fi

if [ -n "${SWARMTRAIN_TOKEN:-}" ]; then set -- --token "$SWARMTRAIN_TOKEN" "$@"; fi
# The image runs the compiled bundle (`npm run build`); a checkout without one runs through tsx.
cli=node/bin.mjs
if [ -f dist/swarmtrain.mjs ]; then cli=dist/swarmtrain.mjs; fi
# The status file is this container's own (not on the shared volume): the HEALTHCHECK reads it.
exec node "$cli" node \
  --join "$SWARMTRAIN_JOIN" \
  --memory-budget "${SWARMTRAIN_MEMORY:-2GB}" \
  --threads "$threads" \
  --key "$keys/node-$slot.key" \
  --listen "$listen" \
  --status-file /tmp/swarmtrain-status.json \
  "$@"
