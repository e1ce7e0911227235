"""The built-in actors of workflow system steps (a timed WAIT), on one router a worker includes
with `router.include_router(workflow_router())`."""

from __future__ import annotations

from repid.router import Router
from repid.workflows.model import WAIT_ACTOR

__all__ = ["workflow_router"]


async def _wait() -> None:
    """A timed WAIT step: enqueued deferred by its duration, it only has to finish."""


def workflow_router() -> Router:
    """A router with the workflows' built-in actors; include it in every worker's router."""
    router = Router()
    router.actor(name=WAIT_ACTOR)(_wait)
    return router
