"""The fast frame reader returns what aiormq and pamqp return, for any split of the stream, and
hands whole deliveries to registered consumers in order, leaving busy channels to aiormq."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pamqp.exceptions
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from aiormq.connection import FrameReceiver
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from repid.brokers.rabbitmq import _compat
from repid.brokers.rabbitmq import _frames as _rabbitmq_frames
from repid.brokers.rabbitmq._frames import FrameReader, InlineConsumers, _whole_delivery, unmarshal

short = st.text(max_size=40)
names = st.from_regex(r"[a-zA-Z0-9_.:\-]{0,40}", fullmatch=True)  # what pamqp accepts as exchange
OURS: dict[str, Any] = {
    "content_type": "application/json",
    "delivery_mode": 2,
    "priority": 1,
    "message_id": "m",
}


def _state(frame: Any) -> Any:
    """Every attribute of a pamqp frame object, nested properties included."""
    if isinstance(frame, ContentHeader):
        return (
            type(frame),
            frame.class_id,
            frame.weight,
            frame.body_size,
            _state(frame.properties),
        )
    names = getattr(frame, "__slots__", None) or sorted(vars(frame))
    return (type(frame), [(name, getattr(frame, name, None)) for name in names])


def _same(raw: bytes) -> None:
    try:
        expected = pamqp.frame.unmarshal(raw)
    except pamqp.exceptions.UnmarshalingException as exc:
        with pytest.raises(type(exc)):
            unmarshal(raw)
        return
    got = unmarshal(raw)
    assert got[:2] == expected[:2]
    assert _state(got[2]) == _state(expected[2])


@given(
    consumer_tag=short,
    delivery_tag=st.integers(min_value=0, max_value=2**63 - 1),
    redelivered=st.booleans(),
    exchange=names,
    routing_key=short,
    channel=st.integers(min_value=1, max_value=2047),
)
@settings(max_examples=150, deadline=None)
def test_deliver_frames(
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    channel: int,
) -> None:
    deliver = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
    for name, value in (
        ("consumer_tag", consumer_tag),
        ("delivery_tag", delivery_tag),
        ("redelivered", redelivered),
        ("exchange", exchange),
        ("routing_key", routing_key),
    ):
        setattr(deliver, name, value)
    _same(pamqp.frame.marshal(deliver, channel))


@given(
    content_type=short,
    delivery_mode=st.integers(min_value=1, max_value=2),
    priority=st.integers(min_value=0, max_value=255),
    message_id=short,
    body_size=st.integers(min_value=0, max_value=2**40),
)
@settings(max_examples=150, deadline=None)
def test_header_frames(
    content_type: str, delivery_mode: int, priority: int, message_id: str, body_size: int
) -> None:
    properties = spec.Basic.Properties(
        content_type=content_type,
        delivery_mode=delivery_mode,
        priority=priority,
        message_id=message_id,
    )
    _same(pamqp.frame.marshal(ContentHeader(0, body_size, properties), 3))


@given(
    consumer_tag=short,
    delivery_tag=st.integers(min_value=0, max_value=2**63 - 1),
    redelivered=st.booleans(),
    exchange=names,
    message_id=st.text(min_size=1, max_size=40),  # pamqp leaves an empty one out
    priority=st.integers(min_value=0, max_value=255),
    body=st.binary(min_size=2, max_size=300),
    channel=st.integers(min_value=1, max_value=2047),
    tail=st.binary(max_size=20),
)
@settings(max_examples=150, deadline=None)
def test_a_whole_delivery_is_parsed_as_pamqp_parses_its_frames(
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    message_id: str,
    priority: int,
    body: bytes,
    channel: int,
    tail: bytes,
) -> None:
    deliver = spec.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, "q")
    properties = spec.Basic.Properties(**{**OURS, "message_id": message_id, "priority": priority})
    frames = [
        pamqp.frame.marshal(deliver, channel),
        pamqp.frame.marshal(ContentHeader(0, len(body), properties), channel),
        pamqp.frame.marshal(ContentBody(body), channel),
    ]
    data = b"".join(frames)
    parsed = _whole_delivery(bytearray(data + tail))
    assert parsed is not None
    used, number, got_deliver, got_header, got_body = parsed
    assert (used, number, got_body) == (len(data), channel, body)
    assert _state(got_deliver) == _state(pamqp.frame.unmarshal(frames[0])[2])
    assert _state(got_header) == _state(pamqp.frame.unmarshal(frames[1])[2])
    # Not all there yet, or not the plain shape: left to the frame-by-frame path.
    for cut in (0, 1, len(frames[0]), len(frames[0]) + len(frames[1]), len(data) - 1):
        assert _whole_delivery(bytearray(data[:cut])) is None
    two_bodies = [
        *frames[:2],
        pamqp.frame.marshal(ContentBody(body[:1]), channel),
        pamqp.frame.marshal(ContentBody(body[1:]), channel),
    ]
    assert _whole_delivery(bytearray(b"".join(two_bodies))) is None
    other_channel = [*frames[:2], pamqp.frame.marshal(ContentBody(body), channel + 1)]
    assert _whole_delivery(bytearray(b"".join(other_channel))) is None
    with_headers = ContentHeader(0, len(body), spec.Basic.Properties(**OURS, headers={"a": 1}))
    other_props = [frames[0], pamqp.frame.marshal(with_headers, channel), frames[2]]
    assert _whole_delivery(bytearray(b"".join(other_props))) is None


@pytest.mark.parametrize(
    "frame",
    [
        ContentBody(b""),
        ContentBody(b"x" * 70_000),
        ContentHeader(0, 5, spec.Basic.Properties(**OURS, headers={"x-death": [{"a": 1}]})),
        ContentHeader(0, 5, spec.Basic.Properties(content_type="text/plain")),
        spec.Basic.Ack(delivery_tag=5, multiple=True),
        spec.Basic.ConsumeOk(consumer_tag="ctag"),
        spec.Channel.Close(
            reply_code=406, reply_text="PRECONDITION_FAILED", class_id=60, method_id=80
        ),
        Heartbeat(),
    ],
)
def test_other_frames_match_pamqp(frame: Any) -> None:
    _same(pamqp.frame.marshal(frame, 0 if isinstance(frame, Heartbeat) else 9))


def test_malformed_frames_raise_like_pamqp() -> None:
    good = pamqp.frame.marshal(ContentHeader(0, 5, spec.Basic.Properties(**OURS)), 1)
    bad_end = good[:-1] + b"\x00"
    truncated_str = good[:21] + bytes((200,)) + good[22:]
    for raw in (bad_end, truncated_str):
        with pytest.raises(pamqp.exceptions.UnmarshalingException):
            pamqp.frame.unmarshal(raw)
        with pytest.raises(pamqp.exceptions.UnmarshalingException):
            unmarshal(raw)


def _stream() -> bytes:
    deliver = spec.Basic.Deliver("ctag", 7, False, "", "q")
    properties = spec.Basic.Properties(**OURS)
    frames: list[tuple[Any, int]] = [
        (deliver, 1),
        (ContentHeader(0, 3, properties), 1),
        (ContentBody(b"abc"), 1),
        (Heartbeat(), 0),
        (spec.Basic.Ack(delivery_tag=1), 2),
    ]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame, channel in frames) * 3


def _receiver(consumers: InlineConsumers | None = None) -> tuple[asyncio.StreamReader, Any]:
    """A stream and an aiormq `FrameReceiver` on it, read by repid's `FrameReader`."""
    reader = asyncio.StreamReader()
    receiver = FrameReceiver(reader)
    receiver.started = True
    FrameReader(receiver, {} if consumers is None else consumers)
    return reader, receiver


