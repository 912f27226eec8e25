"""Python workers (`python -m rask worker`) against real servers (`RASK_TEST_AMQP_URL`,
`RASK_TEST_REDIS_URL`, as the Rust tests): Python tasks run with their values and errors,
time limits stop them, a worker killed mid-run loses nothing, pickled functions are refused
unless signing keys are configured and the worker opts in.

The tasks are submitted with the `rask` command-line client (`RASK_BIN`, default
`target/debug/rask`), a real client of the same servers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import rask
from rask.task import PICKLED_TASK, PickledFunctionRefused, pickled_call, pickled_runner

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RASK = os.environ.get("RASK_BIN", str(ROOT / "target" / "debug" / "rask"))
PATIENCE = 60.0


class Env:
    """Settings of one test: its own exchange, queues and key prefix on the test servers."""

    def __init__(self, tmp: Path, **extra: str) -> None:
        amqp = os.environ.get("RASK_TEST_AMQP_URL")
        redis = os.environ.get("RASK_TEST_REDIS_URL")
        if not amqp or not redis:
            pytest.fail("set RASK_TEST_AMQP_URL and RASK_TEST_REDIS_URL (see README, Tests)")
        test_id = f"t-py-{uuid.uuid4().hex[:12]}"
        self.tmp = tmp
        self.vars: Dict[str, str] = {
            "RASK_AMQP_URL": amqp,
            "RASK_REDIS_URL": redis,
            "RASK_EXCHANGE": f"{test_id}.x",
            "RASK_QUEUE": f"{test_id}.tasks",
            "RASK_DEAD_LETTER_EXCHANGE": f"{test_id}.dead",
            "RASK_DEAD_LETTER_QUEUE": f"{test_id}.dead",
            "RASK_KEY_PREFIX": test_id,
            **extra,
        }
        self.workers: List[Worker] = []

    def environ(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RASK_")}
        env.update(self.vars)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])
        return env

    def worker(self, *args: str) -> "Worker":
        worker = Worker(self, list(args))
        self.workers.append(worker)
        return worker

    def rask(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(
            [RASK, *args], input=stdin, capture_output=True, text=True, env=self.environ(),
            timeout=PATIENCE, cwd=self.tmp,
        )

    def submit(self, function: str, *args, pool: str = "py", extra: List[str] = ()) -> subprocess.CompletedProcess:
        json_args = [json.dumps(a) for a in args]
        return self.rask("submit", "--pool", pool, "--timeout", "60s", *extra, function, "--", *json_args)

    def value(self, function: str, *args, **kw):
        done = self.submit(function, *args, **kw)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


class Worker:
    """A `python -m rask worker` process, its log in a file."""

    def __init__(self, env: Env, args: List[str]) -> None:
        self.log_path = env.tmp / f"worker-{len(env.workers)}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rask", "worker", *args], env=env.environ(), cwd=env.tmp,
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.wait_for("worker ready")

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))

    def wait_for(self, marker: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while marker not in self.text():
            assert self.process.poll() is None, f"worker exited: {self.text()}"
            assert time.monotonic() < deadline, f"no {marker!r} in: {self.text()}"
            time.sleep(0.02)

    def metrics(self) -> str:
        address = re.search(r"serving /metrics and /health address=(\S+)", self.text()).group(1)
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            return response.read().decode()

    def counter(self, series: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0

    def children(self) -> List[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=PATIENCE)
        self.log.close()
        return code


@pytest.fixture
def env(tmp_path: Path):
    env = Env(tmp_path)
    yield env
    for worker in env.workers:
        worker.stop(signal.SIGKILL)


def test_python_tasks_run_by_name_with_their_values(env: Env) -> None:
    env.worker("worker_tasks", "--processes", "2")
    assert env.value("worker_tasks.inc", 41) == 42
    assert env.value("py_double", "ab") == "abab"  # a name given with @rask.task(name=...)
    for value, kind in [
        (None, "NoneType"), (True, "bool"), (-7, "int"), (2.5, "float"), ("é", "str"),
        ([1, [2, "x"]], "list"), ({"a": [1, 2]}, "dict"),
    ]:
        assert env.value("worker_tasks.describe", value) == [kind, value]
    # Prints go to the worker's stderr, not into its pipes.
    assert env.value("worker_tasks.chatty", 5) == 5
    assert "printing does not disturb the worker 5" in env.workers[0].text()


def test_errors_carry_the_python_type_message_and_traceback(env: Env) -> None:
    env.worker("worker_tasks", "--processes", "1")
    done = env.submit("worker_tasks.refuse", 3)
    assert done.returncode != 0
    assert "failed on worker" in done.stderr
    assert "worker_tasks.QuotaExceeded: no quota left for 3" in done.stderr
    assert 'line' in done.stderr and "raise QuotaExceeded" in done.stderr  # the traceback
    done = env.submit("worker_tasks.unencodable", 3)
    assert "TypeError: rask cannot send a value of type set" in done.stderr, done.stderr
    done = env.submit("worker_tasks.missing", 3)
    assert "no function named \"worker_tasks.missing\"" in done.stderr, done.stderr
    # The worker serves on after each.
    assert env.value("worker_tasks.inc", 1) == 2


def test_rask_retry_is_retried_under_a_retry_policy(env: Env) -> None:
    env.worker("worker_tasks", "--processes", "1")
    marker = str(env.tmp / "flaky-ran")
    assert env.value("worker_tasks.flaky", 9, marker, extra=["--retries", "1"]) == 9
    assert env.workers[0].counter('rask_tasks_retried_total{function="worker_tasks.flaky"}') == 1


def test_a_task_past_its_time_limit_is_stopped_and_its_process_replaced(env: Env) -> None:
    worker = env.worker("worker_tasks", "--processes", "1")
    [child] = worker.children()
    done = env.submit("worker_tasks.forever", 1, extra=["--time-limit", "300ms"])
    assert "ran longer than its time limit of 300ms" in done.stderr, done.stderr
    assert env.value("worker_tasks.inc", 7) == 8
    [fresh] = worker.children()
    assert fresh != child, "the child running past its limit was killed and replaced"


def test_processes_share_the_work(env: Env) -> None:
    env.worker("worker_tasks", "--processes", "2")
    lines = "\n".join(json.dumps([i, 2_000_000]) for i in range(8))
    done = env.rask("map", "worker_tasks.spin", "--pool", "py", "--timeout", "60s", stdin=lines)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r[0] for r in results] == list(range(8))
    lines = "\n".join(json.dumps([i]) for i in range(40))
    done = env.rask("map", "worker_tasks.pid", "--pool", "py", "--timeout", "60s", stdin=lines)
    pids = {json.loads(line)[0] for line in done.stdout.splitlines()}
    assert pids <= set(env.workers[0].children())
    assert len(pids) == 2, f"40 tasks ran on {pids}"


def test_a_worker_killed_mid_run_loses_nothing(env: Env) -> None:
    first = env.worker("worker_tasks", "--processes", "2")
    n = 300
    inputs = env.tmp / "inputs.jsonl"
    inputs.write_text("\n".join(json.dumps([1000 + i, 10]) for i in range(n)))
    mapped = subprocess.Popen(
        [RASK, "map", "worker_tasks.slow_inc", "--pool", "py", "--timeout", "120s",
         "--input", str(inputs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env.environ(),
        cwd=env.tmp,
    )
    series = 'rask_tasks_succeeded_total{function="worker_tasks.slow_inc"}'
    deadline = time.monotonic() + PATIENCE
    while first.counter(series) < 30:
        assert time.monotonic() < deadline, first.text()
        time.sleep(0.02)
    children = first.children()
    first.stop(signal.SIGKILL)  # mid-run: tasks in its children and prefetched, unacknowledged
    env.worker("worker_tasks", "--processes", "2")
    out, err = mapped.communicate(timeout=PATIENCE)
    assert mapped.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [1001 + i for i in range(n)]
    # The orphaned children exit once their pipe closes.
    deadline = time.monotonic() + PATIENCE
    while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in children):
        assert time.monotonic() < deadline, f"children {children} outlived their worker"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_pickled_functions_are_refused_without_signing(env: Env) -> None:
    # Client side: no signing keys, nothing is pickled or published.
    with pytest.raises(PickledFunctionRefused, match="signing keys"):
        pickled_call(lambda x: x + 1, (1,), signing=False)
    # Worker side, even when asked for by hand: not allowed, then allowed without keys.
    env.worker("worker_tasks", "--processes", "1")
    done = env.submit(PICKLED_TASK, "payload", [1])
    assert "PickledFunctionRefused: this worker does not run pickled functions" in done.stderr, done.stderr
    env.workers[0].stop()
    env.vars["RASK_ALLOW_PICKLED_FUNCTIONS"] = "true"
    env.worker("worker_tasks", "--processes", "1")
    done = env.submit(PICKLED_TASK, "payload", [1])
    assert "signing_keys is empty" in done.stderr, done.stderr


def test_pickled_functions_run_with_signing_and_opt_in(env: Env) -> None:
    key = "a-test-signing-key-of-enough-bytes"
    env.vars["RASK_SIGNING_KEYS"] = key
    env.vars["RASK_ALLOW_PICKLED_FUNCTIONS"] = "true"
    name, (payload, args) = pickled_call(lambda x: x * 3, (5,), signing=True)
    assert name == PICKLED_TASK and args == [5]
    # The worker's runner, as a child runs it (the CLI cannot send the payload's bytes).
    assert pickled_runner("allow")(payload, args) == 15
    with pytest.raises(PickledFunctionRefused, match="allow_pickled_functions is false"):
        pickled_runner("refuse-disabled")(payload, args)
    # A signed worker with the opt-in serves rask.pickled (and refuses a payload that is not
    # a pickle with the unpickler's error, not a refusal).
    env.worker("worker_tasks", "--processes", "1")
    done = env.submit(PICKLED_TASK, "not a pickle", [1])
    assert "failed on worker" in done.stderr and "Refused" not in done.stderr, done.stderr


def test_task_marks_names_and_pools() -> None:
    import worker_tasks

    assert worker_tasks.inc.__rask_name__ == "worker_tasks.inc"
    assert worker_tasks.inc.__rask_pool__ == "py"
    assert worker_tasks.double.__rask_name__ == "py_double"
    assert worker_tasks.inc(1) == 2  # still a plain function

    @rask.task(name="local", pool="gpu-py")
    def local(x):
        return x

    assert (local.__rask_name__, local.__rask_pool__) == ("local", "gpu-py")
    with pytest.raises(ValueError, match="module-level"):
        rask.task(lambda x: x)
