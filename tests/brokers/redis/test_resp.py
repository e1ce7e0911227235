"""The Redis client's reply parsing: linear work and bounded memory on replies split over many
reads, no retained tracebacks, and malformed input surfacing as `BrokerError` only.

These tests feed bytes to a `RespConnection` (or its parser) directly; no server is involved.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repid.brokers.redis._client import RespConnection
from repid.brokers.redis._resp import RedisReplyError, RespParser
from repid.errors import BrokerError


class _Sink(asyncio.Transport):
    """Where the connection under test writes its commands (nothing reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _connection() -> tuple[RespConnection, _Sink]:
    conn = RespConnection()
    sink = _Sink()
    conn.connection_made(sink)
    return conn, sink


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _transient_allocations(conn: RespConnection, chunks: list[bytes]) -> int:
    """Bytes allocated (beyond what stays allocated) while each chunk is handled, summed."""
    total = 0
    tracemalloc.start()
    try:
        for chunk in chunks:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            conn.data_received(chunk)
            total += tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return total


async def test_a_large_bulk_reply_in_small_reads_costs_linear_work() -> None:
    conn, _ = _connection()
    body = b"x" * (4 * 1024 * 1024)
    reply = conn.call("GET", "big")
    chunks = _chunks(b"$%d\r\n%b\r\n" % (len(body), body), 16 * 1024)
    allocated = _transient_allocations(conn, chunks)
    assert await reply == body
    # Linear: the body is copied a bounded number of times (the old client copied the whole
    # buffer on every read: ~256 reads x 2 MB on average).
    assert allocated < 6 * len(body), f"{allocated / len(body):.1f} x the reply size"


async def test_a_long_array_in_small_reads_is_parsed_once() -> None:
    conn, _ = _connection()
    elements = [b"%06d" % i + b"e" * 94 for i in range(20_000)]
    wire = b"*%d\r\n" % len(elements) + b"".join(b"$100\r\n%b\r\n" % e for e in elements)
    reply = conn.call("XRANGE", "s", "-", "+")
    allocated = _transient_allocations(conn, _chunks(wire, 8 * 1024))
    assert await reply == elements
    # Parsed once: the elements are built once (re-parsing the array from its start on every
    # read builds them ~130 times each).
    assert allocated < 5 * len(wire), f"{allocated / len(wire):.1f} x the reply size"


def _tracebacks() -> int:
    gc.collect()
    return sum(isinstance(o, types.TracebackType) for o in gc.get_objects())


async def test_replies_split_over_reads_leave_no_tracebacks_behind() -> None:
    conn, _ = _connection()
    before = _tracebacks()
    for i in range(20_000):
        reply = conn.call("GET", "k")
        wire = b"$5\r\nv%04d\r\n" % (i % 10_000)
        conn.data_received(wire[:6])  # the reply is incomplete after this read
        conn.data_received(wire[6:])
        assert await reply == b"v%04d" % (i % 10_000)
    assert _tracebacks() - before < 100


async def test_a_bulk_string_without_its_terminator_is_a_broker_error() -> None:
    conn, sink = _connection()
    reply = conn.call("GET", "k")
    conn.data_received(b"$3\r\nabcXY:1\r\n")
    with pytest.raises(BrokerError, match="terminator"):
        await reply
    assert sink.closed  # out of step with the commands: the connection is dropped


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"$abc\r\n", id="bulk-length-not-a-number"),
        pytest.param(b":12x\r\n", id="integer-not-a-number"),
        pytest.param(b"*1\r\n" * 5000 + b":1\r\n", id="deeply-nested"),
        pytest.param(b"$-5\r\n", id="negative-length"),
        pytest.param(b"?what\r\n", id="unknown-type"),
    ],
)
async def test_malformed_replies_resolve_the_caller_with_a_broker_error_or_a_value(
    garbage: bytes,
) -> None:
    conn, _ = _connection()
    reply = conn.call("GET", "k")
    conn.data_received(garbage)  # must not raise out of the protocol callback
    try:
        value = await asyncio.wait_for(reply, 1.0)
    except BrokerError:
        return
    assert garbage.startswith(b"*1\r\n")  # deep nesting is legal RESP: parsed, not a crash
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (depth, value) == (5000, 1)


def _feed_all(data: bytes, cuts: list[int]) -> list[Any]:
    parser = RespParser()
    out: list[Any] = []
    start = 0
    for cut in sorted(set(cuts)):
        out += parser.feed(data[start:cut])
        start = cut
    out += parser.feed(data[start:])
    return out


def _comparable(replies: list[Any]) -> str:
    return repr(replies)  # error replies are exceptions (equal only to themselves)


_RESP_PIECES = st.sampled_from(
    [b"*", b"$", b":", b"+", b"-", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"-1", b"3", b"a", b"x"]
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    data=st.one_of(st.binary(max_size=200), st.lists(_RESP_PIECES, max_size=40).map(b"".join)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_any_bytes_parse_or_raise_a_broker_error(data: bytes, cuts: list[int]) -> None:
    """Whatever the server sends: replies, a wait for more bytes, or `BrokerError` (never
    `ValueError`, `IndexError`, `RecursionError`...); and the split points do not matter."""
    try:
        whole = RespParser().feed(data)
    except BrokerError:
        with pytest.raises(BrokerError):
            _feed_all(data, cuts)
        return
    assert _comparable(_feed_all(data, cuts)) == _comparable(whole)


def test_parser_values() -> None:
    replies = RespParser().feed(
        b"+OK\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:5\r\n-ERR x\r\n*0\r\n*-1\r\n"
        b"$0\r\n\r\n*2\r\n-WRONGTYPE no\r\n$2\r\n\r\n\r\n"
    )
    assert replies[:5] == [b"OK", 12, b"abc", None, [b"a", [5]]]
    assert isinstance(replies[5], RedisReplyError)
    assert replies[5].code == "ERR"
    assert replies[6:9] == [[], None, b""]
    assert isinstance(replies[9][0], RedisReplyError)
    assert replies[9][1] == b"\r\n"  # a body may hold CRLF: its length decides


def test_memory_held_between_reads_is_bounded_by_the_unfinished_reply() -> None:
    parser = RespParser()
    replies = []
    for _ in range(2000):
        replies += parser.feed(b"$1000\r\n" + b"y" * 1000 + b"\r\n$10\r\n01234")
        replies += parser.feed(b"56789\r\n")
    assert len(replies) == 4000
    assert parser.buffered == 0
