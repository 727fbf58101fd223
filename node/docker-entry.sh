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

# Kernel threads: one per CPU this container may use (the node accepts 1 to 64).
threads="${SWARMTRAIN_THREADS:-$(nproc)}"
if [ "$threads" -gt 64 ] 2>/dev/null; then threads=64; fi

if [ -n "${SWARMTRAIN_TOKEN:-}" ]; then set -- --token "$SWARMTRAIN_TOKEN" "$@"; fi
# The image runs the compiled bundle (`npm run build`); a checkout without one runs through tsx.
cli=node/bin.mjs
if [ -f dist/swarmtrain.mjs ]; then cli=dist/swarmtrain.mjs; fi
exec node "$cli" node \
  --join "$SWARMTRAIN_JOIN" \
  --memory-budget "${SWARMTRAIN_MEMORY:-2GB}" \
  --threads "$threads" \
  --key "${SWARMTRAIN_KEY:-/data/node.key}" \
  --listen "${SWARMTRAIN_LISTEN:-/ip4/0.0.0.0/tcp/4002}" \
  "$@"
