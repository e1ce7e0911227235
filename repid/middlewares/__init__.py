"""Middlewares: objects with `before_<event>` / `after_<event>` methods called around events.

Events: consume, enqueue, queue_declare, queue_flush, queue_delete, ack, nack, reject, requeue,
get_bucket, store_bucket, delete_bucket, actor_run. A handler receives only the event arguments
its signature names (or all of them with `**kwargs`); `after_*` handlers may also take `result`
and `exception` (None on success; for broker calls, the error they raised before it propagates;
for `actor_run`, whatever ended the run: the actor's exception, a timeout, a cancellation...).
`before_actor_run`/`after_actor_run` also receive the `delivery`.
An exception in a middleware is logged and swallowed: it never breaks processing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "EVENTS",
    "MiddlewareDispatcher",
    "instrument_bucket_broker",
    "instrument_message_broker",
]

logger = logging.getLogger("repid.middlewares")

EVENTS = (
    "consume",
    "enqueue",
    "queue_declare",
    "queue_flush",
    "queue_delete",
    "ack",
    "nack",
    "reject",
    "requeue",
    "get_bucket",
    "store_bucket",
    "delete_bucket",
    "actor_run",
)


class _Handler:
    __slots__ = ("fn", "is_async", "names")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        params = inspect.signature(fn).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            self.names: frozenset[str] | None = None
        else:
            self.names = frozenset(p.name for p in params)


class MiddlewareDispatcher:
    """Calls the middlewares' handlers of each event."""

    def __init__(self, middlewares: Iterable[Any] = ()) -> None:
        self.middlewares = list(middlewares)
        self._handlers: dict[str, list[_Handler]] = {}
        for middleware in self.middlewares:
            for event in EVENTS:
                for phase in ("before", "after"):
                    fn = getattr(middleware, f"{phase}_{event}", None)
                    if callable(fn):
                        self._handlers.setdefault(f"{phase}_{event}", []).append(_Handler(fn))

    def __bool__(self) -> bool:
        return bool(self._handlers)

    def handles(self, event: str) -> bool:
        return f"before_{event}" in self._handlers or f"after_{event}" in self._handlers

    async def emit(self, signal: str, **kwargs: Any) -> None:
        """Call every handler of `signal` (e.g. "before_enqueue") with the arguments it names."""
        for handler in self._handlers.get(signal, ()):
            call_kwargs = (
                kwargs
                if handler.names is None
                else {k: v for k, v in kwargs.items() if k in handler.names}
            )
            try:
                result = handler.fn(**call_kwargs)
                if handler.is_async or inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("middleware %s raised; ignored", signal)


class _InstrumentedConsumer:
    def __init__(self, consumer: Any, dispatcher: MiddlewareDispatcher) -> None:
        self._consumer = consumer
        self._dispatcher = dispatcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    async def _consumed(self, delivery: Any) -> None:
        await self._dispatcher.emit(
            "after_consume",
            result=delivery,
            key=delivery.key,
            payload=delivery.payload,
            params=delivery.parameters,
        )

    async def consume(self) -> Any:
        await self._dispatcher.emit("before_consume")
        delivery = await self._consumer.consume()
        await self._consumed(delivery)
        return delivery

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Any]:
        await self._dispatcher.emit("before_consume")
        batch: list[Any] = await self._consumer.fetch(max_count, timeout)
        for delivery in batch:
            await self._consumed(delivery)
        return batch

    async def __aenter__(self) -> _InstrumentedConsumer:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.finish()

    def __aiter__(self) -> Any:
        return self._iterate()

    async def _iterate(self) -> Any:
        from repid.errors import ConsumerClosedError

        while True:
            try:
                yield await self.consume()
            except ConsumerClosedError:
                return


