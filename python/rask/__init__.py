"""rask from Python.

A client of a rask deployment (RabbitMQ + Redis): submit tasks by name, map them over inputs,
gather results, build lazy graphs with `delayed`, partitioned `Bag`s, progress bars, and an
asyncio API. Values cross as MessagePack (see `rask.encode`).
"""

from ._rask import ExtType, NDARRAY_EXT, __version__, decode, encode
from .errors import FailureKind, RaskError, TaskFailed, TimeoutError
from .task import PickledFunctionRefused, Retry, task

__all__ = [
    "ExtType",
    "FailureKind",
    "NDARRAY_EXT",
    "PickledFunctionRefused",
    "RaskError",
    "Retry",
    "TaskFailed",
    "TimeoutError",
    "__version__",
    "decode",
    "encode",
    "task",
]
