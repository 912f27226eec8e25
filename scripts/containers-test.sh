#!/usr/bin/env bash
# Runs docker-compose.yml in real containers, with podman, and checks what a compose deployment
# of rask promises: every healthcheck turns healthy, `--scale worker=3`, the `demo` service
# completes, a worker container killed mid-run loses nothing, `stop` on a worker drains within
# its grace period, and a rolling restart of the workers keeps a long `map` going.
#
# No image registry is reachable in CI, so the images the compose file names are built here
# from local stand-ins (scripts/containers/): a Debian bookworm base made with debootstrap and
# `podman import` (tagged debian:bookworm-slim), RabbitMQ and Redis images from Debian's
# packages with the official images' entrypoint contract (tagged rabbitmq:3.13-management and
# redis:7), and a builder with this machine's Rust toolchain and CA bundle (tagged
# rust:1-bookworm); then the project's own Dockerfile builds rask:local through
# `docker-compose build`, and cargo fetches the crates inside the build from crates.io, as with
# the official builder (CI reaches crates.io through a TLS-intercepting proxy, whose CA the
# host's bundle holds).
#
# The compose file runs as written, through docker-compose against podman's Docker-compatible
# API socket. What podman cannot honour of it, and how this script stands in, is listed in
# README.md ("Running with docker-compose", podman). Podman's settings for this run are in
# scripts/containers/containers.conf (runc, lower ulimits); the machine's own are left alone.
#
# Everything it starts goes away at the end (containers, the network, the volumes, podman's API
# service); the stand-in images and rask:local stay, to be reused by the next run (the
# stand-ins are rebuilt when their files change). On a failure it prints the services' state
# and logs first. Needs root (podman with runc, as rootful containers).
#   scripts/containers-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
standins=$root/scripts/containers

say() { echo "containers-test: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}
started=$SECONDS
phase() { say "[$((SECONDS - started)) s] $*"; }

if [ "$(id -u)" -ne 0 ]; then
    fail "run me as root (rootful podman with runc)"
fi

bash scripts/install-deps.sh

export CONTAINERS_CONF=$standins/containers.conf
work="$(mktemp -d "${TMPDIR:-/tmp}/rask-containers.XXXXXX")"
chmod 755 "$work"
project="raskct$$"
network="${project}_default"
service_pid=
health_pid=
background_pids=()

cleanup() {
    local status=$?
    set +e
    if [ "$status" -ne 0 ] && [ -S "$work/podman.sock" ]; then
        say "the services' state and logs:"
        compose ps >&2
        compose logs --no-color --tail=150 >&2
        say "podman's API service log (last lines):"
        tail -n 30 "$work/podman-service.log" >&2
    fi
    for pid in "${background_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    if [ -n "$health_pid" ]; then
        kill "$health_pid" 2>/dev/null
        wait "$health_pid" 2>/dev/null
    fi
    if [ -S "$work/podman.sock" ]; then
        compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    fi
    # Whatever the compose project left (one-off `run` containers, a network, volumes).
    podman ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r podman rm -f >/dev/null 2>&1
    podman network rm -f "$network" >/dev/null 2>&1
    podman volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r podman volume rm -f >/dev/null 2>&1
    if [ -n "$service_pid" ]; then
        kill "$service_pid" 2>/dev/null
        wait "$service_pid" 2>/dev/null
    fi
    rm -rf "$work"
    if [ "$status" -eq 0 ]; then
        phase "passed"
    else
        say "failed after $((SECONDS - started)) s"
    fi
}
trap cleanup EXIT

compose() {
    docker-compose --project-name "$project" --project-directory "$root" \
        --file "$root/docker-compose.yml" --env-file "$work/env" "$@"
}

# A hash of the files an image is built from, stored as its label: a stand-in is rebuilt
# only when they change.
label_of() { podman image inspect --format '{{index .Labels "rask.standin"}}' "$1" 2>/dev/null || true; }
digest() { cat "$@" | sha256sum | cut -c1-16; }

# --- the stand-in images ---------------------------------------------------------------------

base=docker.io/library/debian:bookworm-slim
base_label="debootstrap-minbase-bookworm-v1"
if [ "$(label_of "$base")" != "$base_label" ]; then
    phase "making the Debian base with debootstrap"
    mirror=${RASK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
    rootfs="$work/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
    # Like the official image: updates and security updates, no package lists or caches kept.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import \
        --change 'CMD ["bash"]' --change "LABEL rask.standin=$base_label" - "$base" >/dev/null
    rm -rf "$rootfs"
fi

# build_standin NAME CONTAINERFILE [podman build options]: NAME from scripts/containers/.
build_standin() {
    local name=$1 file=$2
    shift 2
    local files=("$standins/$file")
    case "$file" in
    rabbitmq.*) files+=("$standins/rabbitmq-entrypoint.sh") ;;
    redis.*) files+=("$standins/redis-entrypoint.sh") ;;
    esac
    local label
    label="$(digest "${files[@]}")-$(podman image inspect --format '{{.Id}}' "$base" | cut -c1-12)${STANDIN_EXTRA:-}"
    if [ "$(label_of "$name")" != "$label" ]; then
        phase "building the stand-in $name"
        local old
        old=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
        podman build --quiet --file "$standins/$file" --label "rask.standin=$label" \
            --tag "$name" "$@" "$standins" >"$work/build-$file.log" 2>&1 ||
            { tail -n 40 "$work/build-$file.log" >&2; fail "building $name failed"; }
        # The stand-in it replaces, unless something still uses it.
        [ -z "$old" ] || podman rmi "$old" >/dev/null 2>&1 || true
    fi
}
build_standin docker.io/library/rabbitmq:3.13-management rabbitmq.Containerfile
build_standin docker.io/library/redis:7 redis.Containerfile
sysroot="$(rustc --print sysroot)"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
STANDIN_EXTRA="-$(rustc --version | tr -cd '0-9.')-$(digest "$ca_bundle")" build_standin \
    docker.io/library/rust:1-bookworm rust.Containerfile \
    --volume "$sysroot:/host-rust:ro" --volume "$ca_bundle:/host-ca.crt:ro"

