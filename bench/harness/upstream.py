"""The scripted legacy API: runs change only on command, and every request is counted.

    GET  /runs/{id}          the run's ExecutionStatus (created on first sight, seq 0)
    POST /control/set        {"changes": {run_id: [seq, marker]}} -> {"changed_at": {run_id: ns}}
    POST /control/served     {"runs": {run_id: marker}} -> {"served": {run_id: ns | null}}
    POST /control/requests   {"runs": [...], "since": ns, "until": ns, "times": bool}
                             -> {"counts": {run_id: n}, "times": {run_id: [ns, ...]}}
    GET  /control/health     liveness

"served" is the wall-clock time (``time.time_ns()``) at which the upstream first
answered a GET with that marker: the moment the bridge received the changed status,
give or take the loopback write, and the t0 of the bridge's fan-out delay.

    python -m bench.harness.upstream --port 18100 [--core 1]
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from bench.harness import cli
from bench.harness.common import pin, raise_nofile, status_json

#: Per-run bounds: request timestamps kept, and markers whose first-served time is kept.
MAX_REQUEST_TIMES = 400_000
MAX_MARKERS = 4_096
MAX_RUNS = 100_000


@dataclass
class Run:
    run_id: str
    body: bytes
    marker: str = "BMK:000000:000000"
    requests: deque[int] = field(default_factory=lambda: deque(maxlen=MAX_REQUEST_TIMES))
    total: int = 0
    served: dict[str, int] = field(default_factory=dict)
    changed_at: dict[str, int] = field(default_factory=dict)


class Upstream:
    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}

    def run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            if len(self.runs) >= MAX_RUNS:
                raise web.HTTPServiceUnavailable(text="too many runs")
            run = Run(run_id, status_json(run_id, 0, "BMK:000000:000000"))
            self.runs[run_id] = run
        return run

    async def get_run(self, request: web.Request) -> web.Response:
        run = self.run(request.match_info["run_id"])
        now = time.time_ns()
        run.requests.append(now)
        run.total += 1
        if run.marker not in run.served:
            run.served[run.marker] = now
        return web.Response(body=run.body, content_type="application/json")

    async def set(self, request: web.Request) -> web.Response:
        payload = await request.json()
        changed: dict[str, int] = {}
        for run_id, (seq, mark) in payload["changes"].items():
            run = self.run(run_id)
            run.body = status_json(run_id, int(seq), str(mark))
            run.marker = str(mark)
            changed[run_id] = run.changed_at[run.marker] = time.time_ns()
            if len(run.changed_at) > MAX_MARKERS:
                run.changed_at.pop(next(iter(run.changed_at)))
            if len(run.served) > MAX_MARKERS:
                run.served.pop(next(iter(run.served)))
        return web.json_response({"changed_at": changed})

    async def served(self, request: web.Request) -> web.Response:
        payload = await request.json()
        out: dict[str, int | None] = {}
        for run_id, mark in payload["runs"].items():
            run = self.runs.get(run_id)
            out[run_id] = run.served.get(mark) if run is not None else None
        return web.json_response({"served": out})

    async def requests(self, request: web.Request) -> web.Response:
        payload = await request.json()
        since = int(payload.get("since", 0))
        until = int(payload.get("until", 2**63))
        want_times = bool(payload.get("times", False))
        counts: dict[str, int] = {}
        times: dict[str, list[int]] = {}
        for run_id in payload["runs"]:
            run = self.runs.get(run_id)
            stamps = [t for t in run.requests if since <= t < until] if run is not None else []
            counts[run_id] = len(stamps)
            if want_times:
                times[run_id] = stamps
        return web.json_response({"counts": counts, "times": times})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"runs": len(self.runs)})


def make_app() -> web.Application:
    upstream = Upstream()
    app = web.Application()
    app.router.add_get("/runs/{run_id}", upstream.get_run)
    app.router.add_post("/control/set", upstream.set)
    app.router.add_post("/control/served", upstream.served)
    app.router.add_post("/control/requests", upstream.requests)
    app.router.add_get("/control/health", upstream.health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("", __doc__, "python -m bench.harness.upstream")
    cli.add_server(parser)
    args = parser.parse_args(argv)
    pin(args.core)
    raise_nofile()
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
