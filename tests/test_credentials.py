"""Credentials never leak; forward-auth mode; CORS."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from aiohttp import web

from bridge.demo.legacy_api import Fault, LegacyApi
from bridge.settings import load
from bridge.web.auth import ForwardAuth
from tests.support import FAST, auth_service, running_bridge, serving_app, sse, wait_for

SECRETS = ("Bearer tok-SECRET-1", "sess=COOKIE-SECRET-2", "KEY-SECRET-3", "QUERY-SECRET-4")


async def test_no_secret_in_logs_error_bodies_or_metrics(
    legacy: LegacyApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    legacy.scripted("s")
    headers = {"Authorization": SECRETS[0], "Cookie": SECRETS[1], "X-Api-Key": SECRETS[2]}
    bodies: list[bytes] = []
    async with (
        running_bridge(
            legacy.url,
            access_log=True,
            upstream_timeout=0.2,
            backoff_max=0.05,
            upstream_give_up=1.0,
            breaker_threshold=1000,
        ) as b,
        aiohttp.ClientSession() as http,
    ):
        stream_url = f"{b.url}/v1/runs/s/stream?token={SECRETS[3]}"
        # aiohttp retries an idempotent GET once after a reset: two resets make a 502.
        for fault in (
            Fault("reset", times=2),
            Fault("status", status=500),
            Fault("hang"),
            Fault("malformed"),
            Fault("redirect"),
        ):
            legacy.inject("s", fault)
            async with http.get(stream_url, headers=headers) as response:
                assert response.status in (502, 504)
                bodies.append(await response.read())
        legacy.require("s", "authorization", "Bearer other")
        async with http.get(stream_url, headers=headers) as response:
            assert response.status == 403
            bodies.append(await response.read())
        legacy.credentials.clear()
        async with sse(stream_url, headers) as s:
            await s.next_named("progress")
            legacy.inject("s", Fault("reset", times=None))
            event = await s.next_named("error", timeout=10)  # gave up
            bodies.append(event.data.encode())
        async with http.get(f"{b.url}/metrics") as response:
            bodies.append(await response.read())
    text = "\n".join(r.getMessage() + str(r.args) + str(r.exc_info) for r in caplog.records)
    text += caplog.text
    everything = text.encode() + b"\n".join(bodies)
    assert b"/v1/runs/s/stream" in everything  # the access log was captured
    for secret in SECRETS:
        for part in (secret, secret.split()[-1], secret.split("=")[-1]):
            assert part.encode() not in everything, part


async def test_forward_auth_mode_admits_refuses_and_shares_one_poller(legacy: LegacyApi) -> None:
    run = legacy.scripted("fa")
    legacy.require("fa", "x-api-key", "bridge-own-key")
    async with (
        auth_service(lambda token, _run: token in {"Bearer alice", "Bearer bob"}) as (
            auth_url,
            calls,
        ),
        running_bridge(
            legacy.url, auth_url=auth_url, upstream_headers={"x-api-key": "bridge-own-key"}
        ) as b,
        aiohttp.ClientSession() as http,
    ):
        url = f"{b.url}/v1/runs/fa/stream"
        async with (
            sse(url, {"Authorization": "Bearer alice"}) as alice,
            sse(url, {"Authorization": "Bearer bob"}) as bob,
        ):
            assert json.loads((await alice.next_named("progress")).data) == run.statuses[0]
            assert json.loads((await bob.next_named("progress")).data) == run.statuses[0]
            assert b.bridge.pollers.active == 1
            for headers, status in (({"Authorization": "Bearer eve"}, 403), ({}, 401)):
                async with http.get(url, headers=headers) as response:
                    assert response.status == status
                    assert b"queued" not in await response.read()
            # The upstream only ever saw the bridge's own key, never a viewer's token.
            assert {r.headers.get("x-api-key") for r in legacy.seen} == {"bridge-own-key"}
            assert all("Authorization" not in r.headers for r in legacy.seen)
            # Verdicts are cached: alice again costs no auth request.
            async with sse(url, {"Authorization": "Bearer alice"}) as again:
                await again.next_named("progress")
            assert calls["Bearer alice"] == 1
            run.advance()
            for viewer in (alice, bob):
                assert json.loads((await viewer.next_named("progress")).data) == run.statuses[1]


async def test_forward_auth_concurrent_first_asks_share_one_request(legacy: LegacyApi) -> None:
    legacy.scripted("fb")
    async with (
        auth_service(lambda token, _run: token == "Bearer c") as (auth_url, calls),
        running_bridge(legacy.url, auth_url=auth_url) as b,
        aiohttp.ClientSession() as http,
    ):

        async def status() -> int:
            async with http.get(f"{b.url}/v1/runs/fb", headers={"Authorization": "Bearer c"}) as r:
                return r.status

        assert await asyncio.gather(*(status() for _ in range(20))) == [200] * 20
        assert calls["Bearer c"] == 1


async def test_cors_explicit_origins_with_credentials(legacy: LegacyApi) -> None:
    legacy.scripted("co")
    async with (
        running_bridge(
            legacy.url, cors_origins=("https://app.example",), cors_credentials=True
        ) as b,
        aiohttp.ClientSession() as http,
    ):
        url = f"{b.url}/v1/runs/co"
        async with http.get(url, headers={"Origin": "https://app.example"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert r.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in r.headers["Vary"]
        async with http.get(url, headers={"Origin": "https://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        polls = legacy.requests["co"]
        async with http.options(
            f"{b.url}/v1/runs/co/stream",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
            },
        ) as r:
            assert r.status == 200
            assert "last-event-id" in r.headers["Access-Control-Allow-Headers"]
        assert legacy.requests["co"] == polls  # a preflight never polls


async def test_cors_any_origin_never_with_credentials(legacy: LegacyApi) -> None:
    legacy.scripted("ca")
    async with (
        running_bridge(legacy.url, cors_origins=("*",)) as b,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{b.url}/v1/runs/ca", headers={"Origin": "https://x.example"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Credentials" not in r.headers


def test_cors_star_with_credentials_is_a_config_error() -> None:
    from bridge.settings import ConfigError, load

    with pytest.raises(ConfigError, match="BRIDGE_CORS_CREDENTIALS"):
        load(cors_origins=("*",), cors_credentials=True)


async def test_wait_helper_is_bounded() -> None:
    with pytest.raises(TimeoutError):
        await wait_for(lambda: False, timeout=0.05)


async def test_forward_auth_waiters_ask_again_when_the_first_asker_is_cancelled() -> None:
    # A viewer that left mid-ask must not fail the viewers that were waiting on its answer.
    gate = asyncio.Event()
    calls: list[str] = []

    async def check(request: web.Request) -> web.Response:
        calls.append(request.headers.get("Authorization", ""))
        if len(calls) == 1:
            await gate.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/check", check)
    async with serving_app(app) as url:
        settings = load(**{**FAST, "upstream_url": url, "auth_url": f"{url}/check"})
        auth = ForwardAuth(settings)
        await auth.start()
        try:
            headers = {"Authorization": "Bearer c"}
            first = asyncio.create_task(auth.admit("r1", headers))
            await wait_for(lambda: len(calls) == 1)
            second = asyncio.create_task(auth.admit("r1", headers))
            await asyncio.sleep(0)  # the second now waits on the first one's answer
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            gate.set()
            await asyncio.wait_for(second, timeout=5)
            assert len(calls) == 2
        finally:
            gate.set()
            await auth.close()