# --- podman's Docker API, its healthchecks, the compose project ------------------------------

podman system service --time=0 "unix://$work/podman.sock" >"$work/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 100); do
    [ -S "$work/podman.sock" ] && break
    sleep 0.1
done
[ -S "$work/podman.sock" ] || fail "podman's API service did not start: $(cat "$work/podman-service.log")"
export DOCKER_HOST="unix://$work/podman.sock"

# The deployment's secrets: .env.example with every `replace-this...` value replaced.
while IFS= read -r line; do
    if [[ "$line" == *=replace-this* ]]; then
        line="${line%%=*}=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    fi
    printf '%s\n' "$line"
done <.env.example >"$work/env"

# Podman runs healthchecks from systemd timers; without systemd (containers in CI) nothing
# runs them, so this loop does, each container's at its own interval, as Docker's daemon would.
drive_healthchecks() {
    declare -A due=()
    while :; do
        local now id interval
        now=$(date +%s)
        for id in $(podman ps -q --filter "label=com.docker.compose.project=$project"); do
            interval=$(podman inspect --format '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Interval.Seconds}}{{end}}' "$id" 2>/dev/null) || continue
            [ -n "$interval" ] || continue
            if [ "${due[$id]:-0}" -le "$now" ]; then
                podman healthcheck run "$id" >/dev/null 2>&1 || true
                due[$id]=$((now + ${interval%.*}))
            fi
        done
        sleep 1
    done
}
drive_healthchecks &
health_pid=$!

