"""Python tasks of the worker tests (`python -m rask worker worker_tasks`)."""

import os
import time

import rask


@rask.task
def inc(x):
    return x + 1


@rask.task(name="py_double")
def double(x):
    return x * 2


@rask.task
def describe(value):
    """The value as the task saw it: its type's name and the value."""
    return [type(value).__name__, value]


@rask.task
def slow_inc(x, ms):
    time.sleep(ms / 1000)
    return x + 1


@rask.task
def pid(x):
    """The child process that ran it, with `x`."""
    return [os.getpid(), x]


@rask.task
def spin(x, n):
    """CPU-bound: `n` rounds of arithmetic, then `x`."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return [x, total]


class QuotaExceeded(Exception):
    """A task's own error."""


@rask.task
def refuse(x):
    raise QuotaExceeded(f"no quota left for {x}")


@rask.task
def unencodable(x):
    return {x}


@rask.task
def chatty(x):
    print("printing does not disturb the worker", x)
    return x


@rask.task
def flaky(x, marker):
    """Fails with rask.Retry on its first run (no file at `marker`), then returns x."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise rask.Retry(f"first run of {x}")
    return x


@rask.task
def forever(x):
    while True:
        time.sleep(0.01)
