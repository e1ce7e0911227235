"""repid's exception tree.

Every error repid raises on purpose derives from `RepidError`. Configuration mistakes also derive
from `ValueError`, so code written against repid 1.6 that caught `ValueError` keeps working.
Broker-client exceptions are translated into these at the broker boundary.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConsumerClosedError",
    "DecodeError",
    "MessageTooLargeError",
    "QueueNotDeclaredError",
    "RepidError",
    "SerializationError",
]


class RepidError(Exception):
    """Base class of every error raised by repid."""


class ConfigurationError(RepidError, ValueError):
    """An argument or a combination of arguments is invalid (raised at construction time)."""


class SerializationError(RepidError, TypeError):
    """Job arguments could not be serialised; raised by `Job` before anything is sent."""


class BrokerError(RepidError):
    """A broker operation failed."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """The broker could not be reached within the operation's timeout."""


class MessageTooLargeError(BrokerError, ValueError):
    """A message exceeds the broker's size limit; raised at enqueue, nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the broker's limit of {limit} bytes")
        self.size = size
        self.limit = limit


class QueueNotDeclaredError(BrokerError, KeyError):
    """The queue does not exist on the broker; declare it first (`await Queue(...).declare()`)."""

    def __init__(self, queue_name: str) -> None:
        super().__init__(queue_name)
        self.queue_name = queue_name

    def __str__(self) -> str:
        name = self.queue_name
        return f"{name!r} (queue is not declared; call `await Queue({name!r}).declare()`)"


class ConsumerClosedError(BrokerError):
    """`consume()` was called on (or was waiting in) a consumer that has finished.

    Every broker's consumer raises this (and only this) to say it will hand out nothing more.
    """


class DecodeError(RepidError, ValueError):
    """A message on the broker is not a valid repid envelope."""
