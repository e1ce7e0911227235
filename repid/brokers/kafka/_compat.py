"""Every access to aiokafka below its public API (SPEC §5): the direct-send fast path of the
producers repid creates, and read-only looks into its consumers' group coordination.

How the fast path works and why it is safe: docs/brokers/kafka.md, "Internals".
"""

from __future__ import annotations

import asyncio
import logging
from io import BytesIO
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError

from repid.brokers.kafka._wire import (
    HAND_ENCODED_VERSIONS,
    ProduceResponse,
    decode_produce_response,
    encode_one_batch,
    encode_request_header,
    read_correlation_id,
)
from repid.errors import BrokerError

try:
    from aiokafka.producer.message_accumulator import MessageBatch
    from aiokafka.producer.sender import SendProduceReqHandler
    from aiokafka.protocol.produce import ProduceRequest
except ImportError:  # pragma: no cover - a future aiokafka: the fast path stays off
    MessageBatch = None
    SendProduceReqHandler = ProduceRequest = object

__all__ = [
    "TESTED_AIOKAFKA",
    "DirectSender",
    "FastPathFailures",
    "OneBatchProduceRequest",
    "coordination_dead",
    "position_reached",
    "refresh_metadata",
    "rejoin_pending",
]

logger = logging.getLogger("repid.brokers.kafka")

TESTED_AIOKAFKA = ("0.14.0",)
"""aiokafka versions the fast path was tested with (the `kafka` extra pins them); with any
other version every send takes aiokafka's public path."""


# -- the direct produce path -----------------------------------------------------------------


class FastPathFailures:
    """Unexpected errors met by a broker's fast path: the first is logged as a warning with its
    traceback, later ones at debug level (the send that met one took the public path)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def report(self, step: str, exc: BaseException) -> None:
        self.count += 1
        log = logger.warning if self.count == 1 else logger.debug
        log(
            "the Kafka direct-send fast path failed while %s (%r); the message goes through "
            "aiokafka's public path (this is logged once; fast_path=False turns the fast path off)",
            step,
            exc,
            exc_info=exc,
        )


class _Header:
    __slots__ = ("correlation_id", "data")

    def __init__(self, correlation_id: int, data: bytes = b"") -> None:
        self.correlation_id = correlation_id
        self.data = data

    def encode(self) -> bytes:
        return self.data


class _OneBatchStruct:
    """What aiokafka's connection needs of a request struct, for one encoded produce request."""

    API_KEY = 0
    FLEXIBLE_VERSION = False

    def __init__(self, version: int, body: bytes) -> None:
        self.API_VERSION = version
        self.body = body
        self.RESPONSE_TYPE = self  # decode() below

    def build_request_header(self, correlation_id: int, client_id: str) -> _Header:
        return _Header(
            correlation_id, encode_request_header(self.API_VERSION, correlation_id, client_id)
        )

    def encode(self) -> bytes:
        return self.body

    def parse_response_header(self, read_buffer: BytesIO) -> _Header:
        return _Header(read_correlation_id(read_buffer.read(4)))

    def decode(self, read_buffer: BytesIO) -> ProduceResponse:
        return decode_produce_response(self.API_VERSION, read_buffer.read())

    def __repr__(self) -> str:
        return f"ProduceRequest_v{self.API_VERSION}(1 batch, {len(self.body)} bytes)"


class OneBatchProduceRequest(ProduceRequest):  # type: ignore[misc]
    """aiokafka's `ProduceRequest` for one batch, encoded and decoded without its generic
    (schema-walking) encoder when the server speaks a version from 3 to 8."""

    def __init__(self, required_acks: int, timeout: int, tp: TopicPartition, data: bytes) -> None:
        super().__init__(None, required_acks, timeout, [(tp.topic, [(tp.partition, data)])])
        self._tp = tp
        self._data = data

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        low, high = versions.get(self.API_KEY, (0, -1))
        # The version aiokafka would pick: its newest class the server accepts.
        chosen = [c.API_VERSION for c in self._CLASSES if low <= c.API_VERSION <= high]
        if not chosen or chosen[-1] not in HAND_ENCODED_VERSIONS:
            return super().prepare(versions)
        body = encode_one_batch(
            self.required_acks, self._timeout, self._tp.topic, self._tp.partition, self._data
        )
        return _OneBatchStruct(chosen[-1], body)


