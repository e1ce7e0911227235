"""The Kafka consumer: fetches in batches, hands out by priority, commits finished prefixes.

Offsets of a partition are committed only up to the first message not finished yet, so a crash
or a rebalance redelivers everything unfinished (and at most one commit interval of finished
work). Delayed records are held in memory until due, then published to the queue's topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic_core import from_json

from repid.brokers.base import Delivery
from repid.codec import decode_message, encode_message
from repid.data import MessageCategory, Parameters, PrioritiesT, RoutingKey
from repid.errors import BrokerUnavailableError, ConsumerClosedError, DecodeError

if TYPE_CHECKING:
    from repid.brokers.kafka.broker import KafkaMessageBroker

__all__ = [
    "DEAD_HEADER",
    "REMOVE_HEADER",
    "KafkaConsumer",
    "Removal",
    "end_offsets",
    "queue_counts",
    "read_topic",
]

logger = logging.getLogger("repid.brokers.kafka")

REMOVE_HEADER = "repid-remove"
"""A record with this header removes earlier records of the same message (see `Removal`)."""
DEAD_HEADER = "repid-dead"
"""Dead letter of undecodable bytes: the raw bytes are the value, the parameters this header."""

HOLD_WINDOW = 60.0
"""A delayed record due later than this is re-appended to the delay topic instead of being held
for longer, so that it never keeps the delay partition's commit behind for more than this."""
_DEFAULT_BUFFER = 1000
_seq = itertools.count()


class Removal(NamedTuple):
    """Removes earlier records of message `id_` (created at `timestamp`; None: any)."""

    id_: str
    timestamp: float | None


def _removal(record: ConsumerRecord[Any, Any]) -> Removal | None:
    for name, value in record.headers or ():
        if name == REMOVE_HEADER:
            id_, timestamp = from_json(value)
            return Removal(id_, timestamp)
    return None


def _matches(removal: Removal, delivery: Delivery) -> bool:
    if delivery.key.id_ != removal.id_:
        return False
    ts = removal.timestamp
    return ts is None or abs(delivery.parameters.timer.timestamp.timestamp() - ts) < 1e-6


_NORMAL = MessageCategory.NORMAL


def _decode(
    record: ConsumerRecord[Any, Any], queue_name: str, handle: Any = None
) -> tuple[Delivery, str | None]:
    """A delivery with `handle` (and the decode error, if any) from a record."""
    raw: bytes = record.value or b""
    try:
        key, payload, params = decode_message(raw)
    except DecodeError as exc:
        dead = None
        for name, value in record.headers or ():
            if name == DEAD_HEADER:
                dead = Parameters.decode(from_json(value))
        key = RoutingKey(f"raw-{record.topic}-{record.partition}-{record.offset}", "", queue_name)
        return (
            Delivery(key, "", dead or Parameters(), handle, raw=raw, decode_error=str(exc)),
            str(exc),
        )
    # tuple.__new__ skips the named tuple's Python-level constructor (hot path).
    delivery: Delivery = tuple.__new__(
        Delivery, (key, payload, params, handle, _NORMAL, None, None, False)
    )
    return delivery, None


def _encode(delivery: Delivery) -> bytes:
    if delivery.decode_error is not None:
        return delivery.raw or b""
    return encode_message(delivery.key, delivery.payload, delivery.parameters)


