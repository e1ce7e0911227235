"""Names on the NATS server: streams, subjects and durable consumers of one repid queue.

A queue `q` (with the broker's prefix `p`) is the stream `S` = `p + q` made safe for stream
names and subject tokens (characters other than letters, digits, `_` and `-` are written as
`=XX` hex escapes). Its messages are on the subjects `S.<priority>.<id>` (priority 0 = HIGH,
1 = MEDIUM, 2 = LOW), each priority read by its own durable pull consumer `S_p<priority>`.
Dead letters are in the stream `S_dead` on the subjects `S_dead.<id>`.
"""

from __future__ import annotations

import re

from repid.data import PRIORITY_COUNT

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")

DUE_HEADER = "Repid-Due"
"""Epoch seconds before which a message must not run (delayed messages and retries)."""


def safe(name: str) -> str:
    """`name` as a stream name / subject token (reversible, `=XX` escapes)."""
    return _UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), name)


def unsafe(token: str) -> str:
    """The inverse of `safe`."""
    return re.sub(
        r"(?:=[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group().replace("=", "")).decode(), token
    )


class QueueNames:
    """The stream, subjects and consumers of one queue."""

    __slots__ = ("consumers", "dead_stream", "dead_subjects", "queue", "stream", "subjects")

    def __init__(self, prefix: str, queue: str) -> None:
        self.queue = queue
        self.stream = safe(prefix + queue)
        self.subjects = tuple(f"{self.stream}.{p}" for p in range(PRIORITY_COUNT))
        self.consumers = tuple(f"{self.stream}_p{p}" for p in range(PRIORITY_COUNT))
        self.dead_stream = f"{self.stream}_dead"
        self.dead_subjects = f"{self.dead_stream}.*"

    def subject(self, priority: int, id_: str) -> str:
        return f"{self.subjects[priority]}.{safe(id_)}"

    def dead_subject(self, id_: str) -> str:
        return f"{self.dead_stream}.{safe(id_)}"

    def any_priority(self, id_: str) -> str:
        return f"{self.stream}.*.{safe(id_)}"
