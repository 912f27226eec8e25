"""Python tasks with the Python client, against real servers: one graph mixing Python tasks
(on a `python -m rask worker`, pool `py`) and Rust tasks (on the Rust test worker of
conftest.py, the default pool), each feeding the other by key with no client in between; a
@rask.task function submitted by its object; pickled functions end to end (refused by a client
without signing keys before anything is published, run by a signed worker that opts in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict

import pytest

import rask
import worker_tasks

HERE = Path(__file__).resolve().parent
PATIENCE = 60.0


def unique() -> int:
    return uuid.uuid4().int % 1_000_000


def start_python_worker(env: Dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """A ready `python -m rask worker worker_tasks` with the variables `env`."""
    env = dict(env, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rask", "worker", "worker_tasks", *args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + PATIENCE
    while "worker ready" not in re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace")):
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.02)
    return proc


@pytest.fixture(scope="module")
def python_worker(namespace, tmp_path_factory):
    proc = start_python_worker(
        dict(os.environ, **namespace), tmp_path_factory.mktemp("pyworker") / "worker.log",
        "--processes", "2",
    )
    yield proc
    proc.terminate()
    proc.wait(PATIENCE)


def test_python_and_rust_tasks_feed_each_other_in_one_graph(client, python_worker) -> None:
    n = unique() * 100
    inc_rust = rask.delayed("inc")  # Rust, default pool
    double_py = rask.delayed(worker_tasks.double)  # Python, pool py (its __rask_pool__)
    assert double_py.options["pool"] == "py"
    doubled = [double_py(inc_rust(n + i)) for i in range(10)]  # Rust -> Python
    back = [inc_rust(d) for d in doubled]  # Python -> Rust
    total = rask.delayed("sum_ints")(back)  # Rust over Rust
    final = rask.delayed(worker_tasks.inc)(total)  # Rust -> Python
    expected = [(n + i + 1) * 2 + 1 for i in range(10)]
    assert client.compute(final, timeout=PATIENCE) == sum(expected) + 1
    # Each node holds its own value.
    assert client.gather([client.future(d.key) for d in back], timeout=PATIENCE) == expected


def test_a_task_function_submits_by_name_to_its_pool(client, python_worker) -> None:
    n = unique()
    assert client.submit(worker_tasks.inc, n).result(PATIENCE) == n + 1
    futures = client.map(worker_tasks.double, [n, n + 1])
    assert client.gather(futures, timeout=PATIENCE) == [2 * n, 2 * n + 2]
    with pytest.raises(rask.TaskFailed) as failed:
        client.submit(worker_tasks.refuse, n).result(PATIENCE)
    assert failed.value.kind == rask.FailureKind.FAILED
    assert failed.value.function == "worker_tasks.refuse"
    assert f"worker_tasks.QuotaExceeded: no quota left for {n}" in str(failed.value)


def test_a_client_without_signing_keys_refuses_to_pickle(client) -> None:
    with pytest.raises(rask.PickledFunctionRefused, match="signing keys"):
        client.submit(lambda x: x + 1, 1)


def test_pickled_functions_run_on_a_signed_worker_that_opts_in(monkeypatch, tmp_path) -> None:
    run = f"t-py-pickled-{uuid.uuid4().hex[:10]}"
    signed = {
        "RASK_EXCHANGE": f"{run}.x",
        "RASK_QUEUE": f"{run}.tasks",
        "RASK_DEAD_LETTER_EXCHANGE": f"{run}.dead",
        "RASK_DEAD_LETTER_QUEUE": f"{run}.dead",
        "RASK_KEY_PREFIX": run,
        "RASK_AMQP_URL": os.environ["RASK_TEST_AMQP_URL"],
        "RASK_REDIS_URL": os.environ["RASK_TEST_REDIS_URL"],
        "RASK_SIGNING_KEYS": "a-test-signing-key-of-enough-bytes",
    }
    for k, v in signed.items():
        monkeypatch.setenv(k, v)
    worker = start_python_worker(
        dict(os.environ, RASK_ALLOW_PICKLED_FUNCTIONS="true"), tmp_path / "worker.log",
        "--processes", "1",
    )
    try:
        with rask.Client(set_as_default=False) as signing_client:
            k = unique()
            assert signing_client.submit(lambda x: x * 3 + k, 5).result(PATIENCE) == 15 + k
            squares = signing_client.map(lambda x: x * x, range(5))
            assert signing_client.gather(squares, timeout=PATIENCE) == [0, 1, 4, 9, 16]
    finally:
        worker.terminate()
        worker.wait(PATIENCE)