class _Partition:
    """Offsets of one assigned partition: what is fetched, what is finished, what is committed."""

    __slots__ = (
        "committed",
        "done",
        "drained",
        "fetched_to",
        "generation",
        "pending",
        "revoked",
        "running",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.fetched_to: int | None = None
        self.committed = -1
        self.generation = 0
        self.revoked = False
        self.running = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def finish(self, offset: int) -> None:
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            done = self.done
            while pending and pending[0] in done:
                done.discard(pending.popleft())
        else:
            self.done.add(offset)

    def commit_point(self) -> int | None:
        return self.pending[0] if self.pending else self.fetched_to


class _Handle:
    __slots__ = ("consumer", "generation", "offset", "part", "settled")

    def __init__(self, consumer: KafkaConsumer, part: _Partition, offset: int) -> None:
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


def _coordination_dead(kafka: AIOKafkaConsumer) -> bool:
    """aiokafka's group coordination task ended with an error (e.g. a group assignment it
    could not decode): the client never recovers from that by itself."""
    try:
        task = kafka._coordinator._coordination_task
        return bool(task.done() and not task.cancelled() and task.exception() is not None)
    except Exception:  # aiokafka internals moved: keep the client
        return False


def _rejoin_pending(kafka: AIOKafkaConsumer) -> bool:
    """The group is rebalancing: a commit now would race with it (checked, not guaranteed)."""
    try:
        coordinator = kafka._coordinator
        return bool(coordinator.need_rejoin(kafka._subscription.subscription))
    except Exception:  # aiokafka internals moved: commit as usual
        return False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.consumer._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.consumer._assigned(assigned)


class KafkaConsumer:
    """Hands out the deliveries of one part of a queue (see `KafkaMessageBroker.get_consumer`)."""

    def __init__(
        self,
        broker: KafkaMessageBroker,
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
        self._parts: dict[TopicPartition, _Partition] = {}
        self._ready: tuple[deque[Delivery], ...] = tuple(deque() for _ in PrioritiesT)
        self._buffered = 0
        self._held: dict[tuple[_Partition, int], tuple[Delivery, bytes]] = {}
        self._timers: list[tuple[float, int, _Partition, int]] = []
        self._outstanding = 0
        self._running: dict[str, int] = {}
        self._arrived = asyncio.Event()
        self._capacity = asyncio.Event()
        self._room = asyncio.Event()
        self._timer_changed = asyncio.Event()
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
        if not await broker._queue_exists(self.queue_name):
            from repid.errors import QueueNotDeclaredError

            raise QueueNotDeclaredError(self.queue_name)
        kafka = await self._new_client()
        self._kafka = kafka
        broker._consumers.add(self)
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"repid-kafka-fetch-{self.queue_name}"),
            asyncio.create_task(self._commit_loop(), name=f"repid-kafka-commit-{self.queue_name}"),
            asyncio.create_task(self._timer_loop(), name=f"repid-kafka-delays-{self.queue_name}"),
        ]

    async def _new_client(self) -> AIOKafkaConsumer:
        """A started aiokafka consumer subscribed to the queue's topics (joining in the
        background). Raises `BrokerUnavailableError` when Kafka is unreachable."""
        broker = self.broker
        kafka = AIOKafkaConsumer(
            group_id=broker.group(self.queue_name),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=5000,
            fetch_max_wait_ms=100,
            max_poll_interval_ms=300_000,
            # How long a rebalance waits for members to rejoin: our revoke drains first.
            rebalance_timeout_ms=int((broker.drain_timeout + broker.session_timeout) * 1000),
            session_timeout_ms=int(broker.session_timeout * 1000),
            heartbeat_interval_ms=min(500, int(broker.session_timeout * 1000 / 3)),
            request_timeout_ms=max(40_000, int(broker.timeout * 1000)),
            **broker._client_kwargs(),
        )
        try:
            await asyncio.wait_for(kafka.start(), broker.timeout)
            # Subscribing after start: joining the group happens in the background (it can
            # take a session timeout when a crashed member is still registered).
            kafka.subscribe([self._main, self._delayed], listener=_Listener(self))
        except (TimeoutError, KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await kafka.stop()
            raise BrokerUnavailableError(f"consumer of {self.queue_name!r}: {exc!r}") from exc
        return kafka

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
        for key in [k for k in self._held if id(k[0]) in lost]:
            del self._held[key]
        for part in parts:
            part.revoked = True
        self._parts.clear()
        self._kafka = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dead.stop(), self.broker.timeout)
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
        self.broker._consumers.discard(self)
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            await self._close_gaps()
            if self.broker.commit_on_revoke or not _rejoin_pending(kafka):
                await self._commit(kafka)
            for part in self._parts.values():
                part.revoked = True
            self._parts.clear()
            _coordination_dead(kafka)  # retrieves a dead coordination's error (else logged)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(kafka.stop(), self.broker.timeout)
        await self.broker.flush_releases()  # the ids of what it settled are free on return
        self._started = False

    async def __aenter__(self) -> KafkaConsumer:
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
        for key in [k for k in self._held if id(k[0]) in lost]:
            del self._held[key]
        self._rebalancing = True  # the periodic commit waits: the revoke commits itself
        try:
            await self._drain_and_commit(parts)
        finally:
            self._rebalancing = False

    async def _drain_and_commit(self, parts: list[_Partition]) -> None:
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
                if _coordination_dead(kafka) and not self._closed:
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
                with contextlib.suppress(Exception):
                    reached = (
                        kafka._subscription.subscription.assignment.state_value(tp).position >= end
                    )
            if reached:
                del targets[tp]
        if not targets:
            self._caught_up.set()

    def _take(self, part: _Partition, records: list[ConsumerRecord[Any, Any]]) -> None:
        delayed = part.tp.topic == self._delayed
        now = time.time()
        for record in records:
            offset = record.offset
            part.pending.append(offset)
            part.fetched_to = offset + 1
            removal = _removal(record)
            if removal is not None:
                self._apply_removal(removal, part, offset)
                part.finish(offset)
                continue
            delivery, _ = _decode(record, self.queue_name, _Handle(self, part, offset))
            due = delivery.parameters.not_before if delivery.decode_error is None else None
            if delayed or (due is not None and due > now):
                self._hold(part, offset, delivery, record.value or b"", due or now, now)
                continue
            if self._topics is not None and delivery.key.topic not in self._topics:
                continue  # not ours to run: left unfinished for a consumer that runs it
            self._ready[min(delivery.key.priority, 2)].append(delivery)
            self._buffered += 1

    def _apply_removal(self, removal: Removal, part: _Partition, offset: int) -> None:
        self._drop_buffered(lambda d: d.handle.part is part and _matches(removal, d), finish=True)
        for key, (delivery, _) in list(self._held.items()):
            if key[0] is part and key[1] < offset and _matches(removal, delivery):
                del self._held[key]
                part.finish(key[1])

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

    # -- delayed records ----------------------------------------------------------------------

    def _hold(
        self,
        part: _Partition,
        offset: int,
        delivery: Delivery,
        value: bytes,
        due: float,
        now: float,
    ) -> None:
        self._held[(part, offset)] = (delivery, value)
        action = min(due, now + HOLD_WINDOW)
        heapq.heappush(self._timers, (action, next(_seq), part, offset))
        self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            self._timer_changed.clear()
            timers = self._timers
            wait = None
            now = time.time()
            actions: list[tuple[_Partition, int]] = []
            while timers and timers[0][0] <= now:
                _, _, part, offset = heapq.heappop(timers)
                if (part, offset) in self._held:
                    actions.append((part, offset))
            if actions:
                await asyncio.gather(*(self._release_held(p, o) for p, o in actions))
                continue
            if timers:
                wait = timers[0][0] - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), wait)

    async def _release_held(self, part: _Partition, offset: int) -> None:
        entry = self._held.get((part, offset))
        if entry is None:
            return
        delivery, value = entry
        due = delivery.parameters.not_before or 0.0
        if part.tp.topic == self._main and due <= time.time():
            # A record of the queue's own topic that arrived early (clock skew): run it now.
            del self._held[(part, offset)]
            self._ready[min(delivery.key.priority, 2)].append(
                delivery._replace(handle=_Handle(self, part, offset))
            )
            self._buffered += 1
            self._arrived.set()
            return
        destination = self._main if due <= time.time() else self._delayed
        generation = part.generation
        try:
            await self.broker._send(destination, value)
        except Exception:
            logger.exception("moving a delayed message of %s failed; retrying", self.queue_name)
            heapq.heappush(self._timers, (time.time() + 1.0, next(_seq), part, offset))
            return
        if self._held.pop((part, offset), None) is not None and generation == part.generation:
            part.finish(offset)

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
            await asyncio.gather(*(self.broker._send(self._main, _encode(d)) for d in gaps))
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
            if kafka is not None and not self._rebalancing and not _rejoin_pending(kafka):
                await self._commit(kafka)

    async def _commit(
        self, kafka: AIOKafkaConsumer, parts: Sequence[_Partition] | None = None
    ) -> None:
        offsets: dict[TopicPartition, int] = {}
        for part in parts if parts is not None else list(self._parts.values()):
            point = part.commit_point()
            if point is not None and point > part.committed and not part.revoked:
                offsets[part.tp] = point
        if not offsets:
            return
        try:
            await kafka.commit(offsets)
        except Exception as exc:  # a rebalance or a lost connection: the next owner redelivers
            logger.warning("committing offsets of %s failed: %r", self.queue_name, exc)
            return
        for part in parts if parts is not None else list(self._parts.values()):
            if part.tp in offsets:
                part.committed = offsets[part.tp]

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
                if self.broker._tombstones and self.broker._is_tombstoned(delivery):
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
                await asyncio.wait_for(self._caught_up.wait(), self.broker.timeout)
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
                await consumer.broker._send(topic, value, headers)
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
        self._held.clear()
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
                await kafka._client.force_metadata_update()


