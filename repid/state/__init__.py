"""Shared state of the brokers that lack it (cancel flags, per-actor limits, the worker
registry, unique ids): in this process, or in Redis for every process (`RedisSharedState`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState

__all__ = ["RedisSharedState"]


def __getattr__(name: str) -> Any:
    if name == "RedisSharedState":
        from repid.state.redis import RedisSharedState

        return RedisSharedState
    raise AttributeError(f"module 'repid.state' has no attribute {name!r}")