class _OneBatchHandler(SendProduceReqHandler):  # type: ignore[misc]
    def create_request(self) -> OneBatchProduceRequest:
        ((tp, batch),) = self._batches.items()
        sender = self._sender
        return OneBatchProduceRequest(
            sender._acks, sender._request_timeout_ms, tp, batch.get_data_buffer()
        )


class _Planned:
    """A batch of one record, built for an idle partition, not yet known to aiokafka."""

    __slots__ = ("batch", "future", "leader", "tp")

    def __init__(self, tp: TopicPartition, leader: int, batch: Any, future: Any) -> None:
        self.tp = tp
        self.leader = leader
        self.batch = batch
        self.future = future


def _unusable(producer: AIOKafkaProducer) -> str | None:
    """Why the fast path cannot run on `producer` (None: it can)."""
    if aiokafka.__version__ not in TESTED_AIOKAFKA:
        return f"aiokafka {aiokafka.__version__} is not one it was tested with {TESTED_AIOKAFKA}"
    if MessageBatch is None:  # pragma: no cover
        return "aiokafka's producer internals moved"
    internal: Any = producer
    acc = getattr(internal, "_message_accumulator", None)
    sender = getattr(internal, "_sender", None)
    txn = getattr(internal, "_txn_manager", None)
    if acc is None or sender is None:  # pragma: no cover
        return "aiokafka's producer internals moved"
    if txn is None:
        return "the producer is not idempotent"
    if getattr(txn, "transactional_id", None) is not None:
        return "the producer is transactional"
    if getattr(acc, "_linger_time", 0):
        return "the producer lingers (linger_ms > 0): aiokafka batches"
    return None


class DirectSender:
    """Sends a lone record to an idle partition from the caller's task, through the internals
    of one producer that repid created (never another caller's), in four steps: `plan` (no
    effect on the producer), `take_sequence`, `request`, `release`. Tests replace a step on an
    instance to inject an error."""

    def __init__(self, producer: AIOKafkaProducer, failures: FastPathFailures) -> None:
        internal: Any = producer
        self._producer = internal
        self._acc = internal._message_accumulator
        self._sender = internal._sender
        self._txn = internal._txn_manager
        self._failures = failures

    @classmethod
    def attach(cls, producer: AIOKafkaProducer, failures: FastPathFailures) -> DirectSender | None:
        """A direct sender for the started `producer`, or None when the fast path cannot run."""
        reason = _unusable(producer)
        if reason is not None:
            logger.debug("Kafka direct sends are off: %s", reason)
            return None
        try:
            return cls(producer, failures)
        except Exception as exc:  # internals moved
            failures.report("attaching to the producer", exc)
            return None

    async def send(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, bytes]],
        partition: int | None,
    ) -> asyncio.Future[Any] | None:
        """Send one record; its future (done unless aiokafka's sender retries the batch), or
        None when nothing was handed to aiokafka: the caller then uses `producer.send()`.

        An unexpected error before aiokafka holds the batch means None; after, the batch is
        left to aiokafka's sender (with its sequence number) and its future returned, so the
        record is sent exactly once either way. Raises `MessageSizeTooLargeError` as `send()`
        does, and `CancelledError` (the batch, if aiokafka holds it, still goes out).
        """
        try:
            planned = self.plan(topic, value, headers, partition)
        except MessageSizeTooLargeError:
            raise
        except Exception as exc:
            self._failures.report("building the batch", exc)
            return None
        if planned is None:
            return None
        try:
            self.take_sequence(planned)
            await self.request(planned)
        except asyncio.CancelledError:
            self._hand_over(planned)
            raise
        except Exception as exc:
            self._failures.report("sending the batch", exc)
            if not self._hand_over(planned):
                return None
        finally:
            self.release(planned)
        future: asyncio.Future[Any] = planned.future
        return future

    def plan(
        self, topic: str, value: bytes, headers: list[tuple[str, bytes]], partition: int | None
    ) -> _Planned | None:
        """The batch for the record; None when its partition is busy or unknown yet."""
        producer, acc, sender, txn = self._producer, self._acc, self._sender, self._txn
        producer._serialize(None, value, headers)  # raises MessageSizeTooLargeError as send()
        if partition is None:
            if not producer._metadata.partitions_for_topic(topic):
                return None  # metadata not known yet: `send()` waits for it
            partition = producer._partition(topic, None, None, value, None, value)
        tp = TopicPartition(topic, partition)
        leader = producer.client.cluster.leader_for_partition(tp)
        if (
            leader is None
            or leader < 0
            or tp in acc._batches
            or tp in sender._muted_partitions
            or acc._exception is not None
            or acc._closed
            or not txn.has_pid()
            or sender.sender_task is None
            or sender.sender_task.done()
        ):
            return None
        batch = MessageBatch(tp, acc.create_builder(), acc._batch_ttl, acc._linger_time)
        future = batch.append(None, value, None, headers=headers)
        if future is None:  # larger than a batch: aiokafka's path says why
            return None
        return _Planned(tp, leader, batch, future)

    def take_sequence(self, planned: _Planned) -> None:
        """Give the batch the partition's next sequence number, as the sender's drain would,
        and mute the partition so that nothing of it overtakes the batch."""
        acc = self._acc
        acc._batches[planned.tp].append(planned.batch)
        acc._pop_batch(planned.tp)
        self._sender._muted_partitions.add(planned.tp)

    async def request(self, planned: _Planned) -> None:
        """aiokafka's produce-request handler for the batch (it re-enqueues retriable errors)."""
        await _OneBatchHandler(self._sender, {planned.tp: planned.batch}).do(planned.leader)

    def release(self, planned: _Planned) -> None:
        """Unmute the partition and wake the sender for what waited meanwhile."""
        acc, tp = self._acc, planned.tp
        try:
            self._sender._muted_partitions.discard(tp)
            if tp in acc._batches and not acc._waiter_future.done():
                acc._waiter_future.set_result(None)
        except Exception as exc:  # pragma: no cover - internals moved under a running send
            self._failures.report("releasing the partition", exc)

    def _hand_over(self, planned: _Planned) -> bool:
        """After a failed or cancelled step: leave the batch to aiokafka's sender. False when
        aiokafka never got it (so it never reached the wire)."""
        acc, batch = self._acc, planned.batch
        try:
            if batch.future.done() or batch in acc._batches.get(planned.tp, ()):
                return True  # settled, or queued for the sender already
            if batch in acc._pending_batches:  # drained, maybe on the wire: same sequence
                acc.reenqueue(batch)
                return True
            return False
        except Exception as exc:
            raise BrokerError(
                f"a Kafka send to {planned.tp.topic!r} failed half-way ({exc!r}); the message "
                "may or may not have been stored"
            ) from exc


