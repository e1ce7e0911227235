"""Cancellation flags and the worker registry of the NATS broker, in JetStream key-value
buckets shared by every process (`<prefix>state`, `<prefix>workers`); per-actor limits per
worker, or shared through a `RedisSharedState` when one is given."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import asdict
from functools import partial
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.kv import KeyValue
from pydantic_core import from_json, to_json

from repid.brokers.nats._handles import due_of
from repid.brokers.nats._link import NatsLink
from repid.brokers.nats._names import QueueNames, safe
from repid.lifecycle import STALE_AFTER, ActorLimiter, RateLimit, WorkerInfo

if TYPE_CHECKING:
    from repid.brokers.nats._handles import Handle
    from repid.state.redis import RedisSharedState

logger = logging.getLogger("repid.brokers.nats")

_BUCKET_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def bucket_name(prefix: str, kind: str) -> str:
    """A key-value bucket name (letters, digits, `_`, `-`) for `prefix` and `kind`."""
    return _BUCKET_UNSAFE.sub("_", prefix) + kind


class KvState:
    """Mixed into `NatsMessageBroker`: cancellations, live workers and actor limits."""

    link: NatsLink
    _owned: dict[tuple[str, int], Handle]

    def names(self, queue: str) -> QueueNames:
        raise NotImplementedError

    async def ensure_declared(self, names: QueueNames) -> None:
        raise NotImplementedError

    def _init_kv_state(self, prefix: str, shared: RedisSharedState | None) -> None:
        self._kv_prefix = prefix
        self._shared = shared
        self._flags: set[str] = set()
        """Ids with a cancellation request (mirror of the `state` bucket's `c.` keys)."""
        self._state_kv: KeyValue | None = None
        self._workers_kv: KeyValue | None = None
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def state_bucket(self) -> str:
        return bucket_name(self._kv_prefix, "state")

    @property
    def workers_bucket(self) -> str:
        return bucket_name(self._kv_prefix, "workers")

    async def _connect_state(self) -> None:
        js = self.link.js
        self._state_kv = await self.link.call(
            "open a key-value bucket",
            lambda: js.create_key_value(bucket=self.state_bucket, history=1, ttl=86400.0),
        )
        self._workers_kv = await self.link.call(
            "open a key-value bucket",
            lambda: js.create_key_value(bucket=self.workers_bucket, history=1, ttl=3600.0),
        )
        kv = self._state_kv
        self._watcher = await self.link.call("watch", lambda: kv.watch("c.*"))
        self._watch_task = asyncio.create_task(self._watch(self._watcher))
        if self._shared is not None:
            await self._shared.connect()

    async def delete_state(self) -> None:
        """Delete this prefix's `state` and `workers` buckets (cancellation requests, live
        workers) from the server; the next `connect()` creates them again."""
        js = self.link.js
        for bucket in (self.state_bucket, self.workers_bucket):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.link.call("delete a bucket", partial(js.delete_key_value, bucket))

    async def _disconnect_state(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()
        if self._shared is not None:
            await self._shared.disconnect()

    async def _watch(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            id_ = entry.key[2:]
            if entry.operation in ("DEL", "PURGE"):
                self._flags.discard(id_)
            else:
                self._flags.add(id_)

    def _kv(self, which: KeyValue | None) -> KeyValue:
        if which is None:
            raise RuntimeError("the NATS broker is not connected")
        return which

    # -- cancellation -------------------------------------------------------------------------

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Remove the waiting message of job `id_` ("dequeued") or ask the worker running it to
        cancel it ("requested"); None when no message of that id is pending."""
        names = self.names(queue_name)
        await self.ensure_declared(names)
        js = self.link.js
        try:
            raw = await self.link.call(
                "find a message",
                lambda: js.get_msg(names.stream, seq=1, subject=names.any_priority(id_), next=True),
            )
        except nats.js.errors.NotFoundError:
            return None
        seq = raw.seq or 0
        if (names.stream, seq) not in self._owned:
            due = due_of(raw.headers)
            waiting = due is not None and due > time.time()
            if not waiting:
                priority = int((raw.subject or "").rsplit(".", 2)[1])
                info = await self.link.call(
                    "consumer info",
                    lambda: js.consumer_info(names.stream, names.consumers[priority]),
                )
                delivered = info.delivered.stream_seq if info.delivered else None
                waiting = delivered is None or delivered < seq
            if waiting:
                try:
                    await self.link.call(
                        "delete a message", lambda: js.delete_msg(names.stream, seq)
                    )
                    return "dequeued"
                except nats.js.errors.APIError:
                    pass  # taken meanwhile: it runs, flag it
        self._flags.add(id_)
        kv = self._kv(self._state_kv)
        await self.link.call("flag a cancellation", lambda: kv.put(f"c.{safe(id_)}", b"1"))
        return "requested"

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a cancellation request (from any process)."""
        flags = self._flags
        return {id_ for id_ in running if id_ in flags} if flags else set()

    async def cancel_finished(self, id_: str) -> None:
        await self._job_over(id_)

    async def _job_over(self, id_: str) -> None:
        """Job `id_` is settled for good: its cancellation request (if any) is forgotten."""
        if id_ not in self._flags:
            return
        self._flags.discard(id_)
        kv = self._kv(self._state_kv)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self.link.call("forget a cancellation", lambda: kv.delete(f"c.{safe(id_)}"))

    # -- workers and limits ---------------------------------------------------------------

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record a live worker in the `workers` bucket."""
        kv = self._kv(self._workers_kv)
        record = to_json({**asdict(info), "queues": list(info.queues)})
        await self.link.call("heartbeat", lambda: kv.put(safe(info.id), record))

    async def unregister_worker(self, worker_id: str) -> None:
        kv = self._kv(self._workers_kv)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self.link.call("unregister a worker", lambda: kv.delete(safe(worker_id)))

    async def live_workers(self, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
        """Workers heard from within `stale_after` seconds (of every process)."""
        kv = self._kv(self._workers_kv)
        try:
            keys = await self.link.call("list workers", kv.keys)
        except nats.js.errors.NoKeysError:
            return []
        now = time.time()
        workers: list[WorkerInfo] = []
        for key in keys:
            try:
                entry = await self.link.call("read a worker", partial(kv.get, key))
            except nats.js.errors.KeyNotFoundError:
                continue
            if not entry.value:
                continue
            obj = from_json(entry.value)
            obj["queues"] = tuple(obj["queues"])
            info = WorkerInfo(**obj)
            if now - info.last_seen <= stale_after:
                workers.append(info)
        return sorted(workers, key=lambda info: info.started_at)

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> ActorLimiter:
        """The limiter of `actor`: shared through the `RedisSharedState` when there is one,
        else one per worker."""
        if self._shared is not None:
            return self._shared.actor_limiter(actor, max_concurrency, rate_limit)
        return ActorLimiter(max_concurrency, rate_limit)
