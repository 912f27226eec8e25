"""`map` of 20,000 `inc` from Python against the Rust client, in the same run.

Target (issue 18): Python at least 0.5 of the Rust client's tasks/s. Both submit all tasks
with `map` (pipelined, confirmed) and then gather every result, as `rask bench`'s `throughput`
workload does; the Rust side is the `rask map` command (the Rust client library, plus the
reading and printing of JSON lines, which makes its figure a little conservative).

Run it against a cluster with stock workers, e.g.

    rask local up --workers 2            # prints RASK_AMQP_URL / RASK_REDIS_URL to export
    python python/bench/map_inc.py --rask target/release/rask

Prints one `RESULT` line per side and the ratio, plus the client CPU time per task (user +
sys of the client process: while other programs load the machine, a steadier figure than
tasks/s). Build the package with `pip install ./python` (release) for figures that mean
something.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time

import rask


def python_run(client: rask.Client, n: int, base: int) -> tuple:
    cpu0, t0 = time.process_time(), time.perf_counter()
    futures = client.map("inc", range(base, base + n))
    values = client.gather(futures, timeout=600)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert values[0] == base + 1 and values[-1] == base + n, "wrong results"
    client.release(futures)
    return n / wall, cpu / n


def rust_run(rask_bin: str, n: int, base: int) -> tuple:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.writelines(f"[{i}]\n" for i in range(base, base + n))
        path = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([rask_bin, "map", "inc", "--input", path, "--timeout", "10m"],
                             check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(path)
    lines = out.split()
    assert len(lines) == n, f"rask map printed {len(lines)} results for {n} tasks"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return n / wall, cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument("--rask", default="target/release/rask", help="the rask binary")
    args = parser.parse_args()
    client = rask.Client()
    best_py = best_rs = (0.0, 0.0)
    for r in range(args.rounds):
        base = r * 10 * args.tasks
        py = python_run(client, args.tasks, base)
        rs = rust_run(args.rask, args.tasks, base + 5 * args.tasks)
        best_py = max(best_py, py)
        best_rs = max(best_rs, rs)
    for side, (rate, cpu) in (("python", best_py), ("rust", best_rs)):
        print(f"RESULT map_inc.{side} tasks_per_s={rate:.0f} client_cpu_us_per_task={cpu * 1e6:.1f}")
    ratio = best_py[0] / best_rs[0]
    print(f"RESULT map_inc.ratio python_over_rust={ratio:.2f} target>=0.5 "
          f"{'ok' if ratio >= 0.5 else 'BELOW'}")


if __name__ == "__main__":
    main()
