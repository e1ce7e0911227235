"""Building workflows: `Workflow` and its steps (jobs and WAIT steps), plus `chain`, `group`
and `chord`, which build the same DAGs."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from repid.errors import ConfigurationError

if TYPE_CHECKING:
    from repid.connection import Connection
    from repid.workflows.handle import WorkflowHandle

__all__ = ["Step", "Task", "Workflow", "chain", "chord", "group"]

_NAME = re.compile(r"[a-zA-Z0-9_\-]+")
WAIT_ACTOR = "repid_workflow_wait"
"""The built-in actor a timed WAIT step runs (see `repid.workflows.workflow_router`)."""
HTTP_ACTOR = "repid_workflow_http"
"""The built-in actor of HTTP steps."""


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True, slots=True)
class Step:
    """One node of a workflow, returned by `Workflow.step()` and `Workflow.wait()`."""

    name: str
    actor: str | None
    args: Mapping[str, Any]
    after: tuple[str, ...]
    queue: str = "default"
    retries: int | None = None
    wait_seconds: float | None = None
    signal: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "args": dict(self.args),
            "after": list(self.after),
            "queue": self.queue,
            "retries": self.retries,
            "wait": self.wait_seconds,
            "signal": self.signal,
        }


@dataclass(frozen=True, slots=True)
class Task:
    """An actor call for `chain`, `group` and `chord`."""

    actor: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    retries: int | None = None


def _task(item: Task | str) -> Task:
    return Task(item) if isinstance(item, str) else item


class Workflow:
    """A DAG of steps; each step is an ordinary actor run once its parents succeeded.

    Args:
        name: shown by `repid workflows list`.
        timeout: the workflow stops (status `timed_out`, no more steps started) this long
            after `enqueue()`; None: no limit.
        ttl: how long its state and step outputs are kept (default one day).
    """

    def __init__(
        self,
        name: str,
        *,
        timeout: timedelta | float | None = None,
        ttl: timedelta | float = timedelta(days=1),
    ) -> None:
        self.name = name
        self.timeout = _seconds(timeout)
        self.ttl = _seconds(ttl) or 86400.0
        self.steps: dict[str, Step] = {}

    def _add(self, step: Step) -> Step:
        if step.name in self.steps:
            raise ConfigurationError(f"workflow {self.name!r} already has a step {step.name!r}")
        if _NAME.fullmatch(step.name) is None:
            raise ConfigurationError(f"step name {step.name!r}: letters, digits, '_' and '-' only")
        for parent in step.after:
            if parent not in self.steps:
                raise ConfigurationError(f"step {step.name!r} runs after unknown {parent!r}")
        self.steps[step.name] = step
        return step

    def _free_name(self, base: str) -> str:
        name, n = base, 1
        while name in self.steps:
            n += 1
            name = f"{base}-{n}"
        return name

    def step(
        self,
        actor_name: str,
        args: Mapping[str, Any] | None = None,
        after: Sequence[Step] = (),
        *,
        queue: str = "default",
        name: str | None = None,
        retries: int | None = None,
    ) -> Step:
        """Add a run of `actor_name`, started once every step of `after` succeeded.

        Its arguments are `args` merged over its parents' outputs: a parent returning an
        object (a dict, pydantic model or dataclass) gives its fields by name, any other
        value is given under the parent step's name.
        """
        return self._add(
            Step(
                name or self._free_name(actor_name),
                actor_name,
                dict(args or {}),
                tuple(s.name for s in after),
                queue,
                retries,
            )
        )

    def wait(
        self,
        name: str,
        *,
        seconds: timedelta | float | None = None,
        signal: str | None = None,
        after: Sequence[Step] = (),
        queue: str = "default",
    ) -> Step:
        """Add a WAIT step: done `seconds` after its parents, or when the workflow receives
        `signal` (`WorkflowHandle.signal`); a signal's data is its output."""
        if (seconds is None) == (signal is None):
            raise ConfigurationError("a WAIT step needs exactly one of seconds= or signal=")
        return self._add(
            Step(
                name,
                WAIT_ACTOR if signal is None else None,
                {},
                tuple(s.name for s in after),
                queue,
                None,
                _seconds(seconds),
                signal,
            )
        )

    def http(
        self,
        name: str,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float = 10.0,
        retries: int = 3,
        after: Sequence[Step] = (),
        queue: str = "default",
    ) -> Step:
        """Add an HTTP system step: calls `url` (httpx, `repid[http]`); connection errors and
        5xx answers are retried up to `retries` times; its output is `status`, `headers` and
        `json` or `text`."""
        args = {"url": url, "method": method, "headers": dict(headers or {}), "timeout": timeout}
        if body is not None:
            args["body"] = body
        return self._add(Step(name, HTTP_ACTOR, args, tuple(s.name for s in after), queue, retries))

    def to_doc(self, wf_id: str) -> str:
        now = time.time()
        return json.dumps(
            {
                "id": wf_id,
                "name": self.name,
                "created": now,
                "deadline": None if self.timeout is None else now + self.timeout,
                "steps": {name: step.to_doc() for name, step in self.steps.items()},
            }
        )

    async def enqueue(self, connection: Connection | None = None) -> WorkflowHandle:
        """Store the workflow and enqueue its first steps.

        Raises:
            ConfigurationError: no step, or the connection keeps no workflow state.
        """
        from repid.workflows.handle import WorkflowHandle
        from repid.workflows.progress import start_workflow

        if not self.steps:
            raise ConfigurationError(f"workflow {self.name!r} has no step")
        conn, wf_id = await start_workflow(self.to_doc, self.ttl, connection)
        return WorkflowHandle(wf_id, conn)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={list(self.steps)!r})"


def chain(*tasks: Task | str, name: str = "chain") -> Workflow:
    """Each task after the one before it; each gets the previous one's output."""
    wf = Workflow(name)
    previous: list[Step] = []
    for item in tasks:
        t = _task(item)
        previous = [wf.step(t.actor, t.args, previous, queue=t.queue, retries=t.retries)]
    return wf


def group(*tasks: Task | str, name: str = "group") -> Workflow:
    """All tasks at once, independent of each other."""
    wf = Workflow(name)
    for item in tasks:
        t = _task(item)
        wf.step(t.actor, t.args, queue=t.queue, retries=t.retries)
    return wf


def chord(
    header: Workflow | Sequence[Task | str], then: Task | str, name: str = "chord"
) -> Workflow:
    """`then` once every task of `header` (a `group` or a list of tasks) succeeded, fed with all
    their outputs: it fires exactly once."""
    wf = header if isinstance(header, Workflow) else group(*header, name=name)
    t = _task(then)
    wf.step(t.actor, t.args, list(wf.steps.values()), queue=t.queue, retries=t.retries)
    return wf
