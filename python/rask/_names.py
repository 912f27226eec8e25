"""How a function is named on the wire: a task name (`str`), an object carrying
`__rask_name__` (and `__rask_pool__`: what `@rask.task` sets on a Python task), or a function
without a name, shipped pickled (`rask.task.pickled_call`, with signing keys only)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple


def task_name(fn: Any) -> str:
    """The registered name of `fn`: itself if a `str`, else its `__rask_name__`."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, "__rask_name__", None)
    if isinstance(name, str):
        return name
    raise TypeError(
        f"rask calls tasks by name: pass the registered name (a str) or a @rask.task function, "
        f"not {type(fn).__name__}"
    )


def task_pool(fn: Any) -> Optional[str]:
    """The pool `fn`'s tasks go to by default (`@rask.task`'s `__rask_pool__`), or None."""
    pool = getattr(fn, "__rask_pool__", None)
    return pool if isinstance(pool, str) else None


def resolve_call(
    fn: Any, args: Tuple[Any, ...], options: Dict[str, Any], signs: bool
) -> Tuple[str, Tuple[Any, ...], Dict[str, Any]]:
    """The task name, arguments and options that call `fn(*args)`: by name, with the pool a
    @rask.task function names unless `options` names one; a callable without a name is
    shipped pickled to the Python workers (refused without signing keys)."""
    if isinstance(fn, str) or isinstance(getattr(fn, "__rask_name__", None), str):
        pool = task_pool(fn)
        if pool is not None and options.get("pool") is None:
            options = dict(options, pool=pool)
        return task_name(fn), args, options
    if callable(fn):
        try:
            from .task import DEFAULT_POOL, pickled_call
        except ImportError:
            task_name(fn)  # raises the TypeError
            raise
        name, args = pickled_call(fn, args, signing=signs)
        if options.get("pool") is None:
            options = dict(options, pool=DEFAULT_POOL)
        return name, args, options
    task_name(fn)  # raises the TypeError
    raise AssertionError("unreachable")
