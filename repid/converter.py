"""Converters turn a message payload into actor arguments and an actor's return value into JSON.

`DefaultConverter` validates arguments with pydantic from the actor's type hints (one compiled
validator per actor, built once); `BasicConverter` passes JSON values through unchecked.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NotRequired, Protocol, get_type_hints

from pydantic_core import SchemaValidator, ValidationError, core_schema, from_json

from repid.dependencies import find_injected_parameters
from repid.errors import ConfigurationError, RepidError
from repid.serializer import default_serializer

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "ArgumentsError",
    "BasicConverter",
    "ConverterT",
    "DefaultConverter",
    "OutputValidationError",
    "PydanticConverter",
]


class ArgumentsError(RepidError, ValueError):
    """The payload does not fit the actor's parameters (raised by converters)."""


class OutputValidationError(RepidError, ValueError):
    """An actor's return value does not fit its return annotation (`-> Out`)."""


_UNCHECKED_RETURNS: tuple[Any, ...] = (Any, object, None, type(None))


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


class _VarPositional:
    """How an actor with `*args` (and no `**kwargs`) receives a payload, as in repid 1.6: its
    named parameters by position, then the values of the other keys, in payload order."""

    __slots__ = ("before", "named")

    def __init__(self, params: list[inspect.Parameter]) -> None:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.before = [(p.name, p.default) for p in params if p.kind in kinds]
        self.named = {
            p.name
            for p in params
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }

    @staticmethod
    def of(params: list[inspect.Parameter]) -> _VarPositional | None:
        kinds = {p.kind for p in params}
        if inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD not in kinds:
            return _VarPositional(params)
        return None

    def split(self, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        args: list[Any] = []
        for name, default in self.before:
            if name in kwargs:
                args.append(kwargs.pop(name))
            elif default is not inspect.Parameter.empty:
                args.append(default)
            else:
                return args, kwargs  # a required one is missing: the call raises TypeError
        extra = [key for key in kwargs if key not in self.named]
        args.extend(kwargs.pop(key) for key in extra)
        return args, kwargs


class BasicConverter:
    """Decodes the JSON payload and passes the values through unchecked."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        params = _plain_parameters(fn)
        self._positional_only = _positional_only(params)
        self._var_positional = _VarPositional.of(params)

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        if not payload:
            return [], {}
        try:
            data = from_json(payload)
        except ValueError as exc:
            raise ArgumentsError(f"payload is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArgumentsError("payload must be a JSON object of keyword arguments")
        if self._var_positional is not None:
            return self._var_positional.split(data)
        if self._positional_only:
            return _split_positional(self._positional_only, data), data
        return [], data

    def convert_outputs(self, data: Any) -> str:
        return default_serializer(data)


_PLAIN_SCHEMAS: dict[Any, Callable[[], core_schema.CoreSchema]] = {
    int: core_schema.int_schema,
    str: core_schema.str_schema,
    float: core_schema.float_schema,
    bool: core_schema.bool_schema,
    Any: core_schema.any_schema,
}
"""Hints whose pydantic core schema is built here directly: exactly what pydantic generates for
them, without importing pydantic's schema generator (tens of milliseconds of a worker's start)."""


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
        self._var_positional = _VarPositional.of(self._params)
        self._no_params = not self._params
        self._fields: dict[str, tuple[Any, bool]] | None = None
        self._extra_allowed = any(
            p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
            for p in self._params
        )
        self._adapter: TypeAdapter[dict[str, Any]] | None = None
        self._validator: SchemaValidator | TypeAdapter[dict[str, Any]] | None = None
        self._return_hint: Any = None
        self._output: TypeAdapter[Any] | None = None
        self._output_ready = False
        with contextlib.suppress(ConfigurationError):  # retried at start-up and on first use
            self.prepare()

    @property
    def _name(self) -> str:
        return str(getattr(self.fn, "__name__", "actor"))

    def _resolve(self) -> dict[str, tuple[Any, bool]]:
        """Each argument's type hint and whether it is required."""
        if self._fields is not None:
            return self._fields
        try:
            hints = get_type_hints(self.fn, include_extras=True)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot resolve the type hints of actor function {self._name!r}: {exc!r}"
            ) from exc
        self._return_hint = hints.get("return")
        self._fields = {
            p.name: (hints.get(p.name, Any), p.default is inspect.Parameter.empty)
            for p in self._params
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }
        return self._fields

    def prepare(self) -> None:
        """Compile the validators; `ConfigurationError` if the type hints cannot be resolved."""
        if self._validator is not None:
            return
        fields = self._resolve()
        self._prepare_output()
        plain: dict[str, core_schema.TypedDictField] = {}
        for name, (hint, required) in fields.items():
            make = _PLAIN_SCHEMAS.get(hint) if isinstance(hint, type) or hint is Any else None
            if make is None:  # anything else: pydantic's own schema generation
                self._validator = self._build_adapter()
                return
            plain[name] = core_schema.typed_dict_field(make(), required=required)
        extra: Literal["allow", "forbid"] = "allow" if self._extra_allowed else "forbid"
        self._validator = SchemaValidator(
            core_schema.typed_dict_schema(plain, extra_behavior=extra),
            core_schema.CoreConfig(title=f"{self._name}_arguments", extra_fields_behavior=extra),
        )

    def _prepare_output(self) -> None:
        """Compile the validator of the return annotation (none for `None`, `Any`, `object`
        or no annotation: such results are stored as they are)."""
        if self._output_ready:
            return
        hint = self._return_hint
        if hint not in _UNCHECKED_RETURNS:
            from pydantic import ConfigDict, PydanticSchemaGenerationError, TypeAdapter

            adapter_of: Any = TypeAdapter
            try:
                try:
                    self._output = adapter_of(hint)
                except PydanticSchemaGenerationError:  # a plain class: an isinstance check
                    self._output = adapter_of(hint, config=ConfigDict(arbitrary_types_allowed=True))
            except Exception as exc:
                raise ConfigurationError(
                    f"actor function {self._name!r} has a return type pydantic cannot "
                    f"validate: {exc}"
                ) from exc
        self._output_ready = True

    @property
    def validates_output(self) -> bool:
        """Whether the actor's return value is checked against its annotation."""
        if not self._output_ready:
            self.prepare()
        return self._output is not None

    def validate_output(self, data: Any) -> Any:
        """`data` validated against the return annotation (`OutputValidationError` if it does
        not fit); returned unchanged when the actor has no checked return annotation."""
        if not self._output_ready:
            self.prepare()
        output = self._output
        if output is None:
            return data
        try:
            return output.validate_python(data)
        except ValidationError as exc:
            raise OutputValidationError(
                f"actor {self._name!r} returned a value that does not fit its return type: {exc}"
            ) from exc

    def _build_adapter(self) -> TypeAdapter[dict[str, Any]]:
        if self._adapter is not None:
            return self._adapter
        from pydantic import ConfigDict, TypeAdapter
        from typing_extensions import TypedDict

        name = self._name
        shape: Any = TypedDict(  # type: ignore[misc]
            f"{name}_arguments",
            {
                field: hint if required else NotRequired[hint]
                for field, (hint, required) in self._resolve().items()
            },
        )
        config = ConfigDict(extra="allow" if self._extra_allowed else "forbid")
        setattr(shape, "__pydantic_config__", config)  # noqa: B010 - pydantic reads it from the class
        adapter_of: Any = TypeAdapter  # the shape is built at run time: no static type to check
        try:
            self._adapter = adapter_of(shape)
        except Exception as exc:
            raise ConfigurationError(
                f"actor function {name!r} has parameter types pydantic cannot validate: {exc}"
            ) from exc
        assert self._adapter is not None
        return self._adapter

    @property
    def adapter(self) -> TypeAdapter[dict[str, Any]]:
        """The compiled validator of the arguments (e.g. for `adapter.json_schema()`)."""
        return self._build_adapter()

    def convert_inputs(self, payload: str) -> tuple[list[Any], dict[str, Any]]:
        if self._no_params and (not payload or payload == "{}"):
            return [], {}
        validator = self._validator
        if validator is None:
            self.prepare()
            validator = self._validator
            assert validator is not None
        try:
            kwargs: dict[str, Any] = validator.validate_json(payload or "{}")
        except ValidationError as exc:
            raise ArgumentsError(str(exc)) from exc
        if self._var_positional is not None:
            return self._var_positional.split(kwargs)
        if self._positional_only:
            return _split_positional(self._positional_only, kwargs), kwargs
        return [], kwargs

    def convert_outputs(self, data: Any) -> str:
        return default_serializer(data)


DefaultConverter = PydanticConverter
"""The converter actors use unless told otherwise."""
