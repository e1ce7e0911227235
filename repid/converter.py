"""Converters turn a message payload into actor arguments and an actor's return value into JSON.

`DefaultConverter` validates arguments with pydantic from the actor's type hints (one compiled
validator per actor, built once); `BasicConverter` passes JSON values through unchecked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NotRequired, Protocol, get_type_hints

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic_core import from_json
from typing_extensions import TypedDict

from repid.dependencies import find_injected_parameters
from repid.serializer import default_serializer

__all__ = [
    "ArgumentsError",
    "BasicConverter",
    "ConverterT",
    "DefaultConverter",
    "PydanticConverter",
]


class ArgumentsError(ValueError):
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


class BasicConverter:
    """Decodes the JSON payload and passes the values through unchecked."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        params = _plain_parameters(fn)
        self._positional_only = [
            p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY
        ]

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        if not payload:
            return [], {}
        try:
            data = from_json(payload)
        except ValueError as exc:
            raise ArgumentsError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArgumentsError("payload must be a JSON object of keyword arguments")
        args = [data.pop(name) for name in self._positional_only if name in data]
        return args, data

    def convert_outputs(self, data: Any) -> str:
        return default_serializer(data)


class PydanticConverter:
    """Validates and converts arguments with pydantic, from the function's type hints."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        params = _plain_parameters(fn)
        self._positional_only = [
            p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY
        ]
        self._no_params = not params
        try:
            hints = get_type_hints(fn, include_extras=True)
        except Exception:
            hints = {}
        extra_allowed = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        name = f"{getattr(fn, '__name__', 'actor')}_arguments"
        fields: dict[str, Any] = {}
        for p in params:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            annotation = hints.get(p.name, Any)
            fields[p.name] = (
                annotation if p.default is inspect.Parameter.empty else NotRequired[annotation]
            )
        shape: Any = TypedDict(name, fields)  # type: ignore[misc]
        config = ConfigDict(extra="allow" if extra_allowed else "forbid")
        setattr(shape, "__pydantic_config__", config)  # noqa: B010 - pydantic reads it from the class
        self._adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(shape)

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        if self._no_params and (not payload or payload == "{}"):
            return [], {}
        try:
            kwargs = self._adapter.validate_json(payload or "{}")
        except ValidationError as exc:
            raise ArgumentsError(str(exc)) from exc
        if self._positional_only:
            return [kwargs.pop(name) for name in self._positional_only if name in kwargs], kwargs
        return [], kwargs

    def convert_outputs(self, data: Any) -> str:
        return default_serializer(data)


DefaultConverter = PydanticConverter
"""The converter actors use unless told otherwise."""
