"""HTTP-level tests of every dashboard endpoint and action, on in-memory, Redis and RabbitMQ."""

from __future__ import annotations

import base64
import re

import httpx

from repid.cli.operations import queue_sizes
from repid.dashboard import BasicAuth, TokenAuth
from tests.dashboard.conftest import SECRET, ClientFactory, Setup


def _csrf(response: httpx.Response) -> str:
    found = re.search(r'name=csrf value="([^"]+)"', response.text)
    assert found is not None, "no CSRF field in the page"
    return found.group(1)


async def _dead(setup: Setup) -> int:
    sizes = await queue_sizes(setup.conn, [setup.queue])
    return next(s.dead for s in sizes if s.name == setup.queue)


async def test_overview_lists_the_queue_with_its_counts(
    setup: Setup, client_for: ClientFactory
) -> None:
    async with client_for() as client:
        page = await client.get("/")
        assert page.status_code == 200
        row = re.search(rf'<tr data-queue="{setup.queue}">(.*?)</tr>', page.text)
        assert row is not None
        assert '<td class="num dead">2</td>' in row.group(1)
        assert '<td class="num delayed">1</td>' in row.group(1)
        api = await client.get("/api/overview")
        assert api.status_code == 200
        mine = next(q for q in api.json()["queues"] if q["name"] == setup.queue)
        assert (mine["dead"], mine["delayed"]) == (2, 1)
        static = await client.get("/static/dashboard.js")
        assert static.status_code == 200
        assert "api/overview" in page.text


async def test_queue_page_lists_dead_and_delayed_and_searches_by_id(
    setup: Setup, client_for: ClientFactory
) -> None:
    async with client_for() as client:
        dead = await client.get(f"/queues/{setup.queue}")
        assert dead.status_code == 200
        for id_ in setup.dead_ids:
            assert id_ in dead.text
        assert "ValueError" in dead.text
        delayed = await client.get(f"/queues/{setup.queue}", params={"part": "delayed"})
        assert setup.delayed_id in delayed.text
        assert setup.dead_ids[0] not in delayed.text
        one = await client.get(f"/queues/{setup.queue}", params={"q": setup.dead_ids[1]})
        assert setup.dead_ids[1] in one.text
        assert setup.dead_ids[0] not in one.text
        missing = await client.get("/queues/no_such_queue_here")
        assert missing.status_code == 404
        bad = await client.get(f"/queues/{setup.queue}", params={"part": "nope"})
        assert bad.status_code == 400


async def test_dead_letter_detail_shows_reason_error_traceback_attempts_without_password(
    setup: Setup, client_for: ClientFactory
) -> None:
    async with client_for() as client:
        page = await client.get(f"/queues/{setup.queue}/dead/{setup.dead_ids[0]}")
        assert page.status_code == 200
        assert "<span id=reason>exception</span>" in page.text
        assert "ValueError" in page.text
        assert "Traceback" in page.text
        assert "<dt>Attempts</dt><dd>1</dd>" in page.text
        assert "db.example" in page.text
        assert SECRET not in page.text
        listing = await client.get(f"/queues/{setup.queue}")
        assert SECRET not in listing.text
        gone = await client.get(f"/queues/{setup.queue}/dead/not-an-id")
        assert gone.status_code == 404


async def test_requeue_one_asks_for_confirmation_then_moves_it(
    setup: Setup, client_for: ClientFactory
) -> None:
    async with client_for() as client:
        page = await client.get(f"/queues/{setup.queue}/dead/{setup.dead_ids[0]}")
        token = _csrf(page)
        form = {"csrf": token, "id": setup.dead_ids[0]}
        ask = await client.post(f"/queues/{setup.queue}/requeue", data=form)
        assert ask.status_code == 200
        assert "Requeue dead message" in ask.text
        assert await _dead(setup) == 2
        done = await client.post(f"/queues/{setup.queue}/requeue", data={**form, "confirm": "yes"})
        assert done.status_code == 303
        assert await _dead(setup) == 1


async def test_delete_one_requeue_all_and_purge(setup: Setup, client_for: ClientFactory) -> None:
    async with client_for() as client:
        token = _csrf(await client.get(f"/queues/{setup.queue}"))
        url = f"/queues/{setup.queue}"
        deleted = await client.post(
            f"{url}/delete", data={"csrf": token, "id": setup.dead_ids[0], "confirm": "yes"}
        )
        assert deleted.status_code == 303
        assert await _dead(setup) == 1
        no_id = await client.post(f"{url}/delete", data={"csrf": token, "confirm": "yes"})
        assert no_id.status_code == 400
        unknown = await client.post(f"{url}/explode", data={"csrf": token, "confirm": "yes"})
        assert unknown.status_code == 404
        requeued = await client.post(f"{url}/requeue", data={"csrf": token, "confirm": "yes"})
        assert requeued.status_code == 303
        assert await _dead(setup) == 0
        sizes = await queue_sizes(setup.conn, [setup.queue])
        assert next(s.ready for s in sizes if s.name == setup.queue) == 1
        purged = await client.post(f"{url}/purge", data={"csrf": token, "confirm": "yes"})
        assert purged.status_code == 303


