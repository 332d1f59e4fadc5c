"""The baseline users write by hand: every viewer's stream polls the upstream itself.

    GET /sub/{run_id}   SSE; the handler GETs <upstream>/runs/{run_id} every interval
                        and writes a ``progress`` frame when the status changed

One aiohttp ``ClientSession`` with its default connector (100 connections), as in the
aiohttp documentation. Each stream ends after ``--stream-timeout`` seconds at the most.

    python -m bench.harness.naive --port 18300 --upstream http://127.0.0.1:18100 [--core 0]
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from bench.harness import cli
from bench.harness.common import pin, raise_nofile

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Naive:
    def __init__(self, upstream: str, interval: float, stream_timeout: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.interval = interval
        self.stream_timeout = stream_timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def fetch(self, run_id: str) -> dict[str, Any]:
        assert self.session is not None
        async with self.session.get(f"{self.upstream}/runs/{run_id}") as response:
            response.raise_for_status()
            value: dict[str, Any] = await response.json()
            return value

    async def sub(self, request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stream_timeout
        last: dict[str, Any] | None = None
        seq = 0
        while loop.time() < deadline:
            status: dict[str, Any] | None
            try:
                status = await self.fetch(run_id)
            except (aiohttp.ClientError, TimeoutError):
                status = last
            if status is not None and status != last:
                seq += 1
                data = json.dumps(status, separators=(",", ":"))
                await response.write(f"event: progress\nid: {seq}\ndata: {data}\n\n".encode())
                last = status
            await asyncio.sleep(self.interval)
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("", __doc__, "python -m bench.harness.naive")
    cli.add_server(parser)
    parser.add_argument("--upstream", required=True)
    cli.add_interval(parser, 2.0, "seconds between one viewer's polls")
    parser.add_argument("--stream-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    pin(args.core)
    raise_nofile()
    naive = Naive(args.upstream, args.interval, args.stream_timeout)
    app = web.Application()
    app.on_startup.append(naive.start)
    app.on_cleanup.append(naive.stop)
    app.router.add_get("/sub/{run_id}", naive.sub)
    app.router.add_get("/healthz", naive.health)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
