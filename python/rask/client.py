"""`rask.Client` and `rask.Future`: submitting tasks by name, mapping them, gathering results,
graphs (`compute`, `persist`), `scatter`, `run`, with a blocking API (the GIL is released while
it waits) and an asyncio one (`*_async` methods, awaitable futures)."""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _aio, _rask
from ._names import resolve_call, task_name
from .errors import RaskError

__all__ = ["Client", "Future", "get_client"]

_default_lock = threading.Lock()
_default: Optional["Client"] = None


def get_client() -> "Client":
    """The default client: the last `Client` created (with `set_as_default=True`), else a new
    one with the settings of `rask.toml` and `RASK_*` variables."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client(set_as_default=False)
        return _default


class Future(_rask.FutureBase):
    """The result of a submitted task, by key. Wait with `result()`, or `await` it."""

    def __init__(self, key: str, client: "Client") -> None:
        self._client = client

    @property
    def client(self) -> "Client":
        """The client this future reads through."""
        return self._client

    def result(self, timeout: Optional[float] = None) -> Any:
        """The task's value, waiting at most `timeout` seconds (None: no limit).

        Raises `rask.TaskFailed` if the task failed, `rask.TimeoutError` on timeout."""
        return self._client._c.gather([self.key], timeout)[0]

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The task's failure (`rask.TaskFailed`), or None if it succeeded."""
        value = self._client._c.gather([self.key], timeout, "return")[0]
        return value if isinstance(value, BaseException) else None

    def done(self) -> bool:
        """Whether the task has an outcome (a value or a failure)."""
        return self._client._c.done([self.key])[0]

    def release(self) -> None:
        """Deletes the stored result."""
        self._client._c.release([self.key])

    def cancel(self, force: bool = False) -> bool:
        """Cancels the task if it has no outcome yet; returns whether it had none."""
        return self._client._c.cancel([self.key], force) > 0

    async def result_async(self, timeout: Optional[float] = None) -> Any:
        """`result()` for asyncio: waits without blocking the event loop."""
        values = await _aio.start(lambda cb: self._client._c.gather([self.key], timeout, "raise", cb))
        return values[0]

    def __await__(self):
        return self.result_async().__await__()

    def __repr__(self) -> str:
        return f"<rask.Future {self.key}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self):
        return (_future_from_key, (self.key,))


def _future_from_key(key: str) -> Future:
    return get_client().future(key)


def _keys(futures: Iterable[Future]) -> List[str]:
    keys = []
    for f in futures:
        if not isinstance(f, _rask.FutureBase):
            raise TypeError(f"expected a rask.Future, not {type(f).__name__}")
        keys.append(f.key)
    return keys


