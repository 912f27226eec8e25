"""`rask.Bag`: a lazy partitioned collection (after Dask's bags). Element-wise operations
(`map`, `filter`, `flat_map`) run a task by name on every element, one task per partition;
reductions (`sum`, `count`, `mean`, `min`, `max`, `frequencies`, `top_k`, `distinct`) are
native tasks of every rask worker, combined in a tree, and return a `Delayed`."""

from __future__ import annotations

from typing import Any, Iterable, List, Optional

from . import _rask
from ._names import task_name
from .delayed import Delayed, _client

__all__ = ["Bag"]


class Bag:
    """A lazy collection in partitions. Build one with `Bag.from_sequence`."""

    __slots__ = ("_bag",)

    def __init__(self, bag: "_rask.Bag") -> None:
        self._bag = bag

    @classmethod
    def from_sequence(cls, items: Iterable[Any], npartitions: int = 1) -> "Bag":
        """`items` in `npartitions` partitions of nearly equal length. Nothing is sent yet."""
        return cls(_rask.Bag.from_sequence(list(items), npartitions))

    @classmethod
    def from_keys(cls, keys: Iterable[str]) -> "Bag":
        """The bag whose partitions are stored under `keys` (see `persist`)."""
        return cls(_rask.Bag.from_keys(list(keys)))

    @property
    def npartitions(self) -> int:
        """How many partitions (tasks per element-wise operation)."""
        return self._bag.npartitions

    def map(self, fn: Any) -> "Bag":
        """`fn(element)` for each element (`fn`: a task name or a @rask.task function)."""
        return Bag(self._bag.map(task_name(fn)))

    def filter(self, fn: Any) -> "Bag":
        """The elements for which `fn(element)` returns True."""
        return Bag(self._bag.filter(task_name(fn)))

    def flat_map(self, fn: Any) -> "Bag":
        """The concatenated lists `fn(element)` returns."""
        return Bag(self._bag.flat_map(task_name(fn)))

    def repartition(self, npartitions: int) -> "Bag":
        """The same elements in `npartitions` partitions."""
        return Bag(self._bag.repartition(npartitions))

    def sum(self) -> Delayed:
        """The sum of the elements (numbers): an int if all are ints, else a float."""
        return Delayed(self._bag.sum())

    def count(self) -> Delayed:
        """How many elements."""
        return Delayed(self._bag.count())

    def mean(self) -> Delayed:
        """The mean of the elements (numbers); None for an empty bag."""
        return Delayed(self._bag.mean())

    def min(self) -> Delayed:
        """The smallest element; None for an empty bag."""
        return Delayed(self._bag.min())

    def max(self) -> Delayed:
        """The largest element; None for an empty bag."""
        return Delayed(self._bag.max())

    def top_k(self, k: int) -> Delayed:
        """The `k` largest elements, largest first."""
        return Delayed(self._bag.top_k(k))

    def distinct(self) -> Delayed:
        """The distinct elements."""
        return Delayed(self._bag.distinct())

    def frequencies(self) -> Delayed:
        """`[element, count]` pairs, one per distinct element."""
        return Delayed(self._bag.frequencies())

    def to_delayed(self) -> Delayed:
        """All elements as one list, lazily."""
        return Delayed(self._bag.to_delayed())

    def compute(self, client: Any = None, timeout: Optional[float] = None) -> List[Any]:
        """All elements, in order."""
        return self.to_delayed().compute(client, timeout)

    def persist(self, client: Any = None) -> "Bag":
        """Submits the partitions; the returned bag reads them from the cluster."""
        return Bag(self._bag.persist(_client(client)._c))

    @property
    def keys(self) -> List[str]:
        """The keys of the partitions' results."""
        return self._bag.keys

    def __repr__(self) -> str:
        return f"rask.Bag<npartitions={self.npartitions}>"