async def _read_all(
    chunks: list[bytes], count: int, consumers: InlineConsumers | None = None
) -> list[Any]:
    """Read `count` frames while the chunks arrive one event-loop step apart."""
    reader, receiver = _receiver(consumers)

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)

    feeder = asyncio.ensure_future(feed())
    frames = [await receiver.get_frame() for _ in range(count)]
    await feeder
    return frames


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_stream())), max_size=12))
@settings(max_examples=60, deadline=None)
def test_reader_returns_every_frame_in_order_for_any_split(cuts: list[int]) -> None:
    data = _stream()
    points = sorted({0, len(data), *cuts})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    expected = []
    position = 0
    while position < len(data):
        used, channel, frame = pamqp.frame.unmarshal(data[position:])
        expected.append((used, channel, _state(frame)))
        position += used
    frames = asyncio.run(_read_all(chunks, len(expected)))
    assert [(used, channel, _state(frame)) for used, channel, frame in frames] == expected


class _Channel:
    """What the reader looks at of an aiormq channel."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.is_closed = False
        self.frames: asyncio.Queue[Any] = asyncio.Queue()


def _delivery(tag: str, delivery_tag: int, body: bytes, channel: int, pieces: int = 1) -> bytes:
    frames: list[Any] = [
        spec.Basic.Deliver(tag, delivery_tag, False, "", "q"),
        ContentHeader(0, len(body), spec.Basic.Properties(**OURS)),
    ]
    step = max(1, -(-len(body) // pieces))
    frames += [ContentBody(body[i : i + step]) for i in range(0, len(body), step)]
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


def _consumer_stream() -> bytes:
    one = b"".join(
        (
            _delivery("ctag", 1, b"abc", 1),
            pamqp.frame.marshal(Heartbeat(), 0),
            _delivery("other", 9, b"xyz", 3),  # not registered: aiormq's path
            pamqp.frame.marshal(spec.Basic.Ack(delivery_tag=1), 2),
            _delivery("ctag", 2, b"0123456789", 1, pieces=3),  # body in three frames
            _delivery("ctag", 3, b"", 1),  # no body frame at all
            pamqp.frame.marshal(Heartbeat(), 0),
        )
    )
    return one * 3


async def _read_with_consumer(
    chunks: list[bytes], count: int, channel: _Channel
) -> tuple[list[Any], list[Any]]:
    delivered: list[Any] = []
    frames = await _read_all(chunks, count, {"ctag": (channel, delivered.append)})
    return frames, delivered


def _expected_returned(data: bytes, taken: Any) -> list[Any]:
    out = []
    position = 0
    while position < len(data):
        used, channel, frame = pamqp.frame.unmarshal(data[position:])
        if not taken(channel):
            out.append((used, channel, _state(frame)))
        position += used
    return out


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_consumer_stream())), max_size=12))
@settings(max_examples=60, deadline=None)
def test_registered_consumer_gets_whole_deliveries_in_order_for_any_split(
    cuts: list[int],
) -> None:
    data = _consumer_stream()
    points = sorted({0, len(data), *cuts})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    expected = _expected_returned(data, lambda channel: channel == 1)

    async def run() -> tuple[list[Any], list[Any]]:
        return await _read_with_consumer(chunks, len(expected), _Channel(1))

    frames, delivered = asyncio.run(run())
    assert [(used, channel, _state(frame)) for used, channel, frame in frames] == expected
    assert [(m.delivery.delivery_tag, m.body) for m in delivered] == [
        (1, b"abc"),
        (2, b"0123456789"),
        (3, b""),
    ] * 3

    # Whole or frame by frame, the objects are the ones pamqp builds.
    def decoded(frame: Any) -> Any:
        return _state(pamqp.frame.unmarshal(pamqp.frame.marshal(frame, 1))[2])

    assert [_state(m.delivery) for m in delivered] == [
        decoded(spec.Basic.Deliver("ctag", tag, False, "", "q")) for tag in (1, 2, 3)
    ] * 3
    assert [_state(m.header) for m in delivered] == [
        decoded(ContentHeader(0, size, spec.Basic.Properties(**OURS))) for size in (3, 10, 0)
    ] * 3
    assert all(isinstance(m, DeliveredMessage) and m.channel is not None for m in delivered)


def test_a_channel_with_a_delivery_queued_keeps_aiormqs_path() -> None:
    data = _consumer_stream()
    expected = _expected_returned(data, lambda channel: False)

    async def run() -> tuple[list[Any], list[Any]]:
        channel = _Channel(1)
        # An earlier delivery not read by the channel's task yet: never overtaken.
        channel.frames.put_nowait((0, spec.Basic.Deliver("ctag", 0, False, "", "q")))
        return await _read_with_consumer([data], len(expected), channel)

    frames, delivered = asyncio.run(run())
    assert [(used, channel, _state(frame)) for used, channel, frame in frames] == expected
    assert delivered == []


def test_a_queued_consume_ok_does_not_hold_deliveries_back() -> None:
    data = _consumer_stream()
    expected = _expected_returned(data, lambda channel: channel == 1)

    async def run() -> tuple[list[Any], list[Any]]:
        channel = _Channel(1)
        channel.frames.put_nowait((0, spec.Basic.ConsumeOk("ctag")))
        return await _read_with_consumer([data], len(expected), channel)

    frames, delivered = asyncio.run(run())
    assert len(frames) == len(expected)
    assert [m.delivery.delivery_tag for m in delivered] == [1, 2, 3] * 3


def test_a_method_frame_in_the_middle_of_content_drops_that_delivery() -> None:
    deliver = _delivery("ctag", 4, b"abc", 1)
    header_end = len(pamqp.frame.marshal(spec.Basic.Deliver("ctag", 4, False, "", "q"), 1))
    header_end += len(pamqp.frame.marshal(ContentHeader(0, 3, spec.Basic.Properties(**OURS)), 1))
    close = pamqp.frame.marshal(
        spec.Channel.Close(reply_code=320, reply_text="bye", class_id=0, method_id=0), 1
    )
    data = deliver[:header_end] + close + _delivery("ctag", 5, b"def", 1)
    data += pamqp.frame.marshal(Heartbeat(), 0)

    async def run() -> tuple[list[Any], list[Any]]:
        return await _read_with_consumer([data], 2, _Channel(1))

    frames, delivered = asyncio.run(run())
    assert [type(frame) for _, _, frame in frames] == [spec.Channel.Close, Heartbeat]
    assert [(m.delivery.delivery_tag, m.body) for m in delivered] == [(5, b"def")]


def test_the_reader_still_returns_a_frame_while_it_only_hands_deliveries_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiormq closes a connection that returned no frame for a few heartbeat intervals."""
    monkeypatch.setattr(_rabbitmq_frames, "_KEEPALIVE", 0.0)  # a heartbeat after every step
    deliveries = [_delivery("ctag", tag, b"abc", 1) for tag in range(1, 4)]
    body_frame = 8 + len(b"abc")
    # All there at once: handed over a whole delivery at a time, one frame returned for each.
    # The body frames arriving late: the deliver and header frames are taken one by one, a
    # frame returned after each, and the delivery completes when its body arrives.
    whole = [b"".join(deliveries)]
    by_frame = [part for d in deliveries for part in (d[:-body_frame], d[-body_frame:])]
    for chunks, steps in ((whole, 3), (by_frame, 9)):

        async def run(chunks: list[bytes] = chunks) -> tuple[list[Any], list[Any]]:
            delivered: list[Any] = []
            frames: list[Any] = []
            reader, receiver = _receiver({"ctag": (_Channel(1), delivered.append)})
            for chunk in chunks:
                reader.feed_data(chunk)
                while len(reader._buffer) >= 8 + len(b"abc"):  # type: ignore[attr-defined]
                    frames.append(await asyncio.wait_for(receiver.get_frame(), 5))
            return frames, delivered

        frames, delivered = asyncio.run(run())
        assert [(channel, type(frame)) for _, channel, frame in frames] == [(0, Heartbeat)] * steps
        assert [m.delivery.delivery_tag for m in delivered] == [1, 2, 3]


