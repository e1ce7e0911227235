"""Workflows: DAGs of ordinary actors whose outputs feed their children, with chains, groups,
chords and WAIT steps; state lives in the connection's store (see docs/workflows.md)."""

from repid.workflows.events import WorkflowEvent, on_workflow_event
from repid.workflows.handle import StepState, WorkflowHandle, WorkflowNotFoundError, WorkflowStatus
from repid.workflows.model import Step, Task, Workflow, chain, chord, group
from repid.workflows.system import HttpStepError, workflow_router

__all__ = [
    "HttpStepError",
    "Step",
    "StepState",
    "Task",
    "Workflow",
    "WorkflowEvent",
    "WorkflowHandle",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "chain",
    "chord",
    "group",
    "on_workflow_event",
    "workflow_router",
]