# health CONTAINER: its health status (healthy, unhealthy, starting).
# A container that is not running keeps its last health status: it is `not running` here.
health() { podman inspect --format '{{if .State.Running}}{{.State.Health.Status}}{{else}}not running{{end}}' "$1"; }
# wait_healthy CONTAINER SECONDS
wait_healthy() {
    local deadline=$((SECONDS + $2))
    while [ "$(health "$1")" != healthy ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$1 is not healthy after $2 s (it is $(health "$1"))"
        sleep 1
    done
}
workers() { podman ps --format '{{.Names}}' --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=worker" | sort; }
# metric CONTAINER NAME: the value of a worker's metric, from its /metrics (inside the container).
metric() {
    podman exec "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9100 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' |
        awk -v name="$2" '$1 == name { print $2 }'
}
# wait_running CONTAINER N SECONDS: until the worker runs at least N tasks.
wait_running() {
    local deadline=$((SECONDS + $3)) running
    while :; do
        running=$(metric "$1" rask_tasks_in_flight)
        [ "${running:-0}" -ge "$2" ] && return
        [ "$SECONDS" -lt "$deadline" ] || fail "$1 runs ${running:-no} tasks after $3 s, not $2"
        sleep 0.2
    done
}

# Tasks: sleep_ms(ms) returns ms, so a list of distinct durations makes results unique to each
# task. `rask map` runs in a one-off container of the demo service (its environment, on the
# compose network, the image's CLI), reading its input from $work/in.
mkdir "$work/in"
chmod 755 "$work/in"
# map_in NAME FIRST COUNT: durations FIRST, FIRST+1, ... as input lines, and the expected output.
map_in() {
    seq "$2" $(($2 + $3 - 1)) | sed 's/.*/[&]/' >"$work/in/$1.jsonl"
    seq "$2" $(($2 + $3 - 1)) >"$work/$1.expected"
    chmod 644 "$work/in/$1.jsonl"
}
# map_start NAME: `rask map sleep_ms` over NAME's input, in the background.
map_start() {
    compose run --rm -T --no-deps --volume "$work/in:/in:ro" demo \
        rask map sleep_ms --input "/in/$1.jsonl" --timeout 10m >"$work/$1.out" 2>"$work/$1.err" &
    map_pid=$!
    background_pids+=("$map_pid")
}
# map_check NAME PID: the map ended well and printed exactly the expected results, in order.
map_check() {
    local status=0
    wait "$2" || status=$?
    [ "$status" -eq 0 ] || { cat "$work/$1.err" >&2; fail "rask map ($1) exited with $status"; }
    if ! diff -q "$work/$1.expected" "$work/$1.out" >/dev/null; then
        diff "$work/$1.expected" "$work/$1.out" | head -n 20 >&2
        fail "rask map ($1): the results differ from the inputs (lost or wrong results above)"
    fi
    phase "map $1: all $(wc -l <"$work/$1.expected") results correct"
}

# --- build and start -------------------------------------------------------------------------

phase "building rask:local from the Dockerfile (docker-compose build)"
old_image=$(podman image inspect --format '{{.Id}}' rask:local 2>/dev/null || true)
build_started=$SECONDS
compose build worker >"$work/build-rask.log" 2>&1 ||
    { tail -n 60 "$work/build-rask.log" >&2; fail "building rask:local failed"; }
phase "rask:local built in $((SECONDS - build_started)) s"
new_image=$(podman image inspect --format '{{.Id}}' rask:local)
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
    podman rmi "$old_image" >/dev/null 2>&1 || true
fi

phase "compose up --scale worker=3"
compose up --detach --no-build --scale worker=3 >"$work/up.log" 2>&1 ||
    { cat "$work/up.log" >&2; fail "compose up failed"; }
for container in "${project}_rabbitmq_1" "${project}_redis_1" "${project}_gpu-worker_1" $(workers); do
    wait_healthy "$container" 120
done
[ "$(workers | wc -l)" -eq 3 ] || fail "$(workers | wc -l) worker containers run, not 3"
phase "healthy: rabbitmq, redis, gpu-worker and 3 workers"

demo="${project}_demo_1"
status=$(timeout 600 podman wait "$demo") || fail "the demo did not end within 10 minutes"
podman logs "$demo" >"$work/demo.log" 2>&1
[ "$status" -eq 0 ] || { cat "$work/demo.log" >&2; fail "the demo exited with $status"; }
# (Where the analysis ran it cannot say here: the workers' /metrics listen inside their
# containers only, RASK_METRICS_LISTEN.)
grep -q '^analysed 768 images on the cluster' "$work/demo.log" ||
    { cat "$work/demo.log" >&2; fail "the demo did not analyse its 768 images"; }
phase "the demo completed: $(grep -c . "$work/demo.log") lines of output"

# --- a worker killed mid-run loses nothing ---------------------------------------------------

map_in kill 1000 90
map_start kill
kill_map=$map_pid
victim=$(workers | head -n 1)
wait_running "$victim" 1 120
podman kill --signal KILL "$victim" >/dev/null
phase "killed $victim (SIGKILL) while it ran tasks"
map_check kill "$kill_map"
# Podman does not apply the restart policy (unless-stopped) to a container killed with
# `podman kill` (stopped by the user): start it again.
podman start "$victim" >/dev/null
wait_healthy "$victim" 120

# --- stop drains within the grace period -----------------------------------------------------

grace=$(podman inspect --format '{{.Config.StopTimeout}}' "$victim")
[ "$grace" -eq 60 ] || fail "$victim's stop timeout is $grace s, not the compose file's 60 s"
map_in drain 6000 12
map_start drain
drain_map=$map_pid
wait_running "$victim" 2 120
stop_started=$SECONDS
podman stop "$victim" >/dev/null
took=$((SECONDS - stop_started))
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$victim")
[ "$exit_code" -eq 0 ] || fail "$victim exited with $exit_code on stop (137: killed at the grace period's end)"
[ "$took" -lt "$grace" ] || fail "$victim took $took s to stop, the whole grace period"
phase "stopped $victim in $took s, exit code 0 (it finished its running tasks)"
map_check drain "$drain_map"
podman start "$victim" >/dev/null
wait_healthy "$victim" 120

# --- a rolling restart keeps a long map going ------------------------------------------------

map_in rolling 1000 240
map_start rolling
rolling_map=$map_pid
for container in $(workers); do
    wait_running "$container" 1 120
    podman restart "$container" >/dev/null
    wait_healthy "$container" 120
    # Serving again (podman may keep the health status of before the restart for a moment).
    wait_running "$container" 1 120
    phase "restarted $container, healthy and running tasks again"
done
kill -0 "$rolling_map" 2>/dev/null ||
    fail "the long map ended before the rolling restart did: it tested nothing (make it longer)"
map_check rolling "$rolling_map"
