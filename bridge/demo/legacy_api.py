"""A simulated legacy run API on aiohttp: the demo's upstream and the tests' real upstream.

    GET  /runs               the runs, newest first (summaries: id, status, progress, state)
    POST /runs               start a run; optional JSON body {"outcome": "completed"|"failed"|...}
    GET  /runs/{id}          one run's ExecutionStatus (what the bridge polls)
    POST /runs/{id}/cancel   cancel a queued or running run

With ``profile=`` (bridge/demo/shapes.py) a run's status is answered in that API's shape
and at its path instead of ``GET /runs/{id}`` (GitHub Actions at
``/repos/demo/demo/actions/runs/{id}``, Databricks at
``/api/2.1/jobs/runs/get?run_id={id}``, ...); the run list, start and cancel stay as above.

Tests drive it directly: scripted runs that move on command, per-run credentials, a
request log, and faults injected on command (status codes, hangs, resets, bad bodies).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import random
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bridge.demo.runs import Outcome, ScriptedRun, TimedRun, scripted_statuses
from bridge.demo.shapes import Shape, shape_for
from bridge.demo.vocabularies import DEMOS, SteppedRun
from bridge.tasks import cancel_and_wait

Run = TimedRun | ScriptedRun | SteppedRun

#: Faults the API can be told to commit on a run's next requests.
FAULTS = (
    "status",  # answer with fault.status (and fault.headers), e.g. 500, 503, 429
    "hang",  # never answer (until the client gives up)
    "reset",  # close the connection without an answer
    "malformed",  # 200 with a body that is not JSON
    "not-object",  # 200 with JSON that is not an object
    "huge",  # 200 with a body of fault.size bytes
    "gzip-bomb",  # 200, gzip-encoded, that inflates to fault.size bytes
    "redirect",  # 302 to fault.location
    "slow",  # answer after fault.delay seconds
)


@dataclass
class Fault:
    kind: str
    #: How many requests it applies to; None = until cleared.
    times: int | None = 1
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 2 * 1024 * 1024
    location: str = "http://127.0.0.1:9/elsewhere"
    delay: float = 0.0


@dataclass
class Credential:
    header: str
    value: str


@dataclass(frozen=True)
class SeenRequest:
    run_id: str
    path: str
    headers: dict[str, str]
    #: time.monotonic() when the request arrived.
    at: float


#: The simulated API's list of runs still going.
ACTIVE_PATH = "/active-runs"
#: Its feed of one run's events (seed 002's shape), as BRIDGE_FEED_PATH names it.
FEED_PATH = "/feed/{run_id}/events?since={cursor}"


def feed_events(status: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's events so far, seed 002's shape: each node's start and end, in order."""
    events: list[dict[str, Any]] = []
    for i, node in enumerate(status.get("nodes") or []):
        if node["status"] == "pending":
            break
        events.append(
            {"sequence": 2 * i + 1, "eventType": "NODE_STARTED", "payload": {"node": node["id"]}}
        )
        if node["status"] != "running":
            events.append(
                {
                    "sequence": 2 * i + 2,
                    "eventType": "NODE_" + str(node["status"]).upper(),
                    "payload": {"node": node["id"]},
                }
            )
    return events


