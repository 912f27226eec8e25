"""rask from Python.

A client of a rask deployment (RabbitMQ + Redis), close to Dask's API: `Client` (submit, map,
gather, scatter, run, compute, persist; `*_async` forms for asyncio), `Future`, `as_completed`,
`wait`, `delayed`, `Bag`, `progress`. Values cross as MessagePack (`rask.encode`,
`rask.decode`): None, bool, int, float, str, bytes, list/tuple, dict, numpy arrays.
"""

from ._rask import NDARRAY_EXT, ExtType, __version__, decode, encode
from .bag import Bag
from .client import Client, Future, get_client
from .delayed import Delayed, DelayedFunction, delayed
from .errors import FailureKind, RaskError, TaskFailed, TimeoutError
from .futures import ALL_COMPLETED, FIRST_COMPLETED, DoneAndNotDone, as_completed, wait
from .progress import progress
from .task import PickledFunctionRefused, Retry, task

__all__ = [
    "ALL_COMPLETED",
    "Bag",
    "Client",
    "Delayed",
    "DelayedFunction",
    "DoneAndNotDone",
    "ExtType",
    "FIRST_COMPLETED",
    "FailureKind",
    "Future",
    "NDARRAY_EXT",
    "PickledFunctionRefused",
    "RaskError",
    "Retry",
    "TaskFailed",
    "TimeoutError",
    "__version__",
    "as_completed",
    "decode",
    "delayed",
    "encode",
    "get_client",
    "progress",
    "task",
    "wait",
]
