"""Browser tests: Debian's headless chromium, driven by Playwright, on real Redis and RabbitMQ.

Open the overview, follow a queue, open a dead letter, requeue it, see the counts change. The
screenshots of the Redis run are the ones docs/dashboard.md shows (so they cannot drift). A
missing chromium fails these tests; it is never a skip.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest
import uvicorn
from playwright.async_api import Page, async_playwright

from repid import Router
from repid.dashboard import create_app
from tests.conformance.support import make_worker, running
from tests.dashboard.conftest import SECRET, SPECS, Setup, fill

IMAGES = Path(__file__).parents[2] / "docs" / "images" / "dashboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(params=["redis", "rabbitmq"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, Setup, str]]:
    conn = SPECS[request.param].make()
    await conn.connect()
    name = f"orders_{uuid4().hex[:6]}"
    setup = await fill(conn, name, delayed=False)
    app = create_app(conn, queues=[name])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert not task.done(), "uvicorn stopped"
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", setup, request.param
    finally:
        server.should_exit = True
        await task
        try:
            await conn.raw_message_broker.queue_delete(name)
        finally:
            await conn.disconnect()


async def _shot(page: Page, broker: str, name: str) -> None:
    if broker == "redis":
        await page.screenshot(path=str(IMAGES / f"{name}.png"), full_page=True)


async def test_overview_queue_dead_letter_requeue_in_chromium(
    served: tuple[str, Setup, str],
) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it with apt-get)")
    base, setup, broker = served
    IMAGES.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 700})
            page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.goto(base + "/")
            row = page.locator(f'tr[data-queue="{setup.queue}"]')
            assert await row.locator("td.dead").inner_text() == "2"
            await _shot(page, broker, "overview")

            await row.locator("a").click()
            await page.wait_for_url(re.compile(rf".*/queues/{setup.queue}$"))
            assert await page.locator("#dead").inner_text() == "2"
            await _shot(page, broker, "queue")

            await page.locator(f'a.msg:text("{setup.dead_ids[0]}")').click()
            await page.wait_for_selector("#reason")
            assert await page.locator("#reason").inner_text() == "exception"
            text = await page.content()
            assert "ValueError" in text
            assert SECRET not in text
            await _shot(page, broker, "dead-letter")

            await page.locator("button", has_text="Requeue").click()
            await page.wait_for_selector("text=Yes, do it")
            await _shot(page, broker, "confirm")
            await page.locator("button", has_text="Yes, do it").click()
            await page.wait_for_url(re.compile(r".*part=dead$"))
            assert await page.locator("#dead").inner_text() == "1"
            assert await page.locator("#ready").inner_text() == "1"
            assert setup.dead_ids[0] not in await page.content()

            await page.goto(base + "/")
            assert await row.locator("td.dead").inner_text() == "1"

            side = Router()
            side.actor(name="fails", queue=setup.queue)(_idle)
            worker = make_worker(setup.conn, side, heartbeat_interval=0.2)
            async with running(worker) as worker_task:
                deadline = time.monotonic() + 10
                while True:
                    await page.goto(base + "/workers")
                    if await page.locator("table.workers td", has_text=setup.queue).count():
                        break
                    if time.monotonic() > deadline:
                        body = await page.locator("main").inner_text()
                        raise AssertionError(
                            f"the worker never showed: {body[:300]}; worker task: {worker_task}"
                        )
                    await asyncio.sleep(0.2)
                await _shot(page, broker, "workers")
        finally:
            await browser.close()


async def _idle(n: int) -> None:
    return None
