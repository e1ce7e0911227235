"""The data that travels with every message: routing key, parameters, dead-letter details, buckets.

The per-message objects are named tuples: immutable, cheap to build and untracked by the cyclic
garbage collector once built, which matters when a queue holds millions of them. The worker
derives new ones (`Parameters.for_retry`, ...) instead of changing what a broker handed out.
`encode()`/`decode()` give the compact JSON-able form used by
the network brokers' envelope (see `repid.codec`).
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol, runtime_checkable

from repid.failures import (
    DeadLetterInfo,
    DeadLetterReason,
    ErrorEntry,
    decode_errors,
    encode_errors,
)

__all__ = [
    "ArgsBucket",
    "BucketT",
    "DeadLetterInfo",
    "DeadLetterReason",
    "DelayProperties",
    "MessageCategory",
    "Parameters",
    "ParametersT",
    "PrioritiesT",
    "ResultBucket",
    "ResultBucketT",
    "ResultProperties",
    "RetriesProperties",
    "RoutingKey",
    "RoutingKeyT",
    "TimerProperties",
]


class PrioritiesT(enum.IntEnum):
    """Message priority. Among ready messages of a queue, HIGH runs before MEDIUM before LOW."""

    HIGH = 0
    MEDIUM = 1
    LOW = 2


PRIORITY_COUNT = len(PrioritiesT)
"""How many priorities there are (0 to PRIORITY_COUNT - 1)."""


class MessageCategory(enum.StrEnum):
    """The part of a queue a message lives in."""

    NORMAL = "normal"
    DELAYED = "delayed"
    DEAD = "dead"


@runtime_checkable
class RoutingKeyT(Protocol):
    """What routes a message: its id, the actor name (`topic`), its queue and priority."""

    @property
    def id_(self) -> str: ...

    @property
    def topic(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def priority(self) -> int: ...


class RoutingKey(NamedTuple):
    """Concrete routing key."""

    id_: str
    topic: str
    queue: str = "default"
    priority: int = PrioritiesT.MEDIUM.value

    def encode(self) -> list[Any]:
        return [self.id_, self.topic, self.queue, int(self.priority)]

    @classmethod
    def decode(cls, raw: Any) -> RoutingKey:
        id_, topic, queue, priority = raw
        if not (isinstance(id_, str) and isinstance(topic, str) and isinstance(queue, str)):
            raise TypeError("routing key fields must be strings")
        if type(priority) is not int or not 0 <= priority < PRIORITY_COUNT:
            raise ValueError(f"priority must be 0, 1 or 2, got {priority!r}")
        return tuple.__new__(cls, (id_, topic, queue, priority))


def _td(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _secs(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def _ns_dt(ns: int) -> datetime | None:
    return None if not ns else datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class RetriesProperties(NamedTuple):
    """`max_amount` retries allowed after the first attempt; `actual_amount` already used."""

    max_amount: int = 0
    actual_amount: int = 0

    @property
    def left(self) -> int:
        return self.max_amount - self.actual_amount


class ResultProperties(NamedTuple):
    """Where (and for how long) the actor's result is stored."""

    id_: str
    ttl: timedelta | None = None


class DelayProperties(NamedTuple):
    """Scheduling: a one-off `delay_until`, or recurrence by `defer_by` interval or `cron`.

    `jitter` moves each run of a recurring job a random time in `[0, jitter)` past its tick;
    `jitter_offset` is the move of the run now scheduled, so the schedule keeps its phase.
    """

    delay_until: datetime | None = None
    defer_by: timedelta | None = None
    cron: str | None = None
    next_execution_time: datetime | None = None
    jitter: timedelta | None = None
    jitter_offset: float = 0.0

    @property
    def is_recurring(self) -> bool:
        return self.defer_by is not None or self.cron is not None


class TimerProperties(NamedTuple):
    """When the message was created and how long it may wait before it expires."""

    timestamp: datetime
    ttl: timedelta | None = None

    @property
    def is_overdue(self) -> bool:
        return self.ttl is not None and (self.timestamp + self.ttl).timestamp() < time.time()


_NO_DELAY = DelayProperties()
DEFAULT_TIMEOUT = timedelta(minutes=10)
"""The default execution timeout (one shared object: the worker recognises it cheaply)."""
NO_TIMEOUT = timedelta.max
"""The execution timeout of `Job(timeout=None)`: the actor may run for ever (sent as 0)."""


def _encode_timeout(value: timedelta) -> float:
    return 0.0 if value == NO_TIMEOUT else value.total_seconds()


