"""NATS JetStream message broker (nats-py). The layout on the server and the guarantees are in
docs/brokers/nats.md; the names in `_names.py`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from repid.brokers.base import BrokerCapabilities, ConnectionPolicy, Delivery, OutgoingMessage
from repid.brokers.nats._events import NatsEventBus
from repid.brokers.nats._handles import RAW_HEADER, Browsed, Handle, due_of
from repid.brokers.nats._link import NatsLink, safe_servers
from repid.brokers.nats._names import DUE_HEADER, QueueNames, safe, unsafe
from repid.brokers.nats._state import KvState
from repid.brokers.nats.consumer import NatsConsumer
from repid.codec import encode_message
from repid.data import PRIORITY_COUNT, MessageCategory, Parameters, RoutingKey
from repid.errors import BrokerError, MessageTooLargeError, QueueNotDeclaredError
from repid.ids import generated_here

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState

__all__ = ["NatsMessageBroker"]

logger = logging.getLogger("repid.brokers.nats")

_WRONG_LAST_SEQUENCE = 10071
_DEFAULT_POLICY = ConnectionPolicy(
    connect_timeout=5.0, operation_timeout=10.0, reconnect_backoff=0.5
)


class NatsMessageBroker(KvState, NatsEventBus):
    """A message broker on NATS JetStream.

    Each queue is a work-queue stream with one durable pull consumer per priority (HIGH is
    fetched before MEDIUM before LOW); `AckWait` is the lease, renewed with in-progress acks
    while an actor runs. Delayed messages and retries carry a due time and are held back by
    the server with a NAK delay. Dead letters are kept in a stream of their own.

    Args:
        servers: NATS URL(s) (a comma-separated string or a list).
        prefix: prepended to every stream, consumer and key-value bucket repid creates.
        lease_duration: seconds a delivery stays owned without renewal (the consumers'
            `AckWait`; set when the queue is declared).
        max_message_size: the largest envelope `enqueue()` accepts, in bytes (the server's
            `max_payload` when it is smaller).
        poll_interval: seconds one waiting pull request lasts before it is renewed.
        max_ack_pending: the consumers' `MaxAckPending` (delivered and delayed messages).
        connect_timeout: seconds to open the connection.
        operation_timeout: seconds an operation keeps trying while NATS is unreachable before
            it raises `BrokerUnavailableError`.
        reconnect_backoff: seconds between reconnection attempts.
        shared_state: a `RedisSharedState` that makes per-actor limits shared by every
            process (without it they are per worker).
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = "repid-",
        lease_duration: float = 30.0,
        max_message_size: int = 1024 * 1024,
        poll_interval: float = 1.0,
        max_ack_pending: int = 100_000,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
        shared_state: RedisSharedState | None = None,
    ) -> None:
        self.servers = servers
        self.prefix = prefix
        self.lease_duration = lease_duration
        self.max_message_size = max_message_size
        self.poll_interval = poll_interval
        self.max_ack_pending = max_ack_pending
        self.scan_limit = 10_000
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout, operation_timeout, reconnect_backoff, defaults=_DEFAULT_POLICY
        )
        self.link = NatsLink(servers, self.connection_policy)
        self.capabilities = BrokerCapabilities(
            strict_priorities=True,
            native_delays=True,
            native_dead_letters=True,
            lease_renewal=True,
            shared_state=True,
            persistent=True,
            max_message_size=max_message_size,
            lease_duration=lease_duration,
            cancellation=True,
            worker_registry=True,
            actor_limits=True,
            inspection=True,
            liveness=True,
            event_bus=True,
        )
        self._names: dict[str, QueueNames] = {}
        self._declared: set[str] = set()
        self._owned: dict[tuple[str, int], Handle] = {}
        self._naks: list[Handle] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self.publishing: dict[tuple[str, str], asyncio.Event] = {}
        """(queue, id) of the enqueue/requeue calls of this process that have not returned: a
        delivery of that message waits for it (`enqueued`/`retried` come before `started`)."""
        self._msg_ids = itertools.count()
        self._token = os.urandom(6).hex()
        self._init_kv_state(safe(prefix), shared_state)

    def __repr__(self) -> str:
        return f"NatsMessageBroker({safe_servers(self.servers)!r}, prefix={self.prefix!r})"

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.link.connect()
        server_max = self.link.max_payload
        if server_max and server_max < self.max_message_size:
            self.capabilities = replace(self.capabilities, max_message_size=server_max)
        await self._connect_state()

    async def ping(self) -> bool:
        """nats-py's client is connected now (not reconnecting)."""
        nc = self.link.nc
        return nc is not None and nc.is_connected

    async def disconnect(self) -> None:
        await self._disconnect_state()
        for task in list(self._tasks):
            task.cancel()
        await self.link.close()

    def spawn(self, operation: Awaitable[Any]) -> None:
        """Run a fire-and-forget operation (a NAK), its errors logged at debug level."""
        task = asyncio.ensure_future(operation)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.debug("NATS background operation failed: %r", exc)

    # -- queues -------------------------------------------------------------------------------

    def names(self, queue: str) -> QueueNames:
        names = self._names.get(queue)
        if names is None:
            names = self._names[queue] = QueueNames(self.prefix, queue)
        return names

    async def queue_declare(self, queue_name: str) -> None:
        names = self.names(queue_name)
        js = self.link.js
        main = StreamConfig(
            name=names.stream,
            subjects=[f"{names.stream}.*.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
        )
        dead = StreamConfig(
            name=names.dead_stream,
            subjects=[names.dead_subjects],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
        await self.link.call("declare a stream", lambda: js.add_stream(main))
        await self.link.call("declare a stream", lambda: js.add_stream(dead))
        for priority in range(PRIORITY_COUNT):
            config = ConsumerConfig(
                durable_name=names.consumers[priority],
                filter_subject=f"{names.subjects[priority]}.*",
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.lease_duration,
                max_deliver=-1,
                max_ack_pending=self.max_ack_pending,
                max_waiting=4096,
            )
            await self.link.call(
                "declare a consumer", partial(js.add_consumer, names.stream, config)
            )
        self._declared.add(queue_name)

    async def ensure_declared(self, names: QueueNames) -> None:
        if names.queue in self._declared:
            return
        js = self.link.js
        try:
            await self.link.call("look up a stream", lambda: js.stream_info(names.stream))
        except nats.js.errors.NotFoundError:
            raise QueueNotDeclaredError(names.queue) from None
        self._declared.add(names.queue)

    async def queue_flush(self, queue_name: str) -> None:
        names = self.names(queue_name)
        await self.ensure_declared(names)
        js = self.link.js
        for stream in (names.stream, names.dead_stream):
            await self.link.call("purge a stream", partial(js.purge_stream, stream))
        self._drop_owned(names.stream)

    async def queue_delete(self, queue_name: str) -> None:
        names = self.names(queue_name)
        js = self.link.js
        for stream in (names.stream, names.dead_stream):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.link.call("delete a stream", partial(js.delete_stream, stream))
        self._declared.discard(queue_name)
        self._drop_owned(names.stream)

    def _drop_owned(self, stream: str) -> None:
        for key in [key for key in self._owned if key[0] == stream]:
            handle = self._owned.pop(key)
            if handle.consumer is not None:
                handle.consumer._settled()

    async def queue_names(self) -> list[str]:
        """The queues of this broker's prefix (from the streams on the server)."""
        js = self.link.js
        infos = await self.link.call("list streams", js.streams_info)
        start = safe(self.prefix)
        return sorted(
            unsafe(info.config.name)[len(self.prefix) :]
            for info in infos
            if info.config.name
            and info.config.name.startswith(start)
            and not info.config.name.endswith("_dead")
        )

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Messages per part: ready, delayed (due later), in_flight (delivered, not settled),
        dead. The delayed ones are found by reading the queue's stream (at most `scan_limit`
        messages; past that the delayed count is a lower bound)."""
        names = self.names(queue_name)
        await self.ensure_declared(names)
        js = self.link.js
        ready = in_flight = 0
        delivered: list[int] = []
        for consumer in names.consumers:
            info = await self.link.call(
                "consumer info", partial(js.consumer_info, names.stream, consumer)
            )
            ready += info.num_pending or 0
            in_flight += info.num_ack_pending or 0
            delivered.append((info.delivered.stream_seq or 0) if info.delivered else 0)
        delayed_ready = delayed_taken = 0
        now = time.time()
        seq = 1
        for _ in range(self.scan_limit):
            try:
                raw = await self.link.call(
                    "read a message",
                    partial(js.get_msg, names.stream, seq, f"{names.stream}.*.*", next=True),
                )
            except nats.js.errors.NotFoundError:
                break
            seq = (raw.seq or seq) + 1
            due = due_of(raw.headers)
            if due is not None and due > now:
                priority = int((raw.subject or "").rsplit(".", 2)[1])
                if (raw.seq or 0) <= delivered[priority]:
                    delayed_taken += 1
                else:
                    delayed_ready += 1
        dead = await self.link.call("stream info", partial(js.stream_info, names.dead_stream))
        return {
            "ready": max(0, ready - delayed_ready),
            "delayed": delayed_ready + delayed_taken,
            "in_flight": max(0, in_flight - delayed_taken),
            "dead": dead.state.messages,
        }

    # -- publishing ------------------------------------------------------------------------

    def _headers(self, params: Parameters, expect: int | None) -> dict[str, str]:
        """The headers of a message: its due time, and the sequence its subject must be at.

        `expect` makes the publish conditional (`Nats-Expected-Last-Subject-Sequence`): 0 for a
        new message (its subject `S.<priority>.<id>` must hold nothing: unique ids, and a
        publish retried after a lost answer is not stored twice), the old message's sequence
        for its replacement. None: a message id for the server's duplicate window instead.
        """
        headers: dict[str, str] = {}
        if expect is None:
            headers["Nats-Msg-Id"] = f"{self._token}-{next(self._msg_ids)}"
        else:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect)
        due = params.not_before
        if due is not None and due > time.time():
            headers[DUE_HEADER] = repr(due)
        return headers

    def _body(self, key: RoutingKey, payload: str, params: Parameters) -> bytes:
        body = encode_message(key, payload, params)
        limit = self.capabilities.max_message_size
        if limit is not None and len(body) > limit:
            raise MessageTooLargeError(len(body), limit)
        return body

    async def _publish(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        slot: tuple[str, str] | None = None,
    ) -> bool:
        """Publish durably; False when the server refused it as already pending."""
        js = self.link.js
        done = None
        if slot is not None and slot not in self.publishing:
            done = self.publishing[slot] = asyncio.Event()
        try:
            await self.link.call("publish", lambda: js.publish(subject, body, headers=headers))
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                return False
            raise BrokerError(f"NATS refused the message: {exc.description}") from None
        finally:
            if done is not None:
                del self.publishing[slot]  # type: ignore[arg-type]
                done.set()
        return True

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        params = params or Parameters()
        names = self.names(key.queue)
        await self.ensure_declared(names)
        body = self._body(key, payload, params)
        headers = self._headers(params, 0)
        subject = names.subject(key.priority, key.id_)
        if not await self._publish(subject, body, headers, (key.queue, key.id_)):
            logger.debug("message %s is already pending in %s; not added again", key.id_, key.queue)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        for key, payload, params in messages:  # validate everything before sending anything
            await self.ensure_declared(self.names(key.queue))
            self._body(key, payload, params)
        await asyncio.gather(*(self.enqueue(*message) for message in messages))

    # -- settling -------------------------------------------------------------------------------

    def own(self, handle: Handle) -> None:
        """A delivery was handed out here: from now on only this one settles the message."""
        self._owned[handle.key] = handle

    def _release(self, delivery: Delivery) -> Handle | None:
        handle = delivery.handle
        if not isinstance(handle, Handle):
            return None
        current = self._owned.get(handle.key)
        if current is handle:
            del self._owned[handle.key]
            if handle.consumer is not None:
                handle.consumer._settled()
            if time.monotonic() <= handle.deadline:
                return handle
        logger.warning(
            "stale settlement of message %s in %s ignored", delivery.key.id_, delivery.key.queue
        )
        return None

    async def _ack_msg(self, handle: Handle, id_: str) -> bool:
        """Acknowledge one delivery. For an id the user gave, wait for the server to have
        removed the message (a new job with that id may be enqueued right after); generated
        ids are never reused, so their acknowledgement is not waited for."""
        try:
            if generated_here(id_):
                await handle.msg.ack()
            else:
                timeout = self.connection_policy.operation_timeout
                async with asyncio.timeout(timeout + 1):
                    await handle.msg.ack_sync(timeout=timeout)
        except Exception as exc:
            logger.warning("ack of message %s failed (%r); it will be redelivered", handle.seq, exc)
            return False
        return True

    async def ack(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return await self._delete_browsed(key)
        handle = self._release(key)
        if handle is None:
            return False
        ok = await self._ack_msg(handle, key.key.id_)
        await self._job_over(key.key.id_)
        return ok

    async def _to_dead(self, names: QueueNames, delivery: Delivery, params: Parameters) -> None:
        headers = {"Nats-Msg-Id": f"{self._token}-{next(self._msg_ids)}"}
        if delivery.raw is not None:
            headers[RAW_HEADER] = base64.b64encode(delivery.raw).decode()
        body = encode_message(delivery.key, delivery.payload, params)
        await self._publish(names.dead_subject(delivery.key.id_), body, headers)

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        params = key.parameters if parameters is None else parameters
        if key.category is MessageCategory.DEAD:
            return True
        if key.category is MessageCategory.DELAYED:
            browsed: Browsed = key.handle
            await self._to_dead(browsed.names, key, params)
            return await self._delete_browsed(key)
        handle = self._release(key)
        if handle is None:
            return False
        await self._to_dead(handle.names, key, params)
        await self._ack_msg(handle, key.key.id_)
        await self._job_over(key.key.id_)
        return True

    async def reject(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return True
        handle = self._release(key)
        if handle is None:
            return False
        # Given back in stream order, whatever the order of the calls (JetStream redelivers
        # NAKed messages first come, first served): sent on the next pull or within 2 ms.
        if not self._naks:
            asyncio.get_running_loop().call_later(0.002, lambda: self.spawn(self.flush_naks()))
        self._naks.append(handle)
        return True

    async def flush_naks(self) -> None:
        """Send the NAKs of rejected deliveries, in stream order."""
        naks, self._naks = self._naks, []
        for handle in sorted(naks, key=lambda h: h.seq):
            try:
                await handle.msg.nak()
            except Exception as exc:
                logger.debug("NAK of message %s failed: %r", handle.seq, exc)

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        new_payload = key.payload if payload is None else payload
        new_params = key.parameters if params is None else params
        handle: Any = key.handle
        if key.category is MessageCategory.NORMAL and self._release(key) is None:
            return False
        names: QueueNames = handle.names
        body = self._body(key.key, new_payload, new_params)
        subject = names.subject(key.key.priority, key.key.id_)
        slot = (key.key.queue, key.key.id_)
        # The replacement waits for the old message to be the last of its subject (a retried
        # publish whose first try was stored is refused); a dead letter sent back has no old
        # message in the queue's stream.
        expect = None if key.category is MessageCategory.DEAD else handle.seq
        headers = self._headers(new_params, expect)
        if not await self._publish(subject, body, headers, slot) and not await self._last_is(
            names, subject, body
        ):
            await self._publish(subject, body, self._headers(new_params, None), slot)
        if key.category is MessageCategory.NORMAL:
            await self._ack_msg(handle, key.key.id_)
            return True
        return await self._delete_browsed(key)

    async def _last_is(self, names: QueueNames, subject: str, body: bytes) -> bool:
        """Whether the last message of `subject` is `body` (a retried publish was stored)."""
        js = self.link.js
        try:
            raw = await self.link.call(
                "read a message", partial(js.get_msg, names.stream, subject=subject)
            )
        except nats.js.errors.NotFoundError:
            return False
        return raw.data == body

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        deadline = time.monotonic() + self.lease_duration
        for delivery in deliveries:
            handle = delivery.handle
            if isinstance(handle, Handle) and self._owned.get(handle.key) is handle:
                handle.deadline = deadline
                self.spawn(handle.msg.in_progress())

    async def _delete_browsed(self, key: Delivery) -> bool:
        browsed = key.handle
        if not isinstance(browsed, Browsed):
            return False
        js = self.link.js
        try:
            return await self.link.call(
                "delete a message", lambda: js.delete_msg(browsed.stream, browsed.seq)
            )
        except nats.js.errors.APIError:
            return False

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> NatsConsumer:
        return NatsConsumer(self, queue, topics, max_unacked_messages, category)
