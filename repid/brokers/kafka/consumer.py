"""The Kafka consumer: fetches in batches, hands out by priority, commits finished prefixes.

Offsets of a partition are committed only up to the first message not finished yet, so a crash
or a rebalance redelivers everything unfinished (and at most one commit interval of finished
work). Delayed records are held until due (`delays.DelayedRecords`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from repid.brokers.base import BaseConsumer, Delivery
from repid.brokers.kafka._compat import (
    coordination_dead,
    position_reached,
    refresh_metadata,
    rejoin_pending,
)
from repid.brokers.kafka.delays import DelayedRecords
from repid.brokers.kafka.group import (
    RebalanceCallbacks,
    RejoinWatch,
    commit_finished,
    join_group,
)
from repid.brokers.kafka.host import ConsumerHost
from repid.brokers.kafka.offsets import PartitionOffsets
from repid.brokers.kafka.reading import read_topic
from repid.brokers.kafka.records import Removal, decode_record, encode_delivery, matches, removal_of
from repid.data import MessageCategory, PrioritiesT
from repid.errors import (
    BrokerUnavailableError,
    ConsumerClosedError,
    QueueNotDeclaredError,
)

__all__ = ["ConsumerHost", "KafkaConsumer", "read_topic"]

logger = logging.getLogger("repid.brokers.kafka")

_DEFAULT_BUFFER = 1000
_Partition = PartitionOffsets  # the name the tests of the buffer use


class _Handle:
    __slots__ = ("consumer", "generation", "offset", "part", "settled")

    def __init__(self, consumer: KafkaConsumer, part: PartitionOffsets, offset: int) -> None:
        self.consumer = consumer
        self.part = part
        self.offset = offset
        self.generation = part.generation
        self.settled = False

    @property
    def stale(self) -> bool:
        return self.part.revoked or self.generation != self.part.generation


def _log_stale(delivery: Delivery, handle: _Handle) -> None:
    if handle.part.revoked:
        logger.warning(
            "stale settlement of message %s ignored: %s was revoked, its next owner runs the "
            "message again",
            delivery.key.id_,
            handle.part.tp,
        )


class KafkaConsumer(BaseConsumer):
    """Hands out the deliveries of one part of a queue (see `KafkaMessageBroker.get_consumer`)."""

    def __init__(
        self,
        broker: ConsumerHost,
        queue_name: str,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.category = category
        self.max_unacked_messages = max_unacked_messages
        self._topics = frozenset(topics) if topics is not None else None
        self._main = broker.topic(queue_name)
        self._delayed = broker.topic(queue_name, MessageCategory.DELAYED)
        self._kafka: AIOKafkaConsumer | None = None
        self._parts: dict[TopicPartition, PartitionOffsets] = {}
        self._ready: tuple[deque[Delivery], ...] = tuple(deque() for _ in PrioritiesT)
        self._buffered = 0
        self._delays = DelayedRecords(
            queue_name, self._main, self._delayed, self._publish_value, self._ready_early
        )
        self._outstanding = 0
        self._running: dict[str, int] = {}
        self._arrived = asyncio.Event()
        self._capacity = asyncio.Event()
        self._room = asyncio.Event()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._closed = False
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._targets: dict[TopicPartition, int] | None = None
        self._caught_up = asyncio.Event()
        self._assignment_changed = False
        self._reset_to_beginning = False
        self._rebalancing = False
        self._rejoin_watch = RejoinWatch(broker, self._main)
        self._browsed: list[Delivery] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._closed = False
        if self.category is not MessageCategory.NORMAL:
            return
        broker = self.broker
        if not await broker.queue_exists(self.queue_name):
            raise QueueNotDeclaredError(self.queue_name)
        kafka = await self._new_client()
        self._kafka = kafka
        broker.consumers.add(self)
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"repid-kafka-fetch-{self.queue_name}"),
            asyncio.create_task(self._commit_loop(), name=f"repid-kafka-commit-{self.queue_name}"),
            asyncio.create_task(self._delays.run(), name=f"repid-kafka-delays-{self.queue_name}"),
        ]

    async def _new_client(self) -> AIOKafkaConsumer:
        listener = RebalanceCallbacks(self._revoked, self._assigned)
        return await join_group(self.broker, self.queue_name, [self._main, self._delayed], listener)

    async def _replace_client(self, dead: AIOKafkaConsumer) -> AIOKafkaConsumer:
        """aiokafka's group coordination task died (it does not restart it; every poll then
        raises): give up the partitions like a revoke without drain and join again with a new
        client. What still runs here is settled as stale; the next owner runs it again."""
        logger.warning(
            "the group coordination of %s failed for good; joining the group again", self._main
        )
        parts = list(self._parts.values())
        lost = {id(p) for p in parts}
        self._drop_buffered(lambda d: id(d.handle.part) in lost)
        self._delays.drop_partitions(lost)
        for part in parts:
            part.revoked = True
        self._parts.clear()
        self._kafka = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dead.stop(), self.broker.operation_timeout)
        kafka = await self._new_client()
        self._kafka = kafka
        return kafka

    async def pause(self) -> None:
        self._unpaused.clear()

    async def unpause(self) -> None:
        self._unpaused.set()

    async def finish(self) -> None:
        """Stop fetching, commit the finished prefix, leave the group.

        Deliveries still unsettled stay uncommitted: the next owner of their partition gets them.
        """
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._capacity.set()
        self._unpaused.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.broker.consumers.discard(self)
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            await self._close_gaps()
            if self.broker.commit_on_revoke or not rejoin_pending(kafka):
                await self._commit(kafka)
            for part in self._parts.values():
                part.revoked = True
            self._parts.clear()
            coordination_dead(kafka)  # retrieves a dead coordination's error (else logged)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(kafka.stop(), self.broker.operation_timeout)
        await self.broker.flush_releases()  # the ids of what it settled are free on return
        self._started = False

    # -- rebalance ---------------------------------------------------------------------------

    def _assigned(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._parts:
                self._parts[tp] = _Partition(tp)
        self._assignment_changed = True

    async def _revoked(self, revoked: Sequence[TopicPartition]) -> None:
        parts = [self._parts[tp] for tp in revoked if tp in self._parts]
        if not parts:
            return
        lost = {id(p) for p in parts}
        self._drop_buffered(lambda d: id(d.handle.part) in lost)
        self._delays.drop_partitions(lost)
        self._rebalancing = True  # the periodic commit waits: the revoke commits itself
        try:
            await self._drain_and_commit(parts)
        finally:
            self._rebalancing = False

    async def _drain_and_commit(self, parts: list[PartitionOffsets]) -> None:
        running = [p.drained.wait() for p in parts if p.running]
        if running:
            logger.info(
                "rebalance: waiting for %d running messages of revoked partitions", len(running)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*running), self.broker.drain_timeout)
        if self._kafka is not None and self.broker.commit_on_revoke:
            await self._commit(self._kafka, parts)
        for part in parts:
            part.revoked = True
            if part.running:
                logger.warning(
                    "rebalance: %d messages of %s still run; the next owner runs them again",
                    part.running,
                    part.tp,
                )
            self._parts.pop(part.tp, None)

    # -- fetching ----------------------------------------------------------------------------

    def _buffer_limit(self) -> int:
        return max(self.max_unacked_messages or 0, _DEFAULT_BUFFER)

    async def _fetch_loop(self) -> None:
        kafka = self._kafka
        assert kafka is not None
        while not self._closed:
            await self._unpaused.wait()
            room = self._buffer_limit() - self._buffered
            if room <= 0:
                # Full: keep polling with the partitions paused, so that the group does not
                # take a slow consumer for a dead one (max.poll.interval).
                kafka.pause(*kafka.assignment())
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
                if self._buffered >= self._buffer_limit():
                    with contextlib.suppress(KafkaError):
                        await kafka.getmany(timeout_ms=0)
                    continue
                kafka.resume(*kafka.paused())
                room = self._buffer_limit() - self._buffered
            try:
                batches = await kafka.getmany(timeout_ms=200, max_records=min(room, 1000))
            except Exception as exc:  # the client reconnects by itself; keep polling
                logger.warning("fetching from %s failed (%r); retrying", self._main, exc)
                await asyncio.sleep(0.5)
                if coordination_dead(kafka) and not self._closed:
                    with contextlib.suppress(BrokerUnavailableError):
                        kafka = await self._replace_client(kafka)
                continue
            if self._rejoin_watch.stuck(kafka) and not self._closed:
                with contextlib.suppress(BrokerUnavailableError):
                    kafka = await self._replace_client(kafka)
                continue
            if self._reset_to_beginning:
                self._reset_to_beginning = False
                with contextlib.suppress(Exception):
                    await kafka.seek_to_beginning()
                continue
            for tp, records in batches.items():
                part = self._parts.get(tp)
                if part is None:
                    continue  # revoked meanwhile: the next owner reads these again
                self._take(part, records)
            if self._assignment_changed:
                self._assignment_changed = False
                await self._snapshot_targets(kafka)
            self._check_caught_up()
            if self._buffered:
                self._arrived.set()

    async def _snapshot_targets(self, kafka: AIOKafkaConsumer) -> None:
        """The offsets that were at the end when partitions were assigned (see `fetch`)."""
        tps = list(self._parts)
        if not tps:
            self._targets = {}
            return
        try:
            ends = await kafka.end_offsets(tps)
        except Exception:  # not fatal: `fetch` then only waits for what arrives
            logger.debug("reading end offsets of %s failed", self._main, exc_info=True)
            ends = {}
        self._targets = {tp: end for tp, end in ends.items() if end > 0}

    def _check_caught_up(self) -> None:
        targets = self._targets
        if targets is None or self._caught_up.is_set():
            return
        kafka = self._kafka
        for tp, end in list(targets.items()):
            part = self._parts.get(tp)
            reached = part is None or (part.fetched_to is not None and part.fetched_to >= end)
            if not reached and kafka is not None:
                reached = position_reached(kafka, tp, end)
            if reached:
                del targets[tp]
        if not targets:
            self._caught_up.set()

    def _take(self, part: PartitionOffsets, records: list[ConsumerRecord[Any, Any]]) -> None:
        delayed = part.tp.topic == self._delayed
        now = time.time()
        for record in records:
            offset = record.offset
            part.pending.append(offset)
            part.fetched_to = offset + 1
            removal = removal_of(record)
            if removal is not None:
                self._apply_removal(removal, part, offset)
                part.finish(offset)
                continue
            delivery = decode_record(
                record, self.queue_name, _Handle(self, part, offset), self.broker.max_message_size
            )
            due = delivery.parameters.not_before if delivery.decode_error is None else None
            if delayed or (due is not None and due > now):
                self._delays.hold(part, offset, delivery, record.value or b"", due or now, now)
                continue
            if self._topics is not None and delivery.key.topic not in self._topics:
                continue  # not ours to run: left unfinished for a consumer that runs it
            self._ready[min(delivery.key.priority, 2)].append(delivery)
            self._buffered += 1

    def _apply_removal(self, removal: Removal, part: PartitionOffsets, offset: int) -> None:
        self._drop_buffered(lambda d: d.handle.part is part and matches(removal, d), finish=True)
        self._delays.apply_removal(removal, part, offset)

    def _drop_buffered(self, predicate: Any, finish: bool = False) -> int:
        dropped = 0
        for ready in self._ready:
            keep = [d for d in ready if not predicate(d)]
            if len(keep) != len(ready):
                for d in ready:
                    if predicate(d):
                        dropped += 1
                        if finish:
                            d.handle.part.finish(d.handle.offset)
                ready.clear()
                ready.extend(keep)
        self._buffered -= dropped
        if dropped:
            self._room.set()
        return dropped

    # -- delayed records (see `DelayedRecords`) ----------------------------------------------

    async def _publish_value(self, topic: str, value: bytes) -> None:
        await self.broker.publish(topic, value)

    def _ready_early(self, part: PartitionOffsets, offset: int, delivery: Delivery) -> None:
        self._ready[min(delivery.key.priority, 2)].append(
            delivery._replace(handle=_Handle(self, part, offset))
        )
        self._buffered += 1
        self._arrived.set()

    async def _close_gaps(self) -> None:
        """Before leaving: re-append unfinished messages that sit below finished ones.

        Otherwise the commit would stop at them and the finished messages after them would
        be delivered again to the next owner. Re-appended copies keep their relative order.
        """
        gaps: list[Delivery] = []
        for part in self._parts.values():
            if not part.done or part.revoked:
                continue
            highest = max(part.done)
            waiting = sorted(
                (d for ready in self._ready for d in ready if d.handle.part is part),
                key=lambda d: d.handle.offset,
            )
            gaps.extend(d for d in waiting if d.handle.offset < highest)
        if not gaps:
            return
        try:
            await asyncio.gather(
                *(self.broker.publish(self._main, encode_delivery(d)) for d in gaps)
            )
        except Exception:
            logger.exception("re-appending unfinished messages of %s failed", self.queue_name)
            return
        for delivery in gaps:
            delivery.handle.part.finish(delivery.handle.offset)

    # -- committing ---------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.broker.commit_interval)
            kafka = self._kafka  # replaced when the group coordination failed
            if kafka is not None and not self._rebalancing and not rejoin_pending(kafka):
                await self._commit(kafka)

    async def _commit(
        self, kafka: AIOKafkaConsumer, parts: Sequence[PartitionOffsets] | None = None
    ) -> None:
        await commit_finished(
            kafka, self._parts.values() if parts is None else parts, self.queue_name
        )

    # -- handing out ---------------------------------------------------------------------------

    def _pop(self) -> Delivery | None:
        low = self._buffer_limit() // 2
        running = self._running
        for ready in self._ready:
            while ready:
                delivery = ready.popleft()
                self._buffered -= 1
                if self._buffered < low:
                    self._room.set()
                handle: _Handle = delivery.handle
                if handle.stale:
                    continue  # its partition was revoked meanwhile
                part = handle.part
                if self.broker.tombstones and self.broker.is_tombstoned(delivery):
                    part.finish(handle.offset)  # cancelled while it waited (shared state)
                    continue
                if not part.running:
                    part.drained.clear()
                part.running += 1
                self._outstanding += 1
                id_ = delivery.key.id_
                running[id_] = running.get(id_, 0) + 1
                return delivery
        return None

    def _full(self) -> bool:
        limit = self.max_unacked_messages
        return limit is not None and self._outstanding >= limit

    async def consume(self) -> Delivery:
        if self.category is not MessageCategory.NORMAL:
            batch = await self.fetch(1)
            if not batch:
                raise ConsumerClosedError("no more messages in this part of the queue")
            return batch[0]
        while True:
            if self._closed or not self._started:
                raise ConsumerClosedError(f"consumer of {self.queue_name!r} has finished")
            if self._full():
                self._capacity.clear()
                await self._capacity.wait()
                continue
            delivery = self._pop()
            if delivery is not None:
                return delivery
            self._arrived.clear()
            await self._arrived.wait()

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        """Up to `max_count` deliveries within `timeout` seconds.

        The first call also waits (up to the broker's timeout) until the consumer has joined
        its group and read what was in its partitions then, so that messages already in the
        queue are seen even with `timeout=0`.
        """
        if self.category is not MessageCategory.NORMAL:
            return await self._fetch_browsed(max_count)
        if self._closed or not self._started:
            return []
        if not self._caught_up.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), self.broker.operation_timeout)
        deadline = time.monotonic() + timeout
        out: list[Delivery] = []
        while len(out) < max_count and not self._full() and not self._closed:
            delivery = self._pop()
            if delivery is not None:
                out.append(delivery)
                continue
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return out

    async def _fetch_browsed(self, max_count: int) -> list[Delivery]:
        if self._browsed is None:
            self._browsed = await read_topic(self.broker, self.queue_name, self.category)
            if self._topics is not None:
                self._browsed = [d for d in self._browsed if d.key.topic in self._topics]
        out, self._browsed = self._browsed[:max_count], self._browsed[max_count:]
        return out

    # -- settling (called by the broker) -------------------------------------------------------

    def _release(self, delivery: Delivery) -> _Handle | None:
        handle = delivery.handle
        if not isinstance(handle, _Handle) or handle.settled:
            return None
        handle.settled = True
        consumer = handle.consumer
        consumer._outstanding -= 1
        consumer._capacity.set()
        count = consumer._running.get(delivery.key.id_, 0) - 1
        if count > 0:
            consumer._running[delivery.key.id_] = count
        else:
            consumer._running.pop(delivery.key.id_, None)
        part = handle.part
        part.running -= 1
        if part.running <= 0:
            part.drained.set()
        return handle

    @staticmethod
    async def settle(
        delivery: Delivery,
        produce: tuple[str, bytes, list[tuple[str, bytes]] | None] | None,
        *,
        keep_id: bool = False,
    ) -> bool:
        """Finish a delivery's offset, after publishing `produce` (topic, value, headers)."""
        handle = delivery.handle
        if not isinstance(handle, _Handle) or handle.settled:
            return False
        consumer = handle.consumer
        part = handle.part
        if handle.stale:
            consumer._release(delivery)
            _log_stale(delivery, handle)
            if not part.revoked:
                part.finish(handle.offset)  # flushed meanwhile: nothing to keep
            return False
        if produce is not None:
            topic, value, headers = produce
            try:
                await consumer.broker.publish(topic, value, headers)
            except BaseException:
                await KafkaConsumer.give_back(delivery)
                raise
            consumer._release(delivery)
            if handle.stale:  # revoked while the message was being written
                _log_stale(delivery, handle)
                return False
        else:
            consumer._release(delivery)
        part.finish(handle.offset)
        if not keep_id:
            await consumer.broker.release_unique(delivery.key, together=True)
        return True

    @staticmethod
    async def give_back(delivery: Delivery) -> bool:
        """Return a delivery to its consumer's buffer (front of its priority), unchanged."""
        handle = delivery.handle
        if not isinstance(handle, _Handle) or handle.settled:
            return False
        consumer = handle.consumer
        consumer._release(delivery)
        if handle.stale:
            _log_stale(delivery, handle)
            return False
        if consumer._closed:
            return True  # left uncommitted: the next owner of the partition gets it
        fresh = _Handle(consumer, handle.part, handle.offset)
        consumer._ready[min(delivery.key.priority, 2)].appendleft(delivery._replace(handle=fresh))
        consumer._buffered += 1
        consumer._arrived.set()
        return True

    # -- local control (same process) -------------------------------------------------------

    def is_running(self, id_: str) -> bool:
        return id_ in self._running

    def drop_buffered(self, id_: str) -> bool:
        return bool(self._drop_buffered(lambda d: d.key.id_ == id_, finish=True))

    def forget_fetched(self, *, topics_deleted: bool = False) -> None:
        """The queue was flushed or deleted: drop what was fetched; running ones turn stale."""
        self._drop_buffered(lambda d: True)
        self._delays.clear()
        for part in self._parts.values():
            part.generation += 1
            part.pending.clear()
            part.done.clear()
            if topics_deleted:
                part.fetched_to = None
                part.committed = -1
        if topics_deleted:
            self._reset_to_beginning = True

    async def topics_recreated(self) -> None:
        kafka = self._kafka
        if kafka is not None and self._reset_to_beginning:
            with contextlib.suppress(Exception):
                await refresh_metadata(kafka)
