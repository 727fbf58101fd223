#!/usr/bin/env bash
# A real `docker compose up`, run by .ci/run after the tests: starts a private Docker engine, builds the
# image, serves the demo job from the coordinator service, starts `--scale node=3`, and checks that three
# distinct peer ids join and train, every container turns healthy, a restarted replica keeps its peer id,
# and the nodes leave when stopped. The engine, its folders, volumes and interfaces go on exit, failed or not.
# Swarm traffic stays in the network compose makes; the coordinator is published on 127.0.0.1 only. The
# image build uses the host's network (the engine has no NAT) to reach the npm registry.
#   usage: .ci/docker-e2e.sh    (root; SWARMTRAIN_BASE_CACHE: where the base image's tarball is kept)
set -euo pipefail
cd "$(dirname "$0")/.."
base_cache="${SWARMTRAIN_BASE_CACHE:-/var/cache/swarmtrain/node22-bookworm-slim.tar}"
work="$(mktemp -d /tmp/swarmtrain-docker.XXXXXX)"
export DOCKER_HOST="unix://$work/docker.sock"
project="swarmtrain-e2e-$$"
interfaces_before="$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort)"

# On vfs a container's first start copies the whole image: on a busy machine that outlasts compose's 60 s default.
export COMPOSE_HTTP_TIMEOUT=600 DOCKER_CLIENT_TIMEOUT=600
compose() { docker-compose -p "$project" -f docker-compose.yml --profile coordinator "$@"; }
# Long steps run in the background so a TERM (from `timeout`) interrupts the wait and cleanup runs at once.
run() { "$@" & wait $!; }
fail() { echo "docker e2e: FAILED: $*" >&2; exit 1; }
stage() { echo "docker e2e: $1 ($((SECONDS - stage_started))s)"; stage_started=$SECONDS; }

# The script's own stdout and stderr, for cleanup: a signal's trap runs inside whatever redirection was active.
exec 3>&1 4>&2
cleanup() {
  local status=$?
  exec 1>&3 2>&4
  # Ignored, not reset: `timeout` signals the script and then its whole process group, and a second TERM
  # must not end the cleanup half-way (it would leave the engine's folders behind).
  trap - EXIT
  trap '' TERM INT
  set +e
  if ((status != 0)) && [[ -S "$work/docker.sock" && -n "$(compose ps -q 2>/dev/null)" ]]; then
    echo "--- logs of the failed run (last 30 lines per container)"
    compose logs --no-color --tail=30 2>&1
  fi
  [[ -S "$work/docker.sock" ]] && compose down -v --timeout 10 >/dev/null 2>&1
  kill $(jobs -p) 2>/dev/null
  if [[ -f "$work/docker.pid" ]]; then
    local pid; pid="$(cat "$work/docker.pid")"
    kill "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
  fi
  # Interfaces the engine made (a network's bridge, containers' veths) that outlived it.
  comm -13 <(echo "$interfaces_before") <(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort) \
    | grep -E '^(br-|veth|docker)' | xargs -r -n1 ip link delete 2>/dev/null
  # The engine's exec root holds mounts (network namespaces); unmount before removing.
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work"
  echo "docker e2e: cleaned up (exit $status)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

missing=()
for tool in dockerd docker-compose; do
  command -v "$tool" >/dev/null || missing+=("$([[ $tool == dockerd ]] && echo docker.io || echo "$tool")")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

SECONDS=0; stage_started=0
dockerd --storage-driver=vfs --bridge=none --iptables=false --ip6tables=false \
  --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/docker.pid" -H "$DOCKER_HOST" \
  >"$work/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; fail "dockerd did not start"; }
stage "engine started"

run .ci/docker-base.sh "$base_cache"
stage "base image ready"
run docker build --network host -q -t swarmtrain:latest . >/dev/null
size="$(docker image inspect swarmtrain:latest --format '{{.Size}}')"
stage "image built: swarmtrain:latest, $((size / 1000000)) MB"

