"""The broker protocol: what every message broker and bucket broker must provide.

A message broker moves bytes and acknowledgements, nothing else. Retry decisions, timeouts,
concurrency limits and graceful shutdown live in the worker, once, for every broker.

Delivery guarantee (at-least-once): a message handed out by a consumer stays owned by that
*delivery* until exactly one of `ack`, `nack`, `reject` or `requeue` is called with it, or until
its lease runs out (brokers with `lease_renewal`) or its connection dies, in which case the broker
makes it available again. None of these calls may lose the message: `requeue` and `nack` replace
the delivery atomically with the new message / dead letter. Calls on a delivery that is no longer
owned (its lease expired and it was redelivered) are *stale*: they must not raise, must not
affect the redelivered copy, and return `False`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, runtime_checkable

from repid.data import (
    BucketT,
    MessageCategory,
    Parameters,
    RoutingKey,
)
from repid.errors import ConfigurationError, ConsumerClosedError

_T = TypeVar("_T")

if TYPE_CHECKING:
    from repid.lifecycle import ActorLimiter, RateLimit, WorkerInfo

__all__ = [
    "BaseConsumer",
    "BrokerCapabilities",
    "BucketBrokerT",
    "ConnectionPolicy",
    "ConsumerT",
    "Delivery",
    "MessageBrokerT",
    "OutgoingMessage",
    "SupportsActorLimits",
    "SupportsCancellation",
    "SupportsEventBus",
    "SupportsInspection",
    "SupportsLiveness",
    "SupportsResultWait",
    "SupportsWorkerRegistry",
    "actor_limits_of",
    "cancellation_of",
    "event_bus_of",
    "inspection_of",
    "liveness_of",
    "poll_bucket",
    "worker_registry_of",
]

OutgoingMessage = tuple[RoutingKey, str, Parameters]
"""One message to publish: routing key, payload (JSON text of the arguments), parameters."""


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    """What a broker guarantees natively. The worker and the docs read these; nothing is guessed.

    Attributes:
        strict_priorities: HIGH is always handed out before MEDIUM before LOW among ready messages.
        native_delays: delayed messages are held by the broker (not by a worker's memory).
        native_dead_letters: the dead part of a queue is stored by the broker.
        lease_renewal: deliveries are leased for `lease_duration` seconds and `renew` must be
            called while an actor runs; an expired lease makes the message available again.
        per_partition_order: messages are ordered per partition rather than per queue.
        shared_state: unique ids are enforced across every process using the broker.
        persistent: messages survive a restart of the broker process.
        max_message_size: the largest envelope accepted, in bytes (None: no limit).
        lease_duration: seconds a delivery stays owned without renewal (None: until the
            connection that received it closes).
        cancellation: the broker implements `SupportsCancellation` (cancel queued and
            running jobs by id).
        worker_registry: the broker implements `SupportsWorkerRegistry` (live workers).
        actor_limits: the broker implements `SupportsActorLimits` (per-actor concurrency
            and rate limits, shared by the workers that share its state).
        inspection: the broker implements `SupportsInspection` (queue names and counts).
        liveness: the broker implements `SupportsLiveness` (`ping()`: is the server reachable
            now; the worker's health check asks it, since a client that reconnects by itself
            lets a waiting consumer look healthy through an outage).
        event_bus: the broker implements `SupportsEventBus` (job lifecycle events published
            on its native pub/sub, `Connection(publish_events=True)` and `connection.events()`).
    """

    strict_priorities: bool = True
    native_delays: bool = True
    native_dead_letters: bool = True
    lease_renewal: bool = False
    per_partition_order: bool = False
    shared_state: bool = True
    persistent: bool = True
    max_message_size: int | None = None
    lease_duration: float | None = None
    cancellation: bool = False
    worker_registry: bool = False
    actor_limits: bool = False
    inspection: bool = False
    liveness: bool = False
    event_bus: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionPolicy:
    """How a broker talks to its server; every network broker takes these three keywords.

    Attributes:
        connect_timeout: seconds to open (or reopen) a connection before giving up.
        operation_timeout: seconds one operation (a publish, an ack, a fetch round trip) may
            take before it fails with `BrokerUnavailableError`.
        reconnect_backoff: seconds to wait before the first reconnect attempt; later attempts
            back off exponentially from it (capped by the broker).
    """

    connect_timeout: float = 5.0
    operation_timeout: float = 10.0
    reconnect_backoff: float = 0.5

    @classmethod
    def resolve(
        cls,
        connect_timeout: float | None,
        operation_timeout: float | None,
        reconnect_backoff: float | None,
        *,
        defaults: ConnectionPolicy | None = None,
        timeout: float | None = None,
        reconnect_interval: float | None = None,
    ) -> ConnectionPolicy:
        """The policy from a broker's keywords, the older keyword names taken as aliases.

        `timeout` (RabbitMQ and Kafka before 2.0) sets both timeouts unless they are given;
        `reconnect_interval` (RabbitMQ) is `reconnect_backoff`.
        """
        base = defaults or cls()
        policy = cls(
            connect_timeout=_first(connect_timeout, timeout, base.connect_timeout),
            operation_timeout=_first(operation_timeout, timeout, base.operation_timeout),
            reconnect_backoff=_first(reconnect_backoff, reconnect_interval, base.reconnect_backoff),
        )
        for name in ("connect_timeout", "operation_timeout"):
            if getattr(policy, name) <= 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(policy, name)}")
        if policy.reconnect_backoff < 0:
            raise ConfigurationError(
                f"reconnect_backoff must not be negative, got {policy.reconnect_backoff}"
            )
        return policy

    async def retry(
        self,
        operation: Callable[[], Awaitable[_T]],
        *,
        retryable: Callable[[Exception], bool],
        give_up: Callable[[Exception], BaseException],
        on_retry: Callable[[Exception, float], None] | None = None,
        max_backoff: float = 2.0,
    ) -> _T:
        """Run `operation` until it succeeds, for up to `operation_timeout` seconds.

        A failure that `retryable` accepts is retried after a pause that starts at
        `reconnect_backoff` (at least 10 ms) and doubles up to `max_backoff`; `on_retry(exc,
        pause)` is told of each. When the next pause would run past the deadline, the error
        `give_up(exc)` is raised (`exc` itself when it returns it). Any other failure is raised
        at once. `operation` must be safe to repeat.
        """
        deadline = time.monotonic() + self.operation_timeout
        pause = max(self.reconnect_backoff, 0.01)
        while True:
            try:
                return await operation()
            except Exception as exc:
                if not retryable(exc):
                    raise
                if time.monotonic() + pause >= deadline:
                    error = give_up(exc)
                    if error is exc:
                        raise
                    raise error from None
                if on_retry is not None:
                    on_retry(exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, max_backoff)


def _first(*values: float | None) -> float:
    for value in values:
        if value is not None:
            return float(value)
    raise AssertionError("the last value is a default")  # pragma: no cover


class _DeliveryFields(NamedTuple):
    key: RoutingKey
    payload: str
    parameters: Parameters
    handle: Any
    category: MessageCategory = MessageCategory.NORMAL
    raw: bytes | None = None
    decode_error: str | None = None
    redelivered: bool = False


class Delivery(_DeliveryFields):
    """One message handed to a consumer, with the broker-owned `handle` that settles it.

    It also satisfies `RoutingKeyT` (`id_`, `topic`, `queue`, `priority`), so code written
    against repid 1.6 that passed a routing key to `ack`/`nack` keeps working, and it unpacks
    like 1.6's `consume()` result: `key, payload, parameters = await consumer.consume()`
    (iterating a delivery yields those three, the "key" being the delivery itself, so that
    `broker.ack(key)` settles exactly it; the other fields are read by name).

    `decode_error` is set (and `key`/`payload` are placeholders) when the broker's bytes were
    not a valid repid envelope; `raw` keeps those bytes for the dead letter.

    A named tuple: immutable, cheap to build, and untracked by the cyclic garbage collector,
    which keeps large in-memory queues cheap.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        # 1.6's consumers returned (key, payload, parameters); code unpacks exactly those. The
        # "key" is the delivery itself (a `RoutingKeyT`), so `broker.ack(key)` settles it.
        return iter((self, self.payload, self.parameters))

    def _replace(self, **changes: Any) -> Delivery:
        fields = zip(self._fields, self[:], strict=True)
        values = [changes.pop(name, value) for name, value in fields]
        if changes:
            raise ValueError(f"Delivery has no fields {sorted(changes)}")
        return tuple.__new__(type(self), values)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self[:], strict=True))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return self[:]

    @property
    def id_(self) -> str:
        return self.key.id_

    @property
    def topic(self) -> str:
        return self.key.topic

    @property
    def queue(self) -> str:
        return self.key.queue

    @property
    def priority(self) -> int:
        return self.key.priority

    def __repr__(self) -> str:
        return (
            f"Delivery(id_={self.key.id_!r}, topic={self.key.topic!r}, queue={self.key.queue!r}, "
            f"category={self.category.value}, attempt={self.parameters.attempt})"
        )


