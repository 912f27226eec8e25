"""The client API against real servers and the Rust test worker (conftest.py)."""

import os
import uuid

import pytest

import rask


def unique() -> int:
    """A number of its own for each call, so that every task's value is unique to it."""
    return uuid.uuid4().int % 1_000_000_000


def test_submit_and_result(client):
    n = unique()
    future = client.submit("inc", n)
    assert isinstance(future, rask.Future) and future.key.startswith("inc")
    assert future.result(timeout=30) == n + 1
    assert future.done()


def test_map_and_gather_in_input_order(client):
    base = unique()
    futures = client.map("inc", range(base, base + 200))
    assert client.gather(futures, timeout=30) == [i + 1 for i in range(base, base + 200)]
    pairs = client.map("add", [base, base + 1], [10, 20])
    assert client.gather(pairs, timeout=30) == [base + 10, base + 21]


def test_values_round_trip_through_a_rust_task(client):
    value = {"n": unique(), "list": [None, True, 1.5, "x", b"\x00"], "nested": {"k": [1, [2]]}}
    assert client.submit("echo", value).result(30) == value


def test_numpy_round_trip_through_a_rust_task(client):
    np = pytest.importorskip("numpy")
    array = np.arange(2 * (unique() % 100 + 3), dtype="<f8").reshape(2, -1)
    back = client.submit("echo", array).result(30)
    assert back.dtype == array.dtype and (back == array).all()


def test_large_values_go_through_the_blob_store_and_release_deletes_the_results(blob_store):
    client = rask.Client(set_as_default=False)
    try:
        values = [os.urandom(3 << 20) for _ in range(2)]
        futures = client.map("echo", values)
        assert client.gather(futures, timeout=60) == values
        assert client.call("echo", values[0], timeout=60) == values[0]
        # Each value is an argument object and a result object of its own (content-addressed:
        # `call`'s argument and result are the first `map` call's).
        names = sorted(p.name for p in blob_store.iterdir())
        assert len(names) == 4 and all(len(n) == 64 for n in names), names
        assert client.release(futures) == 2
        assert len(list(blob_store.iterdir())) == 2
    finally:
        client.close()


def test_a_value_that_does_not_cross_is_a_type_error_before_anything_is_sent(client):
    with pytest.raises(TypeError, match="object"):
        client.submit("echo", object())


def test_a_failing_task_raises_task_failed_with_its_fields(client):
    message = f"boom-{unique()}"
    future = client.submit("fail", message)
    with pytest.raises(rask.TaskFailed) as caught:
        future.result(30)
    e = caught.value
    assert e.kind is rask.FailureKind.FAILED and e.kind == "Failed"
    assert e.function == "fail" and e.key == future.key
    assert message in e.message and e.worker and e.attempts == 1
    assert isinstance(future.exception(30), rask.TaskFailed)


def test_an_unknown_task_and_bad_arguments_are_typed(client):
    with pytest.raises(rask.TaskFailed) as unknown:
        client.submit(f"no_such_task_{unique()}", 1).result(30)
    assert unknown.value.kind is rask.FailureKind.UNKNOWN_TASK
    with pytest.raises(rask.TaskFailed) as bad:
        client.submit("inc", "not a number").result(30)
    assert bad.value.kind is rask.FailureKind.BAD_ARGUMENTS and bad.value.function == "inc"


def test_gather_errors_raise_or_return(client):
    n = unique()
    futures = [client.submit("inc", n), client.submit("fail", "no")]
    with pytest.raises(rask.TaskFailed):
        client.gather(futures, timeout=30)
    values = client.gather(futures, timeout=30, errors="return")
    assert values[0] == n + 1 and isinstance(values[1], rask.TaskFailed)


def test_a_timeout_is_rask_timeout_error_and_a_builtin_one(client):
    future = client.submit("paced", unique(), 5_000)
    with pytest.raises(rask.TimeoutError) as caught:
        future.result(timeout=0.2)
    assert isinstance(caught.value, TimeoutError) and caught.value.key == future.key
    assert caught.value.pending == 1


