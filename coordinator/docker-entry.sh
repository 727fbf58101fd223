#!/bin/sh
# Entry point of the coordinator service (docker-compose.yml, profile `coordinator`): runs
# `swarmtrain-coordinator`, configured by SWARMTRAIN_* variables; arguments given to the container
# come last, so they override. exec, so SIGTERM from `docker stop` reaches Node and stops it cleanly.
# The status file (this container's own) is what the image's HEALTHCHECK reads.
set -eu
cd "$(dirname "$0")/.."

# Optional flags, prepended so the container's own arguments stay last.
if [ -n "${SWARMTRAIN_TOKENIZER:-}" ]; then set -- --tokenizer "$SWARMTRAIN_TOKENIZER" "$@"; fi
if [ -n "${SWARMTRAIN_VOCAB:-}" ]; then set -- --vocab "$SWARMTRAIN_VOCAB" "$@"; fi
if [ -n "${SWARMTRAIN_TOKEN:-}" ]; then set -- --token "$SWARMTRAIN_TOKEN" "$@"; fi
# The image runs the compiled bundle (`npm run build`); a checkout without one runs through tsx.
cli=coordinator/bin.mjs
if [ -f dist/coordinator.mjs ]; then cli=dist/coordinator.mjs; fi
exec node "$cli" \
  --job "${SWARMTRAIN_JOB:-coordinator/jobs/demo.json}" \
  --listen "${SWARMTRAIN_LISTEN:-/ip4/0.0.0.0/tcp/4001}" \
  --key "${SWARMTRAIN_KEY:-/data/coordinator.key}" \
  --status-file /tmp/swarmtrain-status.json \
  "$@"
