"""`Job`: what to run (an actor name and its arguments) and how (queue, priority, schedule...)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from repid import _actor_defaults
from repid.brokers.base import BucketBrokerT, SupportsResultWait, cancellation_of, poll_bucket
from repid.data import (
    DEFAULT_TIMEOUT,
    NO_TIMEOUT,
    UNSET_RETRIES,
    ArgsBucket,
    BucketT,
    DelayProperties,
    Parameters,
    PrioritiesT,
    ResultBucket,
    ResultProperties,
    RetriesProperties,
    RoutingKey,
    TimerProperties,
    jittered,
    next_tick,
)
from repid.errors import BrokerError, ConfigurationError
from repid.ids import new_id
from repid.lifecycle import (
    CancelOutcome,
    EventKind,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    JobNotFoundError,
)
from repid.main import Repid
from repid.queue import Queue, validate_name
from repid.serializer import Config, SerializerT, is_args_model, serialize_args

if TYPE_CHECKING:
    from repid.connection import Connection

__all__ = ["Job"]

_ID = re.compile(r"[a-zA-Z0-9_\-]+")
_ONE_SECOND = timedelta(seconds=1)
_TEN_MINUTES = DEFAULT_TIMEOUT
_ONE_DAY = timedelta(days=1)
_NO_RETRIES = UNSET_RETRIES
_NO_DELAY = DelayProperties()


_DURATION_NAMES = {
    "deferred_by": "Deferred_by",
    "jitter": "Jitter",
    "timeout": "Execution timeout",
    "ttl": "TTL",
    "args_ttl": "Args_ttl",
    "result_ttl": "Result_ttl",
}
_ID_NAMES = {"job id": "Job id", "args id": "Args_id", "result id": "Result_id"}


def _duration(value: timedelta | float | None, what: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        value = timedelta(seconds=value)
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{what} must be a timedelta, got {type(value).__name__}")
    if value < _ONE_SECOND:
        # repid 1.6's sentence first, then what was given
        raise ConfigurationError(
            f"{_DURATION_NAMES.get(what, what)} must be greater than or equal to 1 second. "
            f"Got {what}={value}."
        )
    return value


def _validate_id(value: str | None, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or _ID.fullmatch(value) is None):
        raise ConfigurationError(
            f"{_ID_NAMES.get(what, what)} must contain only letters, numbers, dashes and "
            f"underscores. The {what} {value!r} is invalid."
        )
    return value


class Job:
    """Describes what to run and how; `await job.enqueue()` sends one message for it.

    Args:
        name: the actor to run (`[a-zA-Z_][a-zA-Z0-9_-]*`).
        queue: queue name or `Queue`.
        priority: `PrioritiesT.HIGH`, `MEDIUM` or `LOW`; default: the actor's
            `@router.actor(priority=...)` when this process has the actor registered, else
            `MEDIUM`.
        id_: a fixed message id; such a job is unique: enqueuing it while a message with this id
            is pending does not create a second one. Default: a new random id per enqueue.
        deferred_until: do not run before this time.
        deferred_by: run every interval (recurring).
        cron: run on this cron schedule (recurring; needs `repid[cron]`).
        jitter: a recurring job's runs each start a random time in `[0, jitter)` after their
            tick, so many jobs on one schedule do not all start at the same second. The
            schedule keeps its phase (an interval does not drift); shorter than `deferred_by`.
        retries: how many times a failed run is retried before the job is dead-lettered;
            default: the actor's `@router.actor(retries=...)`, else 0.
        timeout: maximum run time of one attempt; default: the actor's
            `@router.actor(timeout=...)`, else 10 minutes. `None`: no timeout, the actor may
            run as long as it likes.
        ttl: a message not started within `ttl` of its enqueue is dead-lettered as expired.
        args_id: id of the args bucket (default: random) when args are stored in a bucket.
        args_ttl: lifetime of the args bucket.
        args: keyword arguments of the actor (JSON-serialisable; pydantic models, dataclasses,
            datetimes and the like are accepted), or a pydantic model or dataclass instance
            whose fields are the keyword arguments (repid 1.6).
        use_args_bucketer: store the args in the args bucket broker (default: when it exists).
        result_id: id under which the result is stored (default: random per enqueue).
        result_ttl: lifetime of the stored result.
        store_result: store the result (default: when a results bucket broker exists).
        serializer: turns `args` into JSON text (default: `Config.SERIALIZER`).
    """

    __slots__ = (
        "_args_payload",
        "_connection",
        "_created",
        "_last_id",
        "_last_result_id",
        "_priority",
        "_priority_set",
        "_retries_set",
        "args",
        "args_id",
        "args_ttl",
        "cron",
        "deferred_by",
        "deferred_until",
        "id_",
        "jitter",
        "name",
        "priority",
        "queue",
        "result_id",
        "result_ttl",
        "retries",
        "serializer",
        "store_result",
        "timeout",
        "ttl",
        "use_args_bucketer",
    )

    def __init__(
        self,
        name: str,
        queue: str | Queue = "default",
        priority: PrioritiesT | None = None,
        id_: str | None = None,
        deferred_until: datetime | None = None,
        deferred_by: timedelta | None = None,
        cron: str | None = None,
        retries: int | None = None,
        timeout: timedelta | None = _TEN_MINUTES,
        ttl: timedelta | None = None,
        args_id: str | None = None,
        args_ttl: timedelta | None = None,
        args: Mapping[str, Any] | Any | None = None,
        use_args_bucketer: bool | None = None,
        result_id: str | None = None,
        result_ttl: timedelta | None = _ONE_DAY,
        store_result: bool | None = None,
        serializer: SerializerT | None = None,
        jitter: timedelta | None = None,
        _connection: Connection | None = None,
    ) -> None:
        self._created = time.time()
        self.name = validate_name(name, "job name")
        if isinstance(queue, Queue):
            self.queue = queue
        else:
            cached = _QUEUES.get(queue) if _connection is None and type(queue) is str else None
            self.queue = cached if cached is not None else _queue(queue, _connection)
        self._priority_set = priority is not None
        if priority is None:
            priority = PrioritiesT.MEDIUM
        self.priority = priority if type(priority) is PrioritiesT else PrioritiesT(priority)
        self._priority = int(self.priority)
        self.id_ = None if id_ is None else _validate_id(id_, "job id")
        if cron is not None and deferred_by is not None:
            raise ConfigurationError(
                "Usage of 'cron' AND 'deferred_by' together is prohibited. "
                "(cron and deferred_by are mutually exclusive)"
            )
        if cron is not None:
            _validate_cron(cron)
        if deferred_until is not None and deferred_until.tzinfo is None:
            deferred_until = deferred_until.astimezone()  # naive means local time
        self.deferred_until = deferred_until
        self.deferred_by = None if deferred_by is None else _duration(deferred_by, "deferred_by")
        self.cron = cron
        self.jitter = None if jitter is None else _duration(jitter, "jitter")
        if self.jitter is not None:
            if self.deferred_by is None and cron is None:
                raise ConfigurationError("jitter is for recurring jobs: set deferred_by or cron")
            if self.deferred_by is not None and self.jitter >= self.deferred_by:
                raise ConfigurationError(
                    f"jitter ({self.jitter}) must be shorter than deferred_by ({self.deferred_by})"
                )
        self._retries_set = retries is not None
        if retries is None:
            retries = 0
        if not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(f"retries must be an integer >= 0, got {retries!r}")
        self.retries = retries
        self.timeout: timedelta | None = (
            timeout if timeout is _TEN_MINUTES else _duration(timeout, "timeout")
        )
        self.ttl = None if ttl is None else _duration(ttl, "ttl")
        self.args_id = None if args_id is None else _validate_id(args_id, "args id")
        self.args_ttl = None if args_ttl is None else _duration(args_ttl, "args_ttl")
        if (
            args is not None
            and type(args) is not dict
            and not isinstance(args, Mapping)
            and not is_args_model(args)
        ):
            raise ConfigurationError(
                "args must be a mapping of keyword arguments (or a pydantic model or dataclass "
                f"instance), got {type(args).__name__}"
            )
        self.args = args
        self.use_args_bucketer = use_args_bucketer
        self.result_id = None if result_id is None else _validate_id(result_id, "result id")
        self.result_ttl = (
            result_ttl if result_ttl is _ONE_DAY else _duration(result_ttl, "result_ttl")
        )
        self.store_result = store_result
        self.serializer = serializer
        self._connection = _connection
        self._args_payload: str | None = None
        self._last_result_id: str | None = result_id
        self._last_id: str | None = id_

    # -- properties ---------------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        if self._connection is not None:
            return self._connection
        connection = Repid._magic_connection
        if connection is None:
            return Repid.get_magic_connection()  # raises with the explanation
        return connection

    @property
    def last_id(self) -> str | None:
        """The message id of the last `enqueue()` (None before the first)."""
        return self._last_id

    @property
    def is_unique(self) -> bool:
        """An `id_` was given: the job is not duplicated while a message of it is pending."""
        return self.id_ is not None

    @property
    def is_deferred(self) -> bool:
        return (
            self.deferred_until is not None or self.deferred_by is not None or self.cron is not None
        )

    @property
    def is_overdue(self) -> bool:
        """The job has a `ttl` and more than `ttl` has passed since the job was constructed
        (repid 1.6). A job without `ttl` is never overdue."""
        return self.ttl is not None and time.time() > self._created + self.ttl.total_seconds()

    @property
    def payload(self) -> str:
        """The JSON text of `args` (serialised once, on first use)."""
        if self._args_payload is None:
            self._args_payload = (
                ""
                if self.args is None
                else serialize_args(self.args, self.serializer or Config.SERIALIZER)
            )
        return self._args_payload

    # -- sending ------------------------------------------------------------------------------

    def _build(self, connection: Connection) -> tuple[RoutingKey, str, Parameters]:
        payload = self._args_payload
        if payload is None:
            payload = self.payload
        now = datetime.now(tz=UTC)
        delay = _NO_DELAY
        if self.deferred_until is not None or self.deferred_by is not None or self.cron is not None:
            delay = DelayProperties(
                self.deferred_until, self.deferred_by, self.cron, None, self.jitter
            )
            if self.deferred_until is None:
                delay = jittered(delay, next_tick(delay, now))
        result = None
        store = self.store_result
        if store is None:
            store = connection.results_bucket_broker is not None
        if store:
            if connection.results_bucket_broker is None:
                raise ConfigurationError(
                    "store_result=True needs a Connection with a results_bucket_broker"
                )
            self._last_result_id = self.result_id or new_id()
            result = ResultProperties(self._last_result_id, self.result_ttl)
        headers: dict[str, str] | None = None
        for provider in connection.header_providers:
            extra = provider()
            if extra:
                headers = {**(headers or {}), **extra}
        # tuple.__new__ skips Parameters.__new__'s defaulting: every field is given here.
        params: Parameters = tuple.__new__(
            Parameters,
            (
                NO_TIMEOUT if self.timeout is None else self.timeout,
                RetriesProperties(self.retries, 0) if self._retries_set else _NO_RETRIES,
                result,
                delay,
                tuple.__new__(TimerProperties, (now, self.ttl)),
                None,
                None,
                headers,
                (),
            ),
        )
        key: RoutingKey = tuple.__new__(
            RoutingKey,
            (
                self.id_ or new_id(),
                self.name,
                self.queue.name,
                self._priority
                if self._priority_set
                else _actor_defaults.PRIORITIES.get(self.name, self._priority),
            ),
        )
        return key, payload, params

    async def enqueue(self) -> Job:
        """Send one message for this job. Returns the job (so `await job.enqueue()` chains).

        Raises:
            SerializationError: `args` cannot be serialised (the argument is named); nothing sent.
            QueueNotDeclaredError: the queue does not exist (in-memory broker).
            MessageTooLargeError: the message exceeds the broker's limit; nothing sent.
            BrokerUnavailableError: the broker stayed unreachable past its timeout.
        """
        connection = self._connection or Repid._magic_connection or self.connection
        key, payload, params = self._build(connection)
        use_bucket = self.use_args_bucketer
        if use_bucket is None:
            use_bucket = connection.args_bucket_broker is not None and bool(payload)
        if use_bucket:
            if connection.args_bucket_broker is None:
                raise ConfigurationError(
                    "use_args_bucketer=True needs a Connection with an args_bucket_broker"
                )
            args_id = self.args_id or new_id()
            await connection.args_bucket_broker.store_bucket(
                args_id, ArgsBucket(data=payload, ttl=self.args_ttl)
            )
            params = params._replace(args_id=args_id)
            payload = ""
        await connection.message_broker.enqueue(key, payload, params)
        self._last_id = key.id_
        if connection.events.active:
            await connection.events.emit(
                JobEvent(
                    EventKind.ENQUEUED,
                    key.id_,
                    key.topic,
                    key.queue,
                    1,
                    time.time(),
                    due=_due(params.delay),
                )
            )
        return self

    def enqueue_sync(self, timeout: float | None = 30.0) -> Job:
        """`enqueue()` from plain synchronous code in another thread (a Flask or Django view,
        a thread pool): the message is sent on the event loop the connection was opened on,
        and this thread waits for it (at most `timeout` seconds).

        Raises:
            RuntimeError: called on the connection's own event loop thread (use
                `await job.enqueue()` there), or the connection is not open on a running loop.
            TimeoutError: the enqueue did not finish within `timeout` (it may still happen).
        """
        connection = self._connection or Repid._magic_connection or self.connection
        loop = connection.loop
        if loop is None or not connection.is_open or not loop.is_running() or loop.is_closed():
            raise RuntimeError(
                "enqueue_sync() needs a Connection opened on an event loop that is running in "
                "another thread"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("enqueue_sync() called on the connection's loop: await enqueue()")
        future = asyncio.run_coroutine_threadsafe(self.enqueue(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"enqueue of {self.name!r} did not finish in {timeout}s") from None

    async def wait(self, timeout: float | timedelta | None = None, *, as_type: Any = None) -> Any:
        """Wait for the result of the last enqueued run and return what the actor returned.

        Args:
            timeout: give up after this long (None: wait forever). The job is not cancelled.
            as_type: validate the stored JSON result into this type with pydantic (e.g. the
                actor's `-> Out` model) and return that; default: the decoded JSON value.

        Raises:
            JobFailedError: the actor failed for good (retries exhausted); carries its error.
            JobCancelledError: the job was cancelled while it ran.
            TimeoutError: no result within `timeout`.
            ConfigurationError: the job does not store results (no results bucket broker,
                or `store_result=False`), so there is nothing to wait for.
        """
        broker = self.connection.results_bucket_broker
        if broker is None:
            raise ConfigurationError(
                "job.wait() needs a Connection with a results_bucket_broker "
                "(e.g. InMemoryBucketBroker(use_result_bucket=True))"
            )
        if self._last_result_id is None:
            raise ConfigurationError(
                f"job {self.name!r} has no stored result to wait for: enqueue it first, "
                "with store_result left on"
            )
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        bucket = await _wait_for_bucket(broker, self._last_result_id, seconds)
        if bucket is None:
            raise TimeoutError(f"no result for job {self.name!r} within {seconds}s")
        result = _unwrap_result(bucket)
        if as_type is None:
            return result
        return _result_adapter(as_type).validate_python(result)

    async def enqueue_and_wait(
        self, timeout: float | timedelta | None = None, *, as_type: Any = None
    ) -> Any:
        """`enqueue()` then `wait(timeout, as_type=...)`: the actor's result or its failure."""
        if self.store_result is False:
            raise ConfigurationError("enqueue_and_wait() needs store_result to be on")
        if self.connection.results_bucket_broker is None:  # fail before sending anything
            raise ConfigurationError(
                "enqueue_and_wait() needs a results store: "
                f"Connection(..., results_bucket_broker={_bucket_hint(self.connection)})"
            )
        await self.enqueue()
        return await self.wait(timeout, as_type=as_type)

    async def cancel(self) -> CancelOutcome:
        """Cancel the last enqueued run (or the job with this `id_`).

        A waiting job is removed and never runs (`CancelOutcome.DEQUEUED`); a running one is
        cancelled promptly by its worker and recorded as cancelled, not retried
        (`CancelOutcome.REQUESTED`).

        Raises:
            JobNotFoundError: no pending or running job has this id in the job's queue.
            BrokerError: the broker cannot cancel jobs.
        """
        job_id = self.id_ or self._last_id
        if job_id is None:
            raise JobNotFoundError(f"job {self.name!r} was never enqueued: nothing to cancel")
        return await cancel_job(self.connection, self.queue.name, job_id, actor=self.name)

    @property
    async def result(self) -> ResultBucket | None:
        """The stored result of the last enqueued run (None if not stored yet).

        Raises:
            ConfigurationError: the connection has no results bucket broker.
        """
        broker = self.connection.results_bucket_broker
        if broker is None:
            raise ConfigurationError("`job.result` needs a Connection with a results_bucket_broker")
        if self._last_result_id is None:
            return None
        bucket = await broker.get_bucket(self._last_result_id)
        return bucket if bucket is None or isinstance(bucket, ResultBucket) else None

    def __repr__(self) -> str:
        return f"Job(name={self.name!r}, queue={self.queue.name!r}, id_={self.id_!r})"


_QUEUES: dict[str, Queue] = {}


def _queue(name: str, connection: Connection | None) -> Queue:
    if connection is not None:
        return Queue(name, _connection=connection)
    queue = _QUEUES.get(name)
    if queue is None:
        queue = Queue(name)
        if len(_QUEUES) < 10_000:
            _QUEUES[name] = queue
    return queue


async def cancel_job(
    connection: Connection, queue: str, job_id: str, *, actor: str = ""
) -> CancelOutcome:
    """Cancel the job `job_id` of `queue` (see `Job.cancel`); a dequeued job's `cancelled`
    event is emitted here (a running one's by its worker)."""
    broker = connection.message_broker
    canceller = cancellation_of(broker)
    if canceller is None:
        raise BrokerError(
            f"{type(connection.raw_message_broker).__name__} cannot cancel jobs "
            "(it does not declare the cancellation capability)"
        )
    outcome = await canceller.cancel(queue, job_id)
    if outcome is None:
        raise JobNotFoundError(f"no pending or running job {job_id!r} in queue {queue!r}")
    if outcome == CancelOutcome.DEQUEUED and connection.events.active:
        await connection.events.emit(
            JobEvent(EventKind.CANCELLED, job_id, actor, queue, 1, time.time())
        )
    return CancelOutcome(outcome)


async def _wait_for_bucket(
    broker: BucketBrokerT, result_id: str, timeout: float | None
) -> BucketT | None:
    if isinstance(broker, SupportsResultWait):
        return await broker.wait_bucket(result_id, timeout)
    return await poll_bucket(
        lambda: broker.get_bucket(result_id), timeout, first_pause=0.005, max_pause=0.5
    )


@functools.lru_cache(maxsize=256)
def _result_adapter(as_type: Any) -> Any:
    """One compiled pydantic validator per `as_type` of `Job.wait`."""
    from pydantic import TypeAdapter

    return TypeAdapter(as_type)


def _due(delay: DelayProperties) -> float | None:
    when = delay.delay_until or delay.next_execution_time
    return None if when is None else when.timestamp()


_BUCKET_HINTS = {
    "memory": "InMemoryBucketBroker(use_result_bucket=True)",
    "sqlite": "SqliteBucketBroker(dsn, use_result_bucket=True)",
    "postgres": "PostgresBucketBroker(dsn, use_result_bucket=True)",
    "nats": "NatsBucketBroker(servers, use_result_bucket=True)",
}


def _bucket_hint(connection: Connection) -> str:
    """The results store that suits the connection's broker (Redis for RabbitMQ and Kafka)."""
    family = type(connection.raw_message_broker).__module__.split(".")
    for name, hint in _BUCKET_HINTS.items():
        if name in family:
            return hint
    return "RedisBucketBroker('redis://...', use_result_bucket=True)"


def _unwrap_result(bucket: Any) -> Any:
    if not isinstance(bucket, ResultBucket):
        raise TypeError(f"expected a ResultBucket, got {type(bucket).__name__}")
    if bucket.success:
        return from_json(bucket.data) if bucket.data else None
    error = JobCancelledError if bucket.exception_type == "JobCancelledError" else JobFailedError
    if bucket.traceback is not None:  # 1.6 layout: data = str(exception), traceback apart
        message = bucket.data or f"job failed ({bucket.exception_type})"
        raise error(message, bucket.exception_type, bucket.traceback, bucket.errors)
    lines = (bucket.exception or "").strip().splitlines()
    message = lines[-1] if lines else f"job failed ({bucket.exception_type})"
    head, sep, rest = message.partition(": ")
    if sep and bucket.exception_type and head.rsplit(".", 1)[-1] == bucket.exception_type:
        message = rest  # "ValueError: card declined" -> "card declined"
    raise error(message, bucket.exception_type, bucket.exception, bucket.errors)


def _validate_cron(cron: str) -> None:
    try:
        from croniter import croniter
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ConfigurationError("cron jobs need croniter: pip install 'repid[cron]'") from exc
    if not croniter.is_valid(cron):
        raise ConfigurationError(f"cron expression {cron!r} is invalid")
