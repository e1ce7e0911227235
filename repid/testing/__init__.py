"""Testing helpers of repid.

The pytest plugin (`repid.testing.plugin`, registered automatically) gives tests marked
`@pytest.mark.repid(routers=[...])` an in-memory app in which `await job.enqueue()` runs the
job's actor right away, plus the fixtures `repid_app`, `repid_connection`, `repid_get_event_log`,
`repid_get_mocked_actor`, `repid_get_in_memory_queue` and `repid_declare_all_known_queues`.

The pieces are usable on their own:

- `TestMessageBroker`: the in-memory broker that runs actors at enqueue;
- `EventRecorder` / `RecordedEvent`: a middleware recording every broker-level event;
- `InMemoryQueueView` / `QueuedMessage`: a read-only look into an in-memory queue;
- `RepidTestEnvironment`: the app of one test, as the plugin builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest.mock import MagicMock

from repid.queue import Queue
from repid.testing.broker import TestMessageBroker
from repid.testing.environment import RepidTestEnvironment
from repid.testing.events import EventRecorder, RecordedEvent
from repid.testing.queue_view import InMemoryQueueView, QueuedMessage

GetEventLogT = Callable[..., list[RecordedEvent]]
"""Type of the `repid_get_event_log` fixture (repid 1.6 name, also `from repid import ...`)."""

GetMockedActorT = Callable[[str], MagicMock]
"""Type of the `repid_get_mocked_actor` fixture (repid 1.6 name)."""

GetInMemoryQueueT = Callable[[str | Queue], InMemoryQueueView]
"""Type of the `repid_get_in_memory_queue` fixture (repid 1.6 name)."""

__all__ = [
    "EventRecorder",
    "GetEventLogT",
    "GetInMemoryQueueT",
    "GetMockedActorT",
    "InMemoryQueueView",
    "QueuedMessage",
    "RecordedEvent",
    "RepidTestEnvironment",
    "TestMessageBroker",
]