class Client:
    """A connection to a rask deployment (RabbitMQ + Redis).

    Settings come from `rask.toml` (or the file `config`) and `RASK_*` variables, as for the
    Rust client; `amqp_url` and `redis_url` override theirs. The newest client is the default
    one (`rask.get_client()`, `Delayed.compute()`), unless `set_as_default=False`.

    Task options, as keywords of `submit`, `map` and `delayed`: `priority` (0-255),
    `countdown` (seconds), `retries`, `time_limit` (seconds), `pool` (a pool name)."""

    def __init__(
        self,
        amqp_url: Optional[str] = None,
        redis_url: Optional[str] = None,
        *,
        config: Optional[str] = None,
        set_as_default: bool = True,
    ) -> None:
        self._c = _rask.Client(amqp_url, redis_url, config)
        if set_as_default:
            global _default
            with _default_lock:
                _default = self

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, fn: Any, *args: Any, **options: Any) -> Future:
        """Submits `fn(*args)` (`fn`: a task name, or a @rask.task function) and returns its
        future once the broker confirmed it. Arguments that are futures (or delayed calls, or
        lists of them) are replaced by their values on the worker: the task starts once they
        are stored (it is submitted as a graph task)."""
        if _has_lazy(args):
            from .delayed import delayed

            return self.persist(delayed(fn, pure=False, **options)(*args))
        name, args, options = resolve_call(fn, args, options, self._c.signs)
        (key,) = self._c.map(name, [args], **options)
        return Future(key, self)

    def map(self, fn: Any, *iterables: Iterable[Any], **options: Any) -> List[Future]:
        """Submits `fn(*items)` for the items of `iterables` taken in step (as the builtin
        `map`), pipelined, and returns the futures in input order."""
        if not iterables:
            raise TypeError("map needs at least one iterable of arguments")
        args: Iterable[Tuple[Any, ...]] = (
            zip(*iterables) if len(iterables) > 1 else ((a,) for a in iterables[0])
        )
        if not isinstance(fn, str) and not isinstance(getattr(fn, "__rask_name__", None), str):
            calls = [resolve_call(fn, a, options, self._c.signs) for a in args]
            if not calls:
                return []
            name, _, options = calls[0]
            args = [a for _, a, _ in calls]
        else:
            name, _, options = resolve_call(fn, (), options, self._c.signs)
        return [Future(k, self) for k in self._c.map(name, args, **options)]

    def call(self, fn: Any, *args: Any, timeout: Optional[float] = None, **options: Any) -> Any:
        """Runs `fn(*args)` on the cluster and returns its value: `submit(...).result()` in one
        round trip, the wait overlapping the broker's confirm and the worker sending the value
        back as it stores it. Raises `rask.TaskFailed` if the task failed,
        `rask.TimeoutError` (naming the task's key) after `timeout` seconds. Arguments are
        values (no futures or delayed calls: `submit` those)."""
        name, args, options = self._resolve_call(fn, args, options)
        return self._c.call(name, args, timeout, **options)

    async def call_async(
        self, fn: Any, *args: Any, timeout: Optional[float] = None, **options: Any
    ) -> Any:
        """`call` for asyncio."""
        name, args, options = self._resolve_call(fn, args, options)
        return await _aio.start(lambda cb: self._c.call(name, args, timeout, cb, **options))

    def _resolve_call(self, fn: Any, args: Tuple[Any, ...], options: Dict[str, Any]) -> Any:
        """The name, arguments and options of a `call`, whose arguments must be values."""
        if _has_lazy(args):
            raise TypeError("call takes values; submit a call whose arguments are futures")
        return resolve_call(fn, args, options, self._c.signs)

    async def submit_async(self, fn: Any, *args: Any, **options: Any) -> Future:
        """`submit` for asyncio."""
        name, args, options = resolve_call(fn, args, options, self._c.signs)
        keys = await _aio.start(lambda cb: self._c.map(name, [args], cb, **options))
        return Future(keys[0], self)

    async def map_async(self, fn: Any, *iterables: Iterable[Any], **options: Any) -> List[Future]:
        """`map` for asyncio."""
        if not iterables:
            raise TypeError("map needs at least one iterable of arguments")
        args = list(zip(*iterables)) if len(iterables) > 1 else [(a,) for a in iterables[0]]
        calls = [resolve_call(fn, a, options, self._c.signs) for a in args]
        if not calls:
            return []
        name, _, options = calls[0]
        args = [a for _, a, _ in calls]
        keys = await _aio.start(lambda cb: self._c.map(name, args, cb, **options))
        return [Future(k, self) for k in keys]

    # -- results ------------------------------------------------------------------------------

    def gather(
        self,
        futures: Union[Future, Iterable[Future]],
        timeout: Optional[float] = None,
        errors: str = "raise",
    ) -> Any:
        """The values of `futures` in order (a single future: its value). `errors="raise"`
        raises the first failure (`rask.TaskFailed`); `errors="return"` puts each failure's
        exception in its place. `rask.TimeoutError` after `timeout` seconds."""
        if isinstance(futures, _rask.FutureBase):
            return self._c.gather([futures.key], timeout, errors)[0]
        return self._c.gather(_keys(futures), timeout, errors)

    async def gather_async(
        self,
        futures: Union[Future, Iterable[Future]],
        timeout: Optional[float] = None,
        errors: str = "raise",
    ) -> Any:
        """`gather` for asyncio."""
        if isinstance(futures, _rask.FutureBase):
            key = futures.key
            values = await _aio.start(lambda cb: self._c.gather([key], timeout, errors, cb))
            return values[0]
        keys = _keys(futures)
        return await _aio.start(lambda cb: self._c.gather(keys, timeout, errors, cb))

    def future(self, key: str) -> Future:
        """A future for the task with `key`, submitted by this or any other process."""
        return Future(key, self)

    def release(self, futures: Union[Future, Iterable[Future]]) -> int:
        """Deletes the stored results of `futures`; returns how many existed."""
        if isinstance(futures, _rask.FutureBase):
            futures = [futures]
        return self._c.release(_keys(futures))

    def cancel(self, futures: Union[Future, Iterable[Future]], force: bool = False) -> int:
        """Cancels the tasks of `futures` that have no outcome yet (they fail with kind
        `CANCELLED`); `force=True` also stops running ones and skips queued ones. Returns how
        many had no outcome."""
        if isinstance(futures, _rask.FutureBase):
            futures = [futures]
        return self._c.cancel(_keys(futures), force)

    # -- data and graphs ----------------------------------------------------------------------

    def scatter(self, data: Any) -> Any:
        """Stores local data as results: a list gives a list of futures, a dict a dict of them,
        anything else one future. Pass them to tasks or delayed calls instead of the data."""
        if isinstance(data, dict):
            keys = self._c.scatter(list(data.values()))
            return {k: Future(key, self) for k, key in zip(data, keys)}
        if isinstance(data, (list, tuple)):
            return [Future(k, self) for k in self._c.scatter(data)]
        return Future(self._c.scatter([data])[0], self)

    async def scatter_async(self, data: Sequence[Any]) -> List[Future]:
        """`scatter` of a list, for asyncio."""
        values = list(data)
        keys = await _aio.start(lambda cb: self._c.scatter(values, cb))
        return [Future(k, self) for k in keys]

    def persist(self, delayed: Any) -> Any:
        """Submits delayed calls (one, or a list) and their graphs; returns future(s) at once.
        Unlike Dask's, rask's `persist` returns futures and `compute` values."""
        from .delayed import _unwrap_many

        nodes, single = _unwrap_many(delayed)
        futures = [Future(k, self) for k in self._c.persist(nodes)]
        return futures[0] if single else futures

    def compute(self, delayed: Any, timeout: Optional[float] = None) -> Any:
        """Submits delayed calls (one, or a list) and waits for their value(s)."""
        from .delayed import _unwrap_many

        nodes, single = _unwrap_many(delayed)
        values = self._c.compute(nodes, timeout)
        return values[0] if single else values

    async def persist_async(self, delayed: Any) -> Any:
        """`persist` for asyncio."""
        from .delayed import _unwrap_many

        nodes, single = _unwrap_many(delayed)
        keys = await _aio.start(lambda cb: self._c.persist(nodes, cb))
        futures = [Future(k, self) for k in keys]
        return futures[0] if single else futures

    async def compute_async(self, delayed: Any, timeout: Optional[float] = None) -> Any:
        """`compute` for asyncio."""
        from .delayed import _unwrap_many

        nodes, single = _unwrap_many(delayed)
        values = await _aio.start(lambda cb: self._c.compute(nodes, timeout, cb))
        return values[0] if single else values

    # -- workers ------------------------------------------------------------------------------

    def run(self, fn: Any, *args: Any, timeout: float = 5.0) -> Dict[str, Any]:
        """Runs `fn(*args)` once on every live worker (a broadcast) and returns the answers by
        worker id. Raises `rask.RaskError` naming the workers on which it failed."""
        answers, failed, _missing = self._c.run(task_name(fn), args, timeout)
        if failed:
            detail = "; ".join(f"{w}: {m}" for w, m in sorted(failed.items()))
            raise RaskError(f"{task_name(fn)} failed on {len(failed)} worker(s): {detail}")
        return answers

    def close(self) -> None:
        """Closes the connections; later calls fail."""
        global _default
        with _default_lock:
            if _default is self:
                _default = None
        self._c.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<rask.Client>"


def _has_lazy(args: Any) -> bool:
    from .delayed import Delayed

    for a in args:
        if isinstance(a, (_rask.FutureBase, Delayed)):
            return True
        if isinstance(a, (list, tuple)) and _has_lazy(a):
            return True
    return False


def _iter_futures(futures: Union[Future, Iterable[Future]]) -> Iterator[Future]:
    if isinstance(futures, _rask.FutureBase):
        yield futures
    else:
        yield from futures
