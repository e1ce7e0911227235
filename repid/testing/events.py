"""Recording of the broker-level events of a test app (the `repid_get_event_log` fixture)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from repid.middlewares import EVENTS

__all__ = ["EventRecorder", "RecordedEvent"]


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One middleware event seen by an `EventRecorder`.

    Attributes:
        event: the event, e.g. `"enqueue"`, `"actor_run"`, `"ack"` (see `repid.middlewares`).
        phase: `"before"` or `"after"` the operation.
        arguments: the keyword arguments the event was emitted with (e.g. `key`, `payload`,
            `params` for enqueue; `actor`, `args`, `kwargs` for actor_run); `after_*` events also
            carry `result`.

    Example:
        ```python
        log = repid_get_event_log()
        assert [e.name for e in log if e.event == "ack"] == ["before_ack", "after_ack"]
        ```
    """

    event: str
    phase: Literal["before", "after"]
    arguments: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The full signal name, e.g. `"before_enqueue"`."""
        return f"{self.phase}_{self.event}"

    @property
    def result(self) -> Any:
        """What the operation returned (`after_*` events only; None otherwise)."""
        return self.arguments.get("result")

    def __getitem__(self, argument: str) -> Any:
        """Shortcut for `arguments[argument]`."""
        return self.arguments[argument]


class EventRecorder:
    """A middleware that records every event (`before_*` and `after_*` of each of
    `repid.middlewares.EVENTS`) as a `RecordedEvent`, in the order they happen.

    Pass it to `Repid(connection, middlewares=[recorder])`; the test plugin installs one in every
    test app. With the test broker an actor runs *inside* `enqueue`, so its events come between
    `before_enqueue` and `after_enqueue`.
    """

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        for event in EVENTS:
            setattr(self, f"before_{event}", self._handler(event, "before"))
            setattr(self, f"after_{event}", self._handler(event, "after"))

    def _handler(self, event: str, phase: Literal["before", "after"]) -> Callable[..., None]:
        def record(**arguments: Any) -> None:
            self.events.append(RecordedEvent(event, phase, dict(arguments)))

        record.__name__ = f"{phase}_{event}"
        return record

    def get(self, name: str | None = None) -> list[RecordedEvent]:
        """The recorded events (a copy), optionally only those of one event or signal.

        Args:
            name: an event (`"enqueue"`: both phases) or a signal (`"after_enqueue"`).
        """
        if name is None:
            return list(self.events)
        return [e for e in self.events if name in (e.event, e.name)]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        self.events.clear()
