"""The workflow engine: starting a workflow, and moving it on after each step's outcome (the
worker's after-outcome hook), on a signal, on cancel; joins fire on the store's atomic arrival."""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from repid.errors import ConfigurationError
from repid.ids import new_id
from repid.job import Job
from repid.main import Repid
from repid.worker.hooks import OutcomeReport, register_after_outcome, register_before_run
from repid.workflows.events import WorkflowEvent, emit
from repid.workflows.stores import store_for
from repid.workflows.stores.base import StoredWorkflow, WorkflowStore

if TYPE_CHECKING:
    from repid.brokers.base import Delivery
    from repid.connection import Connection
    from repid.router import ActorData

__all__ = ["complete", "start_workflow"]

logger = logging.getLogger("repid.workflows")

WF_HEADER = "repid-workflow"
STEP_HEADER = "repid-workflow-step"
TERMINAL = frozenset({"succeeded", "failed", "skipped", "cancelled"})

_HEADERS: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "repid_workflow_headers", default=None
)


def _headers() -> dict[str, str] | None:
    return _HEADERS.get()


def _install(connection: Connection) -> None:
    if _headers not in connection.header_providers:
        connection.header_providers.append(_headers)


def _connection(connection: Connection | None) -> Connection:
    if connection is not None:
        return connection
    magic = Repid._magic_connection
    if magic is None:
        raise ConfigurationError("no connection: pass one, or use `Repid.magic()`")
    return magic


def state(status: str, **fields: Any) -> str:
    """JSON text of a step state."""
    return json.dumps({"status": status, **{k: v for k, v in fields.items() if v is not None}})


def step_state(wf: StoredWorkflow, step: str) -> dict[str, Any]:
    raw = wf.steps.get(step)
    if raw is None:
        return {"status": "pending"}
    value: dict[str, Any] = json.loads(raw)
    return value


def children_of(doc: Mapping[str, Any], step: str) -> list[str]:
    return [name for name, s in doc["steps"].items() if step in s["after"]]


async def start_workflow(
    make_doc: Callable[[str], str], ttl: float, connection: Connection | None
) -> tuple[Connection, str]:
    """Store a new workflow (its definition is `make_doc(id)`) and enqueue its first steps."""
    conn = _connection(connection)
    store = store_for(conn)  # a missing store fails here, before anything is sent
    wf_id = f"wf_{new_id()}"
    doc_text = make_doc(wf_id)
    await store.create(wf_id, doc_text, ttl)
    doc = json.loads(doc_text)
    wf = StoredWorkflow(doc_text)
    await emit(conn, WorkflowEvent("workflow_started", wf_id))
    for name, step in doc["steps"].items():
        if not step["after"]:
            await _start_step(conn, store, wf_id, doc, wf, name, None)
    return conn, wf_id


def _inputs(
    doc: Mapping[str, Any], wf: StoredWorkflow, step: str, actors: Mapping[str, ActorData] | None
) -> dict[str, Any]:
    spec = doc["steps"][step]
    merged: dict[str, Any] = {}
    for parent in spec["after"]:
        output = step_state(wf, parent).get("output")
        if output is None:
            continue
        value = json.loads(output)
        if isinstance(value, dict):
            merged.update(value)
        elif value is not None:
            merged[parent] = value
    merged.update(spec["args"])
    actor = None if actors is None else actors.get(spec["actor"] or "")
    if actor is not None and spec["after"]:  # parents' extra fields are not its parameters
        params = inspect.signature(actor.fn).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            names = {p.name for p in params}
            merged = {k: v for k, v in merged.items() if k in names or k in spec["args"]}
    return merged


async def _start_step(
    conn: Connection,
    store: WorkflowStore,
    wf_id: str,
    doc: Mapping[str, Any],
    wf: StoredWorkflow,
    step: str,
    actors: Mapping[str, ActorData] | None,
) -> None:
    current = step_state(wf, step)["status"]
    if current in TERMINAL or current in ("waiting", "running"):
        return  # a redelivered parent does not start a child another worker already runs
    spec = doc["steps"][step]
    now = time.time()
    if spec["signal"] is not None:
        await store.set_step(wf_id, step, state("waiting", queued=now), False)
        await emit(conn, WorkflowEvent("step_waiting", wf_id, step, "waiting"))
        data = wf.signals.get(spec["signal"])
        if data is None:
            fresh = await store.get(wf_id)  # a signal sent meanwhile
            data = None if fresh is None else fresh.signals.get(spec["signal"])
        if data is not None:
            await complete(conn, wf_id, step, ok=True, output=data, started=time.time_ns())
        return
    job_id = f"{wf_id}-{step}"
    queued = state("queued", job_id=job_id, queued=now)
    if not await store.set_step(wf_id, step, queued, False, unless_running=True):
        return  # it started on another worker since `wf` was read, or it is final already
    job = Job(
        spec["actor"],
        queue=spec["queue"],
        id_=job_id,
        args=_inputs(doc, wf, step, actors),
        retries=spec["retries"],
        deferred_until=None
        if spec["wait"] is None
        else datetime.now(tz=UTC) + timedelta(seconds=spec["wait"]),
        store_result=False,
        _connection=conn,
    )
    _install(conn)
    await emit(conn, WorkflowEvent("step_queued", wf_id, step, "queued"))
    token = _HEADERS.set({WF_HEADER: wf_id, STEP_HEADER: step})
    try:
        await job.enqueue()
    finally:
        _HEADERS.reset(token)


