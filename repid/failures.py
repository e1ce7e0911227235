"""What a job keeps of its failures: the error history of its attempts (`ErrorEntry`, capped in
count and bytes) and the details of a dead letter (`DeadLetterInfo`, `DeadLetterReason`).

The history travels with the message from retry to retry (`Parameters.errors`), so a dead letter
and a failed result list the errors of attempts that ran on other workers, in other processes.
"""

from __future__ import annotations

import enum
import time
import traceback as _traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from repid._redact import mask_urls

__all__ = [
    "DEFAULT_ERROR_BYTES",
    "DEFAULT_ERROR_HISTORY",
    "DeadLetterInfo",
    "DeadLetterReason",
    "ErrorEntry",
    "capped",
    "decode_errors",
    "encode_errors",
    "error_entry",
]

DEFAULT_ERROR_HISTORY = 5
"""Failed attempts a message keeps by default (`Worker(error_history=...)`)."""
DEFAULT_ERROR_BYTES = 8_192
"""Bytes of error text a message carries at most by default (`Worker(error_bytes=...)`)."""


class DeadLetterReason(enum.StrEnum):
    """Why a message ended in the dead part of its queue."""

    DECODE_ERROR = "decode_error"
    UNKNOWN_ACTOR = "unknown_actor"
    VALIDATION_ERROR = "validation_error"
    OUTPUT_VALIDATION_ERROR = "output_validation_error"
    """The actor returned a value that does not fit its return annotation (`-> Out`)."""
    EXCEPTION = "exception"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    MANUAL = "manual"
    SCHEDULE_ERROR = "schedule_error"
    """The next run of a recurring job cannot be computed (bad cron, croniter missing, ...)."""
    INTERNAL_ERROR = "internal_error"
    """repid's own code failed while settling the message."""


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One failed attempt: when (epoch seconds), the exception's type and message, its traceback
    (cut to fit the byte bound) and the worker it ran on."""

    at: float
    attempt: int
    type: str | None
    message: str | None
    traceback: str | None = None
    worker: str | None = None

    def encode(self) -> list[Any]:
        return [self.at, self.attempt, self.type, self.message, self.traceback, self.worker]

    @classmethod
    def decode(cls, raw: Sequence[Any] | Mapping[str, Any]) -> ErrorEntry:
        if isinstance(raw, Mapping):
            raw = [
                raw["at"],
                raw["attempt"],
                *map(raw.get, ("type", "message", "traceback", "worker")),
            ]
        at, attempt, type_, message, tb, worker = (list(raw) + [None] * 6)[:6]
        return cls(float(at), int(attempt), _str(type_), _str(message), _str(tb), _str(worker))


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def encode_errors(errors: Iterable[ErrorEntry]) -> list[list[Any]]:
    """The wire form of a history: a list of `[at, attempt, type, message, traceback, worker]`."""
    return [entry.encode() for entry in errors]


def decode_errors(raw: Any) -> tuple[ErrorEntry, ...]:
    """A history from `encode_errors()`'s form; raises TypeError/ValueError on a foreign shape."""
    if not raw:
        return ()
    if not isinstance(raw, list):
        raise TypeError("an error history must be a list")
    return tuple(ErrorEntry.decode(item) for item in raw)


def error_entry(
    error: BaseException | None,
    attempt: int,
    worker: str | None,
    *,
    message: str | None = None,
    limit: int = DEFAULT_ERROR_BYTES,
) -> ErrorEntry:
    """The entry of a failed attempt (`message` replaces `str(error)`), its texts cut to `limit`
    bytes and URL passwords masked (a history is shown by the CLI and the dashboard)."""
    text = message if message is not None else (str(error) if error is not None else None)
    tb = None if error is None else "".join(_traceback.format_exception(error))
    return ErrorEntry(
        time.time(),
        attempt,
        None if error is None else type(error).__name__,
        None if text is None else mask_urls(_cut(text, limit // 4)),
        None if tb is None else mask_urls(_cut(tb, limit)),
        worker,
    )


def _cut(text: str, limit: int) -> str:
    """`text` in at most `limit` bytes: its start and its end, `…` between them."""
    data = text.encode()
    if len(data) <= limit:
        return text
    half = max(0, limit // 2 - 3)
    return (
        data[:half].decode(errors="ignore") + "…" + data[len(data) - half :].decode(errors="ignore")
    )


def capped(
    errors: tuple[ErrorEntry, ...], entry: ErrorEntry, keep: int, max_bytes: int
) -> tuple[ErrorEntry, ...]:
    """`errors + (entry,)`, keeping the last `keep` and at most `max_bytes` of text in all."""
    if keep <= 0:
        return ()
    kept = [*errors, entry][-keep:]
    per_entry = max(256, max_bytes // len(kept) - 128)  # 128: the encoding around the texts

    out: list[ErrorEntry] = []
    for item in kept:
        message = None if item.message is None else _cut(item.message, per_entry // 4)
        used = len((message or "").encode()) + len((item.type or "").encode())
        tb = None if item.traceback is None else _cut(item.traceback, per_entry - used)
        out.append(replace(item, message=message, traceback=tb))
    total = sum(map(_size, out))
    while len(out) > 1 and total > max_bytes:
        total -= _size(out.pop(0))
    return tuple(out)


def _size(entry: ErrorEntry) -> int:
    return 64 + sum(
        len(text.encode())
        for text in (entry.type, entry.message, entry.traceback, entry.worker)
        if text is not None
    )


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """Why and when a message was dead-lettered, with the error that caused it.

    `errors` is the message's error history: the last failed attempts, oldest first, the one
    that dead-lettered it last (capped by `Worker(error_history=..., error_bytes=...)`).
    """

    reason: str
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    attempts: int = 0
    dead_at: float = field(default_factory=time.time)
    errors: tuple[ErrorEntry, ...] = ()

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reason": self.reason,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "dead_at": self.dead_at,
        }
        if self.errors:
            out["errors"] = encode_errors(self.errors)
        return out

    @classmethod
    def decode(cls, raw: Mapping[str, Any]) -> DeadLetterInfo:
        return cls(
            reason=str(raw["reason"]),
            error_type=raw.get("error_type"),
            error_message=raw.get("error_message"),
            traceback=raw.get("traceback"),
            attempts=int(raw.get("attempts", 0)),
            dead_at=float(raw.get("dead_at", 0.0)),
            errors=decode_errors(raw.get("errors")),
        )
