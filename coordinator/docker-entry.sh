#!/bin/sh
# Entry point of the coordinator service (docker-compose.yml, profile `coordinator`): runs
# `swarmtrain coordinator`, configured by SWARMTRAIN_* variables: the service (job store in /data, the
# HTTP API and web UI on port 8080) or, with SWARMTRAIN_JOB, that one job. Arguments given to the
# container come last, so they override. exec, so SIGTERM from `docker stop` reaches Node and stops it cleanly.
# The status file (this container's own) is what the image's HEALTHCHECK reads.
set -eu
cd "$(dirname "$0")/.."

# Optional flags, prepended so the container's own arguments stay last.
if [ -n "${SWARMTRAIN_TOKENIZER:-}" ]; then set -- --tokenizer "$SWARMTRAIN_TOKENIZER" "$@"; fi
if [ -n "${SWARMTRAIN_VOCAB:-}" ]; then set -- --vocab "$SWARMTRAIN_VOCAB" "$@"; fi
if [ -n "${SWARMTRAIN_TOKEN:-}" ]; then set -- --token "$SWARMTRAIN_TOKEN" "$@"; fi
# One job (its identity kept in /data like the service's), or the service with its data in /data.
if [ -n "${SWARMTRAIN_JOB:-}" ]; then
  set -- --job "$SWARMTRAIN_JOB" --key "${SWARMTRAIN_KEY:-/data/coordinator.key}" "$@"
else
  set -- --data /data --http 0.0.0.0:8080 "$@"
fi
# The image runs the compiled bundle (`npm run build`); a checkout without one runs through tsx.
cli=coordinator/bin.mjs
if [ -f dist/coordinator.mjs ]; then cli=dist/coordinator.mjs; fi
exec node "$cli" \
  --listen "${SWARMTRAIN_LISTEN:-/ip4/0.0.0.0/tcp/4001}" \
  --status-file /tmp/swarmtrain-status.json \
  "$@"
