"""Sparing the upstream, for real: conditional requests, the upstream's hints, per-state
intervals and poke, against a real upstream on loopback (and a real redis-server for
poke in cluster mode)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.redis_server import RedisServer
from tests.support import running_bridge, serving_app, sse, wait_for

TOKEN = "poke-token-0123456789"


@dataclass
class Seen:
    at: float
    run_id: str
    headers: dict[str, str]
    status: int


@dataclass
class Upstream:
    """``GET /runs/<id>``: a run's current status, with validators as configured."""

    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    etags: bool = True
    last_modified: bool = False
    #: Headers added to every 200/304 (hints).
    extra: dict[str, str] = field(default_factory=dict)
    #: ETag per Authorization value (two credential scopes, two histories).
    per_viewer: bool = False
    #: While set, answers wait for it (a poll in flight), decided on arrival.
    gate: asyncio.Event | None = None
    #: Requests held at the gate now.
    waiting: int = 0
    seen: list[Seen] = field(default_factory=list)
    bytes_sent: int = 0
    url: str = ""

    def set(self, run_id: str, status: dict[str, Any]) -> None:
        self.statuses[run_id] = status
        self.versions[run_id] = self.versions.get(run_id, 0) + 1

    def requests(self, run_id: str) -> list[Seen]:
        return [s for s in self.seen if s.run_id == run_id]

    def validators(self, run_id: str, auth: str) -> tuple[str, str]:
        version = self.versions[run_id]
        scope = f"{auth}-" if self.per_viewer else ""
        etag = f'"{scope}{run_id}-{version}"'
        # Whole seconds are what HTTP dates carry: one version per second here.
        modified = formatdate(1_700_000_000 + version, usegmt=True)
        return etag, modified

    async def handle(self, request: web.Request) -> web.Response:
        response = self.answer(request)
        if self.gate is not None:
            # The answer is what the run was when the request came; it leaves later.
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        return response

    def answer(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if run_id not in self.statuses:
            self.seen.append(Seen(time.monotonic(), run_id, dict(request.headers), 404))
            return web.json_response({"message": "no such run"}, status=404)
        etag, modified = self.validators(run_id, request.headers.get("Authorization", ""))
        headers = dict(self.extra)
        if self.etags:
            headers["ETag"] = etag
        if self.last_modified:
            headers["Last-Modified"] = modified
        unchanged = (self.etags and request.headers.get("If-None-Match") == etag) or (
            self.last_modified and request.headers.get("If-Modified-Since") == modified
        )
        code = 304 if unchanged else 200
        self.seen.append(Seen(time.monotonic(), run_id, dict(request.headers), code))
        if unchanged:
            return web.Response(status=304, headers=headers)
        body = json.dumps(self.statuses[run_id]).encode()
        self.bytes_sent += len(body)
        return web.Response(body=body, content_type="application/json", headers=headers)


@asynccontextmanager
async def upstream(**options: Any) -> AsyncIterator[Upstream]:
    api = Upstream(**options)
    app = web.Application()
    app.router.add_get("/runs/{run_id}", api.handle)
    async with serving_app(app) as api.url:
        try:
            yield api
        finally:
            if api.gate is not None:
                api.gate.set()  # nothing held at the upstream outlives the test


async def metric(url: str, name: str) -> float:
    """The sum of a metric's samples named ``name`` (with labels) on /metrics."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def poke(url: str, run_id: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/runs/{run_id}/poll", headers=headers) as r,
    ):
        return r.status, await r.json()


# --- conditional requests ------------------------------------------------------------


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
async def test_a_304_is_unchanged_and_each_change_is_one_event(validator: str) -> None:
    options = {"etags": validator == "etag", "last_modified": validator == "last_modified"}
    async with upstream(**options) as api:
        api.set("c1", {"status": "running", "step": 0})
        async with running_bridge(api.url) as b, sse(f"{b.url}/v1/runs/c1/stream") as s:
            await s.next_named("progress")
            await wait_for(lambda: sum(r.status == 304 for r in api.requests("c1")) >= 5)
            # The conditional header carried the validator of the last full answer.
            last = api.requests("c1")[-1].headers
            if validator == "etag":
                assert last["If-None-Match"] == '"c1-1"'
            else:
                assert last["If-Modified-Since"] == api.validators("c1", "")[1]
            for step in (1, 2):
                api.set("c1", {"status": "running", "step": step})
                event = await s.next_named("progress")
                assert json.loads(event.data)["step"] == step
                await wait_for(lambda: api.requests("c1")[-1].status == 304)
            api.set("c1", {"status": "completed", "step": 3})
            assert (await s.next_named("complete")).event == "complete"
            assert [e.event for e in s.events if e.event != "ping"] == [
                "progress",
                "progress",
                "progress",
                "complete",
            ]
            not_modified = await metric(
                b.url, 'bridge_upstream_requests_total{outcome="not_modified"}'
            )
            full = sum(r.status == 200 for r in api.requests("c1"))
            assert not_modified == sum(r.status == 304 for r in api.requests("c1")) >= 5
            assert full == 4  # one full body per version, never more
            assert await metric(b.url, "bridge_upstream_bytes_total") == api.bytes_sent


async def test_an_upstream_that_ignores_the_validators_still_gets_one_event_per_change() -> None:
    async with upstream(etags=False) as api:
        api.set("c2", {"status": "running", "step": 0})
        async with running_bridge(api.url) as b, sse(f"{b.url}/v1/runs/c2/stream") as s:
            await s.next_named("progress")
            await wait_for(lambda: len(api.requests("c2")) >= 5)
            assert all(r.status == 200 for r in api.requests("c2"))
            assert all("If-None-Match" not in r.headers for r in api.requests("c2"))
            api.set("c2", {"status": "completed", "step": 1})
            await s.next_named("complete")
            assert len([e for e in s.events if e.event != "ping"]) == 2


async def test_conditional_requests_can_be_turned_off() -> None:
    async with upstream() as api:
        api.set("c3", {"status": "running"})
        async with (
            running_bridge(api.url, conditional_requests=False) as b,
            sse(f"{b.url}/v1/runs/c3/stream") as s,
        ):
            await s.next_named("progress")
            await wait_for(lambda: len(api.requests("c3")) >= 4)
        assert all("If-None-Match" not in r.headers for r in api.requests("c3"))
        assert all(r.status == 200 for r in api.requests("c3"))


async def test_two_credential_scopes_never_answer_each_other() -> None:
    async with upstream(per_viewer=True) as api:
        api.set("c4", {"status": "running"})
        async with (
            running_bridge(api.url) as b,
            sse(f"{b.url}/v1/runs/c4/stream", headers={"Authorization": "alice"}) as a,
            sse(f"{b.url}/v1/runs/c4/stream", headers={"Authorization": "bob"}) as c,
        ):
            await a.next_named("progress")
            await c.next_named("progress")
            await wait_for(lambda: sum(r.status == 304 for r in api.requests("c4")) >= 6)
        for seen in api.requests("c4"):
            sent = seen.headers.get("If-None-Match")
            if sent is not None:
                # Each scope sends only the validator its own credentials were given.
                assert sent.startswith(f'"{seen.headers["Authorization"]}-')


# --- the upstream's hints ------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-Poll-Interval", "Retry-After"])
async def test_a_hint_spaces_the_polls(header: str) -> None:
    async with upstream(extra={header: "1"}) as api:
        api.set("h1", {"status": "running"})
        async with running_bridge(api.url) as b, sse(f"{b.url}/v1/runs/h1/stream") as s:
            await s.next_named("progress")
            await wait_for(lambda: len(api.requests("h1")) >= 3, timeout=10)
        times = [r.at for r in api.requests("h1")]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # At 0.05 s intervals the bridge would have polled 20 times a second.
        assert min(gaps) >= 0.9, gaps


async def test_a_huge_hint_is_capped() -> None:
    async with upstream(extra={"Retry-After": "86400"}) as api:
        api.set("h2", {"status": "running"})
        async with (
            running_bridge(api.url, poll_interval_max=0.3) as b,
            sse(f"{b.url}/v1/runs/h2/stream") as s,
        ):
            await s.next_named("progress")
            # A day was asked for; BRIDGE_POLL_INTERVAL_MAX allows 0.3 s.
            await wait_for(lambda: len(api.requests("h2")) >= 3, timeout=5)


@pytest.mark.parametrize(
    "hint",
    [
        {"Retry-After": "-5"},
        {"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"},
        {"Retry-After": "soon"},
        {"X-Poll-Interval": "-1"},
        {"X-Poll-Interval": "1e9"},
        {"X-Poll-Interval": "\u0661\u0662"},  # Arabic-Indic digits: not ASCII seconds
    ],
)
async def test_a_hostile_hint_is_ignored(hint: dict[str, str]) -> None:
    async with upstream(extra=hint) as api:
        api.set("h3", {"status": "running"})
        async with running_bridge(api.url) as b, sse(f"{b.url}/v1/runs/h3/stream") as s:
            await s.next_named("progress")
            # Polling goes on at the configured interval (0.05 s).
            await wait_for(lambda: len(api.requests("h3")) >= 8, timeout=3)


# --- per-state intervals ---------------------------------------------------------------


async def test_per_state_intervals_follow_the_state() -> None:
    async with upstream() as api:
        api.set("p1", {"status": "QUEUED"})
        async with (
            running_bridge(api.url, poll_intervals="queued=0.6") as b,
            sse(f"{b.url}/v1/runs/p1/stream") as s,
        ):
            await s.next_named("progress")
            await wait_for(lambda: len(api.requests("p1")) >= 3, timeout=5)
            queued = [r.at for r in api.requests("p1")]
            api.set("p1", {"status": "running"})
            await s.next_named("progress", timeout=3)
            switched = len(api.requests("p1"))
            # Running: the default 0.05 s again.
            await wait_for(lambda: len(api.requests("p1")) >= switched + 8, timeout=3)
            assert await metric(b.url, 'bridge_poll_interval_seconds{state="queued"}') == 0.6
        gaps = [later - earlier for earlier, later in itertools.pairwise(queued)]
        assert min(gaps) >= 0.55, gaps


# --- poke ----------------------------------------------------------------------------------


async def test_poke_needs_the_token_and_is_off_without_one() -> None:
    async with upstream() as api:
        api.set("k1", {"status": "running"})
        async with running_bridge(api.url) as b:
            status, body = await poke(b.url, "k1")
            assert (status, body["error"]) == (404, "poke_disabled")
        async with running_bridge(api.url, poke_token=TOKEN) as b:
            assert (await poke(b.url, "k1", token="wrong"))[0] == 401
            assert (await poke(b.url, "k1", token=None))[0] == 401
            assert (await poke(b.url, "k1", token=TOKEN + "x"))[0] == 401
            status, body = await poke(b.url, "k1")
            # Nobody watches k1: accepted, and no upstream request at all.
            assert (status, body["outcome"]) == (202, "unwatched")
            assert (await poke(b.url, "bad%2Fid"))[0] in (400, 404)
        assert api.requests("k1") == []


async def test_a_poke_polls_at_once_with_a_long_interval() -> None:
    async with upstream() as api:
        api.set("k2", {"status": "running", "step": 0})
        async with (
            running_bridge(api.url, poll_interval=30, poke_token=TOKEN) as b,
            sse(f"{b.url}/v1/runs/k2/stream") as s,
        ):
            await s.next_named("progress")
            api.set("k2", {"status": "running", "step": 1})
            status, body = await poke(b.url, "k2")
            assert (status, body["outcome"], body["pollers"]) == (202, "polled", 1)
            # Thirty seconds early: the webhook made the change arrive now.
            event = await s.next_named("progress", timeout=3)
            assert json.loads(event.data)["step"] == 1
            assert len(api.requests("k2")) == 2


async def test_a_thousand_concurrent_pokes_cost_at_most_one_poll_more() -> None:
    async with upstream() as api:
        api.set("k3", {"status": "running"})
        async with (
            running_bridge(api.url, poll_interval=30, poke_token=TOKEN) as b,
            sse(f"{b.url}/v1/runs/k3/stream") as s,
        ):
            await s.next_named("progress")
            before = len(api.requests("k3"))
            api.gate = asyncio.Event()  # the next poll stays in flight
            connector = aiohttp.TCPConnector(limit=100)
            async with aiohttp.ClientSession(connector=connector) as http:

                async def one() -> int:
                    headers = {"Authorization": f"Bearer {TOKEN}"}
                    async with http.post(f"{b.url}/v1/runs/k3/poll", headers=headers) as r:
                        return r.status

                codes = await asyncio.gather(*(one() for _ in range(1000)))
            assert set(codes) == {202}
            api.gate.set()
            # The one in flight, and one after it for all the pokes that came meanwhile.
            await wait_for(lambda: len(api.requests("k3")) >= before + 2, timeout=5)
            assert len(api.requests("k3")) == before + 2
            coalesced = await metric(b.url, 'bridge_pokes_total{outcome="coalesced"}')
            polled = await metric(b.url, 'bridge_pokes_total{outcome="polled"}')
            assert (polled, coalesced) == (2, 998)
            # The next poke after that is one poll again: nothing was left pending.
            api.gate = None
            assert (await poke(b.url, "k3"))[1]["outcome"] == "polled"
            await wait_for(lambda: len(api.requests("k3")) >= before + 3, timeout=5)
            assert len(api.requests("k3")) == before + 3


async def test_a_poke_during_a_poll_in_flight_polls_once_after_it() -> None:
    async with upstream() as api:
        api.set("k4", {"status": "running", "step": 0})
        async with (
            running_bridge(api.url, poll_interval=30, poke_token=TOKEN) as b,
            sse(f"{b.url}/v1/runs/k4/stream") as s,
        ):
            await s.next_named("progress")
            before = len(api.requests("k4"))
            api.gate = asyncio.Event()
            assert (await poke(b.url, "k4"))[1]["outcome"] == "polled"
            # The poll is in flight (held at the upstream, answered "unchanged"); the
            # run changes meanwhile, and the webhook pokes again.
            await wait_for(lambda: api.waiting == 1)
            api.set("k4", {"status": "running", "step": 1})
            assert (await poke(b.url, "k4"))[1]["outcome"] == "polled"
            api.gate.set()
            event = await s.next_named("progress", timeout=3)
            assert json.loads(event.data)["step"] == 1
            assert [r.status for r in api.requests("k4")[before:]] == [304, 200]


# --- poke in cluster mode --------------------------------------------------------------


@pytest.mark.redis
async def test_a_poke_on_the_follower_reaches_the_leader(redis_server: RedisServer) -> None:
    async with upstream() as api:
        api.set("k5", {"status": "running", "step": 0})
        cluster = {
            "redis_url": redis_server.url,
            "redis_prefix": f"poke{time.monotonic_ns()}:",
            "poll_interval": 30,
            "poke_token": TOKEN,
        }
        async with (
            running_bridge(api.url, **cluster) as one,
            running_bridge(api.url, **cluster) as two,
            sse(f"{one.url}/v1/runs/k5/stream") as s1,
        ):
            await s1.next_named("progress")
            async with sse(f"{two.url}/v1/runs/k5/stream") as s2:
                await s2.next_named("progress")
                leader, follower = (one, two) if leads(one) else (two, one)
                assert leads(leader) and not leads(follower)
                api.set("k5", {"status": "running", "step": 1})
                status, body = await poke(follower.url, "k5")
                assert (status, body["outcome"]) == (202, "relayed")
                for stream in (s1, s2):
                    event = await stream.next_named("progress", timeout=5)
                    assert json.loads(event.data)["step"] == 1


def leads(b: Any) -> bool:
    return bool(b.bridge.backend.leading)
