"""The asyncio API inside a running event loop (as in Jupyter): awaiting never blocks the loop,
and errors arrive typed."""

import asyncio
import uuid

import pytest

import rask


def unique() -> int:
    return uuid.uuid4().int % 1_000_000_000


def run(coro):
    return asyncio.run(coro)


def test_submit_async_and_await_the_future(client):
    async def main():
        n = unique()
        future = await client.submit_async("inc", n)
        assert await future == n + 1
        futures = await client.map_async("inc", [n, n + 1, n + 2])
        assert await client.gather_async(futures, timeout=30) == [n + 1, n + 2, n + 3]
        assert await client.gather_async(futures[0]) == n + 1

    run(main())


def test_call_async(client):
    async def main():
        n = unique()
        assert await client.call_async("inc", n) == n + 1
        values = await asyncio.gather(*(client.call_async("inc", n + i) for i in range(20)))
        assert values == [n + i + 1 for i in range(20)]
        with pytest.raises(rask.TaskFailed):
            await client.call_async("fail", "no")

    run(main())


def test_the_loop_keeps_running_while_a_task_is_awaited(client):
    async def main():
        future = await client.submit_async("paced", unique(), 500)
        ticks = 0
        waiting = asyncio.ensure_future(future.result_async(timeout=30))
        while not waiting.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await waiting
        return ticks

    # A blocked loop would not tick at all until the task's 500 ms were over.
    assert run(main()) > 5


def test_many_awaits_at_once(client):
    async def main():
        n = unique()
        futures = await client.map_async("inc", range(n, n + 100))
        return await asyncio.gather(*futures)

    values = run(main())
    assert values[0] + 99 == values[-1]


def test_errors_are_typed_when_awaited(client):
    async def main():
        failing = await client.submit_async("fail", "async boom")
        with pytest.raises(rask.TaskFailed) as caught:
            await failing
        assert caught.value.kind is rask.FailureKind.FAILED and "async boom" in caught.value.message
        slow = await client.submit_async("paced", unique(), 5_000)
        with pytest.raises(rask.TimeoutError):
            await client.gather_async([slow], timeout=0.2)
        client.cancel(slow, force=True)

    run(main())


def test_async_for_as_completed_and_compute_async(client):
    async def main():
        n = unique()
        futures = await client.map_async("inc", [n, n + 10, n + 20])
        got = set()
        async for future in rask.as_completed(futures):
            got.add(await future)
        assert got == {n + 1, n + 11, n + 21}
        graph = rask.delayed("add")(rask.delayed("inc")(n), 5)
        assert await client.compute_async(graph, timeout=30) == n + 6
        persisted = await client.persist_async(graph)
        assert await persisted == n + 6
        scattered = await client.scatter_async([n])
        assert await scattered[0] == n

    run(main())


def test_cancelling_an_await_leaves_the_loop_usable(client):
    async def main():
        slow = await client.submit_async("paced", unique(), 5_000)
        waiting = asyncio.ensure_future(slow.result_async())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        n = unique()
        assert await (await client.submit_async("inc", n)) == n + 1
        client.cancel(slow, force=True)

    run(main())
