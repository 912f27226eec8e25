"""Python workers: `python -m rask worker MODULE [MODULE...] [--pool py] [--concurrency N]
[--processes N] [--config FILE]` serves the `@rask.task` functions of MODULEs with the Rust
worker runtime (acknowledgement after the result is stored, retries, time limits, signatures,
the registry entry, metrics, graceful shutdown on SIGINT/SIGTERM).

The functions run in `--processes` Python child processes (default: the number of CPUs), one
call at a time each, so that CPU-bound Python uses that many cores whatever the GIL. The worker
process itself runs no Python task: it consumes, hands each call to an idle child over a pipe
and stores the result. A call past its time limit, or force-cancelled, kills its child (the one
way to stop Python code from outside); a fresh child replaces it. `--concurrency` (default: the
number of processes) is the number of tasks the worker holds at once, as for `rask-worker`.

Settings are `rask-worker`'s (`rask.toml`, `RASK_*`), except the pools: the worker serves the
pool of `--pool` (default `py`, where `@rask.task` functions are sent).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence

from .task import DEFAULT_POOL, PICKLED_TASK, pickled_runner, task_name

__all__ = ["collect", "main"]


def collect(modules: Sequence[str]) -> Dict[str, Callable[..., Any]]:
    """The `@rask.task` functions found at the top level of `modules` (imported), by task name.

    Raises `ValueError` if two different functions have one name."""
    functions: Dict[str, Callable[..., Any]] = {}
    for name in modules:
        module: ModuleType = importlib.import_module(name)
        for value in list(vars(module).values()):
            task = task_name(value)
            if not isinstance(task, str) or not callable(value):
                continue
            known = functions.get(task)
            if known is not None and known is not value:
                raise ValueError(f"two functions are named {task!r}: {known!r} and {value!r}")
            functions[task] = value
    return functions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rask worker",
        description="Runs the @rask.task functions of MODULEs from RabbitMQ, storing results in "
        "Redis, until SIGINT or SIGTERM.",
    )
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="modules to import")
    parser.add_argument(
        "--pool", default=DEFAULT_POOL, help=f"the pool to serve (default: {DEFAULT_POOL})"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="Python child processes running the tasks (default: the setting concurrency, "
        "i.e. the number of CPUs)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="tasks held at once (default: the number of processes)",
    )
    parser.add_argument("--config", default=None, help="settings file (default: rask.toml)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs a worker with the command line `argv` (default: `sys.argv[1:]` after `worker`);
    returns its exit code (0 after a graceful stop, 78 for a configuration error, 1 else)."""
    from . import _rask

    args = _parser().parse_args(argv)
    for flag in ("processes", "concurrency"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"--{flag} must be at least 1", file=sys.stderr)
            return 2
    functions = collect(args.modules)
    if not functions:
        print(
            f"no @rask.task functions in {', '.join(args.modules)}: nothing to serve",
            file=sys.stderr,
        )
        return 2
    # The children import the modules from the same path as this process.
    code = (
        f"import sys; sys.path[:] = {sys.path!r}; "
        "from rask.worker import _child_main; _child_main()"
    )
    return int(
        _rask._run_worker(
            sorted(functions) + [PICKLED_TASK],
            [sys.executable, "-c", code],
            list(args.modules),
            pool=args.pool,
            concurrency=args.concurrency,
            processes=args.processes,
            config=args.config,
        )
    )


def _child_main() -> None:
    """A child process of a Python worker: `sys.argv[1:]` is the pickled-function policy, then
    the modules. Calls arrive on stdin and replies leave on stdout; the task code's own reads
    of stdin see nothing and its prints go to stderr."""
    policy, modules = sys.argv[1], sys.argv[2:]
    calls = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    functions = collect(modules)
    functions[PICKLED_TASK] = pickled_runner(policy)
    replies.write(b"R")
    replies.flush()
    _serve(functions, calls, replies)


def _serve(functions: Dict[str, Callable[..., Any]], calls: BinaryIO, replies: BinaryIO) -> None:
    """Runs calls until `calls` ends (the worker closed it, or exited)."""
    from . import _rask

    read, write, flush, call = calls.read, replies.write, replies.flush, _rask._child_call
    while True:
        header = read(4)
        if len(header) < 4:
            return
        body = read(int.from_bytes(header, "little"))
        try:
            write(call(functions, body))
            flush()
        except BrokenPipeError:
            return
