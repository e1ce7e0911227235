"""Hooks run after a job's outcome is recorded and before the broker is told (ack/nack): other
packages (workflows) move their own state forward there, chosen by a message header."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repid.brokers.base import Delivery
    from repid.connection import Connection
    from repid.router import ActorData

__all__ = [
    "OutcomeReport",
    "register_after_outcome",
    "register_before_run",
    "run_after_outcome",
    "run_before_run",
]

logger = logging.getLogger("repid.worker")


@dataclass(frozen=True, slots=True)
class OutcomeReport:
    """How one run ended, as the worker recorded it (given to after-outcome hooks)."""

    connection: Connection
    delivery: Delivery
    actors: Mapping[str, ActorData]
    succeeded: bool
    output: str | None = None
    """JSON text of the (validated) return value, when it succeeded."""
    error: str | None = None
    reason: str | None = None
    started: int | None = None


AfterOutcome = Callable[[OutcomeReport], Awaitable[None]]

_HOOKS: dict[str, AfterOutcome] = {}
_BUILTIN: dict[str, str] = {"repid-workflow": "repid.workflows.progress"}
"""Header -> module that registers its hook when imported (loaded on first such message)."""


def register_after_outcome(header: str, hook: AfterOutcome) -> None:
    """Call `hook(report)` for every final outcome of a message carrying `header`."""
    _HOOKS[header] = hook


BeforeRun = Callable[["Connection", "Delivery"], Awaitable[None]]

_BEFORE: dict[str, BeforeRun] = {}


def register_before_run(header: str, hook: BeforeRun) -> None:
    """Call `hook(connection, delivery)` when a message carrying `header` starts running."""
    _BEFORE[header] = hook


def _hook_for(header: str) -> AfterOutcome | None:
    hook = _HOOKS.get(header)
    if hook is None and header in _BUILTIN:
        importlib.import_module(_BUILTIN.pop(header))
        hook = _HOOKS.get(header)
    return hook


async def run_before_run(connection: Connection, delivery: Delivery) -> None:
    """Run the before-run hooks the message's headers select; a raising hook is logged only."""
    headers = delivery.parameters.headers
    if not headers:
        return
    for header in headers:
        if header not in _BEFORE and header not in _BUILTIN:
            continue
        try:
            _hook_for(header)  # loads a builtin module, which registers both hooks
            hook = _BEFORE.get(header)
            if hook is not None:
                await hook(connection, delivery)
        except Exception:
            logger.exception("before-run hook %r of message %s raised", header, delivery.key.id_)


async def run_after_outcome(**report: Any) -> bool:
    """Run the hooks the message's headers select; False when one raised (not recorded)."""
    delivery: Delivery = report["delivery"]
    headers = delivery.parameters.headers
    if not headers:
        return True
    ok = True
    for header in headers:
        if header not in _HOOKS and header not in _BUILTIN:
            continue
        try:
            hook = _hook_for(header)
            if hook is not None:
                await hook(OutcomeReport(**report))
        except Exception:
            logger.exception("after-outcome hook %r of message %s raised", header, delivery.key.id_)
            ok = False
    return ok
