"""The Kafka broker's producer: writes records and waits for `acks=all`, through the
direct-send fast path when it is on (`_compat.DirectSender`), else aiokafka's `send()`."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
)

from repid.brokers.kafka._compat import DirectSender, FastPathFailures
from repid.errors import BrokerUnavailableError, MessageTooLargeError, map_broker_errors

__all__ = ["UNAVAILABLE", "Publisher", "fast_path_default"]

logger = logging.getLogger("repid.brokers.kafka")

UNAVAILABLE = (KafkaConnectionError, KafkaTimeoutError, ConnectionError, OSError, TimeoutError)
"""What a client raises while the cluster is unreachable (or did not answer in time)."""

FAST_PATH_ENV = "REPID_FAST_PATH"


def fast_path_default() -> bool:
    """The process-wide default of `fast_path`: off when `REPID_FAST_PATH` is 0/false/no/off."""
    return os.environ.get(FAST_PATH_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


class Publisher:
    """Owns the broker's aiokafka producer (the fast path only ever runs on it).

    Args:
        make_producer: builds a new, not started, producer.
        timeout: seconds a send may wait for the acknowledgement.
        max_message_size: the broker's limit (for `MessageTooLargeError`).
        fast_path: send a lone record from the caller's task when its partition is idle.
    """

    def __init__(
        self,
        make_producer: Callable[[], AIOKafkaProducer],
        timeout: float,
        max_message_size: int,
        fast_path: bool,
    ) -> None:
        self._make_producer = make_producer
        self.timeout = timeout
        self.max_message_size = max_message_size
        self.fast_path = fast_path
        self.failures = FastPathFailures()
        self.producer: AIOKafkaProducer | None = None
        self.direct: DirectSender | None = None
        """The fast path of the current producer (None: off, or it does not apply)."""
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start a producer (left to `stop()` on failure too)."""
        self.producer = self._make_producer()
        await self.producer.start()
        self.direct = DirectSender.attach(self.producer, self.failures) if self.fast_path else None

    async def stop(self) -> None:
        producer, self.producer, self.direct = self.producer, None, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception:  # closing a broken client must not hide the original error
                logger.debug("stopping the Kafka producer failed", exc_info=True)

    async def restart(self) -> None:
        """A new producer (a new producer id): the idempotent producer keeps sequence numbers
        per partition, which a recreated topic would refuse."""
        async with self._lock:
            old = self.producer
            producer = self._make_producer()
            await producer.start()
            self.producer = producer
            self.direct = DirectSender.attach(producer, self.failures) if self.fast_path else None
        if old is not None:
            await old.stop()

    def require(self) -> AIOKafkaProducer:
        if self.producer is None:
            raise BrokerUnavailableError("the Kafka broker is not connected; call connect()")
        return self.producer

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self.require().partitions_for(topic)
        return partitions

    async def send(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Write one record; return once every in-sync replica has it.

        Raises:
            MessageTooLargeError: larger than the producer accepts; nothing sent.
            BrokerUnavailableError: no acknowledgement within `timeout` (the record may or
                may not have been stored).
        """
        for attempt in (1, 2):
            producer = self.require()
            direct = self.direct
            what = (
                f"sending a message to {topic!r} (waited up to {self.timeout}s; it may or may "
                "not have been stored)"
            )
            try:
                with map_broker_errors({UNAVAILABLE: BrokerUnavailableError}, what):
                    # asyncio.timeout, not wait_for: no extra task per message. aiokafka
                    # retries a batch while the cluster is down; this bounds the wait.
                    async with asyncio.timeout(self.timeout):
                        sent = None
                        if direct is not None:
                            sent = await direct.send(topic, value, headers or [], partition)
                        if sent is None:
                            sent = await producer.send(
                                topic, value, headers=headers, partition=partition
                            )
                        await sent
                return
            except MessageSizeTooLargeError as exc:
                raise MessageTooLargeError(len(value), self.max_message_size) from exc
            except OutOfOrderSequenceNumber:
                if attempt == 2:
                    raise
                # The topic was recreated under this producer: start a fresh producer id.
                await self.restart()