async def test_actions_refuse_missing_or_wrong_csrf(
    setup: Setup, client_for: ClientFactory
) -> None:
    async with client_for() as client:
        token = _csrf(await client.get(f"/queues/{setup.queue}"))
        url = f"/queues/{setup.queue}/purge"
        missing = await client.post(url, data={"confirm": "yes"})
        assert missing.status_code == 403
        assert "CSRF" in missing.text
        wrong = await client.post(url, data={"csrf": token + "x", "confirm": "yes"})
        assert wrong.status_code == 403
        client.cookies.clear()
        no_cookie = await client.post(url, data={"csrf": token, "confirm": "yes"})
        assert no_cookie.status_code == 403
        assert await _dead(setup) == 2


async def test_read_only_hides_and_refuses_actions(setup: Setup, client_for: ClientFactory) -> None:
    async with client_for(read_only=True) as client:
        page = await client.get(f"/queues/{setup.queue}/dead/{setup.dead_ids[0]}")
        assert page.status_code == 200
        assert "<form method=post" not in page.text
        assert "read-only" in page.text
        token = client.cookies.get("repid_csrf")
        assert token
        refused = await client.post(
            f"/queues/{setup.queue}/purge", data={"csrf": token, "confirm": "yes"}
        )
        assert refused.status_code == 403
        assert await _dead(setup) == 2


async def test_token_auth_by_header_and_login_cookie(
    setup: Setup, client_for: ClientFactory
) -> None:
    async with client_for(auth=TokenAuth("s3cret-token")) as client:
        refused = await client.get("/")
        assert refused.status_code == 401
        assert "Log in" in refused.text
        assert (await client.get("/api/overview")).status_code == 401
        wrong = await client.get("/", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.get("/", headers={"authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        bad_login = await client.post("/login", data={"token": "nope"})
        assert bad_login.status_code == 401
        login = await client.post("/login", data={"token": "s3cret-token"})
        assert login.status_code == 303
        assert (await client.get("/workers")).status_code == 200


async def test_basic_auth(setup: Setup, client_for: ClientFactory) -> None:
    async with client_for(auth=BasicAuth("ops", "pw-1")) as client:
        refused = await client.get("/")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        good = base64.b64encode(b"ops:pw-1").decode()
        bad = base64.b64encode(b"ops:pw-2").decode()
        assert (await client.get("/", headers={"authorization": f"Basic {bad}"})).status_code == 401
        page = await client.get("/", headers={"authorization": f"Basic {good}"})
        assert page.status_code == 200


async def test_workers_and_job_pages_and_cancel(setup: Setup, client_for: ClientFactory) -> None:
    async with client_for() as client:
        workers = await client.get("/workers")
        assert workers.status_code == 200
        assert "Current jobs" in workers.text or "no worker registry" in workers.text
        lookup = await client.get("/job", params={"id": "nothing-stored", "queue": setup.queue})
        assert lookup.status_code == 200
        assert "no result stored" in lookup.text
        token = _csrf(lookup)
        cancel = await client.post(
            "/job/cancel",
            data={"csrf": token, "id": setup.delayed_id, "queue": setup.queue, "confirm": "yes"},
        )
        assert cancel.status_code == 303
        assert "cancel" in cancel.headers["location"]
        delayed = await client.get(f"/queues/{setup.queue}", params={"part": "delayed"})
        assert setup.delayed_id not in delayed.text


async def test_job_page_shows_a_stored_failure(setup: Setup, client_for: ClientFactory) -> None:
    async with client_for() as client:
        page = await client.get(f"/queues/{setup.queue}/dead/{setup.dead_ids[0]}")
        found = re.search(r'href="[^"]*/job\?id=([^&"]+)', page.text)
        assert found is not None, "the dead letter links its result id"
        job = await client.get("/job", params={"id": found.group(1)})
        assert job.status_code == 200
        assert "<b id=state>failed</b>" in job.text
        assert "ValueError" in job.text
        assert SECRET not in job.text


async def test_a_broken_broker_gives_a_503_banner_without_the_password() -> None:
    from repid import Connection, RedisMessageBroker
    from repid.dashboard import create_app

    # nothing listens on port 9 of loopback: every broker call fails
    conn = Connection(RedisMessageBroker(f"redis://ops:{SECRET}@127.0.0.1:9/0"))
    app = create_app(conn, broker_timeout=1.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        for path in ("/", "/workers", "/queues/anything", "/api/overview"):
            page = await client.get(path)
            assert page.status_code == 503, path
            assert SECRET not in page.text
            assert "Traceback" not in page.text
        assert 'class="banner"' in (await client.get("/")).text
