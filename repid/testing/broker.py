"""`TestMessageBroker`: an in-memory broker that runs each job's actor as soon as it is enqueued."""

from __future__ import annotations

import copy
import heapq
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING
from unittest.mock import AsyncMock, MagicMock

from repid.brokers.base import Delivery, OutgoingMessage
from repid.brokers.memory import InMemoryMessageBroker
from repid.brokers.memory._store import _Entry, _MemoryQueue
from repid.data import Parameters, RoutingKey
from repid.router import Router
from repid.worker import Runner, Worker

if TYPE_CHECKING:
    from repid.connection import Connection

__all__ = ["TestMessageBroker"]


class TestMessageBroker(InMemoryMessageBroker):
    """An `InMemoryMessageBroker` that runs actors synchronously with `enqueue`.

    `await job.enqueue()` stores the message as the in-memory broker does and then, when a worker
    built from `routers` would run it (the job's actor is known and listens on the job's queue),
    takes that very message and runs it to its outcome through a `repid.worker.Runner`, in the
    calling task, before `enqueue` returns. Everything else follows the worker's rules:

    - argument conversion/validation by the actor's converter, dependencies, results stored;
    - success acks; a failure with retries left is requeued *with its retry delay*, so it sits in
      the delayed part of the queue and is not run again by itself; without retries left it goes
      to the dead part (visible via `Queue.get_messages(category=MessageCategory.DEAD)`);
    - an actor's exception never propagates out of `enqueue`: check the outcome instead.

    Not run at enqueue: deferred jobs (`deferred_until` in the future, `deferred_by`, `cron`)
    stay delayed; messages for unknown actors or for queues no actor listens on stay in their
    queue. Use `run_pending()` to run what is ready (or, with `include_delayed=True`, also what is
    delayed) on demand. Timeouts are not enforced (there is no watchdog). An actor that enqueues
    jobs runs them nested, depth first.

    Args:
        routers: routers (or workers) whose actors are run.
        run_on_enqueue: False gives a plain in-memory broker until switched back on.
        lease_duration: as for `InMemoryMessageBroker`.
        max_message_size: as for `InMemoryMessageBroker`.
        clock: as for `InMemoryMessageBroker`.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        routers: Iterable[Router] = (),
        *,
        run_on_enqueue: bool = True,
        lease_duration: float = 60.0,
        max_message_size: int | None = 16 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            lease_duration=lease_duration, max_message_size=max_message_size, clock=clock
        )
        self.routers = list(routers)
        self.run_on_enqueue = run_on_enqueue
        self._connection: Connection | None = None
        self._runner: Runner | None = None
        self._mocks: dict[str, MagicMock] = {}
        self._placed: list[tuple[_MemoryQueue, _Entry]] | None = None

    # -- wiring ---------------------------------------------------------------------------------

    def bind(self, connection: Connection) -> None:
        """Settle messages and emit middleware events through `connection` (whose message broker
        must be this one, possibly wrapped by middlewares). Without it, a bare `Connection(self)`
        is used. Call it before anything runs: it resets the runner (and its mocked actors).
        """
        self.close()
        self._connection = connection
        self._mocks.clear()

    @property
    def runner(self) -> Runner:
        """The `Runner` that processes messages (built on first use)."""
        if self._runner is None:
            from repid.connection import Connection

            connection = self._connection or Connection(self)
            worker = Worker(routers=self.routers, handle_signals=[], _connection=connection)
            self._runner = Runner(worker, connection)
        return self._runner

    @property
    def known_queues(self) -> list[str]:
        """Names of the queues the routers' actors listen on."""
        return sorted({actor.queue for actor in self.runner.actors.values()})

    def runs(self, key: RoutingKey) -> bool:
        """Whether a worker built from the routers would run a message with this routing key."""
        actors = self.runner.actors
        if key.topic not in actors:
            return False
        return any(actor.queue == key.queue for actor in actors.values())

    def mock_actor(self, name: str) -> MagicMock:
        """Record the calls of actor `name` while its function still runs.

        Returns a `MagicMock` (an `AsyncMock` for `async def` actors) wrapping the function; the
        runner calls it with the converted arguments instead of the function itself. The same
        mock is returned for the same name. The routers are not modified. A mocked synchronous
        actor runs in a thread even if it was declared with `run_in_process=True`.

        Raises:
            KeyError: no actor of that name.
        """
        mock = self._mocks.get(name)
        if mock is not None:
            return mock
        actors = self.runner.actors
        actor = actors.get(name)
        if actor is None:
            raise KeyError(f"no actor named {name!r}; known actors: {sorted(actors)}")
        mock = AsyncMock(wraps=actor.fn) if actor.is_async else MagicMock(wraps=actor.fn)
        patched = copy.copy(actor)
        patched.fn = mock
        patched.run_in_process = False  # a mock cannot cross a process boundary
        actors[name] = patched
        self._mocks[name] = mock
        return mock

    def close(self) -> None:
        """Release the runner's thread/process pools (sync actors). The broker stays usable."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    # -- publishing runs the actor ------------------------------------------------------------

    def _place(self, q: _MemoryQueue, entry: _Entry) -> None:
        super()._place(q, entry)
        if self._placed is not None:
            self._placed.append((q, entry))

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        """Store the message, then run it if an actor of the routers handles it (see class)."""
        placed = await self._collect_placed(super().enqueue(key, payload, params))
        for q, entry in placed:
            await self._run_entry(q, entry)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Store every message, then run those an actor handles, in order."""
        placed = await self._collect_placed(super().enqueue_many(messages))
        for q, entry in placed:
            await self._run_entry(q, entry)

    async def _collect_placed(self, publish: Awaitable[None]) -> list[tuple[_MemoryQueue, _Entry]]:
        """Await `publish`, returning the entries it put in the ready or delayed part."""
        if not self.run_on_enqueue:
            await publish
            return []
        placed: list[tuple[_MemoryQueue, _Entry]] = []
        outer, self._placed = self._placed, placed
        try:
            await publish
        finally:
            self._placed = outer
        return placed

    async def run_pending(
        self, queue_name: str | None = None, *, include_delayed: bool = False
    ) -> int:
        """Run the ready messages the routers' actors handle; return how many were run.

        Each message present when the call starts runs at most once (a retry requeued by it is
        not run again in the same call).

        Args:
            queue_name: only this queue (default: every declared queue an actor listens on).
            include_delayed: first make the delayed messages of those actors ready, whatever
                their time (deferred and recurring jobs, retries waiting for their delay).
        """
        if queue_name is not None:
            queues = [self._queue(queue_name)]  # raises for an undeclared queue
        else:
            queues = [self._queues[n] for n in self.known_queues if n in self._queues]
        entries: list[tuple[_MemoryQueue, _Entry]] = []
        for q in queues:
            if include_delayed:
                self._release_delayed(q)
            self._promote(q)
            entries.extend((q, e) for d in q.ready for e in d if self.runs(e.key))
        count = 0
        for q, entry in entries:
            if await self._run_entry(q, entry):
                count += 1
        return count

    def _release_delayed(self, q: _MemoryQueue) -> None:
        keep: list[tuple[float, int, _Entry]] = []
        for item in q.delayed:
            entry = item[2]
            if self.runs(entry.key):
                q.ready[entry.key.priority].append(entry)
            else:
                keep.append(item)
        heapq.heapify(keep)
        q.delayed[:] = keep

    async def _run_entry(self, q: _MemoryQueue, entry: _Entry) -> bool:
        if entry.decode_error is not None or not self.runs(entry.key):
            return False
        delivery = self._take_entry(q, entry)
        if delivery is None:
            return False
        try:
            await self.runner.process_delivery(delivery)
        except Exception:
            # A bug in repid (actor failures are settled by the runner): give the message back.
            await self.reject(delivery)
            raise
        return True

    def _take_entry(self, q: _MemoryQueue, entry: _Entry) -> Delivery | None:
        """Lease exactly `entry` if it is still ready (None if taken, flushed or deleted)."""
        if self._queues.get(q.name) is not q:
            return None  # the queue was deleted meanwhile
        return self.take_ready(q.name, entry.handle)
