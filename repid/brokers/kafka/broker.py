"""Kafka message broker (aiokafka): a topic per queue, a consumer group per queue, offsets
committed up to the first unfinished message. Design and internals: docs/brokers/kafka.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from pydantic_core import to_json

from repid.brokers.base import (
    BrokerCapabilities,
    BucketBrokerT,
    ConnectionPolicy,
    Delivery,
    OutgoingMessage,
)
from repid.brokers.kafka._events import KafkaEventBus
from repid.brokers.kafka.consumer import KafkaConsumer
from repid.brokers.kafka.publisher import UNAVAILABLE, Publisher, fast_path_default
from repid.brokers.kafka.reading import end_offsets, queue_counts, read_topic
from repid.brokers.kafka.records import DEAD_HEADER, REMOVE_HEADER, Removal
from repid.brokers.kafka.servers import check_bootstrap_servers
from repid.brokers.kafka.topics import TopicAdmin
from repid.brokers.kafka.unique_ids import UniqueIds
from repid.codec import encode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotDeclaredError,
    map_broker_errors,
)
from repid.ids import generated_here
from repid.state.local import LocalOrShared

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState

__all__ = ["KafkaMessageBroker"]

logger = logging.getLogger("repid.brokers.kafka")

_DEFAULT_POLICY = ConnectionPolicy(
    connect_timeout=10.0, operation_timeout=10.0, reconnect_backoff=0.1
)
"""Before 2.0 one `timeout` (10 s) bounded both; 0.1 s is aiokafka's own retry backoff."""


