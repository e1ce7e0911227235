"""Shared state for the brokers that have none of their own (RabbitMQ, Kafka), kept in Redis:
unique ids, cancellation requests, per-actor limits and the worker registry, shared by every
process (`shared_state=RedisSharedState(dsn)`). Key layout: docs/internals.md, "Shared state".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from repid._cancel import await_quietly
from repid.brokers.base import ConnectionPolicy, Delivery
from repid.brokers.redis._client import RedisAddress
from repid.brokers.redis._link import DEFAULT_POLICY, SCRIPTS, Link, Script
from repid.brokers.redis._workers import WorkersAndLimits, hash_tagged
from repid.ids import generated_here

__all__ = ["RedisSharedState", "generated_here"]

logger = logging.getLogger("repid.brokers.state")

ANSWER_WITHIN = 0.5
"""Seconds `cancel` waits for a worker process to say that it runs the job."""
CANCEL_TTL = 3600.0
"""Seconds a cancellation flag is kept when no worker clears it (the job ended meanwhile)."""
READER_STALE = 3.0
"""A process whose mirror was not refreshed for this many seconds is not waited for."""
_REPORT_EVERY = 1.0
_RECENT = 2.0
"""Seconds a settled job counts as having just finished (for cancellations racing with it)."""
_SEP = "\x1f"
_ANSWER_TTL_MS = 10_000

_BUMP = """
-- A change of the cancellations: readers reload them. Both keys expire after their last entry
-- (a reader whose version vanished reloads too).
local function bump(hash, version, longest)
  redis.call('INCR', version)
  local keep = math.max(redis.call('PTTL', hash), longest, 60000)
  if redis.call('EXISTS', hash) == 1 then redis.call('PEXPIRE', hash, keep) end
  redis.call('PEXPIRE', version, keep)
end
"""

_CANCEL = Script(
    "state_cancel",
    _BUMP
    + """
-- KEYS: cancels hash, its version, the pending key of (queue, id), the answer key of the id.
-- ARGV: queue, id, stamp (the newest creation time cancelled), now ms, tombstone ttl ms,
--       flag ttl ms, '1' if the caller knows a waiting message of the id.
-- Returns {1 when a waiting message of the id is known (a tombstone was written) else 0,
-- the new version}.
local now = tonumber(ARGV[4])
redis.call('DEL', KEYS[4])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local expiry = tonumber(string.match(all[i + 1], '^(%d+)'))
  if expiry ~= nil and expiry < now then redis.call('HDEL', KEYS[1], all[i]) end
end
local known = ARGV[7] == '1' or redis.call('EXISTS', KEYS[3]) == 1
local sep = string.char(31)
local longest = tonumber(ARGV[6])
if known then
  local ttl = tonumber(ARGV[5])
  local pttl = redis.call('PTTL', KEYS[3])
  if pttl > ttl then ttl = pttl end
  longest = math.max(longest, ttl)
  local field = 't' .. sep .. ARGV[1] .. sep .. ARGV[2]
  redis.call('HSET', KEYS[1], field, (now + ttl) .. ' ' .. ARGV[3])
end
redis.call('HSET', KEYS[1], 'f' .. sep .. ARGV[2], (now + tonumber(ARGV[6])) .. ' 0')
bump(KEYS[1], KEYS[2], longest)
return {known and 1 or 0, tonumber(redis.call('GET', KEYS[2]))}
""",
)

_FORGET = Script(
    "state_forget",
    _BUMP
    + """
-- KEYS: cancels hash, its version. ARGV: id, queue ('' = any, '-' = none). Drops the flag and
-- tombstones of the id (the cancelled job is gone).
local sep = string.char(31)
local changed = redis.call('HDEL', KEYS[1], 'f' .. sep .. ARGV[1])
if ARGV[2] == '-' then
  changed = changed
elseif ARGV[2] ~= '' then
  changed = changed + redis.call('HDEL', KEYS[1], 't' .. sep .. ARGV[2] .. sep .. ARGV[1])
