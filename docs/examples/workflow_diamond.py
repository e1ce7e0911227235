import asyncio

import pydantic

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Queue,
    Repid,
    Router,
    Worker,
)
from repid.cli.workflows import render
from repid.workflows import Task, Workflow, chord, workflow_router

app = Repid(
    Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )
)
router = Router()
router.include_router(workflow_router())  # the built-in actor of timed WAIT steps


class Image(pydantic.BaseModel):
    width: int
    height: int


# --8<-- [start:actors]
@router.actor
async def fetch(url: str) -> Image:
    return Image(width=640, height=480)


@router.actor
async def resize(width: int, height: int) -> dict[str, int]:
    return {"pixels": width * height // 4}


@router.actor
async def thumbnail(width: int) -> dict[str, int]:
    return {"thumb_width": width // 10}


@router.actor
async def notify(pixels: int, thumb_width: int, approved_by: str) -> str:
    return f"{pixels} pixels, thumbnail {thumb_width} wide, approved by {approved_by}"


@router.actor
async def count(n: int) -> dict[str, int]:
    return {"n": n}


@router.actor
async def total(n: int) -> int:
    return n


# --8<-- [end:actors]


async def main() -> None:
    async with app.magic():
        await Queue().declare()
        worker = Worker(routers=[router], handle_signals=[])
        running = asyncio.create_task(worker.run())

        # --8<-- [start:diamond]
        wf = Workflow("thumbnail")
        a = wf.step("fetch", args={"url": "https://example.com/cat.png"})
        b = wf.step("resize", after=[a])
        c = wf.step("thumbnail", after=[a])
        gate = wf.wait("approval", signal="approved")
        wf.step("notify", after=[b, c, gate])
        handle = await wf.enqueue()
        await handle.signal("approved", {"approved_by": "ops"})
        status = await handle.wait(timeout=10)
        print(status.state, "-", status.output("notify"))
        # --8<-- [end:diamond]
        print(render(status).replace(status.id_, "wf_...").splitlines()[0])
        for line in render(status).splitlines()[1:]:
            print(" ".join(line.split()[:2]))

        # --8<-- [start:chord]
        fan_in = chord([Task("count", {"n": n}) for n in range(3)], Task("total"))
        done = await (await fan_in.enqueue()).wait(timeout=10)
        print("chord:", done.state, sorted(s.status for s in done.steps.values()))
        # --8<-- [end:chord]

        worker.stop()
        await running


if __name__ == "__main__":
    asyncio.run(main())
