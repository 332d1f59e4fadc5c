"""The stream routes served in front of Quart (bridge/web/front.py): same answers, once each.

What a connect costs is the bench's (bench/results/issue14-connect.md); here: the routes
match as Quart's rules did, a fast-path viewer that leaves gives its slot back through
the disconnect itself, and what Quart gave the routes (CORS, JSON errors) is there once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from bridge.demo.legacy_api import LegacyApi
from bridge.web.asgi import disconnected_before
from bridge.web.front import stream_route
from tests.support import running_bridge, sse, wait_for


def scope(path: str, method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path}


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/v1/runs/r1/stream", "GET", (True, "r1")),
        ("/v1/runs/r1/stream", "HEAD", (True, "r1")),
        ("/v1/runs/stream/stream", "GET", (True, "stream")),
        ("/v1/runs/./stream", "GET", (True, ".")),  # refused by the run id rules: 400
        ("/v1/streams", "GET", (True, None)),
        # Not these routes: Quart answers them as before.
        ("/v1/runs/r1/stream", "OPTIONS", (False, None)),  # the CORS preflight
        ("/v1/runs/r1/stream", "POST", (False, None)),  # 405
        ("/v1/runs//stream", "GET", (False, None)),  # 400 from the not-found handler
        ("/v1/runs/a/b/stream", "GET", (False, None)),  # an encoded slash, decoded
        ("/v1/runs/stream", "GET", (False, None)),  # the status of the run "stream"
        ("/v1/runs/r1/stream/", "GET", (False, None)),
        ("/v1/streams/", "GET", (False, None)),
        ("/healthz", "GET", (False, None)),
    ],
)
def test_the_front_takes_exactly_the_stream_routes(
    path: str, method: str, expected: tuple[bool, str | None]
) -> None:
    assert stream_route(scope(path, method)) == expected


def test_the_front_lets_lifespan_through() -> None:
    assert stream_route({"type": "lifespan"}) == (False, None)


async def test_disconnected_before_tells_the_two_ends_apart() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # The client leaves first (a request body message before it is skipped).
    done: asyncio.Future[str] = loop.create_future()
    messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    messages.put_nowait({"type": "http.disconnect"})
    assert await disconnected_before(done, messages.get) is True
    done.set_result("late")  # resolving it afterwards changes nothing
    await asyncio.sleep(0)

    # The future resolves first: the wait on receive() is cut short, this task goes on.
    done = loop.create_future()
    loop.call_later(0.01, done.set_result, "terminal")
    assert await disconnected_before(done, messages.get) is False
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    # Already resolved: no wait at all.
    assert await disconnected_before(done, messages.get) is False

    # Both in the same turn of the loop: either answer, and nothing left behind.
    done = loop.create_future()
    messages.put_nowait({"type": "http.disconnect"})
    done.set_result("terminal")
    await disconnected_before(done, messages.get)
    await asyncio.sleep(0.01)
    assert errors == []


async def test_a_fast_path_viewer_that_leaves_gives_its_slot_back_at_once(
    legacy: LegacyApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy.scripted("leave")
    async with running_bridge(legacy.url) as b:
        # The ticker would notice a closed socket too; take it out, so that only the
        # disconnect the server tells the stream about can end it.
        monkeypatch.setattr(b.bridge.ticker, "tick", lambda now: None)
        async with sse(f"{b.url}/v1/runs/leave/stream") as stream:
            await stream.next_named("progress")
            await wait_for(lambda: b.bridge.ticker.viewers == 1)  # on the fast path
            assert b.bridge.limiter.open == 1
        await wait_for(lambda: b.bridge.limiter.open == 0)
        await wait_for(lambda: b.bridge.ticker.viewers == 0)
        assert b.bridge.hub.live_count <= 1  # the lease is given back (linger 0: retired)
        await wait_for(lambda: b.bridge.pollers.active == 0)


async def test_stream_answers_carry_cors_and_errors_once(legacy: LegacyApi) -> None:
    legacy.scripted("cors1")
    origin = {"Origin": "https://app.example"}
    async with (
        running_bridge(legacy.url, cors_origins=("https://app.example",)) as b,
        aiohttp.ClientSession() as http,
    ):
        async with sse(f"{b.url}/v1/runs/cors1/stream", origin, http) as stream:
            await stream.next_named("progress")
        async with http.get(f"{b.url}/v1/runs/cors1/stream", headers=origin) as r:
            assert r.headers.getall("Access-Control-Allow-Origin") == ["https://app.example"]
            assert r.headers.getall("Vary") == ["Origin"]
            assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        # Refusals: the front's (a bad id) and Quart's (an empty one) are the same JSON.
        for path in ("/v1/runs/..%20/stream", "/v1/runs//stream"):
            async with http.get(b.url + path, headers=origin) as r:
                assert r.status == 400
                assert (await r.json())["error"] == "invalid_run_id"
                assert r.headers.getall("Access-Control-Allow-Origin") == ["https://app.example"]
        async with http.post(f"{b.url}/v1/runs/cors1/stream") as r:
            assert r.status == 405
            assert (await r.json())["error"] == "method_not_allowed"
        async with http.get(f"{b.url}/v1/streams", headers=origin) as r:
            assert r.status == 400
            assert (await r.json())["error"] == "invalid_request"
        metrics = await (await http.get(f"{b.url}/metrics")).text()
        # Counted once: by the front (a bad id), not by the not-found handler.
        assert 'bridge_streams_refused_total{code="invalid_run_id"} 1.0' in metrics
