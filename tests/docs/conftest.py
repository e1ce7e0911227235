"""Fixtures of the documentation tests (helpers live in `docs_helpers.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import repid


@pytest.fixture(autouse=True)
def fresh_default_connection() -> Iterator[None]:
    """Each example starts without a default connection and leaves none behind."""
    repid.Repid.set_magic_connection(None)
    yield
    repid.Repid.set_magic_connection(None)


class Recorder:
    """The instances of a repid class created while an example ran."""

    def __init__(self) -> None:
        self.instances: list[Any] = []


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Recorder]:
    """`record("Job")` swaps `repid.Job` for a subclass that remembers its instances."""

    def install(name: str) -> Recorder:
        recorder = Recorder()
        original = getattr(repid, name)

        class Recording(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                recorder.instances.append(self)

        Recording.__name__ = Recording.__qualname__ = original.__name__
        monkeypatch.setattr(repid, name, Recording)
        return recorder

    return install
