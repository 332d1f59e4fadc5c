"""Feeds and fleets, measured: the list's economy, a list tick's CPU, a deep feed resume.

    bench/run fleet [--runs 1000] [--interval 2] [--window 5]

Three studies, side by side in one run; the bridge is the real one (``python -m bridge
serve`` as its own process, so its loop lag is its own), the upstream and the viewers live
in this process, all on loopback:

1. economy: RUNS active runs, each changing about every third interval (at random
   moments), each watched by one viewer (RUNS / 50 ``/v1/streams`` connections of 50
   runs), for WINDOW intervals: upstream requests and body bytes per interval with the
   list (BRIDGE_UPSTREAM_LIST_PATH) against per-run polling, and the delay from a change
   at the upstream to its viewer;
2. list tick: the CPU of one list tick over 1,000 items in the bridge's own code (parse,
   per-item check, the events and their fleet-log entries), in-process, for a first
   list, an unchanged one, 10 % changed and all changed;
3. feed resume: a viewer resuming 10,000 items back (feed pages of 100) while another run
   gets an item every 100 ms with its own viewer: how long the catch-up takes, the live
   viewer's worst delay meanwhile, and the bridge's own event-loop lag.

Writes bench/out/fleet.json and bench/results/fleet.md.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bench.harness import cli
from bench.harness.common import BENCH_DIR, OUT_DIR
from bridge.tasks import cancel_and_wait
from bridge.tools.eventstream import EventStreamParser
from tests.support import running_bridge, serve_process, serving_app

OUT = OUT_DIR
RESULTS = BENCH_DIR / "results"


# --- the upstream ------------------------------------------------------------------------


@dataclass
class Upstream:
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    bytes: int = 0
    #: A feed per run: items with a sequence and the time each was made.
    feeds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    feed_requests: dict[str, int] = field(default_factory=dict)
    heads: dict[str, asyncio.Event] = field(default_factory=dict)

    def _json(self, value: Any) -> web.Response:
        body = json.dumps(value, separators=(",", ":")).encode()
        self.requests += 1
        self.bytes += len(body)
        return web.Response(body=body, content_type="application/json")

    async def listed(self, request: web.Request) -> web.Response:
        return self._json(list(self.statuses.values()))

    async def one(self, request: web.Request) -> web.Response:
        return self._json(self.statuses[request.match_info["run_id"]])

    async def feed(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        self.feed_requests[run_id] = self.feed_requests.get(run_id, 0) + 1
        since = int(request.query.get("since", "0"))
        items = self.feeds[run_id]
        page = items[since : since + 100]
        if since + 100 >= len(items):
            self.at_head(run_id).set()
        return self._json(
            {"events": page, "hasMore": since + 100 < len(items), "runStatus": "running"}
        )

    def at_head(self, run_id: str) -> asyncio.Event:
        """Set once a request for ``run_id``'s feed got its last page."""
        return self.heads.setdefault(run_id, asyncio.Event())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/runs", self.listed)
        app.router.add_get("/runs/{run_id}", self.one)
        app.router.add_get("/feed/{run_id}/events", self.feed)
        return app


def status(run_id: str, version: int) -> dict[str, Any]:
    # About 300 bytes, like a small run status.
    return {
        "id": run_id,
        "status": "running",
        "version": version,
        "changed_at": time.time(),
        "progress": round(random.random(), 3),
        "detail": "x" * 200,
    }


# --- 1. economy ----------------------------------------------------------------------------


async def viewers(
    url: str, runs: list[str], delays: list[float], ready: asyncio.Event, stack: AsyncExitStack
) -> None:
    """One viewer per run over /v1/streams connections of 50 runs; delays of changes."""
    session = await stack.enter_async_context(
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
    )
    first: set[str] = set()

    async def one(chunk: list[str]) -> None:
        parser = EventStreamParser()
        async with session.get(
            f"{url}/v1/streams?runs={','.join(chunk)}", headers={"Accept": "text/event-stream"}
        ) as response:
            async for data in response.content.iter_any():
                now = time.time()
                for event in parser.feed(data):
                    if event.event != "progress":
                        continue
                    body = json.loads(event.data)
                    run_id = body["run_id"]
                    if run_id not in first:
                        first.add(run_id)
                        if len(first) == len(runs):
                            ready.set()
                        continue
                    delays.append(now - body["data"]["changed_at"])

    for i in range(0, len(runs), 50):
        task = asyncio.create_task(one(runs[i : i + 50]))
        stack.push_async_callback(cancel_and_wait, task)


