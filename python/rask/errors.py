"""rask's exceptions: a task's failure (`TaskFailed`, its `kind` mirroring the Rust
`FailureKind`), a wait that ran out of time (`TimeoutError`), and `RaskError` for rask itself
failing (broker or store unreachable, bad settings, a refused publish)."""

from __future__ import annotations

import builtins
import enum

__all__ = ["FailureKind", "RaskError", "TaskFailed", "TimeoutError"]


class FailureKind(str, enum.Enum):
    """The class of a task's failure (Rust's `rask::FailureKind`). A `str` enum: compares equal
    to the Rust variant's name, e.g. ``FailureKind.UNKNOWN_TASK == "UnknownTask"``."""

    UNKNOWN_TASK = "UnknownTask"
    """No worker function has the task's name."""
    BAD_ARGUMENTS = "BadArguments"
    """The arguments do not decode as the function's parameters."""
    PANICKED = "Panicked"
    """The function panicked (Rust) or raised an unexpected exception."""
    FAILED = "Failed"
    """The function returned an error."""
    BAD_MESSAGE = "BadMessage"
    """The task message itself was malformed."""
    DEPENDENCY_FAILED = "DependencyFailed"
    """A task this one depends on (in a graph) failed, so this one did not run."""
    CANCELLED = "Cancelled"
    """A client cancelled the task before it had an outcome."""
    TIMED_OUT = "TimedOut"
    """The task ran longer than its time limit."""
    DELIVERY_LIMIT = "DeliveryLimit"
    """The task was delivered more times than `max_deliveries` allows without finishing."""
    RESULT_TOO_LARGE = "ResultTooLarge"
    """The task's result was larger than the worker stores."""
    UNPUBLISHABLE = "Unpublishable"
    """A graph task's message was refused by the broker for good: it never ran."""
    RESOURCE_UNAVAILABLE = "ResourceUnavailable"
    """The task needs more of a resource than any live worker has."""
    OTHER = "Other"
    """A failure kind written by a newer rask that this one does not know."""

    @classmethod
    def parse(cls, name: str) -> "FailureKind":
        """The kind named `name` (a Rust variant name), `OTHER` if unknown."""
        try:
            return cls(name)
        except ValueError:
            return cls.OTHER

    def __str__(self) -> str:
        return self.value


class RaskError(Exception):
    """rask itself failed: broker or store unreachable, settings invalid, a publish refused."""


class TaskFailed(RaskError):
    """A task ran (or was rejected by a worker) and failed.

    Attributes: `kind` (a `FailureKind`), `function` (the name called), `key` (the task's key),
    `worker` (the id of the worker that reported it), `attempts` (attempts made, the failed one
    included), `message` (what went wrong)."""

    def __init__(
        self,
        message: str,
        *,
        kind: "FailureKind | str",
        function: str,
        key: str,
        worker: str,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind if isinstance(kind, FailureKind) else FailureKind.parse(kind)
        self.function = function
        self.key = key
        self.worker = worker
        self.attempts = attempts

    def __str__(self) -> str:
        return (
            f"task {self.function} (key {self.key}) {_KIND_TEXT.get(self.kind, 'failed')} "
            f"on worker {self.worker or '?'} after {self.attempts} attempt(s): {self.message}"
        )

    def __reduce__(self):
        return (
            _rebuild_task_failed,
            (self.message, self.kind.value, self.function, self.key, self.worker, self.attempts),
        )


def _rebuild_task_failed(message, kind, function, key, worker, attempts):
    return TaskFailed(
        message, kind=kind, function=function, key=key, worker=worker, attempts=attempts
    )


class TimeoutError(RaskError, builtins.TimeoutError):
    """A wait ended before its tasks finished. Also a builtin `TimeoutError`.

    Attributes: `waited` (seconds waited), `pending` (how many tasks had no result), `key` (the
    key of one of them)."""

    def __init__(self, message: str, *, waited: float = 0.0, pending: int = 0, key: str = "") -> None:
        super().__init__(message)
        self.waited = waited
        self.pending = pending
        self.key = key

    def __reduce__(self):
        return (_rebuild_timeout, (str(self), self.waited, self.pending, self.key))


def _rebuild_timeout(message, waited, pending, key):
    return TimeoutError(message, waited=waited, pending=pending, key=key)


_KIND_TEXT = {
    FailureKind.UNKNOWN_TASK: "is unknown",
    FailureKind.BAD_ARGUMENTS: "got bad arguments",
    FailureKind.PANICKED: "panicked",
    FailureKind.FAILED: "failed",
    FailureKind.BAD_MESSAGE: "had a malformed message",
    FailureKind.DEPENDENCY_FAILED: "did not run: a dependency failed",
    FailureKind.CANCELLED: "was cancelled",
    FailureKind.TIMED_OUT: "timed out",
    FailureKind.DELIVERY_LIMIT: "hit the delivery limit",
    FailureKind.RESULT_TOO_LARGE: "returned a result over max_result_bytes",
    FailureKind.UNPUBLISHABLE: "could not be published",
    FailureKind.RESOURCE_UNAVAILABLE: "needs resources no live worker has",
    FailureKind.OTHER: "failed (unknown kind)",
}
