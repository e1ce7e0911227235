"""repid's exception tree.

Every error repid raises on purpose derives from `RepidError`. Configuration mistakes also derive
from `ValueError`, so code written against repid 1.6 that caught `ValueError` keeps working.
Broker-client exceptions are translated into these at the broker boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from repid._redact import mask_urls

__all__ = [
    "BrokerAuthenticationError",
    "BrokerError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConsumerClosedError",
    "DecodeError",
    "MessageTooLargeError",
    "QueueNotDeclaredError",
    "RepidError",
    "SerializationError",
    "map_broker_errors",
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


class BrokerAuthenticationError(BrokerUnavailableError):
    """The broker answered but refused the login (user, password, ACL or RabbitMQ vhost).

    A `BrokerUnavailableError`, so code that handles an unreachable broker handles this too;
    its message is one sentence naming the host and the user, never the password.
    """


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


ErrorMap = Mapping[type[BaseException] | tuple[type[BaseException], ...], type[BrokerError]]


@contextlib.contextmanager
def map_broker_errors(mapping: ErrorMap, what: str) -> Iterator[None]:
    """Translate a client library's exceptions into repid's at the broker boundary.

    `mapping` sends library exception types to a `BrokerError` subclass; the first entry that
    matches wins, so list specific types before general ones. The new error says `what` failed
    and chains the original (`__cause__`); repid's own errors and cancellation pass unchanged.

    Example:
        with map_broker_errors({OSError: BrokerUnavailableError}, "publish to 'jobs'"):
            await channel.publish(...)
    """
    try:
        yield
    except RepidError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{what} failed: {_describe(exc)}") from exc
        raise


def _describe(exc: BaseException) -> str:
    text = mask_urls(str(exc))  # a client library's text may quote the URL it was given
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
