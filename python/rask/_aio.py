"""The asyncio bridge: an operation of the extension started with a callback resolves an
asyncio future through its loop's `call_soon_threadsafe`, so awaiting never blocks the loop
(Jupyter runs one) and takes no thread while waiting."""

from __future__ import annotations

import asyncio
from typing import Any, Callable


def _resolve(future: "asyncio.Future[Any]", ok: bool, value: Any) -> None:
    if future.done():  # cancelled by its awaiter meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def start(operation: Callable[[Callable[[bool, Any], None]], Any]) -> "asyncio.Future[Any]":
    """Runs `operation(callback)` and returns a future of the running loop that the callback
    resolves: `callback(True, value)` or `callback(False, exception)`."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def callback(ok: bool, value: Any) -> None:
        loop.call_soon_threadsafe(_resolve, future, ok, value)

    operation(callback)
    return future
