"""The Redis broker (Streams, one Lua script per operation) and its bucket broker.

Imported on first use of a name (PEP 562), so that `repid.state.redis` can use this package's
transport without importing the broker. Needs `pip install repid[redis]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repid.brokers.redis.broker import RedisBucketBroker, RedisMessageBroker

__all__ = ["RedisBucketBroker", "RedisMessageBroker"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from repid.brokers.redis import broker

        return getattr(broker, name)
    raise AttributeError(f"module 'repid.brokers.redis' has no attribute {name!r}")
