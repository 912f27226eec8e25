"""Fixtures of the Python suite: the servers `scripts/test.sh` started (RASK_TEST_AMQP_URL,
RASK_TEST_REDIS_URL), a private namespace on them (exchange, queues and key prefix of this
run, as `rask_tests::TestEnv` makes them), and one Rust test worker process
(`rask-test-worker`: the stock functions plus the test ones) serving it.

The namespace is set as `RASK_*` variables, so `rask.Client()` with no arguments finds it as a
user's program would find its settings."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _namespace() -> dict:
    amqp = os.environ.get("RASK_TEST_AMQP_URL")
    redis = os.environ.get("RASK_TEST_REDIS_URL")
    if not amqp or not redis:
        pytest.exit("set RASK_TEST_AMQP_URL and RASK_TEST_REDIS_URL (scripts/test.sh does)", 2)
    run = f"t-py-{uuid.uuid4().hex[:10]}"
    return {
        "RASK_AMQP_URL": amqp,
        "RASK_REDIS_URL": redis,
        "RASK_EXCHANGE": f"{run}.x",
        "RASK_QUEUE": f"{run}.tasks",
        "RASK_DEAD_LETTER_EXCHANGE": f"{run}.dead",
        "RASK_DEAD_LETTER_QUEUE": f"{run}.dead",
        "RASK_KEY_PREFIX": run,
        "RASK_CONCURRENCY": "4",
    }


@pytest.fixture(scope="session")
def namespace():
    ns = _namespace()
    saved = {k: os.environ.get(k) for k in ns}
    os.environ.update(ns)
    yield ns
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _start_worker(settings: dict) -> subprocess.Popen:
    """A `rask-test-worker` with `settings` over the environment, once it logged "worker
    ready"."""
    binary = Path(os.environ.get("RASK_TEST_WORKER_BIN", ROOT / "target/debug/rask-test-worker"))
    if not binary.exists():
        pytest.exit(f"{binary} is missing: cargo build --workspace --bins", 2)
    env = dict(os.environ, **settings, RUST_LOG="info")
    proc = subprocess.Popen([str(binary)], env=env, stderr=subprocess.PIPE, text=True)
    ready = threading.Event()
    log: list = []

    def read() -> None:
        for line in proc.stderr:
            log.append(line)
            if "worker ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        pytest.exit("the test worker did not get ready:\n" + "".join(log[-20:]), 2)
    return proc


def _stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def worker(namespace):
    """One `rask-test-worker` on the namespace, ready (it logged "worker ready")."""
    proc = _start_worker(namespace)
    yield proc
    _stop_worker(proc)


@pytest.fixture
def blob_store(tmp_path, monkeypatch):
    """A namespace of its own whose worker and clients keep values over `blob_threshold`
    (1 MiB) in a `file://` blob store (`RASK_BLOB_URL`, a fresh directory): yields that
    directory, with the namespace's variables set for `rask.Client()` (until the test ends)."""
    blobs = tmp_path / "blobs"
    settings = dict(_namespace(), RASK_BLOB_URL=f"file://{blobs}")
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    proc = _start_worker(settings)
    try:
        yield blobs
    finally:
        _stop_worker(proc)


@pytest.fixture(scope="session")
def client(worker):
    import rask

    c = rask.Client()
    yield c
    c.close()
