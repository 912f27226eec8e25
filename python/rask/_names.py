"""How a function is named on the wire: a task name, or an object carrying `__rask_name__`
(what `@rask.task` sets on a Python task)."""

from __future__ import annotations

from typing import Any


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