else
  local suffix = sep .. ARGV[1]
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 1) == 't' and string.sub(field, -#suffix) == suffix then
      changed = changed + redis.call('HDEL', KEYS[1], field)
    end
  end
end
if changed > 0 then bump(KEYS[1], KEYS[2], 0) end
return changed
""",
)

_SCRIPTS = (_CANCEL, _FORGET, SCRIPTS["limiter"], SCRIPTS["live_workers"])


class RedisSharedState(WorkersAndLimits):
    """Unique ids, cancellations, per-actor limits and live workers shared through Redis.

    Pass one to `RabbitMessageBroker(shared_state=...)` or `KafkaMessageBroker(shared_state=...)`
    (one per broker object; the broker connects and disconnects it). The broker then declares
    `capabilities.shared_state=True`. Use the Redis server you already pair the broker with for
    results.

    Args:
        dsn: the Redis address (as for `RedisMessageBroker`).
        prefix: prefix of every key written; give each app (or broker) its own.
        unique_ttl: a pending user-given id is remembered at most this long after its job is
            due (then it is forgotten even if no worker settled it); also how long a
            cancelled waiting job stays cancelled.
        lease_duration: seconds a crashed worker's concurrency slot stays taken.
        poll_interval: seconds between two checks for new cancellations (by every process):
            the window in which a job cancelled while waiting can still start (it is then
            cancelled as a running job).
        connect_timeout: seconds one connection attempt may take (default 5).
        operation_timeout: seconds an operation keeps retrying while Redis is unreachable
            (default 10).
        reconnect_backoff: seconds before the first retry after a failed command (default
            0.05), doubling up to a second.
    """

    def __init__(
        self,
        dsn: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "repid:state:",
        unique_ttl: timedelta = timedelta(days=1),
        lease_duration: float = 30.0,
        poll_interval: float = 0.1,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
    ) -> None:
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout, operation_timeout, reconnect_backoff, defaults=DEFAULT_POLICY
        )
        self.dsn = dsn
        self.prefix = prefix
        self.unique_ttl = unique_ttl
        self.lease_duration = lease_duration
        self.poll_interval = poll_interval
        self.link = Link(RedisAddress(dsn), self.connection_policy, _SCRIPTS)
        self.tombstones: dict[tuple[str, str], float] = {}
        """Mirror: (queue, id) -> newest creation time of the cancelled waiting messages."""
        self.flags: dict[str, int] = {}
        """Mirror: id -> expiry (ms) of its cancellation flag."""
        # Every key of the cancellation scripts shares one hash tag (one slot on a cluster).
        self._base = base = hash_tagged(prefix, "state")
        self._cancels = f"{base}cancels".encode()
        self._version_key = f"{base}cancels:v".encode()
        self._version: bytes | None = b"?"
        self._init_workers_and_limits()
        self._releases: list[bytes] = []
        self._answered: set[str] = set()
        self._ignored: set[str] = set()
        """Flags this process read while it did not run their job: a later run of the id here
        is a new job (the cancelled one was dropped, finished, or ran elsewhere)."""
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._readers = f"{base}readers".encode()
        self.reader_id = uuid.uuid4().hex
        self._reported = 0.0
        self.running: Callable[[str], bool] = lambda id_: False
        """Set by the broker: whether job `id_` is handed out in this process right now."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self.is_connected = False

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and load the cancellations (`BrokerUnavailableError` if Redis is down)."""
        if self.is_connected:
            return
        await self.link.connection()
        self.link.start_watchdog()
        # Registered before the first read: a cancellation made after this either is in that
        # read or waits for this process to report having seen it (see `cancel`).
        await self._report(-1)
        await self.refresh()
        self._poller = asyncio.create_task(self._poll(), name="repid-state-poller")
        self.is_connected = True

    async def disconnect(self) -> None:
        self.is_connected = False
        if self._poller is not None:
            self._poller.cancel()
            await await_quietly(self._poller)
            self._poller = None
        self._flush_releases()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for limiter in self._limiters.values():
            await limiter.close()
        with contextlib.suppress(Exception):
            await self.link.call("HDEL", self._readers, self.reader_id, timeout=1.0)
        await self.link.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("shared state: a background update failed: %r", task.exception())

    # -- unique ids ---------------------------------------------------------------------------

    def _pending_key(self, queue: str, id_: str) -> bytes:
        return f"{self._base}pending{_SEP}{queue}{_SEP}{id_}".encode()

    def _ttl_ms(self, due: float | None) -> int:
        wait = 0.0 if due is None else max(0.0, due - time.time())
        return max(1, int((wait + self.unique_ttl.total_seconds()) * 1000))

    async def claim(self, queue: str, id_: str, stamp: float, due: float | None) -> bool:
        """Remember `id_` as pending in `queue`; False if it already is (atomic, SET NX)."""
        reply = await self.link.call(
            "SET", self._pending_key(queue, id_), repr(stamp), "NX", "PX", self._ttl_ms(due)
        )
        return reply is not None

    async def is_pending(self, queue: str, id_: str) -> bool:
        """Whether `id_` is a pending user-given id of `queue`."""
        return bool(await self.link.call("EXISTS", self._pending_key(queue, id_)))

    async def renew(self, queue: str, id_: str, stamp: float, due: float | None) -> None:
        """The pending id's job was put back (retry, next tick): keep it pending."""
        await self.link.call(
            "SET", self._pending_key(queue, id_), repr(stamp), "PX", self._ttl_ms(due)
        )

    def settled(self, id_: str) -> None:
        """Job `id_` finished in this process (a cancellation racing with it is answered so)."""
        recent = self._recent
        recent[id_] = time.monotonic()
        recent.move_to_end(id_)
        if len(recent) > 10_000:
            recent.popitem(last=False)

    def release(self, queue: str, id_: str) -> None:
        """The job of `id_` was settled: forget it (sent with the others of this loop step)."""
        self.settled(id_)
        if not self._releases:
            asyncio.get_running_loop().call_soon(self._flush_releases)
        self._releases.append(self._pending_key(queue, id_))
        if id_ in self.flags:  # a cancellation that came too late for the job
            self._spawn(self.forget_cancel(id_, queue))

    def _flush_releases(self) -> None:
        keys, self._releases = self._releases, []
        if keys:
            self._spawn(self.link.call("DEL", *keys))

    async def forget_queue(self, queue: str) -> None:
        """The queue was flushed or deleted: forget its pending ids and tombstones."""
        pattern = "".join(
            "\\" + c if c in "\\*?[]" else c for c in self._pending_key(queue, "").decode()
        )
        cursor = b"0"
        while True:
            cursor, keys = await self.link.call(
                "SCAN", cursor, "MATCH", pattern + "*", "COUNT", 500
            )
            if keys:
                await self.link.call("DEL", *keys)
            if cursor in (b"0", 0, "0"):
                break
        for q, id_ in [key for key in self.tombstones if key[0] == queue]:
            self.tombstones.pop((q, id_), None)
            await self.link.script(_FORGET, [self._cancels, self._version_key], [id_, queue])

    # -- cancellation ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Reload the mirror of cancellations if they changed, answer those that concern jobs
        of this process, and report the version seen (`cancel` waits for it)."""
        raw_version = await self.link.call("GET", self._version_key)
        version = int(raw_version or 0)
        if raw_version == self._version:
            if time.monotonic() - self._reported >= _REPORT_EVERY:
                await self._report(version)
            return
        raw = await self.link.call("HGETALL", self._cancels)
        now_ms = time.time() * 1000
        tombstones: dict[tuple[str, str], float] = {}
        flags: dict[str, int] = {}
        for field, value in zip(raw[::2], raw[1::2], strict=True):
            kind, *names = field.decode().split(_SEP)
            expiry_text, _, rest = value.decode().partition(" ")
            expiry = int(float(expiry_text))
            if expiry < now_ms:
                continue
            if kind == "t" and len(names) == 2:
                tombstones[(names[0], names[1])] = float(rest)
            elif kind == "f" and len(names) == 1:
                flags[names[0]] = expiry
        # New flags, and flags set again by another `cancel` (a new expiry).
        new = {id_ for id_, expiry in flags.items() if self.flags.get(id_) != expiry}
        # In place: brokers hold a reference to these dicts.
        self.tombstones.clear()
        self.tombstones.update(tombstones)
        self.flags.clear()
        self.flags.update(flags)
        self._answered = {id_ for id_ in self._answered if id_ in flags and id_ not in new}
        self._ignored = {id_ for id_ in self._ignored if id_ in flags and id_ not in new}
        self._version = raw_version
        soon = time.monotonic() - _RECENT
        for id_ in new:
            if self.running(id_):
                answer = "1"
                self._answered.add(id_)
            else:
                # Not running here when first seen: the flag is not for a later job of this
                # id in this process (waiting messages of the cancelled one are tombstoned).
                self._ignored.add(id_)
                if self._recent.get(id_, 0.0) > soon:
                    answer = "r"
                else:
                    continue
            await self.link.call("SET", self._answer_key(id_), answer, "PX", _ANSWER_TTL_MS)
        await self._report(version)

    async def _report(self, version: int) -> None:
        self._reported = time.monotonic()
        value = f"{version} {int(time.time() * 1000)}"
        await self.link.call("HSET", self._readers, self.reader_id, value)

    async def _unseen(self, version: int) -> bool:
        """Whether a live process has not reported `version` yet (stale ones are dropped)."""
        raw = await self.link.call("HGETALL", self._readers)
        now_ms = time.time() * 1000
        waiting = False
        for reader, value in zip(raw[::2], raw[1::2], strict=True):
            seen, _, at = value.decode().partition(" ")
            age = now_ms - int(at)
            if age > 20 * READER_STALE * 1000:
                await self.link.call("HDEL", self._readers, reader)
            elif age <= READER_STALE * 1000 and int(seen) < version:
                waiting = True
        return waiting

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception as exc:
                if not failing:  # once per outage, not at every poll
                    logger.warning("shared state: reading cancellations failed (%r)", exc)
                failing = True
            else:
                if failing:
                    logger.info("shared state: reading cancellations again")
                failing = False

    def take_tombstone(self, delivery: Delivery) -> bool:
        """True if this delivery was cancelled while waiting: drop it without running it."""
        key = delivery.key
        stamp = self.tombstones.get((key.queue, key.id_))
        if stamp is None or delivery.parameters.timer.timestamp.timestamp() > stamp:
            return False
        logger.info("message %s was cancelled while waiting; dropped", key.id_)
        self._spawn(self._dropped(key.queue, key.id_))
        return True

    async def _dropped(self, queue: str, id_: str) -> None:
        # (`cancel` has freed the id already: a pending key now belongs to a new job.)
        await self.forget_cancel(id_, queue)
        await self.link.call("SET", self._answer_key(id_), "d", "PX", _ANSWER_TTL_MS)

    def _answer_key(self, id_: str) -> bytes:
        return f"{self._base}answer{_SEP}{id_}".encode()

    async def forget_cancel(self, id_: str, queue: str = "") -> None:
        """Job `id_` is gone: drop its flag, and its tombstones in `queue` ("": in any queue)."""
        self.flags.pop(id_, None)
        self._answered.discard(id_)
        self._ignored.discard(id_)
        for key in [key for key in self.tombstones if key[1] == id_ and queue in ("", key[0])]:
            del self.tombstones[key]
        await self.link.script(_FORGET, [self._cancels, self._version_key], [id_, queue])

    async def cancel(self, queue: str, id_: str, stamp: float | None) -> str | None:
        """Cancel job `id_` in every process; `stamp`: creation time of a waiting message of it
        known to the caller (None: look for a pending user-given id).

        Waits (at most `ANSWER_WITHIN` seconds) until every live process has read the
        cancellation; from then on none hands out a waiting message of the id. Returns
        "requested" when a process runs the job (it cancels it), "dequeued" when a waiting
        message is known (every consumer drops it), None otherwise, or when the job finished
        meanwhile (nothing is left behind then).
        """
        answer_key = self._answer_key(id_)
        now = time.time()
        known, version = await self.link.script(
            _CANCEL,
            [self._cancels, self._version_key, self._pending_key(queue, id_), answer_key],
            [
                queue,
                id_,
                # Every waiting message of the id created so far (retries and next ticks of a
                # periodic job carry newer times than the one a producer knows).
                repr(max(now, stamp or 0.0)),
                int(now * 1000),
                int(self.unique_ttl.total_seconds() * 1000),
                int(CANCEL_TTL * 1000),
                "0" if stamp is None else "1",
            ],
        )
        await self.refresh()  # this process's own consumers and workers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_WITHIN
        pause = 0.005
        read_by_all = False
        while True:
            answer = await self.link.call("GET", answer_key)
            if answer in (b"1", b"r"):
                break
            if not await self._unseen(version):
                answer = await self.link.call("GET", answer_key)  # set before the report
                read_by_all = True
                break
            if loop.time() >= deadline:
                logger.warning(
                    "cancel %s: not every process read it within %ss", id_, ANSWER_WITHIN
                )
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        if answer == b"1":
            return "requested"
        if answer != b"r" and (known or answer == b"d"):
            # The id is free again (as on the Redis broker); its old message is dropped.
            await self.link.call("DEL", self._pending_key(queue, id_))
            if read_by_all and answer is None:
                # Every process has the tombstone and none ran the job: the flag is of no
                # more use (left behind, it would cancel a later job reusing the id).
                await self.forget_cancel(id_, "-")
            return "dequeued"
        await self.forget_cancel(id_, queue if answer == b"r" else "-")
        return None

    def cancelled(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids are flagged (from the mirror: no round trip)."""
        flags = self.flags
        if not flags:
            return set()
        now_ms = time.time() * 1000
        ignored = self._ignored
        found = {id_ for id_ in running if flags.get(id_, 0) > now_ms and id_ not in ignored}
        for id_ in found - self._answered:
            self._answered.add(id_)
            self._spawn(self.link.call("SET", self._answer_key(id_), "1", "PX", _ANSWER_TTL_MS))
        return found

    # -- limits and workers ---------------------------------------------------------------------
