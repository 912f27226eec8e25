"""Python tasks: `@rask.task` marks a function that Python workers (`python -m rask worker
MODULE`) run, and pickled functions (`client.submit(lambda x: x + 1, 1)`).

A task's name is `module.qualname` (`images.resize`), or the one given (`@rask.task(name="resize")`).
The decorated function stays an ordinary function (calling it runs it here) and carries
`__rask_name__` and `__rask_pool__`, so that `client.submit(fn, x)` sends the task by name to
the Python workers' pool (`py` unless `@rask.task(pool=...)` names another: a Python worker
serves the pool of its `--pool`). Submitting by name (`client.submit("images.resize", x)`)
goes where the `routes` setting says, like any name: add `images.resize = "py"` to `[routes]`,
or pass the pool.

Pickled functions: a function without a name (a lambda, a function defined in a notebook) is
shipped by cloudpickle as a call of the reserved task `rask.pickled`, with the pickled function
as its first argument. Running it means running code that came with the message, so workers do
it only when they opt in (`allow_pickled_functions = true`) *and* signing keys are configured
(`signing_keys`): then only holders of a key can publish what workers run, since workers reject
unsigned and tampered messages. Clients refuse to pickle without signing keys, before anything is
published; workers refuse whatever they are not allowed to run, always.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple, TypeVar, overload

from .errors import RaskError

__all__ = [
    "DEFAULT_POOL",
    "PICKLED_TASK",
    "PickledFunctionRefused",
    "Retry",
    "pickled_call",
    "task",
    "task_name",
    "task_pool",
]

#: The pool Python tasks go to, and Python workers serve, by default.
DEFAULT_POOL = "py"

#: The reserved task name of pickled functions: arguments `[pickled function, [args...]]`.
PICKLED_TASK = "rask.pickled"

F = TypeVar("F", bound=Callable[..., Any])


class Retry(Exception):
    """Raise it (or an exception with a true `__rask_retryable__` attribute) from a task to
    ask for another attempt: the worker retries when the task's retry policy allows one, else
    stores the failure."""

    __rask_retryable__ = True


class PickledFunctionRefused(RaskError):
    """A pickled function was refused: the client has no signing keys, or the worker does not
    run pickled functions (`allow_pickled_functions`), or has no signing keys."""


@overload
def task(fn: F) -> F: ...


@overload
def task(*, name: Optional[str] = None, pool: Optional[str] = None) -> Callable[[F], F]: ...


def task(fn: Optional[F] = None, *, name: Optional[str] = None, pool: Optional[str] = None) -> Any:
    """Marks `fn` as a Python task named `name` (default `module.qualname`) of pool `pool`
    (default `py`). Use bare (`@rask.task`) or with arguments (`@rask.task(name="resize")`)."""

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@rask.task marks functions, not {type(f).__name__}")
        given = name if name is not None else f"{f.__module__}.{f.__qualname__}"
        if not given or "<" in given:
            raise ValueError(
                f"{given!r} cannot name a task: a Python task is a module-level function "
                "(or give it a name with @rask.task(name=...))"
            )
        f.__rask_name__ = given  # type: ignore[attr-defined]
        f.__rask_pool__ = pool if pool is not None else DEFAULT_POOL  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def task_name(fn: Any) -> Optional[str]:
    """The task name `fn` carries (`@rask.task`), or None."""
    return getattr(fn, "__rask_name__", None)


def task_pool(fn: Any) -> Optional[str]:
    """The pool `fn`'s tasks go to (`@rask.task`), or None."""
    return getattr(fn, "__rask_pool__", None)


def pickled_call(fn: Callable[..., Any], args: Tuple[Any, ...], *, signing: bool) -> Tuple[str, Tuple[Any, ...]]:
    """The task name and arguments that ship `fn(*args)` pickled: `("rask.pickled",
    (pickled fn, list(args)))`, to send to pool `py`. `signing`: whether the client signs
    its messages (has `signing_keys`).

    Raises `PickledFunctionRefused` without signing, and `TypeError` if cloudpickle is not
    installed or cannot pickle `fn`."""
    if not signing:
        raise PickledFunctionRefused(
            f"{_describe(fn)} has no task name, so it would be shipped pickled, and a pickled "
            "function is code that workers run: rask ships one only with signing keys "
            "configured (signing_keys, RASK_SIGNING_KEYS), and only to Python workers that "
            "allow it (allow_pickled_functions = true). Mark it with @rask.task and start "
            "workers with its module instead, or configure both (see docs/security.md)."
        )
    try:
        import cloudpickle
    except ImportError as e:
        raise TypeError(
            f"{_describe(fn)} has no task name and cloudpickle is not installed to ship it: "
            "pip install cloudpickle, or mark it with @rask.task"
        ) from e
    try:
        payload = cloudpickle.dumps(fn)
    except Exception as e:
        raise TypeError(f"{_describe(fn)} does not pickle: {e}") from e
    return PICKLED_TASK, (payload, list(args))


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"function {name}"


def pickled_runner(policy: str) -> Callable[[bytes, list], Any]:
    """The worker's implementation of `rask.pickled` under `policy` (`allow`, or why not:
    `refuse-disabled`, `refuse-unsigned`): unpickles (once per distinct function) and calls."""
    if policy != "allow":
        why = {
            "refuse-unsigned": "allow_pickled_functions is set, but signing_keys is empty: "
            "unsigned pickled functions would let anyone who can publish to the broker run code "
            "on this worker",
        }.get(policy, "this worker does not run pickled functions (allow_pickled_functions is false)")

        def refuse(payload: bytes, args: list) -> Any:
            raise PickledFunctionRefused(f"{why}; see docs/security.md")

        return refuse

    import cloudpickle

    @functools.lru_cache(maxsize=256)
    def load(payload: bytes) -> Callable[..., Any]:
        return cloudpickle.loads(payload)

    def run(payload: bytes, args: list) -> Any:
        return load(payload)(*args)

    return run
