"""Moving a classic queue's messages (ready, delayed, dead) to the quorum layout, with publisher
confirms before each source ack; a re-run after an interruption goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiormq
from pamqp import commands as spec

from repid.brokers.rabbitmq._topology import Topology
from repid.brokers.rabbitmq.channel_state import DEAD_INFO_HEADER
from repid.brokers.rabbitmq.consumer import HOLD_LOCALLY
from repid.codec import decode_message
from repid.errors import BrokerError, DecodeError, QueueNotDeclaredError

if TYPE_CHECKING:
    from repid.brokers.rabbitmq.broker import RabbitMessageBroker

__all__ = ["PART_HEADER", "STAGING_SUFFIX", "MigrationReport", "migrate_to_quorum"]

STAGING_SUFFIX = ":migrating"
"""The quorum queue (`<queue>:migrating`) that holds the messages between the two layouts."""
PART_HEADER = "x-repid-migrate-part"
"""Which part of the classic queue a staged message came from: ready, delayed or dead."""


@dataclass
class MigrationReport:
    """What one `migrate_to_quorum` run did."""

    queue: str
    staged: int = 0
    """Messages taken from the classic queues into the staging queue by this run."""
    moved: dict[str, int] = field(default_factory=lambda: {"ready": 0, "delayed": 0, "dead": 0})
    """Messages published (confirmed) into the quorum layout by this run, per part."""
    duplicates: int = 0
    """Staged copies dropped because the same message was staged twice (an interrupted run)."""
    already_quorum: bool = False
    """The queue was a quorum queue with nothing staged: nothing to do."""


Target = Callable[[aiormq.abc.DeliveredMessage], tuple[str, str]]
"""Where a message is moved: (server queue, part)."""
Progress = Callable[[str, int], None]
"""`progress(step, count)`: called after each confirmed batch ("staged" or "moved")."""


async def migrate_to_quorum(
    broker: RabbitMessageBroker,
    queue_name: str,
    *,
    batch: int = 100,
    progress: Progress | None = None,
) -> MigrationReport:
    """Move `queue_name` from classic queues to the quorum layout of `broker`'s prefix.

    Stop the queue's workers and producers first. Step 1 moves every message of the classic
    queue, its delay queues and its dead part into the quorum queue `<queue>:migrating`
    (each batch confirmed there before it is acked at its source), then deletes the emptied
    classic queues. Step 2 declares the quorum layout (one queue per priority, delay and dead
    queues) and moves the staged messages to where each belongs, again confirmed before acked;
    then the staging queue is deleted. A run interrupted anywhere can be run again: nothing
    confirmed is lost. A message staged twice (confirmed, not yet acked at the interruption)
    is moved once; a batch moved to the quorum queues but not yet acked in the staging queue
    is moved again (at most `batch` duplicates per interruption of step 2).

    Args:
        broker: a connected `RabbitMessageBroker` (its prefix and `delivery_limit` are used).
        queue_name: the repid queue name (without the prefix).
        batch: messages per confirmed batch.
        progress: called after each batch with the step and the number of messages.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    quorum = Topology(
        broker._admin,
        broker.prefix,
        HOLD_LOCALLY,
        queue_type="quorum",
        delivery_limit=broker.delivery_limit,
    )
    classic = Topology(broker._admin, broker.prefix, HOLD_LOCALLY, queue_type="classic")
    run = _Migration(broker, queue_name, quorum, classic, batch, progress)
    return await run.run()


