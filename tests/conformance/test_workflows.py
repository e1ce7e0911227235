"""Workflows (issue 19) on every broker: diamond, chain, group, chord, WAIT by time and by signal,
failure and skip, cancel, inputs from outputs (pydantic too) and validation errors at a step."""

from __future__ import annotations

import asyncio
from collections import Counter

import pydantic
import pytest

from repid import Connection, Queue, Router
from repid.errors import ConfigurationError
from repid.workflows import Task, Workflow, WorkflowStatus, chain, chord, group, workflow_router

from .support import make_worker, router_for, running


class Size(pydantic.BaseModel):
    width: int
    height: int


def _router(queue: Queue, runs: Counter[str]) -> Router:
    router = router_for(queue)

    @router.actor
    async def fetch(url: str) -> Size:
        runs["fetch"] += 1
        return Size(width=len(url), height=2)

    @router.actor
    async def resize(width: int, height: int) -> dict[str, int]:
        runs["resize"] += 1
        return {"area": width * height}

    @router.actor
    async def thumb(width: int) -> dict[str, int]:
        runs["thumb"] += 1
        return {"small": width // 2}

    @router.actor
    async def notify(area: int, small: int) -> str:
        runs["notify"] += 1
        return f"{area}/{small}"

    @router.actor
    async def add(x: int, y: int = 0) -> dict[str, int]:
        runs["add"] += 1
        return {"x": x + y}

    @router.actor
    async def total(x: int) -> int:
        runs["total"] += 1
        return x

    @router.actor
    async def boom() -> None:
        runs["boom"] += 1
        raise RuntimeError("boom")

    @router.actor
    async def slow() -> None:
        runs["slow"] += 1
        await asyncio.sleep(60)

    @router.actor
    async def approve(decision: str, by: str) -> str:
        runs["approve"] += 1
        return f"{decision} by {by}"

    router.include_router(workflow_router())
    for actor in router.actors.values():  # the built-in WAIT actor on the test's queue
        actor.queue = queue.name
    return router


async def _run(conn: Connection, queue: Queue, wf: Workflow, runs: Counter[str]) -> WorkflowStatus:
    handle = await wf.enqueue(conn)
    async with running(make_worker(conn, _router(queue, runs))):
        return await handle.wait(timeout=30)


async def test_a_diamond_feeds_outputs_by_name_and_the_join_runs_once(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    wf = Workflow("thumbnail")
    a = wf.step("fetch", args={"url": "abcdef"}, queue=queue.name)
    b = wf.step("resize", after=[a], queue=queue.name)
    c = wf.step("thumb", after=[a], queue=queue.name)
    wf.step("notify", after=[b, c], queue=queue.name)
    status = await _run(conn, queue, wf, runs)
    assert status.state == "succeeded", status
    assert status.output("fetch") == {"width": 6, "height": 2}, "a pydantic output, unpacked"
    assert status.output("notify") == "12/3"
    assert runs == Counter(fetch=1, resize=1, thumb=1, notify=1)
    assert all(s.started and s.finished for s in status.steps.values())


async def test_a_chain_passes_each_output_on(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = chain(Task("add", {"x": 1, "y": 2}, q), Task("add", {"y": 10}, q), Task("total", queue=q))
    status = await _run(conn, queue, wf, runs)
    assert status.state == "succeeded"
    assert status.output("total") == 13


async def test_a_group_runs_all_and_a_chord_joins_once(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    g = group(*(Task("add", {"x": i}, q) for i in range(5)))
    assert len(g.steps) == 5
    wf = chord(g, Task("total", queue=q))
    status = await _run(conn, queue, wf, runs)
    assert status.state == "succeeded"
    assert runs == Counter(add=5, total=1)
    assert status.output("total") in range(5), "the callback got one of the x outputs"


async def test_a_failure_skips_descendants_and_other_branches_finish(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = Workflow("partial")
    bad = wf.step("boom", queue=q)
    after_bad = wf.step("total", args={"x": 1}, after=[bad], queue=q)
    wf.step("total", args={"x": 2}, after=[after_bad], queue=q, name="deeper")
    good = wf.step("add", args={"x": 1}, queue=q)
    wf.step("total", after=[good], queue=q, name="other")
    status = await _run(conn, queue, wf, runs)
    assert status.state == "failed"
    assert status.steps["boom"].status == "failed"
    assert "boom" in (status.steps["boom"].error or "")
    assert status.steps["total"].status == "skipped"
    assert status.steps["deeper"].status == "skipped"
    assert status.steps["other"].status == "succeeded"
    assert runs["total"] == 1


async def test_a_mismatched_input_is_a_validation_error_at_that_step(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = Workflow("mismatch")
    a = wf.step("add", args={"x": "not a number"}, queue=q)
    wf.step("total", after=[a], queue=q)
    status = await _run(conn, queue, wf, runs)
    assert status.state == "failed"
    assert status.steps["add"].reason == "validation_error"
    assert status.steps["total"].status == "skipped"


async def test_a_wait_by_time_then_its_children(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = Workflow("pause")
    a = wf.step("add", args={"x": 4}, queue=q)
    w = wf.wait("pause", seconds=1, after=[a], queue=q)
    wf.step("total", args={"x": 4}, after=[w], queue=q)
    status = await _run(conn, queue, wf, runs)
    assert status.state == "succeeded"
    pause = status.steps["pause"]
    assert pause.finished is not None
    assert status.steps["add"].finished is not None
    assert pause.finished - status.steps["add"].finished >= 0.9


async def test_a_wait_for_a_signal_feeds_its_data_to_children(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = Workflow("approval")
    w = wf.wait("approval", signal="approved")
    wf.step("approve", args={"by": "ops"}, after=[w], queue=q)
    handle = await wf.enqueue(conn)
    async with running(make_worker(conn, _router(queue, runs))):
        assert (await handle.status()).steps["approval"].status == "waiting"
        await handle.signal("approved", {"decision": "yes"})
        status = await handle.wait(timeout=30)
    assert status.state == "succeeded"
    assert status.output("approve") == "yes by ops"


async def test_cancel_stops_running_steps_and_starts_no_more(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = Workflow("cancelled")
    s = wf.step("slow", queue=q)
    wf.step("total", args={"x": 1}, after=[s], queue=q)
    handle = await wf.enqueue(conn)
    async with running(make_worker(conn, _router(queue, runs))):
        deadline = asyncio.get_running_loop().time() + 20
        while runs["slow"] == 0:
            assert asyncio.get_running_loop().time() < deadline, "slow step never started"
            await asyncio.sleep(0.01)
        status = await handle.cancel()
        assert status.state == "cancelled"
        assert status.steps["total"].status == "cancelled"
    assert runs["total"] == 0


async def test_a_workflow_timeout_stops_it(conn, new_queue):
    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    wf = Workflow("late", timeout=1)
    a = wf.step("add", args={"x": 1}, queue=q)
    w = wf.wait("pause", seconds=2, after=[a], queue=q)
    wf.step("total", args={"x": 1}, after=[w], queue=q)
    status = await _run(conn, queue, wf, runs)
    assert status.state == "timed_out"
    assert runs["total"] == 0


async def test_a_connection_without_a_store_is_a_configuration_error() -> None:
    class NoStore:
        """Not a broker that can keep workflow state."""

    conn = Connection.__new__(Connection)
    conn.raw_results_bucket_broker = None
    conn.raw_message_broker = NoStore()  # type: ignore[assignment]
    wf = Workflow("x")
    wf.step("add", args={"x": 1})
    with pytest.raises(ConfigurationError, match="workflows need a store"):
        await wf.enqueue(conn)


async def test_events_tell_the_workflow_and_each_step(conn, new_queue):
    from repid.workflows import WorkflowEvent, on_workflow_event

    queue, runs = await new_queue(), Counter[str]()
    q = queue.name
    seen: list[WorkflowEvent] = []
    on_workflow_event(conn, seen.append)
    wf = Workflow("watched")
    a = wf.step("add", args={"x": 1}, queue=q)
    wf.step("total", after=[a], queue=q)
    status = await _run(conn, queue, wf, runs)
    assert status.state == "succeeded"
    kinds = [(e.kind, e.step) for e in seen]
    assert kinds[0] == ("workflow_started", None)
    assert ("step_succeeded", "add") in kinds
    assert kinds.index(("step_succeeded", "add")) < kinds.index(("step_queued", "total"))
    assert kinds[-1] == ("workflow_finished", None)
    assert seen[-1].status == "succeeded"
    assert [k for k in kinds if k[0] == "workflow_finished"] == [("workflow_finished", None)]


async def test_a_redelivered_parent_does_not_enqueue_a_running_child_again(conn, new_queue):
    """A parent's rerun (killed after its hook, before the ack) completes it twice: a child
    already running elsewhere is not enqueued again, a child still queued is."""
    from repid.workflows import WorkflowEvent, on_workflow_event
    from repid.workflows.progress import complete, state
    from repid.workflows.stores import store_for

    queue = await new_queue()
    q = queue.name
    seen: list[WorkflowEvent] = []
    on_workflow_event(conn, seen.append)
    wf = Workflow("rerun")
    a = wf.step("add", args={"x": 1}, queue=q)
    wf.step("total", after=[a], queue=q)
    handle = await wf.enqueue(conn)
    await complete(conn, handle.id_, "add", ok=True, output='{"x": 1}')
    await complete(conn, handle.id_, "add", ok=True, output='{"x": 1}')  # still queued: again
    queued = [e for e in seen if e.kind == "step_queued" and e.step == "total"]
    assert len(queued) == 2
    store = store_for(conn)
    await store.set_step(handle.id_, "total", state("running", started=1.0), False)
    await complete(conn, handle.id_, "add", ok=True, output='{"x": 1}')  # running: not again
    queued = [e for e in seen if e.kind == "step_queued" and e.step == "total"]
    assert len(queued) == 2
    assert (await handle.status()).steps["total"].status == "running"


async def test_a_queued_write_loses_to_a_running_step_in_the_store(conn, new_queue):
    """The rerun's check and its write are one atomic store operation: a step that started
    between the rerun's read and its write is not set back to queued (nor enqueued again)."""
    from repid.workflows.progress import state
    from repid.workflows.stores import store_for
    from repid.workflows.stores.base import RUNNING_PREFIX

    queue = await new_queue()
    wf = Workflow("race")
    a = wf.step("add", args={"x": 1}, queue=queue.name)
    wf.step("total", after=[a], queue=queue.name)
    handle = await wf.enqueue(conn)
    store = store_for(conn)
    running = state("running", started=1.0)
    assert running.startswith(RUNNING_PREFIX)
    queued = state("queued", job_id="j", queued=2.0)
    assert await store.set_step(handle.id_, "total", queued, False, unless_running=True)
    assert await store.set_step(handle.id_, "total", running, False)
    assert not await store.set_step(handle.id_, "total", queued, False, unless_running=True)
    assert (await handle.status()).steps["total"].status == "running"
    assert await store.set_step(handle.id_, "total", state("succeeded"), True)
    assert not await store.set_step(handle.id_, "total", running, False)
    assert (await handle.status()).steps["total"].status == "succeeded"
