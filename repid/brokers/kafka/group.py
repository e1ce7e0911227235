"""A consumer's membership of its queue's consumer group: the aiokafka client that joins it,
the rebalance callbacks, and the commits of finished prefixes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from repid.brokers.kafka._compat import rejoin_pending
from repid.brokers.kafka.offsets import PartitionOffsets
from repid.brokers.kafka.reading import UNREACHABLE, TopicsHost
from repid.errors import BrokerUnavailableError, map_broker_errors

__all__ = ["GroupHost", "RebalanceCallbacks", "RejoinWatch", "commit_finished", "join_group"]

logger = logging.getLogger("repid.brokers.kafka")


class GroupHost(TopicsHost, Protocol):
    """What joining a group needs of the broker, besides names and client options."""

    @property
    def drain_timeout(self) -> float: ...

    @property
    def session_timeout(self) -> float: ...


class RebalanceCallbacks(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance listener, calling back into the consumer."""

    def __init__(
        self,
        revoked: Callable[[Sequence[TopicPartition]], Awaitable[None]],
        assigned: Callable[[Sequence[TopicPartition]], None],
    ) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._assigned(assigned)


class RejoinWatch:
    """Tells when a consumer's client has been (re)joining its group for too long.

    A rebalance ends within its timeout (drain + session timeout) even when a member crashed.
    A client still rejoining a session timeout after that is stuck: seen with the noida-db
    test broker after IllegalGeneration/UnknownMemberId answers, when no member of the group
    read any more, so that the delayed records of the queue (a periodic job's next tick)
    never moved. The consumer then joins again with a new client.
    """

    def __init__(self, host: GroupHost, topic: str) -> None:
        self._host = host
        self._topic = topic
        self._since: float | None = None

    @property
    def limit(self) -> float:
        """Seconds of rejoining after which the membership counts as stuck."""
        return self._host.drain_timeout + 2 * self._host.session_timeout

    def stuck(self, kafka: AIOKafkaConsumer) -> bool:
        """Called after every poll: True once (then it starts over) when `kafka` is stuck."""
        now = time.monotonic()
        if not rejoin_pending(kafka):
            self._since = None
            return False
        if self._since is None:
            self._since = now
            return False
        if now - self._since <= self.limit:
            return False
        logger.warning(
            "the consumer of %s has been rejoining its group for %.0f s; joining again with "
            "a new client",
            self._topic,
            now - self._since,
        )
        self._since = None
        return True


async def join_group(
    host: GroupHost, queue_name: str, topics: list[str], listener: RebalanceCallbacks
) -> AIOKafkaConsumer:
    """A started aiokafka consumer subscribed to `topics` in the queue's group (joining in
    the background). Raises `BrokerUnavailableError` when Kafka is unreachable."""
    kafka = AIOKafkaConsumer(
        group_id=host.group(queue_name),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=5000,
        fetch_max_wait_ms=100,
        max_poll_interval_ms=300_000,
        # How long a rebalance waits for members to rejoin: our revoke drains first.
        rebalance_timeout_ms=int((host.drain_timeout + host.session_timeout) * 1000),
        session_timeout_ms=int(host.session_timeout * 1000),
        heartbeat_interval_ms=min(500, int(host.session_timeout * 1000 / 3)),
        request_timeout_ms=max(40_000, int(host.operation_timeout * 1000)),
        **host.client_kwargs(),
    )
    what = f"starting the consumer of {queue_name!r}"
    try:
        with map_broker_errors({UNREACHABLE: BrokerUnavailableError}, what):
            await asyncio.wait_for(kafka.start(), host.connect_timeout)
            # Subscribing after start: joining the group happens in the background (it can
            # take a session timeout when a crashed member is still registered).
            kafka.subscribe(topics, listener=listener)
    except BaseException:
        with contextlib.suppress(Exception):
            await kafka.stop()
        raise
    return kafka


async def commit_finished(
    kafka: AIOKafkaConsumer, parts: Iterable[PartitionOffsets], queue_name: str
) -> None:
    """Commit the finished prefix of each partition that moved since its last commit.

    A failure (a rebalance, a lost connection) is logged: the next owner redelivers.
    """
    parts = list(parts)
    offsets: dict[TopicPartition, int] = {}
    for part in parts:
        point = part.commit_point()
        if point is not None and point > part.committed and not part.revoked:
            offsets[part.tp] = point
    if not offsets:
        return
    try:
        await kafka.commit(offsets)
    except Exception as exc:
        logger.warning("committing offsets of %s failed: %r", queue_name, exc)
        return
    for part in parts:
        if part.tp in offsets:
            part.committed = offsets[part.tp]
