"""An app module for the asyncapi / enqueue tests: `app` plus routers with typed actors."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel

from repid import BasicConverter, Connection, InMemoryMessageBroker, Repid, Router

app = Repid(Connection(InMemoryMessageBroker()))
orders = Router()
mail = Router()


class Currency(Enum):
    EUR = "EUR"
    USD = "USD"


class Line(BaseModel):
    sku: str
    quantity: int = 1


class Order(BaseModel):
    id: int
    lines: list[Line]
    currency: Currency = Currency.EUR


@orders.actor(queue="orders")
async def place_order(order: Order, placed_at: datetime, note: str | None = None) -> int:
    """Place an order.

    The rest of the docstring is not part of the summary.
    """
    return order.id


@orders.actor(queue="orders")
def cancel_order(order_id: int, /, reason: str = "") -> None:
    """Cancel an order."""


@mail.actor(queue="mail", converter=BasicConverter)
async def send_mail(**fields: object) -> None:
    pass


def routers() -> list[Router]:
    return [orders, mail]
