"""One run's whole life, watched by 100 viewers: what each way of sparing the upstream
costs the upstream and the viewers, side by side in one run.

    bench/run lifecycle [--compress 20] [--viewers 100] [--variants abcde]

The run: 2 minutes queued, 5 minutes running with a change about every 20 s, then
completed (16 changes), played in compressed time (``--compress 20``: the 7 minutes take
21 s, and every interval is divided by the same factor, so the 2 s poll interval is
0.1 s). A scripted upstream on 127.0.0.1 (in this module) answers ``GET /runs/<id>`` with
a 2-4 KB status, a strong ETag and a Last-Modified, and 304 without a body while the
client's If-None-Match / If-Modified-Since still match. The variants:

    a  naive: every viewer polls the upstream itself at the poll interval (no bridge;
       bench/harness/naive.py's loop, on a fixed cadence like a page's setInterval)
    b  the bridge, plain polling (BRIDGE_CONDITIONAL_REQUESTS=false)
    c  the bridge, conditional requests (the default)
    d  c + per-state intervals (BRIDGE_POLL_INTERVALS="queued=10", scaled)
    e  poke: the upstream POSTs /v1/runs/<id>/poll after each change (a webhook), and
       the poll interval is 30 s (scaled), only a safety net

For each: the upstream's requests and the status body bytes it sent (its own counts),
and the delay from each change to the last viewer having it (median and worst over the
changes). The bridge is the real one, in-process (tests.support.running_bridge), and its
own metrics are checked against the upstream's counts. Writes bench/out/lifecycle.json
and bench/results/lifecycle.md, and prints the table.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import cli
from bench.harness.common import BENCH_DIR, OUT_DIR, raise_nofile
from tests.support import loopback_socket, running_bridge

# --- the scenario, in real (uncompressed) seconds -------------------------------------

RUN_ID = "run-20260101-0042"
QUEUED_S = 120.0
RUNNING_S = 300.0
CHANGE_EVERY_S = 20.0
#: Each change lands up to this far either side of its nominal time (seeded). At exact
#: multiples of the poll interval every change would meet the bridge's cadence at the same
#: phase, and the "median" and "worst" delays would be one number.
JITTER_S = 4.0
POLL_INTERVAL_S = 2.0
#: Variant d: how often a queued run is polled.
QUEUED_INTERVAL_S = 10.0
#: Variant e: the poll interval when pokes carry the news (a safety net only).
SAFETY_NET_S = 30.0
#: The scripted run's wall clock for timestamps in bodies and for Last-Modified: HTTP dates
#: have whole seconds, so they come from the uncompressed timeline, where changes are
#: seconds apart (compressed, two changes could share a second and a Last-Modified).
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
POKE_TOKEN = "lifecycle-bench-poke-token"

#: Bounds: requests the upstream logs per variant (naive at 100 viewers makes ~20,000).
MAX_LOGGED_REQUESTS = 2_000_000
CONNECT_TIMEOUT_S = 30.0

REVISION = re.compile(rb'"revision":(\d+)')
TERMINAL_EVENTS = (b"complete", b"error")

NODES = (
    "checkout",
    "restore-cache",
    "lint",
    "typecheck",
    "unit-tests-1",
    "unit-tests-2",
    "integration-tests",
    "build-image",
    "scan-image",
    "push-image",
    "deploy-staging",
    "smoke-tests",
)


# --- the run's statuses ----------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    number: int
    #: When it becomes current, in scenario seconds (uncompressed) from the start.
    at: float
    state: str
    body: bytes
    etag: str
    last_modified: str
    #: Epoch seconds of last_modified, for If-Modified-Since.
    modified: int


def iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH + at))


def status_doc(number: int, at: float, state: str, running_steps: int) -> dict[str, Any]:
    """A CI-like ExecutionStatus of 2-4 KB: a nodes array and a log tail."""
    started = QUEUED_S
    if state == "queued":
        done, current = 0, -1
    elif state == "running":
        done = len(NODES) * (number - 1) // running_steps
        current = done
    else:
        done, current = len(NODES), -1
    nodes = []
    for i, name in enumerate(NODES):
        # Node i runs over its share of the running phase; times are deterministic.
        n_start = started + i * RUNNING_S / len(NODES)
        n_end = n_start + RUNNING_S / len(NODES)
        node_state = "succeeded" if i < done else "running" if i == current else "pending"
        nodes.append(
            {
                "name": name,
                "state": node_state,
                "attempt": 1,
                "runner": f"ci-runner-{(i * 7) % 16:02d}" if node_state != "pending" else None,
                "startedAt": iso(n_start) if node_state != "pending" else None,
                "finishedAt": iso(n_end) if node_state == "succeeded" else None,
                "exitCode": 0 if node_state == "succeeded" else None,
            }
        )
    log = [f"{iso(0)} [scheduler] run {RUN_ID} queued: waiting for a runner (position 3)"]
    for step in range(1, number + 1):
        node = NODES[min(len(NODES) - 1, len(NODES) * (step - 1) // running_steps)]
        for line in range(3):
            log.append(
                f"{iso(at)} [{node}] step {step}.{line}: processed batch {step * 3 + line} "
                f"of the workspace, cache hit ratio 0.{(step * 37 + line) % 100:02d}"
            )
    return {
        "id": RUN_ID,
        "revision": number,
        "status": state,
        "progress": round(done / len(NODES), 3),
        "pipeline": {"name": "release-build", "ref": "refs/heads/main", "sha": "9" * 40},
        "parameters": {
            "target": "linux-amd64",
            "cacheKey": "deps-" + "4" * 32,
            "image": "registry.example.com/team/release-build:2026.01",
            "environment": "staging",
            "requestedBy": "ci-bot@example.com",
        },
        "createdAt": iso(0),
        "startedAt": iso(started) if state != "queued" else None,
        "updatedAt": iso(at),
        "finishedAt": iso(at) if state == "completed" else None,
        "nodes": nodes,
        "logTail": log[-10:],
        "errorMessage": None,
    }


def timeline(seed: int) -> list[Revision]:
    """Revision 0 (queued) from the start; a change about every CHANGE_EVERY_S while running
    (the first one starts it); the last one completes the run after RUNNING_S."""
    rng = random.Random(seed)
    nominal = [QUEUED_S + k * CHANGE_EVERY_S for k in range(int(RUNNING_S / CHANGE_EVERY_S) + 1)]
    times = [0.0] + [t + rng.uniform(-JITTER_S, JITTER_S) for t in nominal]
    running_steps = len(nominal) - 1
    revisions = []
    for number, at in enumerate(times):
        state = "queued" if number == 0 else "completed" if number == len(nominal) else "running"
        body = json.dumps(
            status_doc(number, at, state, running_steps), separators=(",", ":")
        ).encode()
        modified = EPOCH + int(at)
        revisions.append(
            Revision(
                number=number,
                at=at,
                state=state,
                body=body,
                etag='"' + hashlib.sha256(body).hexdigest()[:24] + '"',
                last_modified=formatdate(modified, usegmt=True),
                modified=modified,
            )
        )
    return revisions


# --- the scripted upstream -------------------------------------------------------------


class Upstream:
    """``GET /runs/<RUN_ID>``: the current revision, 304 while the validators match.
    Counts what it answers; ``play`` moves the run along its timeline (and pokes)."""

    def __init__(self, revisions: Sequence[Revision]) -> None:
        self.revisions = list(revisions)
        self.current = 0
        #: time.monotonic() at which each revision became current (0: before the start).
        self.changed_at: dict[int, float] = {}
        #: (time.monotonic(), HTTP status) of every status request, in arrival order.
        self.log: deque[tuple[float, int]] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self.statuses: Counter[int] = Counter()
        self.body_bytes = 0
        self.with_if_none_match = 0
        self.with_if_modified_since = 0
        #: Requests for anything else (there should be none).
        self.other = 0
        #: Poke: the bridge's poll URL, and what its answers said.
        self.poke_url: str | None = None
        self.poke_session: aiohttp.ClientSession | None = None
        self.pokes: Counter[str] = Counter()
        self._poke_tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/runs/{run_id}", self.get_run)
        app.router.add_route("*", "/{tail:.*}", self.elsewhere)
        return app

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.other += 1
        return web.Response(status=404)

    async def get_run(self, request: web.Request) -> web.Response:
        if request.match_info["run_id"] != RUN_ID:
            self.other += 1
            return web.json_response({"message": "no such run"}, status=404)
        rev = self.revisions[self.current]
        headers = {
            "ETag": rev.etag,
            "Last-Modified": rev.last_modified,
            "Cache-Control": "no-cache",
        }
        self.with_if_none_match += "If-None-Match" in request.headers
        self.with_if_modified_since += "If-Modified-Since" in request.headers
        if unchanged(request, rev):
            self.record(304, 0)
            return web.Response(status=304, headers=headers)
        self.record(200, len(rev.body))
        return web.Response(body=rev.body, content_type="application/json", headers=headers)

    def record(self, status: int, body_bytes: int) -> None:
        self.log.append((time.monotonic(), status))
        self.statuses[status] += 1
        self.body_bytes += body_bytes

    async def play(self, t0: float, compress: float) -> None:
        """Make each change at its (compressed) time; poke right after it, like a webhook."""
        for rev in self.revisions[1:]:
            await asyncio.sleep(max(0.0, t0 + rev.at / compress - time.monotonic()))
            self.current = rev.number
            self.changed_at[rev.number] = time.monotonic()
            if self.poke_url is not None:
                # Not awaited here: a slow webhook must not delay the run's next change.
                task = asyncio.create_task(self.poke())
                self._poke_tasks.add(task)
                task.add_done_callback(self._poke_tasks.discard)

    async def poke(self) -> None:
        assert self.poke_url is not None and self.poke_session is not None
        try:
            async with self.poke_session.post(
                self.poke_url,
                headers={"Authorization": f"Bearer {POKE_TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                body = await response.json() if response.status == 202 else {}
                self.pokes[f"{response.status} {body.get('outcome', '')}".strip()] += 1
        except (aiohttp.ClientError, TimeoutError) as error:
            self.pokes[type(error).__name__] += 1

    async def settle(self) -> None:
        """Wait for the pokes still in flight (at most one per change, each 5 s at most)."""
        if self._poke_tasks:
            await asyncio.gather(*self._poke_tasks, return_exceptions=True)


def unchanged(request: web.Request, rev: Revision) -> bool:
    """RFC 9110 13.1.2-13.1.3: If-None-Match (weak comparison, ``*`` matches) decides when
    present, and If-Modified-Since is then ignored; else If-Modified-Since >= Last-Modified."""
    none_match = request.headers.get("If-None-Match")
    if none_match is not None:
        tags = (tag.strip() for tag in none_match.split(","))
        return any(tag == "*" or tag.removeprefix("W/") == rev.etag for tag in tags)
    since = request.headers.get("If-Modified-Since")
    if since is None:
        return False
    try:
        return rev.modified <= parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored (RFC 9110 13.1.3)


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on a free 127.0.0.1 port until the block ends; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = loopback_socket()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


# --- viewers -----------------------------------------------------------------------------


@dataclass
class Viewer:
    #: Revision -> time.monotonic() when this viewer first had it.
    seen: dict[int, float] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0
    errors: int = 0
    ended: str = ""

    def saw(self, body: bytes, at: float) -> int | None:
        match = REVISION.search(body)
        if match is None:
            return None
        number = int(match[1])
        self.seen.setdefault(number, at)
        self.ready.set()
        return number


async def watch_stream(viewer: Viewer, session: aiohttp.ClientSession, url: str) -> None:
    """One SSE viewer of the bridge until the run's terminal event (the caller bounds it
    in time). Frames are split on blank lines and the revision read with a regex: a
    full event-stream parser in Python, run by 100 viewers in this one process, would
    put tens of milliseconds of parsing per change into the delays measured."""
    async with session.get(
        url,
        headers={"Accept": "text/event-stream"},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
    ) as response:
        if response.status != 200:
            viewer.ended = f"http {response.status}"
            return
        pending = b""
        while True:
            chunk = await response.content.readany()
            # Stamped on arrival, before any parsing.
            now = time.monotonic()
            if not chunk:
                viewer.ended = "eof"
                return
            frames = (pending + chunk).split(b"\n\n")
            pending = frames.pop()
            for frame in frames:
                name = frame.partition(b"\n")[0].removeprefix(b"event: ")
                viewer.saw(frame, now)
                if name in TERMINAL_EVENTS:
                    viewer.ended = name.decode()
                    return


async def poll_by_hand(
    viewer: Viewer,
    session: aiohttp.ClientSession,
    url: str,
    interval: float,
    phase: float,
    final: int,
    deadline: float,
) -> None:
    """bench/harness/naive.py's loop, run by the viewer itself (GET, note a changed status), on a
    fixed cadence like a page's setInterval. naive.py sleeps the interval after each
    answer instead; 100 such loops in this one process drift into step with each other
    (a busy loop wakes several at once, and they stay together), which real viewers'
    browsers would not do, and which would flatter the delay to the last viewer."""
    # Viewers open the page at different moments: their polls are spread over the interval.
    next_poll = time.monotonic() + phase
    last: bytes | None = None
    while next_poll < deadline:
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
        viewer.requests += 1
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                body = await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            viewer.errors += 1
            ok, body = False, b""
        now = time.monotonic()
        if ok and body != last:
            last = body
            if viewer.saw(body, now) == final:
                viewer.ended = "complete"
                return
        next_poll += interval
        if next_poll < now:
            # A poll that overran skips the ticks it missed instead of bunching up.
            next_poll += interval * (1 + int((now - next_poll) // interval))


class LagProbe:
    """What could make the delays noise rather than design, while the run plays: how late
    this process's event loop runs a 5 ms timer (everything here, upstream, bridge and
    viewers, shares the loop), the garbage collector's pauses, and the CPU time other
    processes took (the machine may be shared)."""

    PERIOD = 0.005

    def __init__(self) -> None:
        self.lags: deque[float] = deque(maxlen=100_000)
        self.gc_pauses: deque[float] = deque(maxlen=100_000)
        self._gc_started = 0.0
        self._cpu = (0.0, 0.0)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            await asyncio.sleep(self.PERIOD)
            self.lags.append(time.monotonic() - start - self.PERIOD)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        gc.callbacks.append(self._gc)
        self.reset()

    def reset(self) -> None:
        """Forget what came before (the connects)."""
        self.lags.clear()
        self.gc_pauses.clear()
        self._cpu = cpu_seconds()

    async def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            await self._task
        own, busy = cpu_seconds()
        lags = sorted(self.lags) or [0.0]
        return {
            "loop_lag_p50_ms": 1000 * lags[len(lags) // 2],
            "loop_lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)],
            "loop_lag_max_ms": 1000 * lags[-1],
            "gc_collections": len(self.gc_pauses),
            "gc_max_pause_ms": 1000 * max(self.gc_pauses, default=0.0),
            "cpu_this_process_s": own - self._cpu[0],
            "cpu_other_processes_s": max(0.0, (busy - self._cpu[1]) - (own - self._cpu[0])),
        }


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of this process, busy CPU seconds of the whole machine)."""
    times = os.times()
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return times.user + times.system, (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --- one variant -------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    #: Bridge settings in real seconds (scaled when run); None: no bridge (naive).
    bridge: dict[str, Any] | None
    poke: bool = False


VARIANTS = (
    Variant("a", "naive: each viewer polls", None),
    Variant("b", "bridge, plain polling", {"conditional_requests": False}),
    Variant("c", "bridge, conditional requests", {}),
    Variant(
        "d",
        f"bridge, conditional + queued={QUEUED_INTERVAL_S:g}s",
        {"poll_intervals": {"queued": QUEUED_INTERVAL_S}},
    ),
    Variant(
        "e",
        f"bridge, poke + {SAFETY_NET_S:g}s safety net",
        {"poll_interval": SAFETY_NET_S, "poke_token": POKE_TOKEN},
        poke=True,
    ),
)


@dataclass(frozen=True)
class Config:
    compress: float
    viewers: int
    seed: int
    revisions: list[Revision]

    def scaled(self, seconds: float) -> float:
        return seconds / self.compress

    @property
    def interval(self) -> float:
        return self.scaled(POLL_INTERVAL_S)

    @property
    def final(self) -> int:
        return self.revisions[-1].number

    @property
    def wall(self) -> float:
        return self.scaled(self.revisions[-1].at)


def bridge_settings(variant: Variant, config: Config) -> dict[str, Any]:
    assert variant.bridge is not None
    real = {"poll_interval": POLL_INTERVAL_S, **variant.bridge}
    settings: dict[str, Any] = {
        "poll_interval": config.scaled(real["poll_interval"]),
        # 100 viewers come from one address; the per-client cap (64) is not under test.
        "max_streams_per_client": config.viewers + 16,
        # No ping and no stream timeout inside the run.
        "ping_interval": 3600.0,
        "stream_timeout": config.wall + 600.0,
        "log_level": "WARNING",
    }
    if "conditional_requests" in real:
        settings["conditional_requests"] = real["conditional_requests"]
    if "poll_intervals" in real:
        settings["poll_intervals"] = {
            state: config.scaled(seconds) for state, seconds in real["poll_intervals"].items()
        }
    if "poke_token" in real:
        settings["poke_token"] = real["poke_token"]
    return settings


async def bridge_metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The bridge's own counters that the upstream's counts must match."""
    async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
        text = await r.text()
    wanted = {
        "bridge_upstream_requests": "upstream_requests",
        "bridge_upstream_bytes": "upstream_bytes",
        "bridge_events_published": "events",
        "bridge_pokes": "pokes",
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        prefix = wanted.get(family.name)
        if prefix is None:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # the _created samples
            label = next(iter(sample.labels.values()), "")
            out[f"{prefix}{'.' + label if label else ''}"] = sample.value
    return out


async def cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def measure(variant: Variant, config: Config) -> dict[str, Any]:
    upstream = Upstream(config.revisions)
    lag = LagProbe()
    viewers = [Viewer() for _ in range(config.viewers)]
    tasks: list[asyncio.Task[None]] = []
    settings: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    # Room after the last change for the slowest way to see it (variant e's safety net,
    # should a poke be lost) and the fan-out.
    longest = max(config.scaled(SAFETY_NET_S), config.interval)
    async with AsyncExitStack() as stack:
        base = await stack.enter_async_context(serving(upstream.app()))
        status_url = f"{base}/runs/{RUN_ID}"
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        bridge_url: str | None = None
        if variant.bridge is not None:
            settings = bridge_settings(variant, config)
            bridge = await stack.enter_async_context(running_bridge(base, **settings))
            bridge_url = bridge.url
        # Runs first on the way out (before the bridge and the upstream stop), also on errors.
        stack.push_async_callback(cancel_all, tasks)
        lag.start()
        stack.push_async_callback(lag.stop)
        started = time.monotonic()
        if bridge_url is None:
            rng = random.Random(config.seed)
            deadline = started + CONNECT_TIMEOUT_S + config.wall + 3 * longest + 10
            tasks += [
                asyncio.create_task(
                    poll_by_hand(
                        viewer,
                        session,
                        status_url,
                        config.interval,
                        rng.uniform(0, config.interval),
                        config.final,
                        deadline,
                    )
                )
                for viewer in viewers
            ]
        else:
            if variant.poke:
                upstream.poke_url = f"{bridge_url}/v1/runs/{RUN_ID}/poll"
                upstream.poke_session = session
            stream_url = f"{bridge_url}/v1/runs/{RUN_ID}/stream"
            tasks += [
                asyncio.create_task(watch_stream(viewer, session, stream_url)) for viewer in viewers
            ]
        # Everyone is watching the queued run before its clock starts.
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await asyncio.gather(*(viewer.ready.wait() for viewer in viewers))
        t0 = time.monotonic()
        upstream.changed_at[0] = t0
        # Noise while the run plays, not during the connects.
        lag.reset()
        script = asyncio.create_task(upstream.play(t0, config.compress))
        tasks.append(script)
        done, pending = await asyncio.wait(tasks, timeout=config.wall + 3 * longest + 10)
        unfinished = len(pending - {script})
        await cancel_all(list(pending))
        if script in pending:
            raise RuntimeError("the scripted run did not reach its end in time")
        script.result()  # raises what went wrong in it, if anything
        await upstream.settle()
        # Anything still in flight lands before the counts are read.
        await asyncio.sleep(min(2.0, 3 * config.interval))
        if bridge_url is not None:
            metrics = await bridge_metrics(session, bridge_url)
        noise = await lag.stop()
        failures = [
            repr(task.exception()) for task in done if not task.cancelled() and task.exception()
        ]
    return summarize(
        variant,
        config,
        upstream,
        viewers,
        settings=settings,
        metrics=metrics,
        noise=noise,
        connect_s=t0 - started,
        unfinished=unfinished,
        failures=failures[:5],
    )


def summarize(
    variant: Variant,
    config: Config,
    upstream: Upstream,
    viewers: list[Viewer],
    *,
    settings: dict[str, Any],
    metrics: dict[str, float],
    noise: dict[str, float],
    connect_s: float,
    unfinished: int,
    failures: list[str],
) -> dict[str, Any]:
    changes = [rev.number for rev in config.revisions[1:]]
    last_ms: list[float] = []
    median_viewer_ms: list[float] = []
    missed = 0
    for number in changes:
        changed = upstream.changed_at[number]
        delays = [v.seen[number] - changed for v in viewers if number in v.seen]
        missed += len(viewers) - len(delays)
        if delays:
            last_ms.append(1000 * max(delays))
            median_viewer_ms.append(1000 * statistics.median(delays))
    requests = sum(upstream.statuses.values())
    not_modified = upstream.statuses[304]
    started = upstream.changed_at.get(1, float("inf"))
    finished = upstream.changed_at.get(config.final, float("inf"))
    t0 = upstream.changed_at[0]

    def phase(at: float) -> str:
        if at < t0:
            return "connect"
        if at < started:
            return "queued"
        return "running" if at < finished else "end"

    phases = Counter(phase(at) for at, _ in upstream.log)
    result: dict[str, Any] = {
        "key": variant.key,
        "name": variant.name,
        "bridge_settings": {k: v for k, v in settings.items() if k != "poke_token"},
        "upstream": {
            "requests": requests,
            "ok": upstream.statuses[200],
            "not_modified": not_modified,
            "body_bytes": upstream.body_bytes,
            "by_phase": {k: phases[k] for k in ("connect", "queued", "running", "end")},
            "with_if_none_match": upstream.with_if_none_match,
            "with_if_modified_since": upstream.with_if_modified_since,
            "other_requests": upstream.other,
            "pokes_sent": dict(upstream.pokes),
        },
        "delay_to_last_viewer_ms": {
            "median": statistics.median(last_ms) if last_ms else None,
            "worst": max(last_ms) if last_ms else None,
            "per_change": [round(ms, 2) for ms in last_ms],
        },
        "delay_median_viewer_ms": {
            "median": statistics.median(median_viewer_ms) if median_viewer_ms else None,
        },
        "missed_changes": missed,
        "viewers_ended": dict(Counter(v.ended or "unfinished" for v in viewers)),
        "viewer_requests": sum(v.requests for v in viewers),
        "viewer_errors": sum(v.errors for v in viewers),
        "unfinished_viewers": unfinished,
        "failures": failures,
        "connect_s": round(connect_s, 3),
        "noise": noise,
        "bridge_metrics": metrics,
    }
    result["checks"] = checks(variant, config, result)
    return result


def checks(variant: Variant, config: Config, result: dict[str, Any]) -> list[str]:
    """What must hold for the figures to mean what the table says; 'FAIL ...' otherwise."""
    up = result["upstream"]
    out: list[str] = []

    def check(ok: bool, what: str) -> None:
        out.append(("ok   " if ok else "FAIL ") + what)

    check(
        result["missed_changes"] == 0,
        f"every viewer had every change ({result['missed_changes']} missed)",
    )
    check(up["other_requests"] == 0, "the upstream got no request but the run's status")
    if variant.bridge is None:
        check(
            result["viewer_requests"] == up["requests"],
            f"viewers' own request count {result['viewer_requests']} = upstream's {up['requests']}",
        )
        return out
    m = result["bridge_metrics"]
    sent = m.get("upstream_requests.ok", 0) + m.get("upstream_requests.not_modified", 0)
    other = {k: v for k, v in m.items() if k.startswith("upstream_requests.") and v}
    check(
        sent == up["requests"] and len(other) <= 2,
        f"bridge_upstream_requests_total ok+not_modified {sent:g} = upstream's {up['requests']}"
        f" (outcomes: {other})",
    )
    check(
        m.get("upstream_requests.not_modified", 0) == up["not_modified"],
        f'bridge_upstream_requests_total{{outcome="not_modified"}} '
        f"{m.get('upstream_requests.not_modified', 0):g} = upstream's 304s {up['not_modified']}",
    )
    check(
        m.get("upstream_bytes", 0) == up["body_bytes"],
        f"bridge_upstream_bytes_total {m.get('upstream_bytes', 0):g} = upstream's body bytes "
        f"{up['body_bytes']}",
    )
    # One event per change (not per viewer): revision 0 and 15 more progress, 1 complete.
    check(
        m.get("events.progress", 0) == config.final and m.get("events.complete", 0) == 1,
        f"events published: {m.get('events.progress', 0):g} progress, "
        f"{m.get('events.complete', 0):g} complete (expected {config.final} and 1)",
    )
    conditional = variant.bridge.get("conditional_requests", True)
    if conditional:
        check(up["with_if_none_match"] > 0, "the bridge sent If-None-Match")
        # Every 200 after the first is a change the bridge had not seen: no body twice.
        check(
            up["ok"] == len(config.revisions),
            f"one 200 per revision ({up['ok']} for {len(config.revisions)})",
        )
    else:
        check(
            up["with_if_none_match"] == 0 and up["with_if_modified_since"] == 0,
            "no conditional headers sent",
        )
    if variant.poke:
        accepted = sum(n for k, n in up["pokes_sent"].items() if k.startswith("202"))
        check(
            accepted == len(config.revisions) - 1,
            f"every poke accepted ({up['pokes_sent']})",
        )
    return out


# --- the report --------------------------------------------------------------------------


def ratio(value: float, against: float) -> str:
    return f"{value / against:.3f}x" if against else "-"


def kilobytes(n: int) -> str:
    return f"{n / 1000:,.0f} kB" if n >= 10_000 else f"{n / 1000:,.1f} kB"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = report["variants"]
    by_key = {row["key"]: row for row in rows}
    plain = by_key.get("b")
    lines = [
        "| variant | upstream requests | of them 304 | body bytes sent | requests vs (b) "
        "| bytes vs (b) | delay to the last viewer: median | worst |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        up = row["upstream"]
        delay = row["delay_to_last_viewer_ms"]
        vs_req = ratio(up["requests"], plain["upstream"]["requests"]) if plain else "-"
        vs_bytes = ratio(up["body_bytes"], plain["upstream"]["body_bytes"]) if plain else "-"
        lines.append(
            f"| ({row['key']}) {row['name']} | {up['requests']:,} | {up['not_modified']:,} "
            f"| {kilobytes(up['body_bytes'])} | {vs_req} | {vs_bytes} "
            f"| {ms(delay['median'])} | {ms(delay['worst'])} |"
        )
    notes = []
    if plain:
        for key in ("c", "e"):
            if key in by_key:
                up = by_key[key]["upstream"]
                notes.append(
                    f"({key})/(b): requests {ratio(up['requests'], plain['upstream']['requests'])}"
                    f", bytes {ratio(up['body_bytes'], plain['upstream']['body_bytes'])}"
                )
    failed = [f"({row['key']}) {c}" for row in rows for c in row["checks"] if c.startswith("FAIL")]
    head = (
        f"One run, {cfg['viewers']} viewers from start to end: {QUEUED_S / 60:g} min queued, "
        f"{RUNNING_S / 60:g} min running with a change about every {CHANGE_EVERY_S:g} s, "
        f"then completed ({cfg['changes']} changes), compressed {cfg['compress']:g}x "
        f"({cfg['wall_s']:.1f} s per variant; the {POLL_INTERVAL_S:g} s poll interval is "
        f"{1000 * cfg['interval_s']:g} ms). Status bodies {cfg['body_bytes_min']:,}-"
        f"{cfg['body_bytes_max']:,} bytes with a strong ETag and Last-Modified; 304 without "
        "a body while unchanged. Delays: from each change at the upstream to the last viewer "
        f"having it, in compressed time (x{cfg['compress']:g} for real time, except the few "
        "ms of fan-out)."
    )
    noise = "; ".join(
        f"({row['key']}) {row['noise']['loop_lag_p99_ms']:.1f} / "
        f"{row['noise']['loop_lag_max_ms']:.0f} ms, GC {row['noise']['gc_max_pause_ms']:.0f} ms, "
        f"{row['noise']['cpu_other_processes_s']:.1f} s"
        for row in rows
    )
    tail = [
        *(["", "; ".join(notes) + "."] if notes else []),
        "",
        "Noise while the run played (event loop lag p99 / max, longest GC pause, CPU time of "
        f"other processes): {noise}.",
        "",
        "Checks: "
        + ("all passed" if not failed else "; ".join(failed))
        + " (upstream's counts against the bridge's /metrics, every viewer had every change;"
        " bench/out/lifecycle.json lists them).",
        "",
        f"`{report['command']}`; {report['machine']}; {report['date']}.",
    ]
    return "\n".join([head, "", *lines, *tail]).rstrip() + "\n"


# --- main -------------------------------------------------------------------------------


async def quiet(most: float = 20.0, busy_cores: float = 0.3) -> float:
    """Wait (up to ``most`` seconds) until other processes use less than ``busy_cores``
    over a second, as bench/harness/suite.py does: the machine may be shared. Seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < most:
        own, busy = cpu_seconds()
        await asyncio.sleep(1.0)
        own2, busy2 = cpu_seconds()
        if (busy2 - busy) - (own2 - own) < busy_cores:
            break
    return time.monotonic() - started


async def run(config: Config, keys: str) -> list[dict[str, Any]]:
    results = []
    for variant in VARIANTS:
        if variant.key not in keys:
            continue
        gc.collect()
        waited = await quiet()
        print(f"({variant.key}) {variant.name} ...", file=sys.stderr, flush=True)
        result = await measure(variant, config)
        result["noise"]["waited_for_quiet_s"] = round(waited, 1)
        for line in result["checks"]:
            if line.startswith("FAIL"):
                print(f"    {line}", file=sys.stderr)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.parser("lifecycle", __doc__)
    parser.add_argument("--compress", type=float, default=20.0, help="time compression factor")
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--variants", default="abcde", help="any of a, b, c, d, e")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)
    if not 1 <= args.compress <= 100:
        parser.error("--compress must be from 1 to 100 (at 100 the 2 s interval is 20 ms)")
    if not 1 <= args.viewers <= 1000:
        parser.error("--viewers must be from 1 to 1000")
    keys = "".join(k for k in args.variants if k in "abcde")
    raise_nofile()
    revisions = timeline(args.seed)
    config = Config(args.compress, args.viewers, args.seed, revisions)
    results = asyncio.run(run(config, keys))
    sizes = [len(rev.body) for rev in revisions]
    report = {
        "config": {
            "compress": config.compress,
            "viewers": config.viewers,
            "seed": config.seed,
            "changes": len(revisions) - 1,
            "wall_s": config.wall,
            "interval_s": config.interval,
            "change_times_s": [round(rev.at, 2) for rev in revisions],
            "body_bytes_min": min(sizes),
            "body_bytes_max": max(sizes),
        },
        "command": cli.command_line("lifecycle", argv),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"aiohttp {aiohttp.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "variants": results,
    }
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "lifecycle.json").write_text(json.dumps(report, indent=2) + "\n")
    table = render(report)
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "lifecycle.md").write_text(
        "# Run lifecycle: sparing the upstream (`bench/run lifecycle`)\n\n" + table
    )
    print(table)


if __name__ == "__main__":
    main()
