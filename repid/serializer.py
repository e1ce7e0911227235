"""Turning job arguments and actor results into JSON text.

pydantic models, dataclasses, datetimes, timedeltas, UUIDs, sets and enums serialise out of the box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from repid.errors import SerializationError

__all__ = ["Config", "SerializerT", "default_serializer", "is_args_model", "serialize_args"]

SerializerT = Callable[[Any], str]
"""Turns a Python value into JSON text."""


def default_serializer(data: Any) -> str:
    """Serialise `data` to JSON text; raise `SerializationError` (a `TypeError`) if impossible."""
    try:
        return to_json(data).decode()
    except PydanticSerializationError as exc:
        raise SerializationError(f"cannot serialise {type(data).__name__}: {exc}") from exc


def is_args_model(args: object) -> bool:
    """A pydantic model or dataclass instance given as a job's whole argument set (1.6)."""
    if isinstance(args, type):
        return False
    return dataclasses.is_dataclass(args) or callable(getattr(args, "model_dump", None))


def serialize_args(args: Any, serializer: SerializerT = default_serializer) -> str:
    """Serialise a job's keyword arguments, naming the argument that cannot be serialised.

    `args` is a mapping of keyword arguments, or a pydantic model or dataclass instance whose
    fields are the keyword arguments (repid 1.6).
    """
    if type(args) is dict:  # the common case: no model check needed
        if serializer is default_serializer:
            try:
                return to_json(args).decode()  # `default_serializer` inlined
            except PydanticSerializationError:
                pass  # the general path below raises the explained error
        try:
            return serializer(args)
        except (SerializationError, TypeError, ValueError) as exc:
            raise _explained(args, serializer, exc) from exc
    if is_args_model(args):
        text = serializer(args)
        if not text.startswith("{"):
            raise SerializationError(
                f"job args {type(args).__name__} must serialise to a JSON object, got {text[:40]}"
            )
        return text
    if type(args) is not dict and not isinstance(args, Mapping):
        raise SerializationError(
            "job args must be a mapping of keyword arguments (or a pydantic model or dataclass "
            f"instance), not {type(args).__name__}"
        )
    try:
        return serializer(args)
    except (SerializationError, TypeError, ValueError) as exc:
        raise _explained(args, serializer, exc) from exc


def _explained(args: Mapping[Any, Any], serializer: SerializerT, exc: Exception) -> Exception:
    """The error naming the argument of `args` that `serializer` cannot serialise."""
    for name, value in args.items():
        if not isinstance(name, str):
            return SerializationError(f"job argument names must be strings, got {name!r}")
        try:
            serializer(value)
        except (SerializationError, TypeError, ValueError):
            return SerializationError(
                f"job argument {name!r} of type {type(value).__name__} cannot be serialised to JSON"
            )
    return SerializationError(f"job args cannot be serialised: {exc}")


class Config:
    """Process-wide settings (repid 1.6 name).

    `SERIALIZER` turns job arguments into JSON text for every `Job` created without its own
    `serializer=`; set it once at start-up to change the default.
    """

    SERIALIZER: SerializerT = default_serializer