# -- reading topics without a group -----------------------------------------------------------


@contextlib.asynccontextmanager
async def _reader(broker: KafkaMessageBroker) -> AsyncIterator[AIOKafkaConsumer]:
    reader = AIOKafkaConsumer(
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        request_timeout_ms=max(40_000, int(broker.timeout * 1000)),
        **broker._client_kwargs(),
    )
    try:
        await asyncio.wait_for(reader.start(), broker.timeout)
    except (TimeoutError, KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await reader.stop()
        raise BrokerUnavailableError(f"Kafka is unreachable: {exc!r}") from exc
    try:
        yield reader
    finally:
        await reader.stop()


async def _partitions(reader: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    tps: list[TopicPartition] = []
    for topic in topics:
        parts = reader.partitions_for_topic(topic)
        if parts is None:
            await reader._client.force_metadata_update()
            parts = reader.partitions_for_topic(topic) or set()
        tps.extend(TopicPartition(topic, p) for p in sorted(parts))
    return tps


async def end_offsets(broker: KafkaMessageBroker, topics: list[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of `topics`."""
    async with _reader(broker) as reader:
        tps = await _partitions(reader, topics)
        if not tps:
            return {}
        ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
        return ends


async def read_topic(
    broker: KafkaMessageBroker, queue_name: str, category: MessageCategory
) -> list[Delivery]:
    """The messages now in one part of a queue, in order, without consuming them.

    NORMAL and DELAYED are read from the group's committed offsets, DEAD from the start.
    Removed records are left out; DELAYED lists only messages not due yet, each once.
    """
    topic = broker.topic(queue_name, category)
    async with _reader(broker) as reader:
        tps = await _partitions(reader, [topic])
        if not tps:
            return []
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        starts = await reader.beginning_offsets(tps)
        if category is not MessageCategory.DEAD:
            admin = broker._require_admin()
            try:
                committed = await admin.list_consumer_group_offsets(
                    broker.group(queue_name), partitions=tps
                )
            except KafkaError:
                committed = {}
            for tp, meta in committed.items():
                if meta is not None and meta.offset >= 0:
                    starts[tp] = max(starts.get(tp, 0), min(meta.offset, ends.get(tp, 0)))
        records: list[ConsumerRecord[Any, Any]] = []
        remaining = {tp for tp in tps if starts.get(tp, 0) < ends.get(tp, 0)}
        for tp in tps:
            reader.seek(tp, starts.get(tp, 0))
        deadline = time.monotonic() + broker.timeout
        while remaining and time.monotonic() < deadline:
            batches = await reader.getmany(*remaining, timeout_ms=100)
            for tp, batch in batches.items():
                records.extend(record for record in batch if record.offset < ends[tp])
                if batch and batch[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    deliveries: list[tuple[TopicPartition, int, Delivery]] = []
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        removal = _removal(record)
        if removal is not None:
            deliveries = [
                entry
                for entry in deliveries
                if not (entry[0] == tp and entry[1] < record.offset and _matches(removal, entry[2]))
            ]
            continue
        delivery, _ = _decode(record, queue_name)
        deliveries.append(
            (tp, record.offset, delivery._replace(handle=(tp, record.offset), category=category))
        )
    out = [entry[2] for entry in deliveries]
    if category is MessageCategory.DELAYED:
        now = time.time()
        latest: dict[tuple[str, float], Delivery] = {}
        for delivery in out:
            due = delivery.parameters.not_before
            if due is not None and due > now:
                latest[(delivery.key.id_, delivery.parameters.timer.timestamp.timestamp())] = (
                    delivery
                )
        out = sorted(latest.values(), key=lambda d: d.parameters.not_before or 0.0)
    elif category is MessageCategory.NORMAL:
        out = [
            d
            for d in out
            if d.decode_error is not None or (d.parameters.not_before or 0.0) <= time.time() + 1e9
        ]
    return out


async def queue_counts(broker: KafkaMessageBroker, queue_name: str) -> dict[str, int]:
    """Offset arithmetic over a queue's topics (see `KafkaMessageBroker.counts`)."""
    topics = [broker.topic(queue_name, category) for category in MessageCategory]
    async with _reader(broker) as reader:
        tps = await _partitions(reader, topics)
        ends = await reader.end_offsets(tps)
        starts = await reader.beginning_offsets(tps)
    try:
        committed = await broker._require_admin().list_consumer_group_offsets(
            broker.group(queue_name), partitions=tps
        )
    except KafkaError:
        committed = {}
    sizes = dict.fromkeys(topics, 0)
    for tp in tps:
        start = starts.get(tp, 0)
        meta = committed.get(tp)
        if tp.topic != topics[2] and meta is not None and meta.offset >= 0:
            start = max(start, meta.offset)
        sizes[tp.topic] += max(0, ends.get(tp, 0) - start)
    running = sum(len(c._running) for c in broker._consumers if c.queue_name == queue_name)
    return {
        "ready": max(0, sizes[topics[0]] - running),
        "delayed": sizes[topics[1]],
        "in_flight": running,
        "dead": sizes[topics[2]],
    }
