"""`RepidTestEnvironment`: the in-memory app of one test, as the pytest plugin builds it."""

from __future__ import annotations

from collections.abc import Iterable

from repid.brokers.memory.broker import InMemoryBucketBroker
from repid.connection import Connection
from repid.main import Repid
from repid.queue import Queue
from repid.router import Router
from repid.testing._sync import run_now
from repid.testing.broker import TestMessageBroker
from repid.testing.events import EventRecorder
from repid.testing.queue_view import InMemoryQueueView

__all__ = ["RepidTestEnvironment"]


class RepidTestEnvironment:
    """The in-memory app of one test, as the plugin builds it (usable without pytest too).

    `start()` connects/sets the default connection/declares queues as asked; `stop()` restores
    the previous default connection, disconnects and releases the runner's pools.

    Args:
        routers: routers whose actors run at enqueue.
        autoconnection: connect and make the connection the default one between start and stop.
        declare_all_known_queues: declare the actors' queues at start.
    """

    def __init__(
        self,
        routers: Iterable[Router] = (),
        *,
        autoconnection: bool = True,
        declare_all_known_queues: bool = True,
    ) -> None:
        self.autoconnection = autoconnection
        self.declare_all_known_queues = declare_all_known_queues
        self.broker: TestMessageBroker = TestMessageBroker(routers)
        self.args_bucket_broker = InMemoryBucketBroker()
        self.results_bucket_broker = InMemoryBucketBroker(use_result_bucket=True)
        self.connection: Connection = Connection(
            self.broker,
            args_bucket_broker=self.args_bucket_broker,
            results_bucket_broker=self.results_bucket_broker,
        )
        self.recorder: EventRecorder = EventRecorder()
        self.app: Repid = Repid(self.connection, middlewares=[self.recorder])
        self.broker.bind(self.connection)
        self._previous_magic: Connection | None = None
        self._started = False

    def start(self) -> None:
        """Remember the current default connection; connect and make this app's connection the
        default (autoconnection); declare the actors' queues (declare_all_known_queues)."""
        self._previous_magic = Repid._magic_connection
        self._started = True
        if self.autoconnection:
            run_now(self.connection.connect())
            Repid.set_magic_connection(self.connection)
        if self.declare_all_known_queues:
            self.declare_queues()

    def stop(self) -> None:
        """Restore the default connection seen by `start()`, disconnect, release the runner."""
        if self._started:
            Repid.set_magic_connection(self._previous_magic)
            self._started = False
        if self.connection.is_open:
            run_now(self.connection.disconnect())
        self.broker.close()

    def declare_queues(self) -> list[str]:
        """Declare every queue the routers' actors use (through the app: events are recorded)."""
        names = self.broker.known_queues
        for name in names:
            run_now(self.connection.message_broker.queue_declare(name))
        return names

    def queue_view(self, queue: str | Queue) -> InMemoryQueueView:
        """A live view of a queue of the test broker."""
        bucket_broker = self.args_bucket_broker

        def load_args(args_id: str) -> str | None:
            bucket = run_now(bucket_broker.get_bucket(args_id))
            return None if bucket is None else str(bucket.data)

        name = queue if isinstance(queue, str) else queue.name
        return InMemoryQueueView(self.broker, name, load_args)
