"""Throughput of Python workers: a trivial Python task (`inc`) on one `python -m rask worker`
with `--processes 2`, submitted with `rask map` (the Rust command-line client).

    python python/bench/bench_worker.py [--tasks 20000] [--processes 2] [--concurrency 8]

Needs a local cluster's settings in `RASK_*` (e.g. `rask local up --workers 0`) and the `rask`
binary (`RASK_BIN`, default `target/release/rask`). Prints tasks/s over the map (submit to the
last result), and the CPU time per task of the worker process and of its Python children
(user + sys from /proc), which is the figure to compare while other work loads the machine.
The issue's target: at least 4,500 tasks/s on 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")

TASKS = '''
import rask

@rask.task
def inc(x):
    return x + 1
'''


def cpu_seconds(pids: List[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def children(pid: int) -> List[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    rask_bin = os.environ.get("RASK_BIN", str(ROOT / "target" / "release" / "rask"))
    with tempfile.TemporaryDirectory(prefix="rask-bench-worker-") as tmp:
        Path(tmp, "bench_tasks.py").write_text(TASKS)
        env = dict(os.environ)
        env["RASK_QUEUE"] = f"bench-{uuid.uuid4().hex[:8]}.tasks"
        env["PYTHONPATH"] = os.pathsep.join([tmp, *sys.path])
        log = open(Path(tmp, "worker.log"), "wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "rask", "worker", "bench_tasks", "--processes",
             str(args.processes), "--concurrency", str(args.concurrency)],
            env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "worker ready" not in re.sub(r"\x1b\[[0-9;]*m", "", Path(tmp, "worker.log").read_text()):
                if worker.poll() is not None or time.monotonic() > deadline:
                    print(Path(tmp, "worker.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.05)
            inputs = Path(tmp, "inputs.jsonl")
            inputs.write_text("\n".join(json.dumps([i]) for i in range(args.tasks)))
            kids = children(worker.pid)
            parent0, kids0 = cpu_seconds([worker.pid]), cpu_seconds(kids)
            started = time.monotonic()
            done = subprocess.run(
                [rask_bin, "map", "bench_tasks.inc", "--pool", "py", "--input", str(inputs),
                 "--timeout", "10m"],
                env=env, capture_output=True, text=True,
            )
            took = time.monotonic() - started
            parent1, kids1 = cpu_seconds([worker.pid]), cpu_seconds(kids)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            results = [json.loads(line) for line in done.stdout.splitlines()]
            assert results == [i + 1 for i in range(args.tasks)], "wrong results"
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    n = args.tasks
    print(f"python worker, {args.processes} processes: {n} tasks in {took:.2f} s = {n / took:,.0f} tasks/s")
    print(f"cpu per task: worker {1e6 * (parent1 - parent0) / n:.1f} us, "
          f"python children {1e6 * (kids1 - kids0) / n:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
