#!/usr/bin/env bash
# Tests the Python package (python/): builds it into a virtual environment
# (target/python-venv, kept between runs) with `pip install ./python`, then runs
# its pytest suite, the notebook notebooks/image_batches.ipynb included, against
# the servers of RASK_TEST_AMQP_URL and RASK_TEST_REDIS_URL (scripts/test.sh
# starts them) and a Rust test worker (target/debug/rask-test-worker, built by
# `cargo build --workspace --bins`). Extra arguments go to pytest.
#
# The extension is built with the dev profile, reusing what the workspace build
# compiled. About 2 minutes on 2 cores with a new venv (downloads and the
# extension's build), of which the pytest suite takes about 15 s.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${RASK_TEST_AMQP_URL:?set it (scripts/test.sh does)}"
: "${RASK_TEST_REDIS_URL:?set it (scripts/test.sh does)}"

venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# What the suite needs besides the package: pytest; numpy (arrays as values); tqdm (the
# terminal progress bar); nbclient, ipykernel, ipywidgets and matplotlib (the notebook);
# cloudpickle (pickled functions).
"$venv/bin/pip" install -q --disable-pip-version-check \
    pytest numpy tqdm nbclient ipykernel ipywidgets matplotlib cloudpickle
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
    --config-settings=build-args="--profile dev" ./python
"$venv/bin/python" -m pytest python/tests -q "$@"
