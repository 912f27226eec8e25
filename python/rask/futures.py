"""Waiting on many futures: `as_completed` (in the order tasks finish, also `async for`) and
`wait` (all of them, or the first)."""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Iterable, List, Optional

from . import _aio
from .client import Future

__all__ = ["DoneAndNotDone", "as_completed", "wait", "ALL_COMPLETED", "FIRST_COMPLETED"]

ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"

DoneAndNotDone = namedtuple("DoneAndNotDone", ["done", "not_done"])


class as_completed:
    """Iterates over `futures` in the order their tasks finish (a failed task's future comes
    too: its `result()` raises). With `with_results=True`, yields `(future, value)` pairs, the
    value being the exception of a failed task. Works with `for` and `async for`."""

    def __init__(self, futures: Iterable[Future], with_results: bool = False) -> None:
        self._futures: List[Future] = list(futures)
        self._with_results = with_results
        self._completions = None
        if self._futures:
            client = self._futures[0].client
            self._completions = client._c.as_completed([f.key for f in self._futures])

    def _item(self, next_: Any) -> Any:
        if next_ is None:
            raise StopIteration
        index, _ok, value = next_
        future = self._futures[index]
        return (future, value) if self._with_results else future

    def __iter__(self) -> "as_completed":
        return self

    def __next__(self) -> Any:
        if self._completions is None:
            raise StopIteration
        return self._item(self._completions.next())

    def __aiter__(self) -> "as_completed":
        return self

    async def __anext__(self) -> Any:
        if self._completions is None:
            raise StopAsyncIteration
        completions = self._completions
        next_ = await _aio.start(lambda cb: completions.next(None, cb))
        try:
            return self._item(next_)
        except StopIteration:
            raise StopAsyncIteration from None

    def __len__(self) -> int:
        return len(self._futures)


def wait(
    futures: Iterable[Future], timeout: Optional[float] = None, return_when: str = ALL_COMPLETED
) -> DoneAndNotDone:
    """Waits until every one of `futures` (or, with `return_when=FIRST_COMPLETED`, one of them)
    has an outcome, a value or a failure; returns `(done, not_done)` sets. Raises
    `rask.TimeoutError` after `timeout` seconds (as Dask's `wait`)."""
    futures = list(futures)
    if not futures:
        return DoneAndNotDone(set(), set())
    client = futures[0].client
    keys = [f.key for f in futures]
    if return_when == ALL_COMPLETED:
        client._c.wait(keys, timeout)
        return DoneAndNotDone(set(futures), set())
    if return_when != FIRST_COMPLETED:
        raise ValueError(f"return_when must be ALL_COMPLETED or FIRST_COMPLETED, not {return_when!r}")
    client._c.as_completed(keys).next(timeout)
    done_flags = client._c.done(keys)
    done = {f for f, d in zip(futures, done_flags) if d}
    return DoneAndNotDone(done, set(futures) - done)