async def change(up: Upstream, runs: list[str], interval: float, stop: asyncio.Event) -> int:
    """Each run changes about every third interval, at random moments: changes made."""
    made = 0
    per_interval = max(1, len(runs) // 3)
    while not stop.is_set():
        moments = sorted(random.uniform(0, interval) for _ in range(per_interval))
        started = time.monotonic()
        for moment in moments:
            await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
            run_id = random.choice(runs)
            up.statuses[run_id] = status(run_id, up.statuses[run_id]["version"] + 1)
            made += 1
    return made


async def economy(mode: str, runs: int, interval: float, window: int) -> dict[str, Any]:
    up = Upstream()
    names = [f"run-{i:05d}" for i in range(runs)]
    for name in names:
        up.statuses[name] = status(name, 0)
    env = {
        "BRIDGE_POLL_INTERVAL": str(interval),
        "BRIDGE_ACCESS_LOG": "false",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_PING_INTERVAL": "3600",
        "BRIDGE_STREAM_TIMEOUT": "7200",
        "BRIDGE_MAX_STREAMS_PER_CLIENT": "100000",
        "BRIDGE_UPSTREAM_CONCURRENCY": "256",
    }
    if mode == "list":
        env["BRIDGE_UPSTREAM_LIST_PATH"] = "/runs"
    delays: list[float] = []
    async with (
        serving_app(up.app()) as upstream_url,
        serve_process(upstream_url, env) as (
            _,
            url,
        ),
    ):
        async with AsyncExitStack() as stack:
            if mode == "list":
                # The list poller of this scope, kept by one /v1/events viewer.
                session = await stack.enter_async_context(aiohttp.ClientSession())
                events = await stack.enter_async_context(
                    session.get(f"{url}/v1/events", headers={"Accept": "text/event-stream"})
                )
                await events.content.readany()
            ready = asyncio.Event()
            await viewers(url, names, delays, ready, stack)
            await asyncio.wait_for(ready.wait(), 120)
            delays.clear()
            requests, sent = up.requests, up.bytes
            stop = asyncio.Event()
            changing = asyncio.create_task(change(up, names, interval, stop))
            await asyncio.sleep(window * interval)  # the measurement window
            stop.set()
            made = await changing
            requests, sent = up.requests - requests, up.bytes - sent
            await asyncio.sleep(interval * 1.5)  # the last changes reach their viewers
    delays.sort()
    return {
        "mode": mode,
        "runs": runs,
        "interval_s": interval,
        "window_intervals": window,
        "requests_per_interval": requests / window,
        "bytes_per_interval": sent / window,
        "changes": made,
        "delivered": len(delays),
        "delay_p50_s": statistics.median(delays) if delays else None,
        "delay_p99_s": delays[int(len(delays) * 0.99)] if delays else None,
        "delay_max_s": delays[-1] if delays else None,
    }


# --- 2. list tick CPU ------------------------------------------------------------------------


async def list_tick(items: int = 1000, rounds: int = 20) -> dict[str, Any]:
    up = Upstream()
    for i in range(items):
        up.statuses[f"run-{i:05d}"] = status(f"run-{i:05d}", 0)
    out: dict[str, Any] = {"items": items}
    async with serving_app(up.app()) as upstream_url:
        settings = {"upstream_list_path": "/runs", "poll_interval": 50, "linger": 600}
        async with running_bridge(upstream_url, **settings) as b:
            fleets = b.bridge.fleets
            assert fleets is not None
            fleet = await fleets.take({}, b.bridge.backend.digest_secret())
            try:

                async def tick(body: bytes) -> float:
                    started = time.process_time()
                    found = fleet._source.read(json.loads(body), body.decode())
                    assert found is not None
                    await fleet._take(found)
                    return (time.process_time() - started) * 1000

                def body() -> bytes:
                    return json.dumps(list(up.statuses.values())).encode()

                # A fresh fleet in the same bridge: every run is new to it (its pollers
                # are made), as at a first list.
                fresh = await fleets.take({"x-api-key": "other"}, b.bridge.backend.digest_secret())
                try:
                    started = time.process_time()
                    text = body()
                    found = fresh._source.read(json.loads(text), text.decode())
                    assert found is not None
                    await fresh._take(found)
                    out["first_ms"] = (time.process_time() - started) * 1000
                finally:
                    fresh.release()
                for label, share in (
                    ("unchanged", 0.0),
                    ("changed_10pct", 0.1),
                    ("changed_third", 1 / 3),
                    ("changed_all", 1.0),
                ):
                    times = []
                    for _ in range(rounds):
                        for name in random.sample(list(up.statuses), int(items * share)):
                            up.statuses[name] = status(name, up.statuses[name]["version"] + 1)
                        times.append(await tick(body()))
                    out[f"{label}_ms_median"] = statistics.median(times)
                    out[f"{label}_ms_max"] = max(times)
            finally:
                fleet.release()
    return out


# --- 3. feed resume ----------------------------------------------------------------------


async def feed_resume(items: int = 10_000) -> dict[str, Any]:
    up = Upstream()
    up.feeds["big"] = [
        {"sequence": i + 1, "eventType": "STEP", "payload": {"n": i + 1, "text": "y" * 100}}
        for i in range(items)
    ]
    up.feeds["tick"] = []
    env = {
        "BRIDGE_FEED_PATH": "/feed/{run_id}/events?since={cursor}",
        "BRIDGE_FEED_MORE": ".hasMore",
        "BRIDGE_STATE_EXPR": ".runStatus",
        "BRIDGE_FEED_MAX_PAGES": "10",
        "BRIDGE_POLL_INTERVAL": "0.1",
        "BRIDGE_ACCESS_LOG": "false",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_PING_INTERVAL": "3600",
    }
    live_delays: list[float] = []
    async with (
        serving_app(up.app()) as upstream_url,
        serve_process(upstream_url, env) as (_, url),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session,
    ):
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                n = len(up.feeds["tick"]) + 1
                up.feeds["tick"].append({"sequence": n, "eventType": "TICK", "at": time.time()})
                await asyncio.sleep(0.1)

        async def live() -> None:
            parser = EventStreamParser()
            async with session.get(
                f"{url}/v1/runs/tick/stream", headers={"Accept": "text/event-stream"}
            ) as response:
                async for data in response.content.iter_any():
                    now = time.time()
                    for event in parser.feed(data):
                        if event.event == "TICK":
                            live_delays.append(now - json.loads(event.data)["at"])

        producing = asyncio.create_task(produce())
        watching = asyncio.create_task(live())
        # The bridge follows "big" to its head (its own poller, pages of 100).
        async with session.get(
            f"{url}/v1/runs/big/stream",
            headers={"Accept": "text/event-stream", "Last-Event-ID": str(items)},
        ) as head:
            await head.content.readany()
            await asyncio.wait_for(up.at_head("big").wait(), 60)
        await asyncio.sleep(1.0)
        live_delays.clear()
        # The viewer from 10,000 items back: from the upstream, then the history, then live.
        started = time.monotonic()
        got = 0
        parser = EventStreamParser()
        async with session.get(
            f"{url}/v1/runs/big/stream",
            headers={"Accept": "text/event-stream", "Last-Event-ID": "0"},
        ) as resumed:
            async for data in resumed.content.iter_any():
                got += sum(1 for e in parser.feed(data) if e.event == "STEP")
                if got >= items:
                    break
        took = time.monotonic() - started
        stop.set()
        await producing
        await cancel_and_wait(watching)
        async with session.get(f"{url}/metrics") as response:
            metrics = await response.text()
    lag = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("bridge_event_loop_lag_max_seconds ")
    )
    return {
        "items": items,
        "catch_up_s": took,
        "items_per_s": items / took,
        "live_delay_max_s": max(live_delays) if live_delays else None,
        "live_events_meanwhile": len(live_delays),
        "loop_lag_max_s": lag,
    }


