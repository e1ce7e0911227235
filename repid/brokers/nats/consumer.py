"""The NATS consumer: pulls from the queue's three priority consumers (HIGH first), holds
delayed messages back with a NAK delay, and browses the dead and delayed parts of a queue."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import nats.js.errors
from nats.aio.msg import Msg

from repid.brokers.base import BaseConsumer, BrokerCapabilities, Delivery
from repid.brokers.nats._handles import Browsed, Handle, Holder, due_of, to_delivery
from repid.brokers.nats._names import QueueNames
from repid.data import PRIORITY_COUNT, MessageCategory
from repid.errors import ConsumerClosedError

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from repid.brokers.nats._link import NatsLink


class Source(Protocol):
    """What the consumer uses of `NatsMessageBroker`."""

    link: NatsLink
    lease_duration: float
    poll_interval: float
    publishing: dict[tuple[str, str], asyncio.Event]
    capabilities: BrokerCapabilities

    def names(self, queue: str) -> QueueNames: ...

    async def ensure_declared(self, names: QueueNames) -> None: ...

    def spawn(self, operation: Awaitable[Any]) -> None: ...

    def own(self, handle: Handle) -> None: ...

    async def flush_naks(self) -> None: ...

    async def reject(self, key: Delivery) -> bool: ...


logger = logging.getLogger("repid.brokers.nats")

_END = frozenset({"404", "408", "409"})
"""Status codes that end a pull request (no messages, expired, a limit was reached)."""


class NatsConsumer(BaseConsumer, Holder):
    """Hands out the deliveries of one queue, or browses its dead or delayed messages."""

    def __init__(
        self,
        broker: Source,
        queue: str,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> None:
        self._broker = broker
        self._names: QueueNames = broker.names(queue)
        self._topics = frozenset(topics) if topics is not None else None
        self.max_unacked_messages = max_unacked_messages
        self._category = category
        self._outstanding = 0
        self._paused = False
        self._closed = True
        self._wake = asyncio.Event()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._buffers: list[deque[tuple[Msg, float]]] = [deque() for _ in range(PRIORITY_COUNT)]
        self._requests: dict[str, asyncio.Future[None]] = {}
        self._counts: dict[str, int] = {}
        self._req_ids = itertools.count()
        self._inbox = ""
        self._sub: Any = None
        self._pull_lock = asyncio.Lock()
        self._current: list[str | None] = [None] * PRIORITY_COUNT
        """The open pull request of each priority (its reply subject)."""
        self._until: list[float] = [0.0] * PRIORITY_COUNT
        self._next_seq = 1

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._broker.ensure_declared(self._names)
        self._closed = False
        if self._category is MessageCategory.NORMAL and self._sub is None:
            nc = self._broker.link.client
            self._inbox = nc.new_inbox()
            self._sub = await nc.subscribe(f"{self._inbox}.*.*", cb=self._on_msg)

    async def pause(self) -> None:
        self._paused = True
        self._unpaused.clear()

    async def unpause(self) -> None:
        self._paused = False
        self._unpaused.set()

    async def finish(self) -> None:
        await self._broker.flush_naks()
        self._closed = True
        self._wake.set()
        self._unpaused.set()
        # Waiting pull requests cannot be withdrawn: until they expire (`poll_interval`), what
        # they deliver is given back at once instead of waiting out `AckWait` in a dead inbox.
        pending = [f for f in self._requests.values() if not f.done()]
        if pending and self._sub is not None:
            await asyncio.wait(pending, timeout=self._broker.poll_interval + 0.2)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for buffer in self._buffers:
            while buffer:
                msg, _ = buffer.popleft()
                with contextlib.suppress(Exception):
                    await msg.nak()
        for fut in self._requests.values():
            if not fut.done():
                fut.set_result(None)
        self._requests.clear()

    def _settled(self) -> None:
        self._outstanding -= 1
        self._wake.set()

    # -- pulling ----------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None and not msg.data:
            self._end(msg.subject)  # a status ends the request it answers
            return
        # A delivered message keeps its stream subject (`S.<priority>.<id>`); at most one
        # request per priority is open, so it answers that one.
        priority = int(msg.subject.rsplit(".", 2)[1])
        if self._closed:
            self._broker.spawn(msg.nak())
        else:
            self._buffers[priority].append((msg, time.monotonic()))
        reply = self._current[priority]
        if reply is not None:
            left = self._counts.get(reply, 1) - 1
            self._counts[reply] = left
            if left <= 0:
                self._end(reply)
        self._wake.set()

    def _end(self, reply: str) -> None:
        fut = self._requests.pop(reply, None)
        self._counts.pop(reply, None)
        priority = int(reply.rsplit(".", 2)[1])
        if self._current[priority] == reply:
            self._current[priority] = None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _request(self, priority: int, batch: int, expires: float | None) -> asyncio.Future[None]:
        """Ask the priority's consumer for up to `batch` messages (`expires` None: only those
        ready now). At most one request per priority is open at a time."""
        reply = f"{self._inbox}.{priority}.{next(self._req_ids)}"
        body: dict[str, Any] = {"batch": batch}
        if expires is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires * 1e9)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests[reply] = fut
        self._counts[reply] = batch
        self._current[priority] = reply
        # A request whose answer was lost (a reconnection) is given up after its time.
        wait = expires if expires is not None else self._broker.link.policy.operation_timeout
        self._until[priority] = time.monotonic() + wait + 1.0
        names = self._names
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.consumers[priority]}"
        task = asyncio.ensure_future(
            self._broker.link.client.publish(subject, json.dumps(body).encode(), reply=reply)
        )
        task.add_done_callback(_ignore)
        return fut

    def _open(self, priority: int) -> asyncio.Future[None] | None:
        reply = self._current[priority]
        if reply is None:
            return None
        if time.monotonic() > self._until[priority]:
            self._end(reply)
            return None
        return self._requests.get(reply)

    async def _wait_requests(self, futs: list[asyncio.Future[None]], timeout: float) -> None:
        """Wait until the requests end or a message arrives (whichever first), at most `timeout`."""
        self._wake.clear()
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
        pending: list[asyncio.Future[Any]] = [*futs, waiter]
        try:
            await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def _probe(self, batch: int) -> None:
        """Take what is ready now, HIGH first (one no-wait pull per priority, in order)."""
        op = self._broker.link.policy.operation_timeout
        await self._broker.flush_naks()
        for priority in range(PRIORITY_COUNT):
            if self._closed:
                return
            if self._open(priority) is not None:
                continue  # a waiting request hands over what is ready anyway
            fut = self._request(priority, batch, None)
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that races with the answer.
            await asyncio.wait({fut}, timeout=op)
            self._open(priority)  # given up if it was not answered in time
            got = len(self._buffers[priority])
            if got >= batch:
                return
            batch -= got

    async def _await_more(self) -> None:
        """Take what is ready (HIGH first); when nothing is, keep one waiting pull request per
        priority open (`poll_interval` seconds, up to the free capacity each) and wait for
        what they deliver."""
        batch = max(1, min(self._capacity(), 256))
        await self._probe(batch)
        if any(self._buffers) or self._closed:
            return
        await self._linger(self._broker.poll_interval, batch)

    async def _linger(self, expires: float, batch: int = 1) -> None:
        """Wait (at most `expires` seconds) for the next message of any priority."""
        futs = []
        for priority in range(PRIORITY_COUNT):
            fut = self._open(priority)
            futs.append(fut if fut is not None else self._request(priority, batch, expires))
        await self._wait_requests(futs, expires + 0.5)

    def _pop(self) -> Delivery | None:
        """The first buffered message that may run now, HIGH first (delayed ones are held back)."""
        broker = self._broker
        lease = broker.lease_duration
        now = time.monotonic()
        for priority, buffer in enumerate(self._buffers):
            while buffer:
                msg, received = buffer.popleft()
                if now - received > 0.8 * lease:
                    continue  # held too long: the server gives it out again
                due = due_of(msg.headers)
                if due is not None and (wait := due - time.time()) > 0.001:
                    broker.spawn(msg.nak(delay=wait))
                    continue
                meta = msg.metadata
                handle = Handle(msg, self._names, meta.sequence.stream, self, lease)
                handle.deadline = received + lease
                delivery = to_delivery(
                    msg.data,
                    msg.headers,
                    self._names,
                    priority,
                    handle,
                    redelivered=meta.num_delivered > 1 and due is None,
                    max_size=self._broker.capabilities.max_message_size,
                )
                if self._topics is not None and delivery.key.topic not in self._topics:
                    broker.spawn(msg.nak(delay=0.05))
                    continue
                broker.own(handle)
                return delivery
        return None

    def _capacity(self) -> int:
        limit = self.max_unacked_messages
        return 1_000 if limit is None else limit - self._outstanding

    async def consume(self) -> Delivery:
        if self._category is not MessageCategory.NORMAL:
            batch = await self.fetch(1)
            if not batch:
                raise ConsumerClosedError("no more messages in this part of the queue")
            return batch[0]
        while True:
            if self._closed:
                raise ConsumerClosedError(f"consumer of {self._names.queue!r} has finished")
            if self._paused:
                await self._unpaused.wait()
                continue
            if self._capacity() <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            delivery = self._pop()
            if delivery is not None:
                self._outstanding += 1
                await self._published(delivery)
                return delivery
            async with self._pull_lock:
                if any(self._buffers) or self._closed:
                    continue
                await self._await_more()

    async def _published(self, delivery: Delivery) -> None:
        """Wait until the enqueue/requeue of this process that sent `delivery` has returned."""
        done = self._broker.publishing.get((delivery.key.queue, delivery.key.id_))
        if done is None:
            return
        try:
            await done.wait()
        except asyncio.CancelledError:
            self._broker.spawn(self._broker.reject(delivery))
            raise

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        if self._category is not MessageCategory.NORMAL:
            return await self._browse(max_count)
        out: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(out) < max_count and not self._closed:
            delivery = self._pop()
            if delivery is not None:
                self._outstanding += 1
                await self._published(delivery)
                out.append(delivery)
                continue
            if out:
                break
            async with self._pull_lock:
                await self._probe(max_count - len(out))
                if any(self._buffers):
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0.01:
                    break
                await self._linger(min(remaining, self._broker.poll_interval))
        return out

    # -- browsing -------------------------------------------------------------------------

    async def _browse(self, max_count: int) -> list[Delivery]:
        names = self._names
        dead = self._category is MessageCategory.DEAD
        stream = names.dead_stream if dead else names.stream
        subject = names.dead_subjects if dead else f"{names.stream}.*.*"
        out: list[Delivery] = []
        js = self._broker.link
        while len(out) < max_count:
            seq = self._next_seq

            async def get(seq: int = seq) -> Any:
                return await js.js.get_msg(stream, seq=seq, subject=subject, next=True)

            try:
                raw = await js.call("browse", get)
            except nats.js.errors.NotFoundError:
                break
            self._next_seq = raw.seq + 1
            if not dead:
                due = due_of(raw.headers)
                if due is None or due <= time.time():
                    continue
            priority = 1 if dead else int(raw.subject.rsplit(".", 2)[1])
            delivery = to_delivery(
                raw.data or b"",
                raw.headers,
                names,
                priority,
                Browsed(names, stream, raw.seq),
                category=self._category,
            )
            if self._topics is not None and delivery.key.topic not in self._topics:
                continue
            out.append(delivery)
        return out


def _ignore(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