async def _skip_descendants(
    conn: Connection, store: WorkflowStore, wf_id: str, doc: Mapping[str, Any], step: str
) -> None:
    todo = children_of(doc, step)
    seen: set[str] = set()
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        if await store.set_step(wf_id, child, state("skipped", because=step), True):
            await emit(conn, WorkflowEvent("step_skipped", wf_id, child, "skipped"))
        todo.extend(children_of(doc, child))


async def complete(
    conn: Connection,
    wf_id: str,
    step: str,
    *,
    ok: bool,
    output: str | None = None,
    error: str | None = None,
    reason: str | None = None,
    started: int | None = None,
    actors: Mapping[str, ActorData] | None = None,
) -> None:
    """Record a step's final outcome and start the children whose parents have all succeeded.

    Safe to call again for the same step (a redelivered message): the first outcome stands, and
    children not yet started are enqueued again under their deterministic job ids.
    """
    store = store_for(conn)
    finished = time.time()
    begun = None if started is None else started / 1e9
    status = "succeeded" if ok else "failed"
    first = await store.set_step(
        wf_id,
        step,
        state(status, output=output, error=error, reason=reason, started=begun, finished=finished),
        True,
    )
    if first:
        await emit(conn, WorkflowEvent(f"step_{status}", wf_id, step, status))
    try:
        await _progress(conn, store, wf_id, step, finished, actors)
    finally:
        await finish_if_done(conn, store, wf_id)


async def finish_if_done(conn: Connection, store: WorkflowStore, wf_id: str) -> None:
    """Once every step is final, set the workflow's final state (once: `workflow_finished`)."""
    wf = await store.get(wf_id)
    if wf is None or wf.status != "running":
        return
    doc = json.loads(wf.doc)
    statuses = [step_state(wf, name)["status"] for name in doc["steps"]]
    if not all(s in TERMINAL for s in statuses):
        return
    final = "succeeded" if all(s == "succeeded" for s in statuses) else "failed"
    if await store.set_status(wf_id, final):
        await emit(conn, WorkflowEvent("workflow_finished", wf_id, None, final))


async def _progress(
    conn: Connection,
    store: WorkflowStore,
    wf_id: str,
    step: str,
    finished: float,
    actors: Mapping[str, ActorData] | None,
) -> None:
    wf = await store.get(wf_id)
    if wf is None:
        logger.warning("workflow %s is gone (expired?); step %s not recorded", wf_id, step)
        return
    doc = json.loads(wf.doc)
    recorded = step_state(wf, step)["status"]
    if recorded == "failed":
        await _skip_descendants(conn, store, wf_id, doc, step)
        return
    if recorded != "succeeded" or wf.status != "running":
        return
    deadline = doc.get("deadline")
    if deadline is not None and finished > deadline:
        await store.set_status(wf_id, "timed_out")
        return
    for child in children_of(doc, step):
        parents = doc["steps"][child]["after"]
        _added, arrived = await store.arrive(wf_id, child, step)
        if arrived >= len(parents):
            fresh = await store.get(wf_id)  # every parent's output, written before its arrival
            if fresh is not None and fresh.status == "running":
                await _start_step(conn, store, wf_id, doc, fresh, child, actors)


async def _after_outcome(report: OutcomeReport) -> None:
    headers = report.delivery.parameters.headers or {}
    wf_id, step = headers.get(WF_HEADER), headers.get(STEP_HEADER)
    if wf_id is None or step is None:
        return
    try:
        store_for(report.connection)
    except ConfigurationError:  # the job ran: redelivering it would not help
        logger.exception(
            "step %s of workflow %s finished on a connection without a workflow store; "
            "the workflow cannot move on",
            step,
            wf_id,
        )
        return
    await complete(
        report.connection,
        wf_id,
        step,
        ok=report.succeeded,
        output=report.output,
        error=report.error,
        reason=report.reason,
        started=report.started,
        actors=report.actors,
    )


async def _before_run(connection: Connection, delivery: Delivery) -> None:
    """Mark the step `running` (one store write), so a parent's rerun does not enqueue it again."""
    headers = delivery.parameters.headers or {}
    wf_id, step = headers.get(WF_HEADER), headers.get(STEP_HEADER)
    if wf_id is None or step is None:
        return
    try:
        store = store_for(connection)
    except ConfigurationError:
        return
    started = time.time()
    await store.set_step(
        wf_id, step, state("running", job_id=delivery.key.id_, started=started), False
    )


register_after_outcome(WF_HEADER, _after_outcome)
register_before_run(WF_HEADER, _before_run)
