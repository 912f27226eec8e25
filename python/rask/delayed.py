"""`rask.delayed`: lazy calls of tasks by name that build a graph; nothing is sent until a
client computes or persists it. Arguments may be values, other delayed calls, futures, and
lists or tuples of them; keys are content addressed (the same call is one task)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from . import _rask
from ._names import task_name, task_pool

__all__ = ["Delayed", "DelayedFunction", "delayed"]


class Delayed:
    """One lazy call. `compute()` / `persist()` use the default client (`rask.get_client()`)
    unless given one."""

    __slots__ = ("_node",)

    def __init__(self, node: "_rask.Delayed") -> None:
        self._node = node

    @property
    def key(self) -> str:
        """The key its result will be stored under."""
        return self._node.key

    @property
    def function(self) -> str:
        """The task called."""
        return self._node.function

    def compute(self, client: Any = None, timeout: Optional[float] = None) -> Any:
        """Submits the graph and waits for its value."""
        return _client(client).compute(self, timeout)

    def persist(self, client: Any = None) -> Any:
        """Submits the graph and returns the future of its value at once."""
        return _client(client).persist(self)

    def __await__(self):
        return _client(None).compute_async(self).__await__()

    def to_dot(self) -> str:
        """The graph in Graphviz dot."""
        return self._node.to_dot()

    def __repr__(self) -> str:
        return f"Delayed({self.function!r}, key={self.key!r})"


class DelayedFunction:
    """A task made lazy: calling it returns a `Delayed`."""

    __slots__ = ("name", "pure", "options")

    def __init__(self, name: str, pure: bool, options: dict) -> None:
        self.name = name
        self.pure = pure
        self.options = options

    def __call__(self, *args: Any) -> Delayed:
        return Delayed(_rask.Delayed(self.name, tuple(_unwrap(a) for a in args), self.pure, **self.options))

    def __repr__(self) -> str:
        return f"rask.delayed({self.name!r})"


def delayed(fn: Any, *, pure: bool = True, **options: Any) -> DelayedFunction:
    """`fn` (a task name or a @rask.task function) as a lazy function: `delayed("inc")(1)` is a
    `Delayed`. `pure=False` gives every call a unique key (it runs even if an identical call
    did); task options (`priority`, `retries`, `time_limit`, `pool`) apply to each call."""
    pool = task_pool(fn)
    if pool is not None and options.get("pool") is None:
        options = dict(options, pool=pool)
    return DelayedFunction(task_name(fn), pure, options)


def _unwrap(arg: Any) -> Any:
    if isinstance(arg, Delayed):
        return arg._node
    if isinstance(arg, (list, tuple)) and any(isinstance(a, (Delayed, list, tuple)) for a in arg):
        return [_unwrap(a) for a in arg]
    return arg


def _unwrap_many(delayed: Any) -> Tuple[List["_rask.Delayed"], bool]:
    if isinstance(delayed, Delayed):
        return [delayed._node], True
    nodes = []
    for d in delayed:
        if not isinstance(d, Delayed):
            raise TypeError(f"expected a rask.Delayed, not {type(d).__name__}")
        nodes.append(d._node)
    return nodes, False


def _client(client: Any) -> Any:
    if client is not None:
        return client
    from .client import get_client

    return get_client()
