#!/usr/bin/env bash
# Runs rask's whole test suite (what CI runs, through .ci/run): installs what
# is missing, builds, starts private RabbitMQ and Redis servers on ports
# 30672 and 30379 for the tests, runs them with cargo-nextest, and stops the
# servers again. Extra arguments go to nextest, e.g.
#   scripts/test.sh -E 'test(retry)'
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --workspace --bins --examples

rask=target/debug/rask
servers_dir="$(mktemp -d "${TMPDIR:-/tmp}/rask-test-servers.XXXXXX")"
stop_servers() {
    local status=$?
    # The clusters of the second pass, if it started and the script ended before stopping them.
    if [ -n "${clusters_pid:-}" ]; then
        kill "$clusters_pid" 2>/dev/null || true
    fi
    if [ -e "$servers_dir/state.json" ]; then
        "$rask" local down --dir "$servers_dir" >/dev/null || true
    fi
    if [ "$status" -eq 0 ]; then
        rm -rf "$servers_dir"
    else
        echo "test.sh: the test servers' logs are kept in $servers_dir" >&2
    fi
}
trap stop_servers EXIT
"$rask" local up --workers 0 --dir "$servers_dir" \
    --amqp-port 30672 --dist-port 30673 --redis-port 30379

export RASK_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:30672/%2f'
export RASK_TEST_REDIS_URL='redis://127.0.0.1:30379/'

if [ -f docker-compose.yml ]; then
    # The compose file has no default secrets: check it with the example's values.
    docker-compose --env-file .env.example config -q
fi

# The Kubernetes manifests, against the Kubernetes schemas and each other.
if [ "$#" -eq 0 ]; then
    bash scripts/validate-k8s.sh
fi

# Doctests first (nextest does not run them): API docs and the README's Rust examples.
if [ "$#" -eq 0 ]; then
    cargo test --workspace --doc
fi
cargo nextest run --workspace --no-fail-fast "$@"

# The Python package and its notebook, against the same servers (scripts/test-python.sh).
if [ "$#" -eq 0 ]; then
    bash scripts/test-python.sh
fi

# docker-compose.yml in real containers (podman, images built from local stand-ins and the
# Dockerfile): healthchecks, scaling, the demo, a killed worker, a drained stop, a rolling
# restart. Only for a whole run; it needs root (rootful podman).
if [ "$#" -eq 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        bash scripts/containers-test.sh
    else
        echo "test.sh: the container test (scripts/containers-test.sh) needs root: not run" >&2
    fi
fi

# Then the core, graph and lineage suites again, on clusters: a 3-node RabbitMQ cluster with quorum
# queues and a Redis Cluster of 3 primaries and 3 replicas (rask-test-clusters starts them and
# writes the variables that point the suites at them). Only for a whole run.
if [ "$#" -eq 0 ]; then
    clusters_env="$servers_dir/clusters.env"
    target/debug/rask-test-clusters "$clusters_env" 2>"$servers_dir/clusters.log" &
    clusters_pid=$!
    for _ in $(seq 600); do
        [ -e "$clusters_env" ] || ! kill -0 "$clusters_pid" 2>/dev/null && break
        sleep 0.1
    done
    if [ ! -e "$clusters_env" ]; then
        echo "test.sh: the clusters did not start:" >&2
        cat "$servers_dir/clusters.log" >&2
        exit 1
    fi
    status=0
    # `--workspace` with a filter, not `-p rask-tests`: the same packages as the first pass, so
    # the same features and the binaries it built (`-p` alone would resolve other features of
    # shared dependencies, serde's among them, and rebuild nearly everything).
    (set -a; . "$clusters_env"; exec cargo nextest run --workspace --no-fail-fast \
        -E 'package(rask-tests) & (binary(core) | binary(graph) | binary(lineage))') || status=$?
    kill "$clusters_pid"
    wait "$clusters_pid" || true
    exit "$status"
fi
