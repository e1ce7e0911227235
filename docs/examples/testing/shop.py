from repid import Job, MessageDependency, Router

router = Router()


@router.actor
async def place_order(order_id: int, email: str) -> str:
    await Job("send_confirmation", args={"email": email}).enqueue()
    return f"order-{order_id}"


@router.actor
async def send_confirmation(email: str) -> None:
    print(f"To {email}: your order is confirmed")


@router.actor(queue="billing")
async def charge(amount: int) -> None:
    if amount <= 0:
        raise ValueError("amount must be positive")


@router.actor
async def notify_warehouse(order_id: int, message: MessageDependency) -> str:
    if message.parameters.attempt == 1:
        raise ConnectionError("warehouse API unavailable")
    return f"warehouse notified of order {order_id}"