class KafkaMessageBroker(LocalOrShared, KafkaEventBus):
    """A message broker on Apache Kafka (or any Kafka-protocol server).

    Each queue is three topics: `<prefix><queue>` (ready messages), `<prefix><queue>.delayed`
    (delays and retries, moved to the queue when due) and `<prefix><queue>.dead` (dead letters),
    consumed by the consumer group `<prefix><queue>`.

    Args:
        bootstrap_servers: `host:port` of one or more brokers of the cluster.
        topic_prefix: prepended to every topic and consumer-group name.
        partitions: partitions of a queue's topic when `queue_declare` creates it; one worker
            process consumes at most this many in parallel. Order is kept per partition.
        replication_factor: replication of the created topics.
        max_message_size: largest envelope `enqueue` accepts, in bytes (keep it at or below the
            topic's `max.message.bytes`).
        connect_timeout: seconds `connect()` (and a consumer's start) waits for the cluster
            before raising `BrokerUnavailableError` (default 10).
        operation_timeout: seconds `enqueue` and administrative calls wait for the cluster
            before raising `BrokerUnavailableError` (default 10).
        reconnect_backoff: seconds the clients wait before retrying a failed connection or
            metadata request (aiokafka's `retry_backoff_ms`; default 0.1).
        timeout: the older name (before 2.0) for both `connect_timeout` and
            `operation_timeout`; an alias that sets whichever of them is not given.
        linger_ms: how long the producer waits to batch concurrent sends (0: batch only what
            piles up while a request is in flight).
        commit_interval: seconds between offset commits of a consumer (coalesced).
        drain_timeout: on a rebalance, seconds a consumer waits for the running messages of the
            partitions it loses before leaving them to the next owner (who runs them again).
        session_timeout: seconds after which the group drops a consumer that stopped
            heartbeating (a crashed worker); its partitions wait that long for a new owner.
        commit_on_revoke: commit the finished prefix of revoked partitions during a rebalance
            (Kafka's documented pattern). False abandons it to the next owner instead (more
            duplicates) for servers that refuse commits during a rebalance, like noida-db.
        unique_ids: where ids given by the user (`Job(id_=...)`) are remembered while pending.
            Default: in this process only. Pass a shared bucket broker (e.g.
            `RedisBucketBroker(dsn)`) to enforce unique ids across processes (check-then-set);
            this broker connects and disconnects it. `shared_state` does that atomically and
            more: prefer it.
        unique_ttl: how long a pending unique id is remembered at most (with `unique_ids`;
            the shared state has its own `unique_ttl`).
        client_options: extra keyword arguments for every aiokafka client (security, SASL...).
        fast_path: send a lone message to an idle partition from the `enqueue()` call's own
            task instead of through aiokafka's sender task (see the docs, "Internals"). None
            (the default): on, unless the environment variable `REPID_FAST_PATH` is 0 (read
            when the broker is created).
        shared_state: a `RedisSharedState` through which every process shares unique ids,
            cancellations, per-actor limits and the worker registry (`capabilities.shared_state`
            becomes True). This broker connects and disconnects it. Without it, those are kept
            per process. Not together with `unique_ids`.
    """

    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:19092",
        *,
        topic_prefix: str = "",
        partitions: int = 1,
        replication_factor: int = 1,
        max_message_size: int = 1_000_000,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
        timeout: float | None = None,
        linger_ms: int = 0,
        commit_interval: float = 0.2,
        drain_timeout: float = 5.0,
        session_timeout: float = 10.0,
        commit_on_revoke: bool = True,
        unique_ids: BucketBrokerT | None = None,
        unique_ttl: timedelta = timedelta(days=1),
        client_options: Mapping[str, Any] | None = None,
        shared_state: RedisSharedState | None = None,
        fast_path: bool | None = None,
    ) -> None:
        if partitions < 1:
            raise ConfigurationError("partitions must be >= 1")
        policy = ConnectionPolicy.resolve(
            connect_timeout,
            operation_timeout,
            reconnect_backoff,
            defaults=_DEFAULT_POLICY,
            timeout=timeout,
        )
        if commit_interval <= 0 or drain_timeout < 0:
            raise ConfigurationError("commit_interval must be > 0, drain_timeout >= 0")
        if shared_state is not None and unique_ids is not None:
            raise ConfigurationError("pass unique_ids or shared_state, not both")
        self.bootstrap_servers = check_bootstrap_servers(bootstrap_servers)
        self.topic_prefix = topic_prefix
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.max_message_size = max_message_size
        self.connection_policy = policy
        self.connect_timeout = policy.connect_timeout
        self.operation_timeout = policy.operation_timeout
        self.reconnect_backoff = policy.reconnect_backoff
        self.fast_path = fast_path_default() if fast_path is None else fast_path
        self.linger_ms = linger_ms
        self.commit_interval = commit_interval
        self.drain_timeout = drain_timeout
        self.session_timeout = session_timeout
        self.commit_on_revoke = commit_on_revoke
        self.unique_ttl = unique_ttl
        self.client_options: dict[str, Any] = dict(client_options or {})
        self.capabilities = BrokerCapabilities(
            strict_priorities=False,
            native_delays=True,
            native_dead_letters=True,
            lease_renewal=False,
            per_partition_order=partitions > 1,
            shared_state=shared_state is not None,
            persistent=True,
            max_message_size=max_message_size,
            lease_duration=None,
            cancellation=True,
            worker_registry=True,
            actor_limits=True,
            inspection=True,
            liveness=True,
            event_bus=True,
        )
        self._unique = UniqueIds(f"repid-kafka-unique:{topic_prefix}", unique_ttl, unique_ids)
        self._init_local_or_shared(shared_state)
        if shared_state is not None:
            shared_state.running = self._runs_here
        self.tombstones: dict[tuple[str, str], float] = (
            {} if shared_state is None else shared_state.tombstones
        )
        """(queue, id) -> newest creation time of cancelled waiting messages (shared state)."""
        self._publisher = Publisher(
            self._new_producer, self.operation_timeout, max_message_size, self.fast_path
        )
        self._admin = TopicAdmin(self.client_kwargs, self.operation_timeout, replication_factor)
        self._declared: set[str] = set()
        self.consumers: set[KafkaConsumer] = set()
        """The started consumers of this broker (each adds and removes itself)."""
        self.is_connected = False

    def __repr__(self) -> str:
        return f"KafkaMessageBroker({self.bootstrap_servers!r}, topic_prefix={self.topic_prefix!r})"

    @property
    def timeout(self) -> float:
        """The older name of `operation_timeout`."""
        return self.operation_timeout

    # -- names -----------------------------------------------------------------------------

    def topic(self, queue_name: str, category: MessageCategory = MessageCategory.NORMAL) -> str:
        """The topic holding one part of a queue."""
        base = f"{self.topic_prefix}{queue_name}"
        if category is MessageCategory.DELAYED:
            return f"{base}.delayed"
        if category is MessageCategory.DEAD:
            return f"{base}.dead"
        return base

    def group(self, queue_name: str) -> str:
        """The consumer group of a queue."""
        return f"{self.topic_prefix}{queue_name}"

    def _topics(self, queue_name: str) -> list[str]:
        return [self.topic(queue_name, category) for category in MessageCategory]

    # -- connection ------------------------------------------------------------------------

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client of this broker."""
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "retry_backoff_ms": int(self.reconnect_backoff * 1000),
            **self.client_options,
        }

    async def connect(self) -> None:
        """Start the producer and the admin client; `BrokerUnavailableError` if unreachable."""
        if self.is_connected:
            return
        what = f"Kafka at {self.bootstrap_servers!r} is unreachable: connecting"
        try:
            with map_broker_errors({(*UNAVAILABLE, KafkaError): BrokerUnavailableError}, what):
                await asyncio.wait_for(self._start_clients(), self.connect_timeout)
        except BaseException:
            await self._stop_clients()
            raise
        await self._unique.connect()
        if self._state is not None:
            await self._state.connect()
        self.is_connected = True

    async def _start_clients(self) -> None:
        await self._publisher.start()
        await self._admin.start()

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_batch_size=max(16384, min(self.max_message_size + 1024, 1 << 20)),
            max_request_size=self.max_message_size + 1024,
            request_timeout_ms=int(self.operation_timeout * 1000),
            metadata_max_age_ms=5000,
            **self.client_kwargs(),
        )

    async def _stop_clients(self) -> None:
        await self._publisher.stop()
        await self._admin.close()

    async def ping(self) -> bool:
        """The cluster answers a metadata request (the admin client's `list_topics`)."""
        await self._admin.names()
        return True

    async def disconnect(self) -> None:
        """Stop this broker's consumers and clients."""
        self.is_connected = False
        for consumer in list(self.consumers):
            await consumer.finish()
        await self.flush_releases()
        await self._stop_clients()
        await self._unique.disconnect()
        if self._state is not None:
            await self._state.disconnect()

    def require_admin(self) -> AIOKafkaAdminClient:
        """The started admin client (`BrokerUnavailableError` when not connected)."""
        return self._admin.require()

    # -- queues ------------------------------------------------------------------------------

    async def queue_declare(self, queue_name: str) -> None:
        """Create the queue's topics (no effect on those that exist)."""
        partitions = {
            self.topic(queue_name): self.partitions,
            self.topic(queue_name, MessageCategory.DELAYED): 1,
            self.topic(queue_name, MessageCategory.DEAD): 1,
        }
        await self._admin.create(partitions, f"creating the topics of {queue_name!r}")
        self._declared.add(queue_name)
        for consumer in self._local_consumers(queue_name):
            await consumer.topics_recreated()

    async def queue_exists(self, queue_name: str) -> bool:
        """The queue's topic exists (remembered once seen)."""
        if queue_name in self._declared:
            return True
        if self.topic(queue_name) in await self._admin.names():
            self._declared.add(queue_name)
            return True
        return False

    async def queue_flush(self, queue_name: str) -> None:
        """Delete every record of the queue's three topics (Kafka `DeleteRecords`).

        Consumers of the queue in this process drop what they had fetched; their running
        messages' settlements become stale.
        """
        if not await self.queue_exists(queue_name):
            raise QueueNotDeclaredError(queue_name)
        for consumer in self._local_consumers(queue_name):
            consumer.forget_fetched()
        ends = await end_offsets(self, self._topics(queue_name))
        await self._admin.delete_records(ends, f"flushing {queue_name!r}")
        await self._forget_unique_ids(queue_name)

    async def queue_delete(self, queue_name: str) -> None:
        """Delete the queue's topics (and with them its messages)."""
        self._declared.discard(queue_name)
        for consumer in self._local_consumers(queue_name):
            consumer.forget_fetched(topics_deleted=True)
        await self._admin.delete(self._topics(queue_name), f"deleting {queue_name!r}")
        await self._forget_unique_ids(queue_name)
        # The idempotent producer keeps sequence numbers per partition: a recreated topic
        # would refuse them. Start a new producer (a new producer id).
        await self._publisher.restart()

    async def queue_names(self) -> list[str]:
        """Names of the queues on the cluster (topics with this broker's prefix)."""
        topics = await self._admin.names()
        prefix = self.topic_prefix
        return sorted(
            t[len(prefix) :]
            for t in topics
            if t.startswith(prefix) and "." not in t[len(prefix) :] and not t.startswith("__")
        )

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Messages per part of the queue: ready, delayed, in_flight, dead (approximate).

        Computed from offsets: `ready` is the group's lag on the queue's topic minus what
        consumers of this process are running (`in_flight`; other processes' running messages
        count as ready), `delayed` the lag on the delay topic and `dead` the records of the dead
        topic. Removal markers and re-appended delayed messages are counted too.
        """
        if not await self.queue_exists(queue_name):
            raise QueueNotDeclaredError(queue_name)
        running = sum(len(c._running) for c in self._local_consumers(queue_name))
        return await queue_counts(self, queue_name, running)

    def _local_consumers(self, queue_name: str) -> list[KafkaConsumer]:
        return [c for c in self.consumers if c.queue_name == queue_name]

    # -- publishing ------------------------------------------------------------------------

    def _encode(self, key: RoutingKey, payload: str, params: Parameters) -> bytes:
        value = encode_message(key, payload, params)
        if len(value) > self.max_message_size:
            raise MessageTooLargeError(len(value), self.max_message_size)
        return value

    def _destination(self, key: RoutingKey, params: Parameters) -> str:
        due = params.not_before
        if due is not None and due > time.time():
            return self.topic(key.queue, MessageCategory.DELAYED)
        return self.topic(key.queue)

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        """Publish one message; return once every in-sync replica has it (`acks=all`).

        Raises:
            QueueNotDeclaredError: the queue's topic does not exist.
            MessageTooLargeError: the envelope exceeds `max_message_size`; nothing sent.
            BrokerUnavailableError: the cluster did not take it within `timeout` seconds.
        """
        params = params or Parameters()
        value = self._encode(key, payload, params)
        if key.queue not in self._declared and not await self.queue_exists(key.queue):
            raise QueueNotDeclaredError(key.queue)
        if not generated_here(key.id_) and not await self._claim_unique(key, params):
            logger.debug("message %s is already pending in %s; not added again", key.id_, key.queue)
            return
        await self.publish(self._destination(key, params), value)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish several messages in as few produce requests as the producer can batch."""
        encoded = [
            (key, params, self._encode(key, payload, params)) for key, payload, params in messages
        ]
        for queue in {key.queue for key, _, _ in encoded}:
            if queue not in self._declared and not await self.queue_exists(queue):
                raise QueueNotDeclaredError(queue)
        sends = []
        for key, params, value in encoded:
            if not generated_here(key.id_) and not await self._claim_unique(key, params):
                continue
            sends.append(self.publish(self._destination(key, params), value))
        await asyncio.gather(*sends)

    async def publish(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Write one record to `topic`; return once every in-sync replica has it.

        Raises:
            MessageTooLargeError: larger than the producer accepts; nothing sent.
            BrokerUnavailableError: no acknowledgement within `operation_timeout`.
        """
        await self._publisher.send(topic, value, headers, partition)

    async def send_removal(
        self, queue_name: str, removal: Removal, *categories: MessageCategory
    ) -> None:
        """Append a removal marker (a record with no payload) to every partition of parts of
        a queue (a marker only applies to the records of its own partition)."""
        header = [(REMOVE_HEADER, to_json(list(removal)))]
        sends: list[Coroutine[Any, Any, None]] = []
        for category in categories:
            topic = self.topic(queue_name, category)
            partitions = sorted(await self._publisher.partitions_for(topic))
            sends.extend(self.publish(topic, b"", header, p) for p in partitions)
        await asyncio.gather(*sends)

    # -- unique ids ----------------------------------------------------------------------------

    def _unique_key(self, queue_name: str, id_: str) -> str:
        return self._unique.entry(queue_name, id_)

    async def _claim_unique(self, key: RoutingKey, params: Parameters) -> bool:
        """Remember a user-given id as pending; False if it already is (atomic only with
        shared state)."""
        if self._state is not None:
            stamp = params.timer.timestamp.timestamp()
            return await self._state.claim(key.queue, key.id_, stamp, params.not_before)
        return await self._unique.claim(key.queue, key.id_)

    def _runs_here(self, id_: str) -> bool:
        return any(consumer.is_running(id_) for consumer in self.consumers)

    async def release_unique(self, key: RoutingKey, *, together: bool = False) -> None:
        """The message left the pending state (settled or removed): free its id.

        `together` (the worker's settling): an id kept in a network store (e.g.
        `RedisBucketBroker`) is deleted along with the other ids released in the same
        event-loop step, in one request, instead of one round trip per message;
        `flush_releases()` waits for that.
        """
        here = generated_here(key.id_)
        if self._state is not None:
            if here:
                self._state.settled(key.id_)
            else:
                self._state.release(key.queue, key.id_)
            return
        if here:
            return  # never stored: an id drawn in this process is unique by construction
        await self._unique.release(key.queue, key.id_, together=together)

    async def flush_releases(self) -> None:
        """Wait until the ids released `together` so far are deleted from the store."""
        await self._unique.flush()

    async def _forget_unique_ids(self, queue_name: str) -> None:
        if self._state is not None:
            await self._state.forget_queue(queue_name)
        self._unique.forget_queue(queue_name)

    # -- settling -----------------------------------------------------------------------------

    async def ack(self, key: Delivery) -> bool:
        """Done: the message's offset counts as finished (committed with its prefix)."""
        if key.category is not MessageCategory.NORMAL:
            return await self._remove_browsed(key)
        self._job_over(key.key.id_)
        return await KafkaConsumer.settle(key, None)

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        """Write the message to `<queue>.dead`, then finish its offset."""
        if key.category is MessageCategory.DEAD:
            return True
        self._job_over(key.key.id_)
        params = key.parameters if parameters is None else parameters
        headers = None
        if key.decode_error is not None:  # keep the raw bytes; the parameters go in a header
            value = key.raw or b""
            headers = [(DEAD_HEADER, to_json(params.encode()))]
        else:
            value = encode_message(key.key, key.payload, params)
        dead = self.topic(key.key.queue, MessageCategory.DEAD)
        if key.category is MessageCategory.DELAYED:
            await self.publish(dead, value, headers)
            return await self._remove_browsed(key)
        return await KafkaConsumer.settle(key, (dead, value, headers))

    async def reject(self, key: Delivery) -> bool:
        """Give the message back: handed out again by the same consumer, or by the next owner."""
        if key.category is not MessageCategory.NORMAL:
            return True
        return await KafkaConsumer.give_back(key)

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        """Publish the new version (to `.delayed` if it is not due yet), then finish the old."""
        params = key.parameters if params is None else params
        new_payload = key.payload if payload is None else payload
        value = self._encode(key.key, new_payload, params)
        destination = self._destination(key.key, params)
        if key.category is not MessageCategory.NORMAL:
            await self.publish(destination, value)
            done = await self._remove_browsed(key)
        else:
            done = await KafkaConsumer.settle(key, (destination, value, None), keep_id=True)
        if done and self._state is not None and not generated_here(key.key.id_):
            # Still pending (a retry, the next tick, a dead letter sent back to work).
            stamp = params.timer.timestamp.timestamp()
            await self._state.renew(key.key.queue, key.key.id_, stamp, params.not_before)
        return done

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """No leases on Kafka: a delivery stays owned while its partition is assigned."""

    async def _remove_browsed(self, key: Delivery) -> bool:
        handle = key.handle
        removal = Removal(key.key.id_, key.parameters.timer.timestamp.timestamp())
        await self.send_removal(key.key.queue, removal, key.category)
        if key.category is MessageCategory.DELAYED:
            await self.release_unique(key.key)
        return bool(handle is not None)

    # -- consuming ----------------------------------------------------------------------------

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> KafkaConsumer:
        """A consumer of one part of a queue (NORMAL: joins the queue's consumer group)."""
        return KafkaConsumer(self, queue, topics, max_unacked_messages, category)

    # -- cancellation, limits and worker registry (this process, or shared) --------------------

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Cancel job `id_`: "requested" if it runs (in this process; with shared state, in any
        worker process that answers within half a second), "dequeued" if it waits.

        A waiting job is found by reading the pending part of the queue (cost proportional
        to the backlog; with shared state, a user-given id is looked up in Redis instead).
        It is removed with a removal marker; without shared state a consumer that has already
        handed it to an actor in another process runs it anyway, with shared state every
        consumer also drops it before handing it out (see docs/brokers/kafka.md).
        """
        for consumer in self._local_consumers(queue_name):
            if consumer.is_running(id_):
                self._cancel_requests.add(id_)
                return "requested"
        found = False
        for consumer in self._local_consumers(queue_name):
            found = consumer.drop_buffered(id_) or found
        state = self._state
        if state is not None:
            if found:
                await self.release_unique(RoutingKey(id_, "", queue_name))
                return "dequeued"
            stamp = None
            if not await state.is_pending(queue_name, id_):  # not a user-given id: look
                stamp = await self._pending_somewhere(queue_name, id_)
            outcome = await state.cancel(queue_name, id_, stamp)
            if outcome == "dequeued":  # out of the delay topic and of readers' view too
                removal = Removal(id_, None)
                await self.send_removal(
                    queue_name, removal, MessageCategory.NORMAL, MessageCategory.DELAYED
                )
            return outcome
        if not found:
            found = await self._pending_somewhere(queue_name, id_) is not None
        if not found:
            return None
        removal = Removal(id_, None)
        await self.send_removal(
            queue_name, removal, MessageCategory.NORMAL, MessageCategory.DELAYED
        )
        await self._unique.release(queue_name, id_)
        return "dequeued"

    async def _pending_somewhere(self, queue_name: str, id_: str) -> float | None:
        """The creation time of a waiting message of `id_`, read from the queue (None)."""
        for category in (MessageCategory.NORMAL, MessageCategory.DELAYED):
            for delivery in await read_topic(self, queue_name, category):
                if delivery.key.id_ == id_:
                    return delivery.parameters.timer.timestamp.timestamp()
        return None

    def is_tombstoned(self, delivery: Delivery) -> bool:
        """Called by consumers before handing out a delivery while cancellations wait."""
        return self._state is not None and self._state.take_tombstone(delivery)
