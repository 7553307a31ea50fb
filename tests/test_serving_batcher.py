"""The micro-batcher's mechanics, on a scripted router (batches, queue, deadlines, failures).

That batched answers equal answers routed alone is tested on the real router in
test_serving_live.py; here the router only records how requests were grouped.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from knowgate.errors import InputError
from knowgate.integrations.serving import MicroBatcher, ServingConfig, ServingError
from serving_helpers import ScriptedRouter


def make(router: ScriptedRouter, **settings) -> MicroBatcher:
    return MicroBatcher(router, ServingConfig(**settings))


async def hold_first_batch(router: ScriptedRouter, batcher: MicroBatcher) -> asyncio.Task:
    """Start a batch with query "first" and keep it inside route_batch until released."""
    router.release.clear()
    task = asyncio.ensure_future(batcher.route(["first"], request_ids=["id-first"]))
    assert await asyncio.to_thread(router.entered.wait, 10)
    return task


async def test_requests_arriving_while_a_batch_runs_share_the_next_batch() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=8, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    jobs = [
        batcher.submit([f"q{i}"], request_ids=[f"id-{i}"], unit_ids=[f"user-{i}"]) for i in range(5)
    ]
    assert batcher.queue_depth == 5
    router.release.set()
    answers = [await batcher.result(job) for job in jobs]
    await first
    assert [c["queries"] for c in router.calls] == [["first"], ["q0", "q1", "q2", "q3", "q4"]]
    for i, (routed,) in enumerate(answers):
        assert routed.query == f"q{i}" and routed.answer == f"answer to q{i}"
        assert routed.request_id == f"id-{i}" and routed.extra["unit"] == f"user-{i}"
    assert jobs[0].serving()["batch_size"] == 5
    await batcher.stop()


async def test_max_batch_size_caps_a_batch_and_one_turns_batching_off() -> None:
    for size, expected in ((2, [["first"], ["q0", "q1"], ["q2", "q3"], ["q4"]]), (1, None)):
        router = ScriptedRouter()
        batcher = make(router, max_batch_size=size, max_wait_ms=1)
        first = await hold_first_batch(router, batcher)
        jobs = [batcher.submit([f"q{i}"], request_ids=[f"id-{i}"]) for i in range(5)]
        router.release.set()
        for job in jobs:
            await batcher.result(job)
        await first
        if expected is None:
            expected = [["first"]] + [[f"q{i}"] for i in range(5)]
        assert [c["queries"] for c in router.calls] == expected
        await batcher.stop()


async def test_max_wait_lets_a_lone_request_gather_company() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=8, max_wait_ms=300)
    a = batcher.submit(["a"], request_ids=["id-a"])
    await asyncio.sleep(0.05)  # well inside the first request's wait
    b = batcher.submit(["b"], request_ids=["id-b"])
    await batcher.result(a)
    await batcher.result(b)
    assert [c["queries"] for c in router.calls] == [["a", "b"]]
    await batcher.stop()


async def test_each_request_keeps_its_threshold_unit_and_request_id() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=8, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    specs = [(None, "u1"), (0.2, None), (0.9, 7)]
    jobs = [
        batcher.submit([f"q{i}"], request_ids=[f"id-{i}"], thresholds=[t], unit_ids=[u])
        for i, (t, u) in enumerate(specs)
    ]
    multi = batcher.submit(["m0", "m1"], request_ids=["id-m0", "id-m1"], thresholds=[0.7, 0.7])
    router.release.set()
    await first
    answers = [(await batcher.result(job)) for job in [*jobs, multi]]
    call = router.calls[1]
    assert call["queries"] == ["q0", "q1", "q2", "m0", "m1"]
    assert call["thresholds"] == [None, 0.2, 0.9, 0.7, 0.7]
    assert call["unit_ids"] == ["u1", None, 7, None, None]
    assert call["request_ids"] == ["id-0", "id-1", "id-2", "id-m0", "id-m1"]
    for (t, _), (routed,) in zip(specs, answers[:3], strict=True):
        assert routed.decision.threshold == t
    assert [r.query for r in answers[3]] == ["m0", "m1"]
    assert [r.request_id for r in answers[3]] == ["id-m0", "id-m1"]
    await batcher.stop()


async def test_a_full_queue_refuses_with_429_and_retry_after_and_loses_nothing() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=1, max_queue=2, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    accepted = [batcher.submit([f"q{i}"], request_ids=[f"id-{i}"]) for i in range(2)]
    with pytest.raises(ServingError) as refused:
        batcher.submit(["one too many"], request_ids=["id-x"])
    assert refused.value.status == 429 and refused.value.code == "queue_full"
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert "2 requests waiting" in refused.value.message
    router.release.set()
    await first
    assert [(await batcher.result(j))[0].query for j in accepted] == ["q0", "q1"]
    assert "one too many" not in router.queries_routed()
    await batcher.stop()


async def test_a_request_past_its_deadline_in_the_queue_gets_504_and_is_never_routed() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    late = batcher.submit(["late"], request_ids=["id-late"], timeout_s=0.05)
    on_time = batcher.submit(["on time"], request_ids=["id-ok"])
    with pytest.raises(ServingError) as timed_out:
        await batcher.result(late)
    assert timed_out.value.status == 504 and "in the queue" in timed_out.value.message
    assert batcher.queue_depth == 1
    router.release.set()
    await first
    assert (await batcher.result(on_time))[0].query == "on time"
    assert "late" not in router.queries_routed()
    await batcher.stop()


async def test_a_request_asks_for_less_time_never_for_more() -> None:
    batcher = make(ScriptedRouter(), request_timeout_s=5)
    loop = asyncio.get_running_loop()
    short = batcher.submit(["a"], request_ids=["a"], timeout_s=1)
    long = batcher.submit(["b"], request_ids=["b"], timeout_s=3600)
    assert short.deadline - loop.time() == pytest.approx(1, abs=0.5)
    assert long.deadline - loop.time() == pytest.approx(5, abs=0.5)
    await batcher.stop()


async def test_a_client_leaving_while_queued_is_dropped_and_inside_a_batch_changes_nothing() -> (
    None
):
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=8, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    queued = asyncio.ensure_future(batcher.route(["gone"], request_ids=["id-gone"]))
    await asyncio.sleep(0.01)
    queued.cancel()  # what the server does when the client disconnects
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 0
    # The first batch's client leaves while its batch runs: the batch goes on.
    first.cancel()
    stays = batcher.submit(["stays"], request_ids=["id-stays"])
    router.release.set()
    assert (await batcher.result(stays))[0].answer == "answer to stays"
    assert router.queries_routed() == ["first", "stays"]
    await batcher.stop()


async def test_a_bad_request_fails_alone_and_its_batch_mates_are_answered() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=8, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    jobs = [batcher.submit([q], request_ids=[f"id-{q}"]) for q in ("q1", "bad", "q2")]
    router.release.set()
    await first
    assert (await batcher.result(jobs[0]))[0].answer == "answer to q1"
    with pytest.raises(InputError, match="'bad' is refused"):
        await batcher.result(jobs[1])
    assert (await batcher.result(jobs[2]))[0].answer == "answer to q2"
    # the batch failed as a whole, then each request was routed alone
    assert [c["queries"] for c in router.calls[1:]] == [
        ["q1", "bad", "q2"],
        ["q1"],
        ["bad"],
        ["q2"],
    ]
    await batcher.stop()


async def test_stop_answers_everything_queued_then_refuses_with_503() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=2, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    jobs = [batcher.submit([f"q{i}"], request_ids=[f"id-{i}"]) for i in range(5)]
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.01)
    assert not batcher.ready
    with pytest.raises(ServingError) as refused:
        batcher.submit(["after"], request_ids=["id-after"])
    assert refused.value.status == 503 and refused.value.code == "shutting_down"
    router.release.set()
    await stopping
    await first
    assert [(await batcher.result(j))[0].query for j in jobs] == [f"q{i}" for i in range(5)]
    assert router.queries_routed() == ["first"] + [f"q{i}" for i in range(5)]


async def test_streamed_text_reaches_the_sink_of_its_own_request() -> None:
    router = ScriptedRouter()
    batcher = make(router, max_batch_size=8, max_wait_ms=1)
    first = await hold_first_batch(router, batcher)
    got: dict[str, list[str]] = {"a": [], "c": []}
    jobs = [
        batcher.submit(["a"], request_ids=["id-a"], streams=[got["a"].append]),
        batcher.submit(["b"], request_ids=["id-b"]),
        batcher.submit(["c"], request_ids=["id-c"], streams=[got["c"].append]),
    ]
    router.release.set()
    await first
    for job in jobs:
        await batcher.result(job)
    assert router.calls[1]["streams"] == [True, False, True]
    assert "".join(got["a"]) == "answer to a" and "".join(got["c"]) == "answer to c"
    await batcher.stop()
