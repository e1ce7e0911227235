"""`WorkflowHandle`: waiting for, inspecting, signalling and cancelling one enqueued workflow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from repid.errors import BrokerError
from repid.workflows.progress import TERMINAL, complete, step_state
from repid.workflows.stores import store_for

if TYPE_CHECKING:
    from repid.connection import Connection

__all__ = ["StepState", "WorkflowHandle", "WorkflowStatus"]

FINISHED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


@dataclass(frozen=True, slots=True)
class StepState:
    """One step: `status` is pending, queued, waiting, succeeded, failed, skipped or cancelled."""

    name: str
    actor: str | None
    after: tuple[str, ...]
    status: str
    output: Any = None
    error: str | None = None
    reason: str | None = None
    queued: float | None = None
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow's state: `state` is running, succeeded, failed, cancelled or timed_out."""

    id_: str
    name: str
    state: str
    created: float
    steps: dict[str, StepState]

    @property
    def finished(self) -> bool:
        """No step will start any more."""
        return self.state in FINISHED

    def output(self, step: str) -> Any:
        """The decoded output of `step` (None when it has none)."""
        return self.steps[step].output


class WorkflowNotFoundError(BrokerError):
    """The workflow id is unknown to the store (never enqueued, or its TTL passed)."""


class WorkflowHandle:
    """Returned by `Workflow.enqueue()`; also `WorkflowHandle(id_, connection)` for a known id."""

    def __init__(self, id_: str, connection: Connection) -> None:
        self.id_ = id_
        self.connection = connection

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id_!r})"

    async def status(self) -> WorkflowStatus:
        """Read the workflow's state and every step's.

        Raises:
            WorkflowNotFoundError: unknown id or expired.
        """
        store = store_for(self.connection)
        wf = await store.get(self.id_)
        if wf is None:
            raise WorkflowNotFoundError(f"workflow {self.id_!r} not found (expired?)")
        doc = json.loads(wf.doc)
        steps: dict[str, StepState] = {}
        for name, spec in doc["steps"].items():
            raw = step_state(wf, name)
            output = raw.get("output")
            steps[name] = StepState(
                name,
                spec["actor"],
                tuple(spec["after"]),
                raw["status"],
                None if output is None else json.loads(output),
                raw.get("error"),
                raw.get("reason"),
                raw.get("queued"),
                raw.get("started"),
                raw.get("finished"),
            )
        state = wf.status
        if state == "running":
            if all(s.status in TERMINAL for s in steps.values()):
                failed = any(s.status in ("failed", "skipped") for s in steps.values())
                state = "failed" if failed else "succeeded"
            elif doc.get("deadline") is not None and time.time() > doc["deadline"]:
                await store.set_status(self.id_, "timed_out")
                state = "timed_out"
        return WorkflowStatus(self.id_, doc["name"], state, doc["created"], steps)

    async def wait(self, timeout: timedelta | float | None = None) -> WorkflowStatus:
        """Wait until the workflow finished (any final state) and return its status.

        Raises:
            TimeoutError: still running after `timeout` seconds.
        """
        limit = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.005
        while True:
            status = await self.status()
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.id_} still {status.state} after {limit} s")
            await asyncio.sleep(pause)  # polling the store with a growing pause
            pause = min(pause * 2, 0.1)

    async def signal(self, name: str, data: Any = None) -> None:
        """Send the named signal: WAIT steps waiting for it complete with `data` as output."""
        store = store_for(self.connection)
        text = json.dumps(data)
        await store.put_signal(self.id_, name, text)
        status = await self.status()
        wf = await store.get(self.id_)
        if wf is None:
            return
        doc = json.loads(wf.doc)
        for step, spec in doc["steps"].items():
            if spec["signal"] == name and status.steps[step].status == "waiting":
                await complete(
                    self.connection, self.id_, step, ok=True, output=text, started=time.time_ns()
                )

    async def cancel(self) -> WorkflowStatus:
        """Stop the workflow: queued and running steps are cancelled like `Job.cancel()`, no
        further step starts. Returns the status after cancelling."""
        from repid.job import cancel_job
        from repid.workflows.progress import state

        store = store_for(self.connection)
        if await store.set_status(self.id_, "cancelled"):
            from repid.workflows.events import WorkflowEvent, emit

            await emit(
                self.connection, WorkflowEvent("workflow_finished", self.id_, None, "cancelled")
            )
        status = await self.status()
        wf = await store.get(self.id_)
        doc = {} if wf is None else json.loads(wf.doc)
        for name, step in status.steps.items():
            if step.status in TERMINAL:
                continue
            if step.status in ("queued", "running"):
                # a broker without cancellation: the step runs on and its outcome is ignored
                with contextlib.suppress(BrokerError, NotImplementedError):
                    await cancel_job(
                        self.connection, doc["steps"][name]["queue"], f"{self.id_}-{name}"
                    )
            await store.set_step(self.id_, name, state("cancelled"), True)
        return await self.status()
