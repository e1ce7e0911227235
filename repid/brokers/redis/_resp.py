"""An incremental RESP2 reply parser: bytes in, whole replies out, O(n) total work.

The parser keeps its place between reads (a byte offset and a stack of unfinished arrays), so a
reply split over many reads is scanned once; malformed input raises `RedisProtocolError`.
"""

from __future__ import annotations

from typing import Any

from repid.errors import BrokerError

__all__ = ["MAX_BULK", "RedisProtocolError", "RedisReplyError", "RespParser"]

MAX_BULK = 512 * 1024 * 1024
"""The largest bulk string Redis sends (its `proto-max-bulk-len` default)."""
_MAX_LINE = 64 * 1024
"""The longest header or simple-string line accepted (Redis's own are far shorter)."""
_MAX_COUNT = 2**31
_COMPACT_AT = 64 * 1024
"""Consumed bytes kept in front of the buffer before they are dropped (amortised)."""

_BULK, _ARRAY, _INT, _SIMPLE, _ERROR = 36, 42, 58, 43, 45  # $ * : + -


class RedisReplyError(BrokerError):
    """Redis answered a command with an error reply."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


class RedisProtocolError(BrokerError):
    """The bytes from the server are not RESP2: the connection cannot be used any more."""


_OPENED = object()
"""`_element`'s value for an array whose elements follow."""


class RespParser:
    """Parses the replies of one connection, fed in chunks of any size.

    Work is linear in the bytes fed: each byte is scanned once (a bulk string whose body has
    not arrived is not looked at again until enough bytes are there), consumed bytes are
    dropped in amortised O(1), and the buffer holds at most the unfinished reply plus what
    was consumed since the last compaction.
    """

    __slots__ = ("_buffer", "_need", "_pos", "_stack")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._need = 0
        """Buffer length needed before parsing can move on (a bulk string's body)."""
        self._stack: list[list[Any]] = []
        """Unfinished arrays, outermost first: [items, elements still missing]."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add `data`; return the replies it completed, in order (error replies as
        `RedisReplyError` values). Raises `RedisProtocolError` on malformed input."""
        buffer = self._buffer
        buffer += data
        total = len(buffer)
        if total < self._need:
            return []
        replies: list[Any] = []
        view = memoryview(buffer)  # bodies are copied out once (a bytearray slice copies twice)
        try:
            pos = self._parse(buffer, view, self._pos, total, replies)
        except ValueError:  # int() of a malformed header
            raise RedisProtocolError("malformed number in a Redis reply") from None
        finally:
            view.release()  # else the buffer could not be resized
        if pos >= total:
            buffer.clear()
            pos = 0
        elif pos >= _COMPACT_AT and pos * 2 >= total:
            del buffer[:pos]  # the kept tail is at most the bytes dropped: amortised O(1)
            self._need = max(0, self._need - pos)
            pos = 0
        self._pos = pos
        return replies

    def _parse(
        self, buffer: bytearray, view: memoryview, pos: int, total: int, replies: list[Any]
    ) -> int:
        """Parse from `pos`; return where the first unfinished element starts."""
        stack = self._stack
        find = buffer.find
        self._need = 0
        while True:
            if stack:
                # The common case inline: an array of bulk strings and integers.
                top = stack[-1]
                missing = top[1]
                append = top[0].append
                while pos < total:
                    kind = buffer[pos]
                    if kind == _BULK:
                        end = find(b"\r\n", pos, pos + _MAX_LINE)
                        if end < 0:
                            break
                        size = int(buffer[pos + 1 : end])
                        if size < 0:
                            if size != -1:
                                raise RedisProtocolError(f"bulk string of length {size}")
                            append(None)
                            pos = end + 2
                        else:
                            stop = end + 2 + size
                            if stop + 2 > total:
                                if size > MAX_BULK:
                                    raise RedisProtocolError(f"bulk string of {size} bytes")
                                self._need = stop + 2
                                break
                            if buffer[stop] != 13 or buffer[stop + 1] != 10:
                                raise RedisProtocolError("bulk string without its terminator")
                            append(view[end + 2 : stop].tobytes())
                            pos = stop + 2
                    elif kind == _INT:
                        end = find(b"\r\n", pos, pos + _MAX_LINE)
                        if end < 0:
                            break
                        append(int(buffer[pos + 1 : end]))
                        pos = end + 2
                    else:
                        break
                    missing -= 1
                    if not missing:
                        break
                top[1] = missing
                if not missing:
                    self._deliver(stack.pop()[0], replies)
                    continue
            if pos >= total or self._need:
                return pos
            if not stack and buffer[pos] == _INT:  # a reply of its own (an enqueue's, an ack's)
                end = find(b"\r\n", pos, pos + _MAX_LINE)
                if end > 0:
                    replies.append(int(buffer[pos + 1 : end]))
                    pos = end + 2
                    continue
            value, end = self._element(buffer, view, pos, total)
            if end < 0:
                return pos
            pos = end
            if value is _OPENED:
                continue
            self._deliver(value, replies)

    def _deliver(self, value: Any, replies: list[Any]) -> None:
        stack = self._stack
        while stack:
            top = stack[-1]
            top[0].append(value)
            top[1] -= 1
            if top[1]:
                return
            value = stack.pop()[0]
        replies.append(value)

    def _element(
        self, buffer: bytearray, view: memoryview, pos: int, total: int
    ) -> tuple[Any, int]:
        """One element at `pos` and the position after it (-1: not all there yet); a
        non-empty array is pushed on the stack (`_OPENED`)."""
        kind = buffer[pos]
        end = buffer.find(b"\r\n", pos, pos + _MAX_LINE)
        if end < 0:
            if total - pos >= _MAX_LINE:
                raise RedisProtocolError("a Redis reply line is too long")
            return None, -1
        if kind == _BULK:
            size = int(buffer[pos + 1 : end])
            if size < 0:
                if size != -1:
                    raise RedisProtocolError(f"bulk string of length {size}")
                return None, end + 2
            if size > MAX_BULK:
                raise RedisProtocolError(f"bulk string of {size} bytes")
            stop = end + 2 + size
            if stop + 2 > total:
                self._need = stop + 2
                return None, -1
            if buffer[stop] != 13 or buffer[stop + 1] != 10:
                raise RedisProtocolError("bulk string without its terminator")
            return view[end + 2 : stop].tobytes(), stop + 2
        if kind == _ARRAY:
            count = int(buffer[pos + 1 : end])
            if count > 0:
                if count > _MAX_COUNT:
                    raise RedisProtocolError(f"array of {count} elements")
                self._stack.append([[], count])
                return _OPENED, end + 2
            if count < -1:
                raise RedisProtocolError(f"array of length {count}")
            return ([] if count == 0 else None), end + 2
        if kind == _INT:
            return int(buffer[pos + 1 : end]), end + 2
        if kind == _SIMPLE:
            return view[pos + 1 : end].tobytes(), end + 2
        if kind == _ERROR:
            return RedisReplyError(view[pos + 1 : end].tobytes().decode(errors="replace")), end + 2
        raise RedisProtocolError(f"unexpected byte {kind!r} in a Redis reply")