class _InstrumentedMessageBroker:
    """Wraps a message broker so each call emits its middleware events."""

    def __init__(self, broker: Any, dispatcher: MiddlewareDispatcher) -> None:
        self._broker = broker
        self._dispatcher = dispatcher

    @property
    def wrapped(self) -> Any:
        return self._broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def _call(self, event: str, method: str, /, **kwargs: Any) -> Any:
        await self._dispatcher.emit(f"before_{event}", **kwargs)
        try:
            result = await getattr(self._broker, method)(**kwargs)
        except BaseException as exc:  # cancellation too: every before_ gets its after_
            await self._dispatcher.emit(f"after_{event}", result=None, exception=exc, **kwargs)
            raise
        await self._dispatcher.emit(f"after_{event}", result=result, exception=None, **kwargs)
        return result

    async def enqueue(self, key: Any, payload: str = "", params: Any = None) -> None:
        await self._call("enqueue", "enqueue", key=key, payload=payload, params=params)

    async def enqueue_many(self, messages: Sequence[Any]) -> None:
        for key, payload, params in messages:
            await self._dispatcher.emit("before_enqueue", key=key, payload=payload, params=params)
        failure: BaseException | None = None
        try:
            await self._broker.enqueue_many(messages)
        except BaseException as exc:
            failure = exc
        for key, payload, params in messages:
            await self._dispatcher.emit(
                "after_enqueue",
                result=None,
                exception=failure,
                key=key,
                payload=payload,
                params=params,
            )
        if failure is not None:
            raise failure

    async def ack(self, key: Any) -> Any:
        return await self._call("ack", "ack", key=key)

    async def nack(self, key: Any, parameters: Any = None) -> Any:
        return await self._call("nack", "nack", key=key, parameters=parameters)

    async def reject(self, key: Any) -> Any:
        return await self._call("reject", "reject", key=key)

    async def requeue(self, key: Any, payload: Any = None, params: Any = None) -> Any:
        return await self._call("requeue", "requeue", key=key, payload=payload, params=params)

    async def queue_declare(self, queue_name: str) -> None:
        await self._call("queue_declare", "queue_declare", queue_name=queue_name)

    async def queue_flush(self, queue_name: str) -> None:
        await self._call("queue_flush", "queue_flush", queue_name=queue_name)

    async def queue_delete(self, queue_name: str) -> None:
        await self._call("queue_delete", "queue_delete", queue_name=queue_name)

    def get_consumer(self, *args: Any, **kwargs: Any) -> Any:
        return _InstrumentedConsumer(self._broker.get_consumer(*args, **kwargs), self._dispatcher)


class _InstrumentedBucketBroker:
    def __init__(self, broker: Any, dispatcher: MiddlewareDispatcher) -> None:
        self._broker = broker
        self._dispatcher = dispatcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    async def _call(self, event: str, /, **kwargs: Any) -> Any:
        await self._dispatcher.emit(f"before_{event}", **kwargs)
        try:
            result = await getattr(self._broker, event)(**kwargs)
        except BaseException as exc:
            await self._dispatcher.emit(f"after_{event}", result=None, exception=exc, **kwargs)
            raise
        await self._dispatcher.emit(f"after_{event}", result=result, exception=None, **kwargs)
        return result

    async def get_bucket(self, id_: str) -> Any:
        return await self._call("get_bucket", id_=id_)

    async def store_bucket(self, id_: str, payload: Any) -> None:
        await self._call("store_bucket", id_=id_, payload=payload)

    async def delete_bucket(self, id_: str) -> None:
        await self._call("delete_bucket", id_=id_)


def instrument_message_broker(broker: Any, dispatcher: MiddlewareDispatcher) -> Any:
    """The broker itself when there are no middlewares (zero cost), else an emitting wrapper."""
    return _InstrumentedMessageBroker(broker, dispatcher) if dispatcher else broker


def instrument_bucket_broker(broker: Any, dispatcher: MiddlewareDispatcher) -> Any:
    if broker is None or not dispatcher:
        return broker
    return _InstrumentedBucketBroker(broker, dispatcher)
