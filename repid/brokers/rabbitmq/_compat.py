"""Every access of the RabbitMQ package below aiormq's, pamqp's and asyncio's public API, used
only on connections and channels repid opened and only with the library versions the tests ran
(`TESTED_VERSIONS`); see docs/brokers/rabbitmq.md, "Internals"."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import aiormq.connection
from aiormq.abc import ChannelFrame, DeliveredMessage

__all__ = [
    "FAST_PATH_ENV",
    "TESTED_VERSIONS",
    "FastPathError",
    "ReceivedFrame",
    "bind_get_frame",
    "buffered",
    "channel_deliver_hooks",
    "channel_lock",
    "deliveries_queued",
    "fast_path_default",
    "frame_receiver_of",
    "log_fallback_once",
    "new_delivered_message",
    "next_delivery_tag",
    "publish_internals",
    "receiver_idle",
    "register_confirm",
    "resume_reading",
    "set_deliver_hook",
    "skip_delivery_tag",
    "unbind_get_frame",
    "unnumber",
    "versions_supported",
    "write_frames",
]

logger = logging.getLogger("repid.brokers.rabbitmq")

ReceivedFrame = tuple[int, int, Any]
"""What `FrameReceiver.get_frame` returns: (bytes used, channel number, frame object)."""

TESTED_VERSIONS = {"aiormq": "7.2.4", "pamqp": "4.0.1"}
"""The versions the fast paths were proved equal to the public path with (pinned in the
`rabbitmq` extra); with any other version repid takes the public path only."""
FAST_PATH_ENV = "REPID_FAST_PATH"
"""`REPID_FAST_PATH=0` makes `fast_path=False` the default of every broker built afterwards."""

_logged: set[str] = set()


class FastPathError(Exception):
    """A fast path could not serve a call and sent nothing: the caller takes the public path."""


def log_fallback_once(where: str, exc: BaseException) -> None:
    """Say (once per process and place) that a fast path met the unexpected and fell back."""
    if where in _logged:
        return
    _logged.add(where)
    logger.warning(
        "RabbitMQ fast path %s failed (%r); this call took aiormq's public path "
        "(further failures there are not logged)",
        where,
        exc,
        exc_info=exc,
    )


def fast_path_default() -> bool:
    """The process-wide default of `fast_path`: off when `REPID_FAST_PATH` is 0/false/no/off."""
    value = os.environ.get(FAST_PATH_ENV, "").strip().lower()
    return value not in {"0", "false", "no", "off"}


def versions_supported() -> bool:
    """Whether the installed aiormq and pamqp are the versions the fast paths were tested with."""
    for name, version in TESTED_VERSIONS.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if installed != version:
            if f"version:{name}" not in _logged:
                _logged.add(f"version:{name}")
                logger.info(
                    "%s %s is not the tested %s: RabbitMQ fast paths off", name, installed, version
                )
            return False
    return True


# -- the connection's frame receiver ------------------------------------------------------------


def frame_receiver_of(connection: Any) -> Any | None:
    """The `FrameReceiver` an aiormq connection reads with (a local of its reader task), or None
    when this aiormq does not keep it where 7.2 does."""
    task = getattr(connection, "_reader_task", None)
    if task is None or task.done():
        return None
    frame = getattr(task.get_coro(), "cr_frame", None)
    receiver = None if frame is None else frame.f_locals.get("frame_receiver")
    receiver_type = getattr(aiormq.connection, "FrameReceiver", None)
    if receiver_type is None or type(receiver) is not receiver_type:
        return None
    if not all(hasattr(receiver, name) for name in ("reader", "started", "lock")):
        return None  # pragma: no cover - another aiormq
    return receiver


def bind_get_frame(
    receiver: Any, get_frame: Callable[[], Awaitable[ReceivedFrame]]
) -> Callable[[], Awaitable[ReceivedFrame]]:
    """Make this one receiver read with `get_frame` (an instance attribute: the class and every
    other connection keep aiormq's method); returns aiormq's own method bound to `receiver`."""
    original: Callable[[], Awaitable[ReceivedFrame]] = type(receiver).get_frame.__get__(receiver)
    receiver.get_frame = get_frame
    return original


def unbind_get_frame(receiver: Any) -> None:
    receiver.__dict__.pop("get_frame", None)


def receiver_idle(receiver: Any) -> bool:
    """The receiver has read the protocol header and no read of aiormq's is in progress."""
    return bool(receiver.started) and not receiver.lock.locked()


def buffered(receiver: Any) -> bytearray | None:
    """The bytes the receiver's stream holds, when they may be taken without awaiting: the
    stream is still there (aiormq deletes it at its end) and has no pending error."""
    reader = getattr(receiver, "reader", None)
    if reader is None or reader.exception() is not None:
        return None
    buffer: bytearray | None = getattr(reader, "_buffer", None)
    return buffer


def resume_reading(receiver: Any) -> None:
    """After bytes were taken out of the stream's buffer: let the transport read again if the
    full buffer had paused it (what `StreamReader.readexactly` does)."""
    receiver.reader._maybe_resume_transport()


# -- channels ---------------------------------------------------------------------------------


def deliveries_queued(channel: Any, kinds: tuple[type, ...]) -> bool:
    """A frame of one of `kinds` waits in the channel's frame queue."""
    frames: asyncio.Queue[tuple[int, Any]] = channel.frames
    queued = getattr(frames, "_queue", None)
    if queued is None:  # pragma: no cover - another asyncio
        return not frames.empty()
    return any(isinstance(frame, kinds) for _, frame in queued)


def channel_deliver_hooks(channel: Any) -> tuple[Any, Any, asyncio.Queue[Any]] | None:
    """(deliver handler, frame getter, frame queue) of an aiormq channel, or None."""
    original = getattr(channel, "_on_deliver_frame", None)
    get_frame = getattr(channel, "_get_frame", None)
    frames = getattr(channel, "frames", None)
    if original is None or get_frame is None or not isinstance(frames, asyncio.Queue):
        return None
    return original, get_frame, frames


def set_deliver_hook(channel: Any, hook: Callable[[Any], Awaitable[None]]) -> None:
    """Handle this one channel's deliver frames with `hook` (an instance attribute)."""
    channel._on_deliver_frame = hook


def new_delivered_message(deliver: Any, header: Any, body: bytes, channel: Any) -> Any:
    """aiormq's frozen `DeliveredMessage`, filled without its field-by-field `__setattr__`."""
    message: DeliveredMessage = object.__new__(DeliveredMessage)
    message.__dict__.update(delivery=deliver, header=header, body=body, channel=channel)
    return message


# -- publishing ---------------------------------------------------------------------------------

_PUBLISH_ATTRIBUTES = (
    "confirmations",
    "message_id_delivery_tag",
    "delivery_tag",
    "write_queue",
    "publisher_confirms",
    "max_content_size",
    "lock",
    "create_future",
)


def publish_internals(channel: Any) -> bool:
    """The aiormq channel has what the batched publisher uses (as `basic_publish` does)."""
    return all(hasattr(channel, name) for name in _PUBLISH_ATTRIBUTES)


def channel_lock(channel: Any) -> asyncio.Lock:
    """The lock `basic_publish` holds while it numbers and queues a publish."""
    lock: asyncio.Lock = channel.lock
    return lock


def register_confirm(channel: Any, message_id: str) -> asyncio.Future[Any]:
    """Take the channel's next delivery tag and, on a confirming channel, register the future
    its publisher confirm resolves (what `basic_publish` does under the channel's lock)."""
    channel.delivery_tag += 1
    tag: int = channel.delivery_tag
    confirmation: asyncio.Future[Any] = channel.create_future()
    channel.confirmations[tag] = confirmation
    channel.message_id_delivery_tag[message_id] = tag

    def forget(_: asyncio.Future[Any]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            channel.message_id_delivery_tag.pop(message_id)

    confirmation.add_done_callback(forget)
    return confirmation


def next_delivery_tag(channel: Any) -> int:
    """The delivery tag the channel's next publish takes."""
    tag: int = channel.delivery_tag + 1
    return tag


def unnumber(channel: Any, first: int) -> None:
    """Undo the numbering of publishes from tag `first` on that were never written."""
    for tag in range(first, channel.delivery_tag + 1):
        confirmation = channel.confirmations.pop(tag, None)
        if confirmation is not None and not confirmation.done():
            confirmation.cancel()
    channel.delivery_tag = first - 1


def skip_delivery_tag(channel: Any) -> None:
    """An unconfirmed publish still takes a delivery tag (the server counts every publish)."""
    channel.delivery_tag += 1


async def write_frames(channel: Any, payload: bytes) -> None:
    """Queue marshalled frames for the connection's writer."""
    await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
