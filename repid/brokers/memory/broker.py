"""In-process broker with the same semantics as the network brokers.

Priorities, delays, leases, dead letters and unique ids all behave as on Redis or RabbitMQ, inside
one event loop. It is repid's embedded default and its test double. Messages are kept as Python
objects (no encoding), so it is also the fastest broker.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from repid.brokers.base import BrokerCapabilities, Delivery, OutgoingMessage
from repid.brokers.event_feed import EventFeed
from repid.brokers.memory._store import _Entry, _entry, _Lease, _MemoryQueue, _renewed
from repid.brokers.memory.buckets import InMemoryBucketBroker
from repid.brokers.memory.consumer import InMemoryConsumer
from repid.codec import decode_message
from repid.data import (
    MessageCategory,
    Parameters,
    PrioritiesT,
    RoutingKey,
)
from repid.errors import (
    ConsumerClosedError,
    DecodeError,
    MessageTooLargeError,
    QueueNotDeclaredError,
)
from repid.lifecycle import STALE_AFTER, ActorLimiter, RateLimit, WorkerInfo

__all__ = ["ConsumerClosedError", "InMemoryBucketBroker", "InMemoryMessageBroker"]

logger = logging.getLogger("repid.brokers.in_memory")
_new_lease = object.__new__


class InMemoryMessageBroker:
    """A message broker living in this process.

    Args:
        lease_duration: seconds a delivery stays owned by its consumer without `renew`; after
            that it is handed out again (as a crashed consumer's message would be).
        max_message_size: largest payload accepted by `enqueue`, in bytes.
        clock: wall-clock source in epoch seconds (tests may inject a fake one).
    """

    def __init__(
        self,
        *,
        lease_duration: float = 60.0,
        max_message_size: int | None = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.capabilities = BrokerCapabilities(
            strict_priorities=True,
            native_delays=True,
            native_dead_letters=True,
            lease_renewal=True,
            shared_state=False,
            persistent=False,
            max_message_size=max_message_size,
            lease_duration=lease_duration,
            cancellation=True,
            worker_registry=True,
            actor_limits=True,
            inspection=True,
            event_bus=True,
        )
        self.lease_duration = lease_duration
        self.max_message_size = max_message_size
        self._clock = clock
        self._queues: dict[str, _MemoryQueue] = {}
        self._seq = itertools.count()
        self._cancel_requests: set[str] = set()
        self._workers: dict[str, WorkerInfo] = {}
        self._limiters: dict[tuple[str, int | None, RateLimit | None], ActorLimiter] = {}
        self._event_feeds: list[EventFeed] = []
        self.is_connected = False

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        self.is_connected = True

    async def disconnect(self) -> None:
        self.is_connected = False

    # -- queues -------------------------------------------------------------------------------

    def _queue(self, name: str) -> _MemoryQueue:
        try:
            return self._queues[name]
        except KeyError:
            raise QueueNotDeclaredError(name) from None

    async def queue_declare(self, queue_name: str) -> None:
        if queue_name not in self._queues:
            self._queues[queue_name] = _MemoryQueue(queue_name)

    async def queue_flush(self, queue_name: str) -> None:
        q = self._queue(queue_name)
        for d in q.ready:
            d.clear()
        q.delayed.clear()
        q.dead.clear()
        self._drop_leases(q)
        q.pending_ids.clear()

    async def queue_delete(self, queue_name: str) -> None:
        q = self._queues.pop(queue_name, None)
        if q is not None:
            if q.timer is not None:
                q.timer.cancel()
            self._drop_leases(q)
            q.wake_all()

    @staticmethod
    def _drop_leases(q: _MemoryQueue) -> None:
        """Forget in-flight messages: their settlements become stale; free their consumers."""
        for lease in q.inflight.values():
            if lease.consumer is not None:
                lease.consumer._settled()
        q.inflight.clear()

    def queue_names(self) -> list[str]:
        return list(self._queues)

    def counts(self, queue_name: str) -> dict[str, int]:
        """Number of messages per part of the queue: ready, delayed, in_flight, dead."""
        q = self._queue(queue_name)
        return {
            "ready": q.ready_count(),
            "delayed": len(q.delayed),
            "in_flight": len(q.inflight),
            "dead": len(q.dead),
        }

    # -- publishing ------------------------------------------------------------------------

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        # `_put` inlined for the common case (an immediate message; `_place` stays a hook).
        q = self._queues.get(key.queue)
        if q is None:
            raise QueueNotDeclaredError(key.queue)
        if params is None:
            params = Parameters()
        delay = params.delay
        if delay.next_execution_time is not None or delay.delay_until is not None:
            self._put(q, key, payload, params, check_unique=True)
            return
        limit = self.max_message_size
        if limit is not None and len(payload) * 4 > limit:
            size = len(payload.encode())
            if size > limit:
                raise MessageTooLargeError(size, limit)
        id_ = key.id_
        ids = q.pending_ids
        if id_ in ids:
            logger.debug("message %s is already pending in %s; not added again", id_, q.name)
            return
        ids[id_] = 1
        entry = tuple.__new__(
            Delivery,
            (key, payload, params, next(self._seq), MessageCategory.NORMAL, None, None, False),
        )
        self._place(q, entry)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        queues = [self._queue(key.queue) for key, _, _ in messages]  # validate before any put
        for q, (key, payload, params) in zip(queues, messages, strict=True):
            self._put(q, key, payload, params, check_unique=True)

    def inject_raw(
        self, queue_name: str, raw: bytes, priority: PrioritiesT = PrioritiesT.MEDIUM
    ) -> None:
        """Put raw bytes on a queue as a network broker would receive them (tests, bridges).

        Bytes that are not a repid envelope, or longer than `max_message_size`, are delivered
        as an undecodable delivery (the worker dead-letters it with reason `decode_error`).
        """
        q = self._queue(queue_name)
        try:
            key, payload, params = decode_message(raw, self.max_message_size)
        except DecodeError as exc:
            seq = next(self._seq)
            entry = _entry(
                RoutingKey(f"raw-{seq}", "", queue_name, priority),
                "",
                Parameters(),
                seq,
                raw=raw,
                decode_error=str(exc),
            )
            q.ready[int(priority)].append(entry)
            q.wake_one()
            return
        self._put(q, key, payload, params, check_unique=True)

    def _put(
        self,
        q: _MemoryQueue,
        key: RoutingKey,
        payload: str,
        params: Parameters,
        *,
        check_unique: bool,
    ) -> None:
        limit = self.max_message_size
        # Cheap on the hot path: a str of n characters takes at most 4n bytes in UTF-8.
        if limit is not None and len(payload) * 4 > limit:
            size = len(payload.encode())
            if size > limit:
                raise MessageTooLargeError(size, limit)
        ids = q.pending_ids
        if check_unique and key.id_ in ids:
            logger.debug("message %s is already pending in %s; not added again", key.id_, q.name)
            return
        ids[key.id_] = ids.get(key.id_, 0) + 1
        self._place(q, _entry(key, payload, params, next(self._seq)))

    def _place(self, q: _MemoryQueue, entry: _Entry) -> None:
        delay = entry.parameters.delay
        when = delay.next_execution_time or delay.delay_until
        if when is not None:
            due = when.timestamp()
            if due > self._clock():
                heapq.heappush(q.delayed, (due, entry.handle, entry))
                self._arm_timer(q)
                return
        q.ready[entry.key.priority].append(entry)
        q.wake_one()

    def _arm_timer(self, q: _MemoryQueue) -> None:
        if not q.delayed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        due = q.delayed[0][0]
        if q.timer is not None:
            if q.timer.when() <= loop.time() + (due - self._clock()):
                return
            q.timer.cancel()
        q.timer = loop.call_at(loop.time() + max(0.0, due - self._clock()), self._on_timer, q)

    def _on_timer(self, q: _MemoryQueue) -> None:
        q.timer = None
        self._promote(q)
        if q.ready_count():
            q.wake_all()
        self._arm_timer(q)

    # -- handing out ---------------------------------------------------------------------------

    def _promote(self, q: _MemoryQueue, now: float | None = None) -> None:
        """Move due delayed messages to ready, and expired leases back to ready."""
        if now is None:
            now = self._clock()
        delayed = q.delayed
        while delayed and delayed[0][0] <= now:
            _, _, entry = heapq.heappop(delayed)
            q.ready[entry.key.priority].append(entry)
        if q.inflight and now >= q.next_sweep:
            q.next_sweep = now + min(1.0, self.lease_duration / 4)
            expired = [lease for lease in q.inflight.values() if lease.deadline <= now]
            for lease in expired:
                entry = lease.entry
                del q.inflight[entry.handle]
                if lease.consumer is not None:
                    lease.consumer._settled()
                logger.warning(
                    "lease of message %s in %s expired; it is available again",
                    entry.key.id_,
                    q.name,
                )
                q.ready[entry.key.priority].appendleft(
                    _renewed(entry, next(self._seq), redelivered=True)
                )

    def _take(
        self, q: _MemoryQueue, consumer: InMemoryConsumer | None, topics: frozenset[str] | None
    ) -> Delivery | None:
        now = self._clock()
        if (q.delayed and q.delayed[0][0] <= now) or (q.inflight and now >= q.next_sweep):
            self._promote(q, now)
        entry: _Entry | None = None
        if topics is None:
            for d in q.ready:
                if d:
                    entry = d.popleft()
                    break
        else:
            entry = self._take_topic(q, topics)
        if entry is None:
            return None
        lease = _new_lease(_Lease)  # `_Lease.__init__` inlined (the per-message path)
        lease.entry = entry
        lease.deadline = now + self.lease_duration
        lease.consumer = consumer
        q.inflight[entry.handle] = lease
        return entry

    @staticmethod
    def _take_topic(q: _MemoryQueue, topics: frozenset[str]) -> _Entry | None:
        for d in q.ready:
            for candidate in d:
                if candidate.key.topic in topics:
                    d.remove(candidate)
                    return candidate
        return None

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Cancel job `id_`: remove it if waiting ("dequeued"), flag it if running ("requested").

        None when no pending or running message has that id.
        """
        q = self._queue(queue_name)
        for ready in q.ready:
            for entry in ready:
                if entry.key.id_ == id_:
                    ready.remove(entry)
                    self._forget_id(q, id_)
                    return "dequeued"
        for i, (_, _, entry) in enumerate(q.delayed):
            if entry.key.id_ == id_:
                q.delayed.pop(i)
                heapq.heapify(q.delayed)
                self._forget_id(q, id_)
                return "dequeued"
        if any(lease.entry.key.id_ == id_ for lease in q.inflight.values()):
            self._cancel_requests.add(id_)
            return "requested"
        return None

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a pending cancellation request."""
        requests = self._cancel_requests
        return {id_ for id_ in running if id_ in requests} if requests else set()

    async def cancel_finished(self, id_: str) -> None:
        """The worker has cancelled job `id_`: forget the request."""
        self._cancel_requests.discard(id_)

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> ActorLimiter:
        """The limiter of `actor` shared by every worker on this broker (same limits, same one)."""
        key = (actor, max_concurrency, rate_limit)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = ActorLimiter(max_concurrency, rate_limit)
        return limiter

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record that a worker is alive (called when it starts and every few seconds)."""
        self._workers[info.id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def live_workers(self, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
        """Workers heard from within `stale_after` seconds; staler ones are forgotten."""
        now = self._clock()
        for worker_id, info in list(self._workers.items()):
            if now - info.last_seen > stale_after:
                del self._workers[worker_id]
        return sorted(self._workers.values(), key=lambda info: info.started_at)

    # -- events: fan-out to the subscriptions of this broker object ---------------------------

    max_event_size: int | None = None

    @property
    def event_subscriptions(self) -> int:
        """Subscriptions now open on this broker."""
        return len(self._event_feeds)

    async def publish_event(self, data: bytes) -> None:
        for feed in self._event_feeds:
            feed.put(data)

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        feed = EventFeed()
        self._event_feeds.append(feed)
        try:
            yield feed
        finally:
            self._event_feeds.remove(feed)
            feed.close()

    def take_ready(self, queue_name: str, handle: Any) -> Delivery | None:
        """Lease one specific ready message (by its delivery handle), or None if not ready.

        For tools that must run exactly one known message (the pytest plugin).
        """
        q = self._queue(queue_name)
        if q.delayed or q.inflight:
            self._promote(q)
        for ready in q.ready:
            for i, entry in enumerate(ready):
                if entry.handle == handle:
                    del ready[i]
                    q.inflight[entry.handle] = _Lease(
                        entry, self._clock() + self.lease_duration, None
                    )
                    return entry
        return None

    def _next_wakeup(self, q: _MemoryQueue) -> float | None:
        """Seconds until something may become ready without a publish (delays, leases)."""
        candidates = []
        if q.delayed:
            candidates.append(q.delayed[0][0] - self._clock())
        if q.inflight:
            candidates.append(min(1.0, self.lease_duration / 4))
        return max(0.0, min(candidates)) if candidates else None

    # -- settling -------------------------------------------------------------------------------

    def _release(self, key: Delivery) -> tuple[_MemoryQueue, _Entry] | None:
        q = self._queues.get(key.key.queue)
        if q is None:
            return None
        lease = q.inflight.pop(key.handle, None)
        if lease is None:
            logger.warning("stale settlement of message %s in %s ignored", key.key.id_, q.name)
            return None
        if lease.consumer is not None:
            lease.consumer._settled()
        return q, lease.entry

    def _forget_id(self, q: _MemoryQueue, id_: str) -> None:
        if self._cancel_requests:  # the job is over: its request must not outlive it
            self._cancel_requests.discard(id_)
        count = q.pending_ids.pop(id_, 0)
        if count > 1:  # rare: the same id placed twice (a requeue racing a browse)
            q.pending_ids[id_] = count - 1

    async def ack(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return self._settle_browsed(key, remove=True)
        # `_release` and `_forget_id` inlined (the per-message path).
        routing = key.key
        q = self._queues.get(routing.queue)
        if q is None:
            return False
        lease = q.inflight.pop(key.handle, None)
        if lease is None:
            logger.warning("stale settlement of message %s in %s ignored", routing.id_, q.name)
            return False
        if lease.consumer is not None:
            lease.consumer._settled()
        id_ = routing.id_
        if self._cancel_requests:
            self._cancel_requests.discard(id_)
        count = q.pending_ids.pop(id_, 0)
        if count > 1:
            q.pending_ids[id_] = count - 1
        return True

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        if key.category is MessageCategory.DEAD:
            return True
        if key.category is MessageCategory.DELAYED:
            entry = self._pop_browsed(key)
            if entry is None:
                return False
            q = self._queues[key.key.queue]
            self._forget_id(q, key.key.id_)
            self._to_dead(q, entry, parameters)
            return True
        released = self._release(key)
        if released is None:
            return False
        q, entry = released
        self._forget_id(q, key.key.id_)
        self._to_dead(q, entry, parameters)
        return True

    def _to_dead(self, q: _MemoryQueue, entry: _Entry, parameters: Parameters | None) -> None:
        seq = next(self._seq)
        q.dead[seq] = entry._replace(
            handle=seq, parameters=entry.parameters if parameters is None else parameters
        )

    async def reject(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return True  # a browsed dead/delayed message stays where it is
        released = self._release(key)
        if released is None:
            return False
        q, entry = released
        q.ready[entry.key.priority].appendleft(_renewed(entry, next(self._seq)))
        q.wake_one()
        return True

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        if key.category is not MessageCategory.NORMAL:
            entry = self._pop_browsed(key)
            if entry is None:
                return False
            q = self._queues[key.key.queue]
            ids = q.pending_ids
            ids[entry.key.id_] = ids.get(entry.key.id_, 0) + (
                1 if key.category is MessageCategory.DEAD else 0
            )
        else:
            released = self._release(key)
            if released is None:
                return False
            q, entry = released
        new = _entry(
            entry.key,
            entry.payload if payload is None else payload,
            entry.parameters if params is None else params,
            next(self._seq),
        )
        self._place(q, new)
        return True

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        deadline = self._clock() + self.lease_duration
        for delivery in deliveries:
            q = self._queues.get(delivery.key.queue)
            if q is not None and (lease := q.inflight.get(delivery.handle)) is not None:
                lease.deadline = deadline

    # -- browsing dead and delayed messages -----------------------------------------------

    def _browse(self, q: _MemoryQueue, category: MessageCategory) -> list[_Entry]:
        if category is MessageCategory.DEAD:
            return list(q.dead.values())
        return [entry for _, _, entry in sorted(q.delayed)]

    def _pop_browsed(self, key: Delivery) -> _Entry | None:
        q = self._queues.get(key.key.queue)
        if q is None:
            return None
        if key.category is MessageCategory.DEAD:
            return q.dead.pop(key.handle, None)
        for i, (_, seq, entry) in enumerate(q.delayed):
            if seq == key.handle:
                q.delayed.pop(i)
                heapq.heapify(q.delayed)
                return entry
        return None

    def _settle_browsed(self, key: Delivery, *, remove: bool) -> bool:
        entry = self._pop_browsed(key) if remove else None
        if entry is not None and key.category is MessageCategory.DELAYED:
            self._forget_id(self._queues[key.key.queue], entry.key.id_)
        return entry is not None

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> InMemoryConsumer:
        return InMemoryConsumer(self, queue, topics, max_unacked_messages, category)