def _decode_timeout(raw: Any) -> timedelta:
    if raw is None or (type(raw) is float and raw == 600.0):
        return DEFAULT_TIMEOUT
    if raw == 0:
        return NO_TIMEOUT
    return timedelta(seconds=raw)


_NO_RETRIES = RetriesProperties()
UNSET_RETRIES = _NO_RETRIES
"""The retries of a Job that did not set `retries` (one shared object: the actor's default
applies to it; an explicit `Job(retries=0)` is another object)."""


@runtime_checkable
class ParametersT(Protocol):
    """Execution parameters carried by a message (1.6 protocol name)."""

    @property
    def execution_timeout(self) -> timedelta: ...

    @property
    def retries(self) -> RetriesProperties: ...

    @property
    def result(self) -> ResultProperties | None: ...

    @property
    def delay(self) -> DelayProperties: ...

    @property
    def timer(self) -> TimerProperties: ...


class _ParametersFields(NamedTuple):
    """The fields of `Parameters` (a tuple: cheap to build, invisible to the cyclic GC)."""

    execution_timeout: timedelta = DEFAULT_TIMEOUT
    retries: RetriesProperties = _NO_RETRIES
    result: ResultProperties | None = None
    delay: DelayProperties = _NO_DELAY
    timer: TimerProperties = field(default_factory=lambda: TimerProperties(datetime.now(tz=UTC)))
    args_id: str | None = None
    """Set when the arguments live in the args bucket instead of the payload."""
    dead_letter: DeadLetterInfo | None = None
    headers: Mapping[str, str] | None = None
    """Free-form string headers (e.g. trace context)."""
    errors: tuple[ErrorEntry, ...] = ()
    """The failed attempts so far, oldest first (capped), carried from retry to retry."""


