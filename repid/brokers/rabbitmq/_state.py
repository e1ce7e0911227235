"""What the RabbitMQ broker knows within its process (unique ids enqueued here, jobs in flight
here, cancelled ids), and what it shares through a `RedisSharedState` when it is given one
(see docs/brokers/rabbitmq.md, "What is per process").
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from repid.brokers.base import Delivery
from repid.brokers.rabbitmq.channel_state import ChannelState, Handle
from repid.data import Parameters, RoutingKey
from repid.ids import generated_here
from repid.state.local import LocalOrShared

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState

logger = logging.getLogger("repid.brokers.rabbitmq")

PENDING_LIMIT = 100_000
"""Unique ids (and cancelled ids) remembered per queue, oldest forgotten first."""


class ProcessState(LocalOrShared):
    """The per-process bookkeeping mixed into `RabbitMessageBroker`."""

    unique_window: float

    def __init__(self, shared: RedisSharedState | None = None) -> None:
        self._init_local_or_shared(shared)
        self._pending: dict[str, OrderedDict[str, tuple[float, float]]] = {}
        """queue -> id -> (message timestamp, when the id stops counting as pending)."""
        self._tombstones: dict[tuple[str, str], float] = {} if shared is None else shared.tombstones
        """Cancelled queued messages: (queue, id) -> message timestamp (with shared state: the
        mirror of the shared tombstones, newest cancelled timestamp)."""
        self._in_flight: dict[tuple[str, str], int] = {}
        if shared is not None:
            shared.running = self._runs_here

    def _remember(self, key: RoutingKey, params: Parameters) -> bool:
        """Record a pending id; False if it is already pending (not published again)."""
        pending = self._pending.get(key.queue)
        if pending is None:
            pending = self._pending[key.queue] = OrderedDict()
        now = time.time()
        known = pending.get(key.id_)
        if known is not None:
            if known[1] > now:
                logger.debug("message %s is already pending in %s; not added again", *key[:3:2])
                return False
            del pending[key.id_]
        pending[key.id_] = self._pending_entry(params, now)
        if len(pending) > PENDING_LIMIT:
            pending.popitem(last=False)
        return True

    def _pending_entry(self, params: Parameters, now: float) -> tuple[float, float]:
        # Settlements in other processes are not seen here: an id stops counting as pending
        # `unique_window` seconds after it is due, so a later enqueue of it is never lost.
        due = params.not_before
        start = now if due is None or due < now else due
        return params.timer.timestamp.timestamp(), start + self.unique_window

    def _shared_id(self, id_: str) -> bool:
        """Whether the pending state of `id_` lives in the shared state (user-given ids)."""
        return self._state is not None and not generated_here(id_)

    def _runs_here(self, id_: str) -> bool:
        return any(running == id_ for _, running in self._in_flight)

    def _forget(self, key: RoutingKey) -> None:
        state = self._state
        if state is not None:
            if not generated_here(key.id_):
                state.release(key.queue, key.id_)
                return
            state.settled(key.id_)
        pending = self._pending.get(key.queue)
        if pending:
            pending.pop(key.id_, None)

    def _track(self, delivery: Delivery) -> None:
        """A NORMAL delivery was handed out in this process (for `cancel` and `counts`)."""
        slot = (delivery.key.queue, delivery.key.id_)
        handle: Handle = delivery.handle
        handle.state.in_flight[handle.tag] = slot
        self._in_flight[slot] = self._in_flight.get(slot, 0) + 1

    def _leave_flight(self, delivery: Delivery) -> None:
        handle: Handle = delivery.handle
        slot = handle.state.in_flight.pop(handle.tag, None)
        if slot is not None:
            self._drop_flight(slot)

    def _drop_flight(self, slot: tuple[str, str]) -> None:
        count = self._in_flight.get(slot, 0) - 1
        if count > 0:
            self._in_flight[slot] = count
        else:
            self._in_flight.pop(slot, None)

    def _release_state(self, state: ChannelState) -> None:
        """A consumer's channel is gone: RabbitMQ takes its deliveries back."""
        state.alive = False
        for slot in state.in_flight.values():
            self._drop_flight(slot)
        state.in_flight.clear()

    def _is_tombstoned(self, delivery: Delivery) -> bool:
        if self._state is not None:
            return self._state.take_tombstone(delivery)
        slot = (delivery.key.queue, delivery.key.id_)
        stamp = self._tombstones.get(slot)
        if stamp is None or stamp != delivery.parameters.timer.timestamp.timestamp():
            return False
        del self._tombstones[slot]
        return True

    def _take_pending(self, queue_name: str, id_: str) -> bool:
        """Turn a pending id of this process into a tombstone; False if it is not pending."""
        pending = self._pending.get(queue_name)
        known = None if pending is None else pending.pop(id_, None)
        if known is None or known[1] <= time.time():
            return False
        self._tombstones[(queue_name, id_)] = known[0]
        if len(self._tombstones) > PENDING_LIMIT:  # consumed elsewhere, never seen here
            del self._tombstones[next(iter(self._tombstones))]
        return True