class LegacyApi:
    def __init__(
        self,
        *,
        step: float = 1.5,
        seed: int | None = None,
        profile: str | None = None,
        events: str | None = None,
    ) -> None:
        self.step = step
        #: A seed vocabulary's runs (bridge/demo/vocabularies.py) instead of seed 004's.
        self.events = DEMOS[events] if events is not None else None
        #: How a run's status is answered, and where (KeyError: not simulated).
        self.shape: Shape = shape_for(profile)
        self.runs: dict[str, Run] = {}
        self.requests: Counter[str] = Counter()
        #: The last requests for run statuses, newest last (bounded).
        self.seen: deque[SeenRequest] = deque(maxlen=10_000)
        self.faults: dict[str, deque[Fault]] = {}
        self.credentials: dict[str, Credential] = {}
        #: Status requests being answered now, and the most ever at once.
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/runs", self._list),
                # Every run still going, each as its status: BRIDGE_UPSTREAM_LIST_PATH.
                web.get(ACTIVE_PATH, self._active),
                # Each run's events behind a cursor, seed 002's shape: BRIDGE_FEED_PATH.
                web.get("/feed/{run_id}/events", self._feed),
                web.post("/runs", self._create),
                web.post("/runs/{run_id}/cancel", self._cancel),
                web.get(self.shape.route, self._status),
            ]
        )
        self.url = ""

    # --- what tests and the demo call --------------------------------------------

    @property
    def run_path(self) -> str:
        """BRIDGE_UPSTREAM_RUN_PATH for a bridge in front of this API."""
        return self.shape.run_path

    def answer(self, run: Run, now: float | None = None) -> dict[str, Any]:
        """What ``GET`` of ``run``'s status answers now, in this API's shape."""
        now = time.time() if now is None else now
        return self.shape.render(run.status(now), run.id, run.created, now)

    def summary(self, run: Run) -> dict[str, Any]:
        status = run.status()
        return {
            **{k: status.get(k) for k in ("id", "status", "progress")},
            "state": self.shape.state(status),
            "path": self.shape.run_path.replace("{run_id}", run.id),
        }

    def new_run(
        self, outcome: Outcome | None = None, *, step: float | None = None
    ) -> TimedRun | SteppedRun:
        run_id = f"run-{next(self._ids):04d}"
        if self.events is not None:
            outcomes = self.events.outcomes
            chosen = (
                outcomes[1]
                if outcome == "failed"
                else self._rng.choice(outcomes[:1] * 3 + outcomes)
            )
            stepped = SteppedRun(run_id, self.events.statuses(run_id, chosen), step or self.step)
            self.runs[run_id] = stepped
            return stepped
        run = TimedRun.random(run_id, step or self.step, self._rng)
        if outcome is not None:
            run.outcome = outcome
        self.runs[run_id] = run
        return run

    def scripted(
        self,
        run_id: str,
        statuses: list[dict[str, Any]] | None = None,
        *,
        nodes: tuple[str, ...] = ("fetch", "build", "test"),
        outcome: Outcome = "completed",
    ) -> ScriptedRun:
        run = ScriptedRun(run_id, statuses or scripted_statuses(run_id, nodes, outcome))
        self.runs[run_id] = run
        return run

    def require(self, run_id: str, header: str, value: str) -> None:
        """Answer 401 without the header and 403 with another value."""
        self.credentials[run_id] = Credential(header.lower(), value)

    def inject(self, run_id: str, fault: Fault) -> None:
        self.faults.setdefault(run_id, deque()).append(fault)

    def clear_faults(self, run_id: str) -> None:
        self.faults.pop(run_id, None)

    # --- handlers -------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.Response:
        newest = list(self.runs.values())[-200:]
        return web.json_response({"runs": [self.summary(run) for run in reversed(newest)]})

    async def _active(self, request: web.Request) -> web.Response:
        self.requests[ACTIVE_PATH] += 1
        now = time.time()
        going = [
            self.answer(run, now)
            for run in list(self.runs.values())[-200:]
            if run.status(now)["status"] in ("queued", "running")
        ]
        return web.json_response(going)

    async def _feed(self, request: web.Request) -> web.Response:
        """``?since=<sequence>``: the run's events after it, with its state and phase."""
        run = self.runs.get(request.match_info["run_id"])
        if run is None:
            return web.json_response({"error": "not found"}, status=404)
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            return web.json_response({"error": "since must be a sequence number"}, status=400)
        self.requests[f"feed:{run.id}"] += 1
        status = run.status()
        return web.json_response(
            {
                "events": [e for e in feed_events(status) if e["sequence"] > since],
                "runStatus": status["status"],
                "currentPhase": status.get("currentNode"),
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        outcome: Any = None
        if request.can_read_body:
            with suppress(ValueError):
                body = await request.json()
                outcome = body.get("outcome") if isinstance(body, dict) else None
        if outcome not in (None, "completed", "failed", "cancelled"):
            return web.json_response(
                {"error": "outcome must be completed, failed or cancelled"}, status=400
            )
        run = self.new_run(outcome)
        return web.json_response(self.summary(run), status=201)

    async def _cancel(self, request: web.Request) -> web.Response:
        run = self.runs.get(request.match_info["run_id"])
        if run is None:
            return web.json_response({"error": "no such run"}, status=404)
        run.cancel()
        return web.json_response(self.summary(run))

    def _run_id(self, request: web.Request) -> str | None:
        param = self.shape.query_param
        if param is None:
            return request.match_info.get("run_id")
        return request.query.get(param)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        run_id = self._run_id(request)
        if not run_id:
            return web.json_response({"error": "run id missing"}, status=400)
        self.requests[run_id] += 1
        self.seen.append(
            SeenRequest(run_id, request.raw_path, dict(request.headers), time.monotonic())
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request, run_id)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, run_id: str) -> web.StreamResponse:
        fault = self._next_fault(run_id)
        if fault is not None:
            return await self._commit(run_id, fault, request)
        credential = self.credentials.get(run_id)
        if credential is not None:
            given = request.headers.get(credential.header)
            if given is None:
                return web.json_response({"error": "unauthorized"}, status=401)
            if given != credential.value:
                return web.json_response({"error": "forbidden"}, status=403)
        return self._known(run_id)

    def _known(self, run_id: str) -> web.Response:
        """The run's status as the API answers it (404 for a run it does not know)."""
        run = self.runs.get(run_id)
        if run is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self.answer(run))

    def _next_fault(self, run_id: str) -> Fault | None:
        queue = self.faults.get(run_id)
        if not queue:
            return None
        fault = queue[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                queue.popleft()
        return fault

    async def _commit(self, run_id: str, fault: Fault, request: web.Request) -> web.StreamResponse:
        if fault.kind == "status":
            return web.json_response({"error": "fault"}, status=fault.status, headers=fault.headers)
        if fault.kind == "hang":
            await asyncio.sleep(3600)
        if fault.kind == "reset":
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0 turns close() into a RST.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                transport.close()
            return web.Response(status=500)
        if fault.kind == "malformed":
            return web.Response(body=b'{"status": "running", ', content_type="application/json")
        if fault.kind == "not-object":
            return web.json_response(["running", 0.5])
        if fault.kind == "huge":
            return web.Response(
                body=b"{" + b" " * fault.size + b"}", content_type="application/json"
            )
        if fault.kind == "gzip-bomb":
            bomb = gzip.compress(b"{" + b" " * fault.size + b"}", compresslevel=9)
            return web.Response(
                body=bomb, content_type="application/json", headers={"Content-Encoding": "gzip"}
            )
        if fault.kind == "redirect":
            return web.Response(status=302, headers={"Location": fault.location})
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay)
            return self._known(run_id)
        raise ValueError(f"unknown fault {fault.kind!r}")


@asynccontextmanager
async def serving(
    api: LegacyApi, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[LegacyApi]:
    """Run the API on ``host:port`` (0 = any free port) until the block ends."""
    runner = web.AppRunner(api.app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        api.url = f"http://{host}:{bound[1]}"
        yield api
    finally:
        await runner.cleanup()


def _going(run: Run) -> bool:
    if isinstance(run, SteppedRun):
        return run.status() is not run.statuses[-1]
    return run.status()["status"] in ("queued", "running")


async def spawn_runs(api: LegacyApi, every: float, keep: int) -> None:
    """Start a new run every ``every`` seconds while fewer than ``keep`` are in flight."""
    while True:
        await asyncio.sleep(every)
        active = sum(1 for r in api.runs.values() if _going(r))
        if active < keep:
            api.new_run()


@asynccontextmanager
async def spawning(api: LegacyApi, every: float, keep: int) -> AsyncIterator[None]:
    task = asyncio.create_task(spawn_runs(api, every, keep), name="demo:spawn-runs")
    try:
        yield
    finally:
        await cancel_and_wait(task)
