"""`Router`, `RouterDefaults`, the `actor` decorator and retry policies; the converters that turn a
payload into actor arguments (`DefaultConverter`/`PydanticConverter`, `BasicConverter`) and an
actor's return value into JSON.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import pytest
from _worker_helpers import magic_app, running, wait_until
from pydantic import BaseModel, Field

from repid import (
    BasicConverter,
    ConfigurationError,
    Connection,
    DefaultConverter,
    Depends,
    InMemoryMessageBroker,
    Job,
    MessageDependency,
    PydanticConverter,
    Queue,
    Router,
    RouterDefaults,
    SerializationError,
    Worker,
    default_retry_policy_factory,
)
from repid.converter import ArgumentsError
from repid.retry_policy import retry_delay

# -- router and the actor decorator ----------------------------------------------------------


def no_retry(_n: int = 1) -> timedelta:
    return timedelta(0)


async def sample_actor(x: int) -> int:
    return x


def test_bare_decorator_registers_and_returns_the_function() -> None:
    router = Router()
    assert router.actor(sample_actor) is sample_actor
    actor = router.actors["sample_actor"]
    assert actor.fn is sample_actor
    assert actor.name == "sample_actor"
    assert actor.queue == "default"
    assert actor.run_in_process is False
    assert actor.is_async
    assert isinstance(actor.converter, DefaultConverter)


def test_decorator_with_arguments() -> None:
    router = Router()

    @router.actor(
        name="renamed",
        queue="other_queue",
        retry_policy=no_retry,
        run_in_process=True,
        converter=BasicConverter,
    )
    def original_name(x: int) -> int:
        return x

    assert original_name(3) == 3  # still the plain function
    assert "original_name" not in router.actors
    actor = router.actors["renamed"]
    assert actor.fn is original_name
    assert actor.queue == "other_queue"
    assert actor.retry_policy is no_retry
    assert actor.run_in_process is True
    assert not actor.is_async
    assert isinstance(actor.converter, BasicConverter)


def test_decorator_with_empty_parentheses() -> None:
    router = Router()

    @router.actor()
    async def plain() -> None:
        pass

    assert router.actors["plain"].fn is plain


@pytest.mark.parametrize("name", ["1abc", "has space", "a.b", "ünï", "-x"])
def test_invalid_actor_name_raises_value_error(name: str) -> None:
    router = Router()
    with pytest.raises(ValueError, match="actor name"):
        router.actor(name=name)(sample_actor)
    assert router.actors == {}


@pytest.mark.parametrize("queue", ["1abc", "has space", "a/b"])
def test_invalid_queue_name_raises_value_error(queue: str) -> None:
    with pytest.raises(ValueError, match="queue name"):
        Router().actor(queue=queue)(sample_actor)
    with pytest.raises(ValueError, match="queue name"):
        Router(defaults=RouterDefaults(queue=queue)).actor(sample_actor)


def test_router_defaults_apply_and_actor_arguments_win() -> None:
    defaults = RouterDefaults(
        queue="bulk", retry_policy=no_retry, run_in_process=True, converter=BasicConverter
    )
    router = Router(defaults=defaults)

    @router.actor
    def inherits() -> None:
        pass

    @router.actor(queue="urgent", run_in_process=False, converter=PydanticConverter)
    def overrides() -> None:
        pass

    inherited = router.actors["inherits"]
    assert inherited.queue == "bulk"
    assert inherited.retry_policy is no_retry
    assert inherited.run_in_process is True
    assert isinstance(inherited.converter, BasicConverter)
    overridden = router.actors["overrides"]
    assert overridden.queue == "urgent"
    assert overridden.run_in_process is False
    assert isinstance(overridden.converter, PydanticConverter)
    assert router.topics_by_queue == {
        "bulk": frozenset({"inherits"}),
        "urgent": frozenset({"overrides"}),
    }


def test_router_defaults_values() -> None:
    defaults = RouterDefaults()
    assert defaults.queue == "default"
    assert defaults.run_in_process is False
    assert defaults.converter is DefaultConverter
    assert retry_delay(defaults.retry_policy, 1) == timedelta(seconds=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.queue = "x"  # type: ignore[misc]


def test_worker_router_defaults_apply_to_its_own_actors() -> None:
    worker = Worker(router_defaults=RouterDefaults(queue="mine"))
    worker.actor(sample_actor)
    assert worker.actors["sample_actor"].queue == "mine"
    assert worker.queues == ["mine"]


def test_include_router_merges_and_later_names_override() -> None:
    first, second = Router(), Router()

    @first.actor(name="shared")
    async def first_shared() -> None:
        pass

    @first.actor
    async def only_first() -> None:
        pass

    @second.actor(name="shared")
    async def second_shared() -> None:
        pass

    first.include_router(second)
    assert set(first.actors) == {"shared", "only_first"}
    assert first.actors["shared"].fn is second_shared


def test_default_retry_policy_formula() -> None:
    policy = default_retry_policy_factory()
    assert policy(1) == timedelta(seconds=10)  # max(10, 5 * 2)
    assert policy(2) == timedelta(seconds=20)
    assert policy(5) == timedelta(seconds=160)
    assert policy(15) == timedelta(seconds=86400)  # capped by max_backoff
    assert policy(10_000) == timedelta(seconds=86400)  # the exponent is capped: no overflow
    custom = default_retry_policy_factory(
        min_backoff=1, max_backoff=100, multiplier=2, max_exponent=3
    )
    assert custom(0) == timedelta(seconds=2)
    assert custom(3) == timedelta(seconds=16)
    assert custom(50) == timedelta(seconds=16)  # 2 * 2**3


def test_retry_policy_validation_and_plain_callables() -> None:
    with pytest.raises(ValueError):
        default_retry_policy_factory(min_backoff=10, max_backoff=5)
    assert retry_delay(lambda n=1: n * 2, 3) == timedelta(seconds=6)  # seconds accepted
    assert retry_delay(lambda n=1: -5, 1) == timedelta(0)  # never negative
    with pytest.raises(TypeError):
        retry_delay(lambda n=1: "soon", 1)  # type: ignore[arg-type,return-value]


# -- DefaultConverter / PydanticConverter ----------------------------------------------------


class Address(BaseModel):
    city: str
    zip_code: str = Field(pattern=r"^\d{5}$")


@dataclasses.dataclass
class Point:
    x: int
    y: int


def call(fn: Any, payload: str, converter: type = DefaultConverter) -> Any:
    """Convert `payload` for `fn` and call it, as the worker does."""
    args, kwargs = converter(fn).convert_inputs(payload)
    return fn(*args, **kwargs)


def test_default_converter_is_pydantic() -> None:
    assert DefaultConverter is PydanticConverter


def test_types_are_coerced_from_json() -> None:
    def typed(
        count: int, ratio: float, when: datetime, day: date, price: Decimal, ref: UUID
    ) -> tuple[Any, ...]:
        return count, ratio, when, day, price, ref

    result = call(
        typed,
        '{"count": "5", "ratio": 1, "when": "2030-01-02T03:04:05Z", "day": "2030-01-02",'
        ' "price": "9.99", "ref": "12345678-1234-5678-1234-567812345678"}',
    )
    assert result == (
        5,
        1.0,
        datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        date(2030, 1, 2),
        Decimal("9.99"),
        UUID("12345678-1234-5678-1234-567812345678"),
    )
    assert type(result[1]) is float


def test_defaults_apply_when_args_are_missing() -> None:
    def with_defaults(a: int, b: int = 10, c: str | None = None) -> tuple[Any, ...]:
        return a, b, c

    assert call(with_defaults, '{"a": 1}') == (1, 10, None)
    assert call(with_defaults, '{"a": 1, "c": null}') == (1, 10, None)
    assert call(with_defaults, '{"a": 1, "b": 2, "c": "x"}') == (1, 2, "x")


def test_constraints_in_annotated_are_enforced() -> None:
    def positive(n: Annotated[int, Field(gt=0)]) -> int:
        return n

    assert call(positive, '{"n": 3}') == 3
    with pytest.raises(ArgumentsError, match="greater than 0"):
        DefaultConverter(positive).convert_inputs('{"n": 0}')


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ('{"a": "abc"}', "a"),
        ("{}", "a"),
        ("", "a"),
        ('{"a": 1, "zzz": 2}', "zzz"),
        ("not json", "JSON"),
        ("[1, 2]", "dict"),
    ],
)
def test_invalid_payloads_raise_arguments_error(payload: str, complaint: str) -> None:
    def strict(a: int) -> int:
        return a

    with pytest.raises(ArgumentsError, match=complaint) as caught:
        DefaultConverter(strict).convert_inputs(payload)
    assert isinstance(caught.value, ValueError)


def test_positional_only_parameters_are_passed_positionally() -> None:
    def mixed(a: int, /, b: int, *, c: int) -> tuple[int, int, int]:
        return a, b, c

    args, kwargs = DefaultConverter(mixed).convert_inputs('{"a": "1", "b": 2, "c": 3}')
    assert args == [1]
    assert kwargs == {"b": 2, "c": 3}
    assert mixed(*args, **kwargs) == (1, 2, 3)


@pytest.mark.parametrize("converter", [DefaultConverter, BasicConverter])
def test_omitted_positional_only_default_does_not_shift_arguments(converter: type) -> None:
    def both_optional(a: int = 1, b: int = 2, /) -> tuple[int, int]:
        return a, b

    assert call(both_optional, '{"b": 5}', converter) == (1, 5)


def test_var_keyword_accepts_extra_arguments() -> None:
    def open_ended(a: int, **extra: Any) -> tuple[int, dict[str, Any]]:
        return a, extra

    assert call(open_ended, '{"a": "1", "x": [1, 2], "y": {"z": null}}') == (
        1,
        {"x": [1, 2], "y": {"z": None}},
    )


def test_var_positional_is_ignored() -> None:
    def with_star(a: int, *rest: int) -> tuple[int, tuple[int, ...]]:
        return a, rest

    assert call(with_star, '{"a": 1}') == (1, ())


def test_unannotated_parameters_accept_any_json() -> None:
    def untyped(a, b=2):  # type: ignore[no-untyped-def]
        return a, b

    assert call(untyped, '{"a": {"k": [1]}}') == ({"k": [1]}, 2)


def test_pydantic_model_parameter_receives_a_validated_instance() -> None:
    def ship(address: Address, point: Point) -> tuple[Address, Point]:
        return address, point

    address, point = call(
        ship, '{"address": {"city": "Oslo", "zip_code": "01234"}, "point": {"x": "1", "y": 2}}'
    )
    assert isinstance(address, Address)
    assert address == Address(city="Oslo", zip_code="01234")
    assert isinstance(point, Point)
    assert point == Point(1, 2)
    with pytest.raises(ArgumentsError, match="zip_code"):
        DefaultConverter(ship).convert_inputs(
            '{"address": {"city": "Oslo", "zip_code": "bad"}, "point": {"x": 1, "y": 2}}'
        )
    with pytest.raises(ArgumentsError, match="y"):
        DefaultConverter(ship).convert_inputs(
            '{"address": {"city": "Oslo", "zip_code": "01234"}, "point": {"x": 1}}'
        )


def load_settings() -> str:
    return "settings"


def test_injected_parameters_are_not_validated_from_the_payload() -> None:
    def injected(
        a: int,
        settings: Annotated[str, Depends(load_settings)],
        message: MessageDependency,
    ) -> None:
        pass

    for converter in (DefaultConverter, BasicConverter):
        args, kwargs = converter(injected).convert_inputs('{"a": 1}')
        assert (args, kwargs) == ([], {"a": 1})


def test_actor_without_parameters_accepts_no_payload() -> None:
    def nothing() -> str:
        return "ok"

    converter = DefaultConverter(nothing)
    assert converter.convert_inputs("") == ([], {})
    assert converter.convert_inputs("{}") == ([], {})
    with pytest.raises(ArgumentsError):
        converter.convert_inputs('{"unexpected": 1}')


def test_unresolvable_annotation_does_not_silently_disable_validation() -> None:
    def forward_ref(a: int, b: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    converter = DefaultConverter(forward_ref)  # a later-defined class may still resolve
    with pytest.raises(ConfigurationError, match="NotDefinedAnywhere"):
        converter.convert_inputs('{"a": "abc", "b": 1}')


async def test_unresolvable_annotation_fails_worker_start_up() -> None:
    def forward_ref(a: int, b: NotDefinedAnywhere) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    worker = Worker(handle_signals=[], _connection=Connection(InMemoryMessageBroker()))
    worker.actor(forward_ref)
    with pytest.raises(ConfigurationError, match="forward_ref"):
        await worker.run()


# -- BasicConverter --------------------------------------------------------------------------


def test_basic_converter_passes_json_values_through() -> None:
    def anything(a: int, b: Address) -> tuple[Any, Any]:
        return a, b

    converter = BasicConverter(anything)
    args, kwargs = converter.convert_inputs('{"a": "not an int", "b": {"city": 1}, "c": 3}')
    assert args == []
    assert kwargs == {"a": "not an int", "b": {"city": 1}, "c": 3}
    assert converter.convert_inputs("") == ([], {})


@pytest.mark.parametrize("payload", ["not json", "[1]", '"str"', "3"])
def test_basic_converter_requires_a_json_object(payload: str) -> None:
    with pytest.raises(ArgumentsError):
        BasicConverter(sample_actor).convert_inputs(payload)


def test_basic_converter_positional_only() -> None:
    def pos(a, /, b):  # type: ignore[no-untyped-def]
        return a, b

    assert call(pos, '{"a": 1, "b": 2}', BasicConverter) == (1, 2)


# -- outputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("converter", [DefaultConverter, BasicConverter])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (42, "42"),
        ("text", '"text"'),
        ({"a": [1, 2.5, True]}, '{"a":[1,2.5,true]}'),
        (Address(city="Oslo", zip_code="01234"), '{"city":"Oslo","zip_code":"01234"}'),
        (Point(1, 2), '{"x":1,"y":2}'),
        (datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), '"2030-01-02T03:04:05Z"'),
        (timedelta(minutes=2), '"PT2M"'),
        (
            {"nested": [Address(city="A", zip_code="00000")]},
            '{"nested":[{"city":"A","zip_code":"00000"}]}',
        ),
    ],
)
def test_convert_outputs_serialises_to_json(converter: type, value: Any, expected: str) -> None:
    assert converter(sample_actor).convert_outputs(value) == expected


def test_convert_outputs_of_unserialisable_value_raises_type_error() -> None:
    with pytest.raises(TypeError) as caught:
        DefaultConverter(sample_actor).convert_outputs(object())
    assert isinstance(caught.value, SerializationError)


# -- through a worker ------------------------------------------------------------------------


async def test_worker_passes_validated_model_instances_to_the_actor() -> None:
    async with magic_app():
        await Queue().declare()
        worker = Worker(handle_signals=[])
        received: list[tuple[Address, Point, int]] = []

        @worker.actor
        async def deliver(address: Address, point: Point, attempts: int = 1) -> None:
            received.append((address, point, attempts))

        await Job(
            "deliver",
            args={"address": Address(city="Oslo", zip_code="01234"), "point": Point(3, 4)},
        ).enqueue()
        async with running(worker):
            await wait_until(lambda: len(received) == 1, what="the actor")
    assert received == [(Address(city="Oslo", zip_code="01234"), Point(3, 4), 1)]


async def test_worker_with_basic_converter_passes_raw_json() -> None:
    async with magic_app():
        await Queue().declare()
        worker = Worker(handle_signals=[])
        received: list[Any] = []

        @worker.actor(converter=BasicConverter)
        async def raw(point: Point) -> None:
            received.append(point)

        await Job("raw", args={"point": Point(3, 4)}).enqueue()
        async with running(worker):
            await wait_until(lambda: len(received) == 1, what="the actor")
    assert received == [{"x": 3, "y": 4}]
