"""Converters turn a message payload into actor arguments and an actor's return value into JSON.

`DefaultConverter` validates arguments with pydantic from the actor's type hints (one compiled
validator per actor, built once); `BasicConverter` passes JSON values through unchecked.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, NotRequired, Protocol, get_type_hints

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import from_json
from typing_extensions import TypedDict

from repid.dependencies import find_injected_parameters
from repid.errors import ConfigurationError, RepidError
from repid.serializer import default_serializer

__all__ = [
    "ArgumentsError",
    "BasicConverter",
    "ConverterT",
    "DefaultConverter",
    "PydanticConverter",
]


class ArgumentsError(RepidError, ValueError):
    """The payload does not fit the actor's parameters (raised by converters)."""


class ConverterT(Protocol):
    """Built once per actor from its function."""

    def __init__(self, fn: Callable[..., Any]) -> None: ...

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments for the actor (injected parameters excluded)."""
        ...

    def convert_outputs(self, data: Any) -> str:
        """JSON text of the actor's return value."""
        ...


def _plain_parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    depends, message_params = find_injected_parameters(fn)
    skip = set(depends) | set(message_params)
    return [p for p in inspect.signature(fn).parameters.values() if p.name not in skip]


def _split_positional(positional_only: list[tuple[str, Any]], kwargs: dict[str, Any]) -> list[Any]:
    """Take positional-only arguments out of `kwargs`, keeping every later one in its place."""
    args: list[Any] = []
    pending_defaults: list[Any] = []
    for name, default in positional_only:
        if name in kwargs:
            args.extend(pending_defaults)
            pending_defaults.clear()
            args.append(kwargs.pop(name))
        elif default is not inspect.Parameter.empty:
            pending_defaults.append(default)
        else:
            break  # missing required one: the call raises a clear TypeError
    return args


def _positional_only(params: list[inspect.Parameter]) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY]


class BasicConverter:
    """Decodes the JSON payload and passes the values through unchecked."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._positional_only = _positional_only(_plain_parameters(fn))

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        if not payload:
            return [], {}
        try:
            data = from_json(payload)
        except ValueError as exc:
            raise ArgumentsError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArgumentsError("payload must be a JSON object of keyword arguments")
        if self._positional_only:
            return _split_positional(self._positional_only, data), data
        return [], data

    def convert_outputs(self, data: Any) -> str:
        return default_serializer(data)


class PydanticConverter:
    """Validates and converts arguments with pydantic, from the function's type hints.

    The validator is compiled once. If a type hint cannot be resolved yet (a forward reference
    to a class defined later), compiling waits until first use; `prepare()` (called by
    `Worker.run`) raises `ConfigurationError` if it still cannot be resolved then, so a typo
    in a hint never silently turns validation off.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self._params = _plain_parameters(fn)
        self._positional_only = _positional_only(self._params)
        self._no_params = not self._params
        self._adapter: TypeAdapter[dict[str, Any]] | None = None
        with contextlib.suppress(ConfigurationError):  # retried at start-up and on first use
            self.prepare()

    def prepare(self) -> None:
        """Compile the validator; `ConfigurationError` if the type hints cannot be resolved."""
        if self._adapter is not None:
            return
        fn = self.fn
        name = getattr(fn, "__name__", "actor")
        try:
            hints = get_type_hints(fn, include_extras=True)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot resolve the type hints of actor function {name!r}: {exc!r}"
            ) from exc
        extra_allowed = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self._params)
        fields: dict[str, Any] = {}
        for p in self._params:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            annotation = hints.get(p.name, Any)
            fields[p.name] = (
                annotation if p.default is inspect.Parameter.empty else NotRequired[annotation]
            )
        shape: Any = TypedDict(f"{name}_arguments", fields)  # type: ignore[misc]
        config = ConfigDict(extra="allow" if extra_allowed else "forbid")
        setattr(shape, "__pydantic_config__", config)  # noqa: B010 - pydantic reads it from the class
        adapter_of: Any = TypeAdapter  # the shape is built at run time: no static type to check
        try:
            self._adapter = adapter_of(shape)
        except Exception as exc:
            raise ConfigurationError(
                f"actor function {name!r} has parameter types pydantic cannot validate: {exc}"
            ) from exc

    @property
    def adapter(self) -> TypeAdapter[dict[str, Any]]:
        """The compiled validator of the arguments (e.g. for `adapter.json_schema()`)."""
        self.prepare()
        assert self._adapter is not None
        return self._adapter

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        if self._no_params and (not payload or payload == "{}"):
            return [], {}
        adapter = self._adapter
        if adapter is None:
            self.prepare()
            adapter = self._adapter
            assert adapter is not None
        try:
            kwargs = adapter.validate_json(payload or "{}")
        except ValidationError as exc:
            raise ArgumentsError(str(exc)) from exc
        if self._positional_only:
            return _split_positional(self._positional_only, kwargs), kwargs
        return [], kwargs

    def convert_outputs(self, data: Any) -> str:
        return default_serializer(data)


DefaultConverter = PydanticConverter
"""The converter actors use unless told otherwise."""