def test_call_returns_the_value_and_raises_failures_and_timeouts_typed(client):
    n = unique()
    assert client.call("inc", n) == n + 1
    assert client.call("add", n, 5, priority=3) == n + 5
    with pytest.raises(rask.TaskFailed) as failed:
        client.call("fail", f"boom-{n}")
    assert failed.value.function == "fail" and f"boom-{n}" in failed.value.message
    with pytest.raises(rask.TimeoutError) as late:
        client.call("paced", n, 5_000, timeout=0.2)
    assert late.value.key.startswith("paced") and late.value.pending == 1
    with pytest.raises(TypeError, match="submit"):
        client.call("inc", client.submit("inc", n))


def test_call_with_hostile_names_and_timeouts_ends_typed(client):
    with pytest.raises(rask.TaskFailed) as unknown:
        client.call("", 1, timeout=30)
    assert unknown.value.kind is rask.FailureKind.UNKNOWN_TASK
    with pytest.raises(rask.TaskFailed) as bad:
        client.call("inc", "not a number", timeout=30)
    assert bad.value.kind is rask.FailureKind.BAD_ARGUMENTS
    for timeout in (-1.0, float("nan"), float("inf"), 1e300):
        with pytest.raises(ValueError, match="timeout"):
            client.call("inc", 1, timeout=timeout)
    # Longer than any clock can count to from now, yet a duration: no overflow, the value.
    assert client.call("inc", 1, timeout=1e15) == 2
    with pytest.raises(rask.TimeoutError):
        client.call("paced", 1, 5_000, timeout=0)
    with pytest.raises(TypeError, match="colour"):
        client.call("inc", 1, colour="red")


def test_future_by_key_from_another_client(client):
    n = unique()
    key = client.submit("inc", n).key
    with rask.Client(set_as_default=False) as other:
        assert other.future(key).result(30) == n + 1


def test_as_completed_yields_each_future_once(client):
    base = unique()
    futures = client.map("inc", range(base, base + 20)) + [client.submit("fail", "x")]
    seen = {}
    for future, value in rask.as_completed(futures, with_results=True):
        seen[future.key] = value
    assert len(seen) == len(futures)
    assert sorted(v for v in seen.values() if isinstance(v, int)) == [i + 1 for i in range(base, base + 20)]
    assert sum(isinstance(v, rask.TaskFailed) for v in seen.values()) == 1


def test_wait_all_and_first(client):
    futures = client.map("inc", [unique() for _ in range(10)])
    done, not_done = rask.wait(futures, timeout=30)
    assert done == set(futures) and not not_done
    slow = client.submit("paced", unique(), 5_000)
    quick = client.submit("inc", unique())
    done, not_done = rask.wait([slow, quick], timeout=30, return_when=rask.FIRST_COMPLETED)
    assert quick in done and slow in not_done
    with pytest.raises(rask.TimeoutError):
        rask.wait([slow], timeout=0.2)
    client.cancel(slow, force=True)


def test_release_deletes_the_result(client):
    future = client.submit("inc", unique())
    future.result(30)
    assert client.release(future) == 1
    assert not future.done()
    assert client.release([future]) == 0


def test_cancel_a_task_that_has_not_finished(client):
    slow = client.submit("paced", unique(), 10_000)
    assert client.cancel([slow]) == 1
    with pytest.raises(rask.TaskFailed) as caught:
        slow.result(30)
    assert caught.value.kind is rask.FailureKind.CANCELLED


def test_scatter_and_pass_futures_to_delayed_calls(client):
    n = unique()
    data = client.scatter([n, n + 1])
    assert client.gather(data, timeout=30) == [n, n + 1]
    total = rask.delayed("add")(data[0], data[1])
    assert client.compute(total, timeout=30) == 2 * n + 1
    one = client.scatter({"a": [1, 2, 3]})
    assert one["a"].result(30) == [1, 2, 3]


def test_submit_with_futures_as_arguments_waits_for_them(client):
    n = unique()
    first = client.submit("inc", n)
    second = client.submit("add", first, 100)
    assert second.result(30) == n + 101