# --- report --------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], tick: dict[str, Any], resume: dict[str, Any]) -> str:
    lines = [
        "# Feeds and fleets (bench/studies/fleet.py, `bench/run fleet`)",
        "",
        "## Fleet economy: one list request against per-run polling",
        "",
        "| mode | runs | requests / interval | body bytes / interval | changes | "
        "delay p50 | p99 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['runs']} | {r['requests_per_interval']:.1f} | "
            f"{r['bytes_per_interval']:,.0f} | {r['changes']} | {r['delay_p50_s']:.3f} s | "
            f"{r['delay_p99_s']:.3f} s | {r['delay_max_s']:.3f} s |"
        )
    lines += [
        "",
        f"Interval {rows[0]['interval_s']} s, window {rows[0]['window_intervals']} intervals.",
        "",
        f"## List tick CPU, {tick['items']} items (bridge code, in-process)",
        "",
        "| tick | median | max |",
        "|---|---|---|",
        f"| first list (pollers made) | {tick['first_ms']:.1f} ms | |",
    ]
    for label in ("unchanged", "changed_10pct", "changed_third", "changed_all"):
        lines.append(
            f"| {label} | {tick[f'{label}_ms_median']:.1f} ms | {tick[f'{label}_ms_max']:.1f} ms |"
        )
    lines += [
        "",
        f"## Feed resume, {resume['items']} items back",
        "",
        f"- caught up in {resume['catch_up_s']:.2f} s ({resume['items_per_s']:,.0f} items/s)",
        f"- another run's viewer meanwhile: {resume['live_events_meanwhile']} events, "
        f"worst delay {resume['live_delay_max_s']:.3f} s",
        f"- the bridge's event-loop lag, max over the last minute: "
        f"{resume['loop_lag_max_s'] * 1000:.0f} ms",
        "",
    ]
    return "\n".join(lines)


async def measure(argv: list[str]) -> None:
    parser = cli.parser("fleet", __doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--window", type=int, default=5)
    args = parser.parse_args(argv)
    rows = [
        await economy(mode, args.runs, args.interval, args.window) for mode in ("list", "per-run")
    ]
    tick = await list_tick()
    resume = await feed_resume()
    OUT.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    (OUT / "fleet.json").write_text(
        json.dumps({"economy": rows, "list_tick": tick, "feed_resume": resume}, indent=2)
    )
    text = report(rows, tick, resume)
    (RESULTS / "fleet.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(measure(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
