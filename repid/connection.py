"""`Connection`: a message broker plus optional args and results bucket brokers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta

from repid.brokers.base import (
    BucketBrokerT,
    MessageBrokerT,
    SupportsEventBus,
    event_bus_of,
    worker_registry_of,
)
from repid.errors import BrokerError, ConfigurationError
from repid.event_stream import BrokerEvents, EventPublisher
from repid.lifecycle import EventHandler, EventKind, WorkerInfo
from repid.middlewares import (
    MiddlewareDispatcher,
    instrument_bucket_broker,
    instrument_message_broker,
)
from repid.records import BucketRecordStore, JobRecord, RecordStore, RecordWriter

__all__ = ["Connection"]


class Connection:
    """What producers and workers talk to.

    Args:
        message_broker: moves the messages (in-memory, Redis, RabbitMQ, Kafka).
        args_bucket_broker: stores large job arguments outside the messages (optional).
        results_bucket_broker: stores actor results; must be created with
            `use_result_bucket=True` (optional; needed for `await job.result`).
        records: keep a record of every job, readable by id from any process
            (`job_state`): True keeps them in the results bucket broker; or pass a
            `RecordStore`. Off by default (each event then costs a read and a write).
        record_retention: how long a record is kept after its last change.
        error_history: failed attempts kept in each record (time, type, message, traceback,
            worker), at most `error_bytes` of text in all.
        publish_events: publish every job lifecycle event this connection emits on the
            message broker's pub/sub, for `connection.events()` in any process. Off by default
            (a publish per event); never slows a job: events are buffered and published in the
            background, and a failed publish is logged and dropped.
    """

    def __init__(
        self,
        message_broker: MessageBrokerT,
        args_bucket_broker: BucketBrokerT | None = None,
        results_bucket_broker: BucketBrokerT | None = None,
        *,
        records: bool | RecordStore = False,
        record_retention: timedelta | None = timedelta(days=7),
        error_history: int = 5,
        error_bytes: int = 16_384,
        publish_events: bool = False,
    ) -> None:
        if args_bucket_broker is not None and getattr(
            args_bucket_broker, "use_result_bucket", False
        ):
            raise ConfigurationError(
                "args_bucket_broker must be created with use_result_bucket=False"
            )
        if results_bucket_broker is not None and not getattr(
            results_bucket_broker, "use_result_bucket", False
        ):
            raise ConfigurationError(
                "results_bucket_broker must be created with use_result_bucket=True"
            )
        self.raw_message_broker: MessageBrokerT = message_broker
        """The broker as given, without middleware instrumentation."""
        self.raw_args_bucket_broker: BucketBrokerT | None = args_bucket_broker
        self.raw_results_bucket_broker: BucketBrokerT | None = results_bucket_broker
        self.middleware = MiddlewareDispatcher()
        self.message_broker: MessageBrokerT = message_broker
        """The broker every call goes through: `raw_message_broker`, instrumented by the
        middlewares once `use_middlewares` is called."""
        self.args_bucket_broker: BucketBrokerT | None = args_bucket_broker
        self.results_bucket_broker: BucketBrokerT | None = results_bucket_broker
        self.is_open = False
        self.events = BrokerEvents(self._event_bus)
        """Job lifecycle event handlers (see `on_event`); called, a subscription to the events
        published on the broker (`async for event in connection.events(...)`)."""
        self.header_providers: list[Callable[[], Mapping[str, str] | None]] = []
        """Called at every enqueue; the headers they return travel with the message
        (`Parameters.headers`), e.g. trace context."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the connection was opened on (its clients belong to it)."""
        self.records: RecordWriter | None = None
        """What writes the job records (None: records are off)."""
        if records is not False:
            store: RecordStore
            if records is True:
                if results_bucket_broker is None:
                    raise ConfigurationError(
                        "records=True keeps records in the results bucket broker: pass one, "
                        "or a RecordStore"
                    )
                store = BucketRecordStore(results_bucket_broker)
            else:
                store = records
            self.records = RecordWriter(
                store,
                retention=record_retention,
                error_history=error_history,
                error_bytes=error_bytes,
            )
            self.events.add(self.records)
        self.event_publisher: EventPublisher | None = None
        """What publishes the events on the broker (None: `publish_events` is off)."""
        if publish_events:
            self.event_publisher = EventPublisher(self._event_bus())
            self.events.add(self.event_publisher)

    def _event_bus(self) -> SupportsEventBus:
        bus = event_bus_of(self.raw_message_broker)
        if bus is None:
            broker = self.raw_message_broker
            reason = getattr(broker, "event_bus_unavailable", None) or "it declares event_bus=False"
            raise BrokerError(f"{type(broker).__name__} has no event bus: {reason}")
        return bus

    def on_event(
        self, handler: EventHandler, kinds: Iterable[EventKind | str] | None = None
    ) -> EventHandler:
        """Call `handler(event)` (sync or async) for job lifecycle events of `kinds` (default all).

        Returns the handler, so it can be used as a decorator.
        """
        self.events.add(handler, kinds)
        return handler

    def remove_event_handler(self, handler: EventHandler) -> bool:
        """Stop calling `handler` (registered with `on_event`); False if it was not registered."""
        if handler is self.records:
            raise ConfigurationError("the job-records writer cannot be removed")
        if handler is self.event_publisher:
            raise ConfigurationError("the event publisher cannot be removed")
        return self.events.remove(handler)

    async def job_state(self, job_id: str) -> JobRecord | None:
        """The record of job `job_id` (status, attempts, worker, timings, errors), written by
        the producer and the workers of any process sharing the store; None if there is none.

        Raises:
            ConfigurationError: the connection keeps no records (`Connection(records=True)`).
        """
        if self.records is None:
            raise ConfigurationError("job_state() needs job records: Connection(..., records=True)")
        return await self.records.store.get(job_id)

    async def live_workers(self, stale_after: float | None = None) -> list[WorkerInfo]:
        """The workers that heartbeat on this connection's broker, oldest first.

        Args:
            stale_after: seconds of silence after which a worker is no longer listed; the
                default is 3 default heartbeat intervals (15 s). Pass a shorter window when the
                workers use a shorter `Worker(heartbeat_interval=...)`.

        Raises:
            BrokerError: the broker does not keep a worker registry.
        """
        registry = worker_registry_of(self.raw_message_broker)
        if registry is None:
            raise BrokerError(f"{type(self.raw_message_broker).__name__} keeps no worker registry")
        if stale_after is None:
            return await registry.live_workers()
        return await registry.live_workers(stale_after)

    def use_middlewares(self, dispatcher: MiddlewareDispatcher) -> None:
        """Route every broker call through `dispatcher` (done by `Repid`)."""
        self.middleware = dispatcher
        self.message_broker = instrument_message_broker(self.raw_message_broker, dispatcher)
        self.args_bucket_broker = instrument_bucket_broker(self.raw_args_bucket_broker, dispatcher)
        self.results_bucket_broker = instrument_bucket_broker(
            self.raw_results_bucket_broker, dispatcher
        )

    def update_from_config(self) -> None:
        """Tell each broker that has an `update_from_config()` method to re-read `Config`.

        Called by `Repid(connection, update_config=True)` (repid 1.6).
        """
        for broker in (
            self.raw_message_broker,
            self.raw_args_bucket_broker,
            self.raw_results_bucket_broker,
        ):
            update = getattr(broker, "update_from_config", None)
            if callable(update):
                update()

    async def connect(self) -> Connection:
        """Connect every broker; idempotent."""
        if self.is_open:
            return self
        try:  # the in-memory test client may drive this coroutine without a loop
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        await self.raw_message_broker.connect()
        if self.raw_args_bucket_broker is not None:
            await self.raw_args_bucket_broker.connect()
        if self.raw_results_bucket_broker is not None:
            await self.raw_results_bucket_broker.connect()
        self.is_open = True
        return self

    async def disconnect(self) -> None:
        """Disconnect every broker; idempotent."""
        if not self.is_open:
            return
        self.is_open = False
        if self.event_publisher is not None:
            await self.event_publisher.close()
        await self.raw_message_broker.disconnect()
        if self.raw_args_bucket_broker is not None:
            await self.raw_args_bucket_broker.disconnect()
        if self.raw_results_bucket_broker is not None:
            await self.raw_results_bucket_broker.disconnect()

    async def __aenter__(self) -> Connection:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()