def test_a_delivery_on_aiormqs_path_is_assembled_by_the_channel_reader() -> None:
    """The channel-side hook (`_deliver_inline`): content frames taken from the channel's queue
    while they are there, awaited when they are not."""
    from repid.brokers.rabbitmq.consumer import deliver_inline

    async def run() -> tuple[list[Any], list[Any]]:
        channel = _Channel(1)
        later: asyncio.Queue[Any] = asyncio.Queue()
        others: list[Any] = []

        async def original(frame: Any) -> None:
            others.append(frame)

        async def get_frame() -> Any:
            return await later.get()

        channel._on_deliver_frame = original  # type: ignore[attr-defined]
        channel._get_frame = get_frame  # type: ignore[attr-defined]
        delivered: list[Any] = []
        deliver_inline(channel, "ctag", delivered.append)
        hook = channel._on_deliver_frame  # type: ignore[attr-defined]
        properties = spec.Basic.Properties(**OURS)
        channel.frames.put_nowait((0, ContentHeader(0, 6, properties)))
        channel.frames.put_nowait((0, ContentBody(b"abc")))
        later.put_nowait(ContentBody(b"def"))  # arrives after the queue ran empty
        await hook(spec.Basic.Deliver("ctag", 5, False, "", "q"))
        await hook(spec.Basic.Deliver("other", 6, False, "", "q"))
        return delivered, others

    delivered, others = asyncio.run(run())
    assert [(m.delivery.delivery_tag, m.body) for m in delivered] == [(5, b"abcdef")]
    assert [frame.delivery_tag for frame in others] == [6]


def test_the_message_handed_over_is_aiormqs_own() -> None:
    """The reader fills aiormq's `DeliveredMessage` directly; it must equal what aiormq's
    constructor builds (with this aiormq the fast way is the one in use)."""
    deliver = spec.Basic.Deliver("ctag", 3, False, "", "q")
    header = ContentHeader(0, 3, spec.Basic.Properties(**OURS))
    made = _rabbitmq_frames._message(deliver, header, b"abc", "channel")
    assert made == DeliveredMessage(delivery=deliver, header=header, body=b"abc", channel="channel")  # type: ignore[arg-type]
    assert made.delivery_tag == 3
    assert _rabbitmq_frames._message is _compat.new_delivered_message
