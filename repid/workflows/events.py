"""Workflow lifecycle events: a workflow started or finished, a step queued or ended; handlers
are registered per connection with `on_workflow_event` and called in the process that saw it."""

from __future__ import annotations

import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repid.connection import Connection

__all__ = ["WorkflowEvent", "WorkflowEventHandler", "on_workflow_event"]

logger = logging.getLogger("repid.workflows")


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """Something that happened to a workflow.

    Attributes:
        kind: `workflow_started`, `workflow_finished`, `step_queued`, `step_waiting`,
            `step_succeeded`, `step_failed`, `step_skipped` or `step_cancelled`.
        workflow_id: the workflow's id.
        step: the step's name (None for workflow events).
        status: the workflow's final state (workflow_finished) or the step's status.
        at: when, in epoch seconds.
    """

    kind: str
    workflow_id: str
    step: str | None = None
    status: str | None = None
    at: float = field(default_factory=time.time)


WorkflowEventHandler = Callable[[WorkflowEvent], Awaitable[None] | None]

_HANDLERS: weakref.WeakKeyDictionary[Connection, list[WorkflowEventHandler]] = (
    weakref.WeakKeyDictionary()
)


def on_workflow_event(
    connection: Connection, handler: WorkflowEventHandler
) -> WorkflowEventHandler:
    """Call `handler(event)` (sync or async) for each workflow event seen on `connection`
    (in the producer for starts and signals, in the workers for step outcomes)."""
    _HANDLERS.setdefault(connection, []).append(handler)
    return handler


async def emit(connection: Connection, event: WorkflowEvent) -> None:
    for handler in _HANDLERS.get(connection, ()):
        try:
            result = handler(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("workflow event handler %r raised on %s; ignored", handler, event.kind)
