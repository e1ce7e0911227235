from repid import Router, Worker

router = Router()
other_router = Router()


# --8<-- [start:actors]
@router.actor
async def first_actor() -> None: ...


@other_router.actor
async def second_actor() -> None: ...


# --8<-- [end:actors]


# --8<-- [start:snippet]
Worker(routers=[router, other_router])
# or
my_worker = Worker()
my_worker.include_router(router)
my_worker.include_router(other_router)
# --8<-- [end:snippet]