class Parameters(_ParametersFields):
    """Execution parameters of one message (immutable)."""

    __slots__ = ()

    def __new__(
        cls,
        execution_timeout: timedelta = DEFAULT_TIMEOUT,
        retries: RetriesProperties = _NO_RETRIES,
        result: ResultProperties | None = None,
        delay: DelayProperties = _NO_DELAY,
        timer: TimerProperties | None = None,
        args_id: str | None = None,
        dead_letter: DeadLetterInfo | None = None,
        headers: Mapping[str, str] | None = None,
        errors: tuple[ErrorEntry, ...] = (),
    ) -> Parameters:
        if timer is None:
            timer = TimerProperties(datetime.now(tz=UTC))
        fields = (execution_timeout, retries, result, delay, timer, args_id, dead_letter, headers)
        return tuple.__new__(cls, (*fields, errors))

    @property
    def attempt(self) -> int:
        """1-based number of the attempt this message represents."""
        return self.retries.actual_amount + 1

    @property
    def not_before(self) -> float | None:
        """Epoch seconds before which the message must not run, if any."""
        when = self.delay.next_execution_time or self.delay.delay_until
        return None if when is None else when.timestamp()

    def _fresh_retries(self) -> RetriesProperties:
        """No retry used yet; a Job that left `retries` unset stays unset (actor default)."""
        if self.retries is _NO_RETRIES:
            return _NO_RETRIES
        return RetriesProperties(self.retries.max_amount, 0)

    def for_retry(
        self, delay: timedelta, errors: tuple[ErrorEntry, ...] | None = None
    ) -> Parameters:
        """Parameters of the next attempt: one more retry used, not before now + `delay`, and
        `errors` as the error history (default: unchanged)."""
        return self._replace(
            retries=RetriesProperties(self.retries.max_amount, self.retries.actual_amount + 1),
            delay=self.delay._replace(
                next_execution_time=datetime.now(tz=UTC) + delay,
            ),
            errors=self.errors if errors is None else errors,
        )

    def for_delay(self, delay: timedelta) -> Parameters:
        """Same attempt, not before now + `delay` (used by snooze/reschedule)."""
        return self._replace(
            delay=self.delay._replace(next_execution_time=datetime.now(tz=UTC) + delay),
        )

    def for_next_tick(self, now: datetime | None = None) -> Parameters:
        """Parameters of a recurring job's next run; retries reset, timer restarted."""
        now = now or datetime.now(tz=UTC)
        return self._replace(
            retries=self._fresh_retries(),
            delay=jittered(self.delay, next_tick(self.delay, now)),
            timer=TimerProperties(now, self.timer.ttl),
            dead_letter=None,
            errors=(),
        )

    def for_dead_letter(self, info: DeadLetterInfo) -> Parameters:
        """The dead letter's parameters: `info` keeps the error history (not carried twice)."""
        return self._replace(dead_letter=info, errors=())

    def for_requeue_from_dead(self) -> Parameters:
        """A dead letter sent back to work: fresh retries, no delay, no dead-letter details."""
        return self._replace(
            retries=self._fresh_retries(),
            delay=self.delay._replace(next_execution_time=None, delay_until=None),
            timer=TimerProperties(datetime.now(tz=UTC), self.timer.ttl),
            dead_letter=None,
            errors=(),
        )

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": _encode_timeout(self.execution_timeout),
            "ts": self.timer.timestamp.timestamp(),
        }
        if self.retries is not _NO_RETRIES:  # an explicit Job(retries=0) is sent too
            out["r"] = [self.retries.max_amount, self.retries.actual_amount]
        if self.result is not None:
            out["res"] = [self.result.id_, _secs(self.result.ttl)]
        d = self.delay
        if d is not _NO_DELAY and (
            d.delay_until is not None
            or d.defer_by is not None  # a zero or negative interval too: the worker refuses it
            or d.cron is not None
            or d.next_execution_time is not None
        ):
            out["d"] = [_ts(d.delay_until), _secs(d.defer_by), d.cron, _ts(d.next_execution_time)]
            if d.jitter is not None:
                out["d"] += [_secs(d.jitter), d.jitter_offset]
        if self.timer.ttl is not None:
            out["ttl"] = _secs(self.timer.ttl)
        if self.args_id is not None:
            out["a"] = self.args_id
        if self.dead_letter is not None:
            out["dl"] = self.dead_letter.encode()
        if self.headers:
            out["h"] = dict(self.headers)
        if self.errors:
            out["e"] = encode_errors(self.errors)
        return out

    @classmethod
    def decode(cls, raw: Mapping[str, Any]) -> Parameters:
        if len(raw) == 2 and "t" in raw and "ts" in raw:
            # What a plain job carries (its timeout and creation time): built directly.
            timeout = raw["t"]
            return tuple.__new__(
                cls,
                (
                    _decode_timeout(timeout),
                    _NO_RETRIES,
                    None,
                    _NO_DELAY,
                    tuple.__new__(TimerProperties, (_dt(raw["ts"]) or datetime.now(tz=UTC), None)),
                    None,
                    None,
                    None,
                    (),
                ),
            )
        retries = raw.get("r")
        result = raw.get("res")
        delay = raw.get("d")
        dead_letter = raw.get("dl")
        timeout = raw.get("t")
        headers = raw.get("h")
        if headers is not None and not (
            isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            raise TypeError("headers must be an object of strings")
        args_id = raw.get("a")
        if args_id is not None and not isinstance(args_id, str):
            raise TypeError("args id must be a string")
        if delay and delay[2] is not None and not isinstance(delay[2], str):
            raise TypeError("cron must be a string")
        return cls(
            execution_timeout=_decode_timeout(timeout),
            retries=RetriesProperties(int(retries[0]), int(retries[1])) if retries else _NO_RETRIES,
            result=ResultProperties(str(result[0]), _td(result[1])) if result else None,
            delay=DelayProperties(_dt(delay[0]), _td(delay[1]), delay[2], _dt(delay[3]))
            if delay and len(delay) == 4
            else DelayProperties(
                _dt(delay[0]),
                _td(delay[1]),
                delay[2],
                _dt(delay[3]),
                _td(delay[4]),
                float(delay[5]),
            )
            if delay
            else _NO_DELAY,
            timer=TimerProperties(_dt(raw["ts"]) or datetime.now(tz=UTC), _td(raw.get("ttl"))),
            args_id=args_id,
            dead_letter=DeadLetterInfo.decode(dead_letter) if dead_letter else None,
            headers=headers,
            errors=decode_errors(raw.get("e")),
        )


def next_tick(delay: DelayProperties, now: datetime) -> datetime | None:
    """The next run time of a recurring schedule strictly after `now`.

    Interval schedules keep their phase: a tick missed while no worker ran is coalesced into one
    run at the next tick (no burst of catch-up runs).
    """
    if delay.cron is not None:
        from croniter import croniter  # optional dependency: `repid[cron]`

        nxt: datetime = croniter(delay.cron, now).get_next(datetime)
        return nxt
    if delay.defer_by is not None:
        step = delay.defer_by.total_seconds()
        if not step > 0:
            raise ValueError(f"deferred_by must be a positive interval, got {delay.defer_by}")
        previous = delay.next_execution_time or now
        if delay.jitter_offset:  # the tick this run was moved from: the phase stays put
            previous -= timedelta(seconds=delay.jitter_offset)
        elapsed = now.timestamp() - previous.timestamp()
        if elapsed < 0:
            return previous
        ticks = int(elapsed // step) + 1
        return previous + timedelta(seconds=ticks * step)
    return None


def jittered(delay: DelayProperties, tick: datetime | None) -> DelayProperties:
    """`delay` with its next run at `tick`, moved by a fresh random share of `delay.jitter`."""
    if delay.jitter is None or tick is None:
        return delay._replace(next_execution_time=tick, jitter_offset=0.0)
    offset = random.random() * delay.jitter.total_seconds()
    return delay._replace(
        next_execution_time=tick + timedelta(seconds=offset), jitter_offset=offset
    )


@runtime_checkable
class BucketT(Protocol):
    """Something stored in a bucket broker (1.6 protocol name)."""

    data: str
    ttl: timedelta | None

    def encode(self) -> str: ...


@runtime_checkable
class ResultBucketT(BucketT, Protocol):
    """A stored actor result (1.6 protocol name)."""

    success: bool
    started_when: int
    finished_when: int
    exception: str | None


@dataclass(slots=True)
class ArgsBucket:
    """Job arguments stored outside the message."""

    data: str
    ttl: timedelta | None = None
    timestamp: float = field(default_factory=time.time)

    def encode(self) -> str:
        from pydantic_core import to_json

        return to_json(
            {"k": "args", "data": self.data, "ttl": _secs(self.ttl), "ts": self.timestamp}
        ).decode()

    @classmethod
    def decode(cls, raw: str | bytes) -> ArgsBucket:
        from pydantic_core import from_json

        obj = from_json(raw)
        return cls(data=obj["data"], ttl=_td(obj.get("ttl")), timestamp=obj.get("ts", 0.0))


@dataclass(slots=True)
class ResultBucket:
    """The outcome of an actor run: `data` is the JSON-encoded return value, `value` decoded.

    `started_when`/`finished_when` are epoch nanoseconds (as in repid 1.6); `started`/`finished`
    give them as aware UTC datetimes and `duration` as a timedelta. A failure written
    as repid 1.6 did has `data` = `str(exception)`, `exception` = the exception's class name and
    the formatted traceback in `traceback`.
    """

    data: str
    success: bool = True
    started_when: int = 0
    finished_when: int = 0
    exception: str | None = None
    exception_type: str | None = None
    ttl: timedelta | None = None
    timestamp: float = field(default_factory=time.time)
    traceback: str | None = None
    errors: tuple[ErrorEntry, ...] = ()
    """A failure's error history: the job's last failed attempts, oldest first, this one last."""

    @property
    def value(self) -> Any:
        """The actor's return value, decoded from `data`; `None` for a failed run."""
        if not self.success:
            return None
        from pydantic_core import from_json

        return from_json(self.data)

    @property
    def started(self) -> datetime | None:
        """When the run started, as an aware UTC datetime (`None` if not recorded)."""
        return _ns_dt(self.started_when)

    @property
    def finished(self) -> datetime | None:
        """When the run finished, as an aware UTC datetime (`None` if not recorded)."""
        return _ns_dt(self.finished_when)

    @property
    def duration(self) -> timedelta | None:
        """How long the run took (`None` unless both times are recorded)."""
        if not (self.started_when and self.finished_when):
            return None
        return timedelta(microseconds=(self.finished_when - self.started_when) / 1000)

    def encode(self) -> str:
        from pydantic_core import to_json

        obj: dict[str, Any] = {
            "k": "result",
            "traceback": self.traceback,
            "data": self.data,
            "success": self.success,
            "started_when": self.started_when,
            "finished_when": self.finished_when,
            "exception": self.exception,
            "exception_type": self.exception_type,
            "ttl": _secs(self.ttl),
            "ts": self.timestamp,
        }
        if self.errors:
            obj["errors"] = encode_errors(self.errors)
        return to_json(obj).decode()

    @classmethod
    def decode(cls, raw: str | bytes) -> ResultBucket:
        from pydantic_core import from_json

        obj = from_json(raw)
        return cls(
            data=obj["data"],
            success=bool(obj["success"]),
            started_when=int(obj.get("started_when", 0)),
            finished_when=int(obj.get("finished_when", 0)),
            exception=obj.get("exception"),
            exception_type=obj.get("exception_type"),
            ttl=_td(obj.get("ttl")),
            timestamp=obj.get("ts", 0.0),
            traceback=obj.get("traceback"),
            errors=decode_errors(obj.get("errors")),
        )
