#!/usr/bin/env bash
# Quick start: install what is missing, build rask, start a private local
# cluster (RabbitMQ, Redis, two workers and one worker of pool gpu with two
# gpu slots) in .rask/local, run the demo against it (image analysis on the
# gpu pool, the reduction on the default one), and stop the cluster again,
# whatever happens.
# Exits with the demo's status.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --workspace --bins

rask=target/release/rask
# Our own folder, so a cluster the user runs elsewhere is never touched.
export RASK_LOCAL_DIR="$PWD/.rask/local"
# The local cluster's default ports.
export RASK_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
export RASK_REDIS_URL='redis://127.0.0.1:6379/'

stop_cluster() {
    # Only if `up` got far enough to record something.
    if [ -e "$RASK_LOCAL_DIR/state.json" ]; then
        "$rask" local down --dir "$RASK_LOCAL_DIR" || true
    fi
}
trap stop_cluster EXIT

"$rask" local up --workers 2 --pool gpu:1:gpu=2 --dir "$RASK_LOCAL_DIR"
"$rask" demo