class _Migration:
    def __init__(
        self,
        broker: RabbitMessageBroker,
        queue_name: str,
        quorum: Topology,
        classic: Topology,
        batch: int,
        progress: Progress | None,
    ) -> None:
        self.broker = broker
        self.queue = queue_name
        self.name = quorum.name(queue_name)
        self.staging = self.name + STAGING_SUFFIX
        self.quorum = quorum
        self.classic = classic
        self.batch = batch
        self.progress = progress
        self.report = MigrationReport(queue_name)

    async def _exists(self, name: str) -> spec.Queue.DeclareOk | None:
        channel = await self.broker._link.new_channel(confirms=False)
        try:
            reply: spec.Queue.DeclareOk = await channel.queue_declare(name, passive=True)
            return reply
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _declares_as(self, topology: Topology) -> str | None:
        """None if the queue is equivalent to `topology`'s declaration, else the server's
        reason (a classic and a quorum queue differ in their arguments)."""
        channel = await self.broker._link.new_channel(confirms=False)
        try:
            await channel.queue_declare(
                self.name, durable=True, arguments=topology.band_arguments(self.queue)
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            return str(exc)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return None

    async def _is_classic(self) -> bool:
        """Whether the queue is repid's classic queue (False: its quorum queue)."""
        as_quorum = await self._declares_as(self.quorum)
        if as_quorum is None:
            return False
        as_classic = await self._declares_as(self.classic)
        if as_classic is None:
            return True
        raise BrokerError(
            f"queue {self.queue!r} is neither repid's classic nor its quorum queue "
            f"(as quorum: {as_quorum}; as classic: {as_classic})"
        )

    async def run(self) -> MigrationReport:
        queue = await self._exists(self.name)
        staged = await self._exists(self.staging)
        if queue is None and staged is None:
            raise QueueNotDeclaredError(self.queue)
        if queue is not None and queue.consumer_count:
            raise BrokerError(
                f"queue {self.queue!r} has {queue.consumer_count} consumer(s): stop its workers "
                "before migrating it"
            )
        if queue is not None and await self._is_classic():
            await self._declare_staging()
            await self._stage()
        elif staged is None:
            self.report.already_quorum = True
            return self.report
        await self.quorum.declare(self.queue)
        await self._unstage()
        return self.report

    async def _declare_staging(self) -> None:
        await self.broker._admin(
            "queue_declare", self.staging, durable=True, arguments={"x-queue-type": "quorum"}
        )

    async def _stage(self) -> None:
        """Step 1: every classic part into the staging queue, then the classic queues deleted."""
        while True:
            delays = await self.classic.delay_queues(self.queue)
            sources = [
                *((name, "delayed") for name in delays),
                (self.name + ":dead", "dead"),
                (self.name, "ready"),
            ]
            for source, part in sources:
                self.report.staged += await self._move(source, self._to_staging(part))
            if await self._delete_classic([name for name, _ in sources]):
                return

    def _to_staging(self, part: str) -> Target:
        def target(message: aiormq.abc.DeliveredMessage) -> tuple[str, str]:
            return self.staging, part

        return target

    async def _delete_classic(self, names: list[str]) -> bool:
        """Delete the emptied classic queues, delay queues first; False if one got a message
        meanwhile (a delay expired into the queue): then step 1 goes round again."""
        for name in names:
            if await self._exists(name) is None:
                continue
            channel = await self.broker._link.new_channel(confirms=False)
            try:
                await channel.queue_delete(name, if_empty=True)
            except aiormq.exceptions.ChannelPreconditionFailed:
                return False
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()
        return True

    async def _unstage(self) -> None:
        """Step 2: each staged message to its quorum queue; then the staging queue deleted.

        Every staged message is taken (unacked) first, so that a copy staged twice is found
        and dropped before anything moves; then the rest move in batches, in order."""
        while True:
            await self._unstage_once()
            # Quorum queues have no `if-empty` delete: only this migration writes to it.
            left = await self._exists(self.staging)
            if left is None or not left.message_count:
                break
        await self.broker._admin("queue_delete", self.staging)

    async def _unstage_once(self) -> None:
        reader = await self.broker._link.new_channel(confirms=False)
        writer = await self.broker._link.new_channel(confirms=True)
        try:
            seen: set[bytes] = set()
            taken: list[aiormq.abc.DeliveredMessage] = []
            while True:
                message = await reader.basic_get(self.staging, no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                fingerprint = _fingerprint(message)
                if fingerprint in seen:
                    self.report.duplicates += 1
                    await reader.basic_ack(_tag(message))
                    continue
                seen.add(fingerprint)
                taken.append(message)
            for start in range(0, len(taken), self.batch):
                chunk = taken[start : start + self.batch]
                parts = [_part(message) for message in chunk]
                routes = [self._route(message) for message in chunk]
                for level in sorted({level for _, level in routes if level is not None}):
                    if (self.queue, level) not in self.quorum.delay_declared:
                        await self.quorum.declare_delay(self.queue, level)
                await asyncio.gather(
                    *(
                        self._publish(writer, message, (name, part))
                        for message, (name, _), part in zip(chunk, routes, parts, strict=True)
                    )
                )
                await _ack_all(reader, chunk)
                for part in parts:
                    self.report.moved[part] = self.report.moved.get(part, 0) + 1
                if self.progress is not None:
                    self.progress("moved", len(chunk))
        finally:
            for channel in (reader, writer):
                with contextlib.suppress(Exception):
                    await channel.close()

    def _route(self, message: aiormq.abc.DeliveredMessage) -> tuple[str, int | None]:
        """The quorum queue a staged message goes to, and its delay level if it is delayed."""
        if _part(message) == "dead":
            return self.name + ":dead", None
        try:
            key, _, params = decode_message(message.body, self.broker.max_message_size)
        except DecodeError:
            return self.name, None  # the MEDIUM queue: a worker dead-letters it
        if key.queue != self.queue:
            return self.name, None
        return self.quorum.route(self.queue, params, key.priority)

    async def _move(
        self,
        source: str,
        target: Target,
    ) -> int:
        """Move every message of `source` where `target` says, a batch at a time: published
        with confirms, then acked at the source. Returns how many moved."""
        if await self._exists(source) is None:
            return 0
        moved = 0
        reader = await self.broker._link.new_channel(confirms=False)
        writer = await self.broker._link.new_channel(confirms=True)
        try:
            while True:
                taken: list[tuple[aiormq.abc.DeliveredMessage, tuple[str, str]]] = []
                while len(taken) < self.batch:
                    message = await reader.basic_get(source, no_ack=False)
                    if not isinstance(message.delivery, spec.Basic.GetOk):
                        break
                    taken.append((message, target(message)))
                if not taken:
                    return moved
                sends = [self._publish(writer, message, where) for message, where in taken]
                await asyncio.gather(*sends)
                await _ack_all(reader, [message for message, _ in taken])
                moved += len(sends)
                if self.progress is not None:
                    self.progress("staged", len(sends))
        finally:
            for channel in (reader, writer):
                with contextlib.suppress(Exception):
                    await channel.close()

    @staticmethod
    async def _publish(
        channel: aiormq.abc.AbstractChannel,
        message: aiormq.abc.DeliveredMessage,
        where: tuple[str, str],
    ) -> None:
        routing_key, part = where
        props = message.header.properties
        headers: dict[str, Any] = dict(props.headers or {})
        if routing_key.endswith(STAGING_SUFFIX):
            headers[PART_HEADER] = part
        else:
            headers.pop(PART_HEADER, None)
        props.headers = headers or None
        props.delivery_mode = 2
        confirmation = await channel.basic_publish(
            message.body, exchange="", routing_key=routing_key, properties=props, mandatory=True
        )
        if not isinstance(confirmation, spec.Basic.Ack):
            raise BrokerError(f"RabbitMQ did not confirm a message moved to {routing_key!r}")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _tag(message: aiormq.abc.DeliveredMessage) -> int:
    tag: int = message.delivery.delivery_tag  # type: ignore[union-attr, assignment]
    return tag


def _part(message: aiormq.abc.DeliveredMessage) -> str:
    return _text((message.header.properties.headers or {}).get(PART_HEADER)) or "ready"


def _fingerprint(message: aiormq.abc.DeliveredMessage) -> bytes:
    """Equal for two staged copies of one message (its part, dead-letter header and body)."""
    headers = message.header.properties.headers or {}
    digest = hashlib.sha256(_part(message).encode() + b"\0")
    digest.update(_text(headers.get(DEAD_INFO_HEADER)).encode() + b"\0")
    digest.update(message.body)
    return digest.digest()


async def _ack_all(
    channel: aiormq.abc.AbstractChannel, messages: list[aiormq.abc.DeliveredMessage]
) -> None:
    """Ack each message, then wait for a reply on the channel, so the acks reached the server
    before the channel can close (seen on the quorum staging queue: with one `multiple` ack
    and an immediate close, part of a batch was not settled and came back)."""
    for message in messages:
        await channel.basic_ack(_tag(message))
    await channel.basic_qos(prefetch_count=0)