# The coordinator serving the demo job, published on an ephemeral port of 127.0.0.1 only (its HTTP API too).
export SWARMTRAIN_JOB=coordinator/jobs/demo.json SWARMTRAIN_HTTP_PUBLISH=127.0.0.1:
export SWARMTRAIN_COORDINATOR_PUBLISH=127.0.0.1: SWARMTRAIN_THREADS=1 SWARMTRAIN_MEMORY=512MB SWARMTRAIN_MEMORY_LIMIT=1g
run compose up -d coordinator >"$work/compose-up.log" 2>&1 || { cat "$work/compose-up.log" >&2; fail "compose up of the coordinator"; }
compose logs --no-color -f coordinator >"$work/coordinator.log" 2>&1 &

health() { docker inspect --format '{{.State.Health.Status}}' "$1"; }
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do ((SECONDS < deadline)) || return 1; sleep 2; done
}
all_healthy() { for id in $(compose ps -q); do [[ "$(health "$id")" == healthy ]] || return 1; done; }

coordinator_id="$(compose ps -q coordinator)"
wait_for 90 grep -q '"event":"listening"' "$work/coordinator.log" || fail "the coordinator did not listen"
coordinator_peer="$(grep -o '"event":"listening","peerId":"[^"]*"' "$work/coordinator.log" | head -1 | grep -o '12D3Koo[1-9A-Za-z]*')"
wait_for 120 all_healthy || fail "the coordinator is $(health "$coordinator_id"), not healthy"
stage "coordinator $coordinator_peer healthy"

# Three replicas join the coordinator by its service name on the project's network.
export SWARMTRAIN_JOIN="/dns4/coordinator/tcp/4001/p2p/$coordinator_peer"
run compose up -d --no-deps --scale node=3 node >/dev/null 2>&1
mapfile -t nodes < <(compose ps -q node)
((${#nodes[@]} == 3)) || fail "${#nodes[@]} node containers, not 3"
peer_of() { docker logs "$1" 2>/dev/null | grep -o '"event":"joined","node":"[^"]*"' | tail -1 | grep -o '12D3Koo[1-9A-Za-z]*'; }
steps_of() { docker logs "$1" 2>/dev/null | grep -c '"event":"step"'; }
trained() { for id in "${nodes[@]}"; do (($(steps_of "$id") >= 3)) || return 1; done; }
wait_for 300 trained || fail "not every node took 3 steps: $(for id in "${nodes[@]}"; do echo -n "$(steps_of "$id") "; done)"
declare -A peers=()
for id in "${nodes[@]}"; do peers[$(peer_of "$id")]=$id; done
((${#peers[@]} == 3)) || fail "the 3 replicas have ${#peers[@]} distinct peer ids: ${!peers[*]}"
for peer in "${!peers[@]}"; do
  grep -q "\"event\":\"joined\",\"node\":\"$peer\"" "$work/coordinator.log" || fail "the coordinator saw no join of $peer"
done
keys="$(docker exec "${nodes[0]}" sh -c 'ls /data/keys/*.key' | tr '\n' ' ')"
stage "3 distinct nodes joined and train: ${!peers[*]}; keys: $keys"

wait_for 150 all_healthy || fail "not all healthy: $(for id in $(compose ps -q); do echo -n "$(health "$id") "; done)"
stage "all 4 containers healthy"

# A restarted replica takes its own identity back (its slot's lock was freed, the others' are held).
restarted="${nodes[1]}"; peer_before="$(peer_of "$restarted")"
run docker restart -t 30 "$restarted" >/dev/null
joined_twice() { (($(docker logs "$restarted" 2>/dev/null | grep -c '"event":"joined"') >= 2)); }
wait_for 120 joined_twice || fail "the restarted replica did not join again"
[[ "$(peer_of "$restarted")" == "$peer_before" ]] || fail "the restarted replica came back as $(peer_of "$restarted"), not $peer_before"
grep -q "\"event\":\"rejoined\",\"node\":\"$peer_before\"" "$work/coordinator.log" || fail "the coordinator saw no rejoin of $peer_before"
stage "a restarted replica rejoined as $peer_before"

# The nodes stop first (down would stop the coordinator at the same time): each hands its leases back.
run compose stop -t 30 node >/dev/null 2>&1
sleep 1
for peer in "${!peers[@]}"; do grep -q "\"event\":\"left\",\"node\":\"$peer\"" "$work/coordinator.log" || fail "$peer did not leave"; done
run compose down -v --timeout 10 >/dev/null 2>&1
stage "3 nodes left; down"
echo "docker e2e: passed in ${SECONDS}s; image swarmtrain:latest $((size / 1000000)) MB (vfs)"