# -- consumer internals (read-only) ----------------------------------------------------------

_consumer_failures_logged: set[str] = set()
"""Steps whose failure was logged: once per process, as it is the same for every client."""


def _consumer_failure(step: str, exc: BaseException) -> None:
    if step not in _consumer_failures_logged:
        _consumer_failures_logged.add(step)
        logger.warning(
            "reading aiokafka's %s failed (%r); going on without it (logged once)",
            step,
            exc,
            exc_info=exc,
        )


def coordination_dead(kafka: AIOKafkaConsumer) -> bool:
    """aiokafka's group coordination task ended with an error (e.g. a group assignment it
    could not decode): the client never recovers from that by itself. False if unknown."""
    try:
        internal: Any = kafka
        task = internal._coordinator._coordination_task
        return bool(task.done() and not task.cancelled() and task.exception() is not None)
    except Exception as exc:
        _consumer_failure("group coordination state", exc)
        return False


def rejoin_pending(kafka: AIOKafkaConsumer) -> bool:
    """The group is rebalancing: a commit now would race with it (checked, not guaranteed).
    False if unknown."""
    try:
        internal: Any = kafka
        return bool(internal._coordinator.need_rejoin(internal._subscription.subscription))
    except Exception as exc:
        _consumer_failure("group rebalance state", exc)
        return False


def position_reached(kafka: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    """The fetch position of assigned partition `tp` is at or past `end` (False if unknown)."""
    try:
        internal: Any = kafka
        state = internal._subscription.subscription.assignment.state_value(tp)
        return bool(state.position >= end)
    except Exception:  # not assigned any more, or no position yet
        return False


async def refresh_metadata(kafka: AIOKafkaConsumer) -> None:
    """Ask for fresh cluster metadata now (new or recreated topics)."""
    internal: Any = kafka
    await internal._client.force_metadata_update()