def test_delayed_compute_and_persist(client):
    n = unique()
    inc, add = rask.delayed("inc"), rask.delayed("add")
    leaves = [inc(n + i) for i in range(10)]
    total = rask.delayed("sum_ints")(leaves)
    assert total.key == rask.delayed("sum_ints")([inc(n + i) for i in range(10)]).key
    assert client.compute(total, timeout=30) == sum(n + i + 1 for i in range(10))
    future = client.persist(add(total, 1))
    assert isinstance(future, rask.Future)
    assert future.result(30) == sum(n + i + 1 for i in range(10)) + 1
    assert client.compute([inc(n), add(n, 2)], timeout=30) == [n + 1, n + 2]


def test_delayed_compute_with_the_default_client(client):
    n = unique()
    assert rask.get_client() is client
    assert rask.delayed("inc")(n).compute(timeout=30) == n + 1


def test_a_failed_dependency_fails_the_graph_naming_it(client):
    broken = rask.delayed("fail")(f"root-{unique()}")
    with pytest.raises(rask.TaskFailed) as caught:
        rask.delayed("echo")(broken).compute(timeout=30)
    assert caught.value.kind is rask.FailureKind.DEPENDENCY_FAILED


def test_bag_operations(client):
    base = unique()
    numbers = rask.Bag.from_sequence(range(base, base + 100), npartitions=7)
    assert numbers.npartitions == 7
    bigger = numbers.map("inc")
    expected = [i + 1 for i in range(base, base + 100)]
    assert bigger.compute(timeout=30) == expected
    assert bigger.count().compute(timeout=30) == 100
    assert bigger.sum().compute(timeout=30) == sum(expected)
    assert bigger.mean().compute(timeout=30) == pytest.approx(sum(expected) / 100)
    assert bigger.min().compute(timeout=30) == expected[0]
    assert bigger.max().compute(timeout=30) == expected[-1]
    assert bigger.top_k(3).compute(timeout=30) == expected[-1:-4:-1]
    words = rask.Bag.from_sequence(["a", "b", "a", f"w{base}", "a"], npartitions=2)
    assert sorted(words.distinct().compute(timeout=30)) == sorted({"a", "b", f"w{base}"})
    assert sorted(map(tuple, words.frequencies().compute(timeout=30))) == sorted(
        [("a", 3), ("b", 1), (f"w{base}", 1)])
    flags = rask.Bag.from_sequence([True, False, True], npartitions=2)
    assert flags.filter("echo").count().compute(timeout=30) == 2
    lists = rask.Bag.from_sequence([[base, 1], [], [2]], npartitions=2)
    assert lists.flat_map("echo").compute(timeout=30) == [base, 1, 2]
    kept = bigger.persist()
    assert kept.sum().compute(timeout=30) == sum(expected)


def test_run_on_every_worker(client):
    answers = client.run("ping", timeout=10)
    assert answers and set(answers.values()) == {"pong"}


def test_submit_by_a_task_object_uses_its_registered_name_and_pool(client):
    class Task:
        __rask_name__ = "inc"

    n = unique()
    assert client.submit(Task(), n).result(30) == n + 1
    assert client.map(Task(), [n, n + 1])[1].result(30) == n + 2
    assert rask.delayed(Task())(n).compute(timeout=30) == n + 1

    class Elsewhere:
        __rask_name__ = "inc"
        __rask_pool__ = f"nobody-{unique()}"

    # Routed to its pool, which no worker serves: it stays queued there.
    queued = client.submit(Elsewhere(), n)
    with pytest.raises(rask.TimeoutError):
        queued.result(timeout=0.5)
    client.cancel(queued)
    with pytest.raises(TypeError, match="registered name"):
        client.submit(42, 1)


def test_unknown_options_are_refused(client):
    with pytest.raises(TypeError, match="colour"):
        client.submit("inc", 1, colour="red")


def test_options_are_applied(client):
    n = unique()
    assert client.submit("inc", n, priority=5, retries=2, time_limit=10).result(30) == n + 1


def test_progress_counts_outcomes(client, capsys):
    futures = client.map("inc", [unique() for _ in range(30)]) + [client.submit("fail", "p")]
    assert rask.progress(futures, notebook=False) == (31, 1)


def test_progress_text_fallback(client, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)
    futures = client.map("inc", [unique() for _ in range(5)])
    assert rask.progress(futures, description="batch", notebook=False) == (5, 0)
    assert "batch: 5 / 5" in capsys.readouterr().err