@runtime_checkable
class ConsumerT(Protocol):
    """Hands out deliveries of one queue (and category) to a worker.

    `consume()` may be awaited by many tasks at once; it is cancel-safe (a cancelled call never
    takes a message). It never hands out more than `max_unacked_messages` unsettled deliveries
    (backpressure), and waits while paused.
    """

    async def start(self) -> None: ...

    async def pause(self) -> None: ...

    async def unpause(self) -> None: ...

    async def finish(self) -> None: ...

    async def consume(self) -> Delivery:
        """Wait for and return the next delivery."""
        ...

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        """Return up to `max_count` deliveries available within `timeout` seconds (maybe none)."""
        ...

    async def __aenter__(self) -> ConsumerT: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def __aiter__(self) -> AsyncIterator[Delivery]: ...


class BaseConsumer:
    """The part of `ConsumerT` that is the same for every broker: `async with` starts and
    finishes the consumer, `async for` yields deliveries until the consumer is finished."""

    async def start(self) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        raise NotImplementedError

    async def consume(self) -> Delivery:
        raise NotImplementedError

    async def __aenter__(self: _C) -> _C:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            try:
                yield await self.consume()
            except ConsumerClosedError:
                return


_C = TypeVar("_C", bound=BaseConsumer)


@runtime_checkable
class MessageBrokerT(Protocol):
    """A message broker (1.6 method names, delivery-handle semantics)."""

    capabilities: BrokerCapabilities

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        """Publish one message durably; return only when the broker has it.

        A message whose id is already pending (queued, delayed or in flight) in that queue is not
        added twice. Raises `QueueNotDeclaredError`, `MessageTooLargeError` or
        `BrokerUnavailableError`; nothing is sent when it raises.
        """
        ...

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish several messages with as few round trips as the broker allows."""
        ...

    async def ack(self, key: Delivery) -> bool:
        """The delivery succeeded: remove the message. False if the delivery was stale."""
        ...

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        """Move the message to the dead part of its queue (with `parameters`' dead-letter info)."""
        ...

    async def reject(self, key: Delivery) -> bool:
        """Return the message to its queue unchanged (no attempt counted)."""
        ...

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        """Replace the message with a new version (e.g. retry, next tick) atomically.

        If the new parameters carry a future `next_execution_time` the message is delayed.
        """
        ...

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Extend the leases of deliveries whose actors are still running."""
        ...

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> ConsumerT: ...

    async def queue_declare(self, queue_name: str) -> None: ...

    async def queue_flush(self, queue_name: str) -> None: ...

    async def queue_delete(self, queue_name: str) -> None: ...


@runtime_checkable
class BucketBrokerT(Protocol):
    """Key-value storage of args buckets or result buckets, with TTL."""

    use_result_bucket: bool

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def get_bucket(self, id_: str) -> BucketT | None: ...

    async def store_bucket(self, id_: str, payload: BucketT) -> None: ...

    async def delete_bucket(self, id_: str) -> None: ...


# -- optional features --------------------------------------------------------------------------
# A broker that has one declares the matching `BrokerCapabilities` field; `<feature>_of()` checks
# both, so callers are typed by the protocol instead of looking methods up by name.


@runtime_checkable
class SupportsCancellation(Protocol):
    """Cancel jobs by id (`Job.cancel`); the worker stops running ones it is told about."""

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Remove a waiting job ("dequeued") or flag a running one ("requested"); None when
        no pending or running message has that id."""
        ...

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a cancellation request."""
        ...

    async def cancel_finished(self, id_: str) -> None:
        """The cancelled job `id_` stopped: forget its request."""
        ...


@runtime_checkable
class SupportsWorkerRegistry(Protocol):
    """Live workers, recorded by their heartbeats (`Connection.workers()`, `repid workers`)."""

    async def heartbeat(self, info: WorkerInfo) -> None: ...

    async def unregister_worker(self, worker_id: str) -> None: ...

    async def live_workers(self, stale_after: float = ...) -> list[WorkerInfo]: ...


@runtime_checkable
class SupportsActorLimits(Protocol):
    """Per-actor concurrency and rate limits, shared by every worker that shares the state."""

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> ActorLimiter: ...


@runtime_checkable
class SupportsInspection(Protocol):
    """Queue names and per-part message counts (CLI, metrics, dashboards)."""

    async def queue_names(self) -> list[str]: ...

    async def counts(self, queue_name: str) -> dict[str, int]: ...


@runtime_checkable
class SupportsLiveness(Protocol):
    """Whether the broker reaches its server now, asked without consuming (health checks)."""

    async def ping(self) -> bool: ...


@runtime_checkable
class SupportsEventBus(Protocol):
    """Lifecycle events on the broker's native pub/sub, one channel per broker namespace.

    At-most-once: a subscriber receives the events published while it is subscribed, in the
    order each publisher published them; nothing is stored for a subscriber that is not there.
    """

    @property
    def event_subscriptions(self) -> int:
        """Subscriptions of this broker object now open (0 once every one is closed)."""
        ...

    @property
    def max_event_size(self) -> int | None:
        """The largest event payload the pub/sub takes, in bytes (None: no limit that an
        event reaches); longer tracebacks are cut to fit."""
        ...

    async def publish_event(self, data: bytes) -> None:
        """Publish one encoded event to the current subscribers (raises on a broker error)."""
        ...

    def subscribe_events(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe on entering; the iterator yields each event published from then on.

        Leaving the context unsubscribes and releases what the subscription held.
        """
        ...


@runtime_checkable
class SupportsResultWait(Protocol):
    """A bucket broker that can wait for a bucket to appear (`Job.wait`) better than polling."""

    async def wait_bucket(self, id_: str, timeout: float | None) -> BucketT | None: ...


async def poll_bucket(
    get: Callable[[], Awaitable[BucketT | None]],
    timeout: float | None,
    *,
    first_pause: float,
    max_pause: float,
) -> BucketT | None:
    """Call `get()` until it returns a bucket; None once `timeout` seconds have passed (None: no
    limit). The pause between two calls doubles from `first_pause` up to `max_pause`, and never
    runs past the deadline (the last call is made at it)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause = first_pause
    while True:
        bucket = await get()
        if bucket is not None:
            return bucket
        if deadline is not None and loop.time() >= deadline:
            return None
        wait = pause if deadline is None else min(pause, max(0.0, deadline - loop.time()))
        await asyncio.sleep(wait)
        pause = min(pause * 2, max_pause)


def cancellation_of(broker: MessageBrokerT) -> SupportsCancellation | None:
    """`broker` as `SupportsCancellation` when it declares `cancellation`, else None."""
    if not broker.capabilities.cancellation:
        return None
    if isinstance(broker, SupportsCancellation):
        return broker
    raise _not_implemented(broker, "cancellation", SupportsCancellation)


def worker_registry_of(broker: MessageBrokerT) -> SupportsWorkerRegistry | None:
    """`broker` as `SupportsWorkerRegistry` when it declares `worker_registry`, else None."""
    if not broker.capabilities.worker_registry:
        return None
    if isinstance(broker, SupportsWorkerRegistry):
        return broker
    raise _not_implemented(broker, "worker_registry", SupportsWorkerRegistry)


def liveness_of(broker: MessageBrokerT) -> SupportsLiveness | None:
    """`broker` as `SupportsLiveness` when it declares `liveness`, else None."""
    if not broker.capabilities.liveness:
        return None
    if isinstance(broker, SupportsLiveness):
        return broker
    raise _not_implemented(broker, "liveness", SupportsLiveness)


def actor_limits_of(broker: MessageBrokerT) -> SupportsActorLimits | None:
    """`broker` as `SupportsActorLimits` when it declares `actor_limits`, else None."""
    if not broker.capabilities.actor_limits:
        return None
    if isinstance(broker, SupportsActorLimits):
        return broker
    raise _not_implemented(broker, "actor_limits", SupportsActorLimits)


def inspection_of(broker: MessageBrokerT) -> SupportsInspection | None:
    """`broker` as `SupportsInspection` when it declares `inspection`, else None."""
    if not broker.capabilities.inspection:
        return None
    if isinstance(broker, SupportsInspection):
        return broker
    raise _not_implemented(broker, "inspection", SupportsInspection)


def event_bus_of(broker: MessageBrokerT) -> SupportsEventBus | None:
    """`broker` as `SupportsEventBus` when it declares `event_bus`, else None."""
    if not broker.capabilities.event_bus:
        return None
    if isinstance(broker, SupportsEventBus):
        return broker
    raise _not_implemented(broker, "event_bus", SupportsEventBus)


def _not_implemented(broker: object, capability: str, protocol: type) -> TypeError:
    return TypeError(
        f"{type(broker).__name__} declares {capability} but does not implement {protocol.__name__}"
    )
