"""Upstreams on loopback for the feed and fleet tests: a run feed shaped like seed 002's
``GET /v1/agent-runs/{runId}/events?since={sequence}``, and a list of runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import serving_app


@dataclass
class FeedRun:
    status: str = "running"
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Cursors below this are answered 410 Gone (the upstream no longer keeps them).
    kept_from: int = 0

    def add(self, event_type: str, **payload: Any) -> dict[str, Any]:
        event = {"sequence": len(self.events) + 1, "eventType": event_type, "payload": payload}
        self.events.append(event)
        return event


@dataclass
class FeedUpstream:
    url: str = ""
    runs: dict[str, FeedRun] = field(default_factory=dict)
    page_size: int = 100
    #: The page carries the run's state (seed 002's runStatus); else only /runs/{id} does.
    state_on_page: bool = True
    #: Extra raw items appended to every page (bad input).
    junk: list[Any] = field(default_factory=list)
    #: Answer with an ETag, and 304 to a matching If-None-Match.
    etags: bool = False
    not_modified: int = 0
    #: Serve /runs/{id} (else 404 for every run).
    status_path: bool = True
    #: (path, since, Authorization) of every request.
    requests: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def run(self, run_id: str) -> FeedRun:
        return self.runs.setdefault(run_id, FeedRun())

    def feed_requests(self, run_id: str) -> list[tuple[str, str | None, str | None]]:
        return [r for r in self.requests if r[0] == f"/v1/agent-runs/{run_id}/events"]

    async def events(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        since_text = request.query.get("since")
        self.requests.append((request.path, since_text, request.headers.get("Authorization")))
        if request.headers.get("Authorization") == "Bearer nope":
            return web.json_response({"error": "unauthorized"}, status=401)
        run = self.runs.get(run_id)
        if run is None:
            return web.json_response({"error": "no such run"}, status=404)
        since = int(since_text or "0")
        if since < run.kept_from:
            return web.json_response({"error": "cursor expired"}, status=410)
        after = [e for e in run.events if e["sequence"] > since]
        page = after[: self.page_size]
        body: dict[str, Any] = {
            "events": page + self.junk,
            "hasMore": len(after) > len(page),
        }
        if self.state_on_page:
            body["runStatus"] = run.status
        if not self.etags:
            return web.json_response(body)
        etag = '"' + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() + '"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response(body, headers={"ETag": etag})

    async def status(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        self.requests.append((request.path, None, request.headers.get("Authorization")))
        run = self.runs.get(run_id)
        if run is None or not self.status_path:
            return web.json_response({"error": "no such run"}, status=404)
        return web.json_response({"id": run_id, "status": run.status})


@asynccontextmanager
async def feed_upstream() -> AsyncIterator[FeedUpstream]:
    upstream = FeedUpstream()
    app = web.Application()
    app.router.add_get("/v1/agent-runs/{run_id}/events", upstream.events)
    app.router.add_get("/runs/{run_id}", upstream.status)
    async with serving_app(app) as url:
        upstream.url = url
        yield upstream


#: The settings of seed 002's feed, as a user writes them.
SEED_002 = {
    "feed_path": "/v1/agent-runs/{run_id}/events?since={cursor}",
    "feed_more": ".hasMore",
    "state_expr": ".runStatus",
}


@dataclass
class ListUpstream:
    """``GET /runs`` lists the runs in ``listed`` (each its status); ``/runs/{id}`` is one."""

    url: str = ""
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)
    #: Items per page (0: one page); further pages by `Link: <...>; rel="next"`.
    page_size: int = 0
    #: Raw items added to the list (bad input).
    junk: list[Any] = field(default_factory=list)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    #: Answer with an ETag, and 304 to a matching If-None-Match.
    etags: bool = False
    not_modified: int = 0

    def set(self, run_id: str, status: str, **more: Any) -> None:
        self.statuses[run_id] = {"id": run_id, "status": status, **more}
        if run_id not in self.listed:
            self.listed.append(run_id)

    def run_requests(self, run_id: str) -> int:
        return sum(1 for path, _ in self.requests if path == f"/runs/{run_id}")

    def list_requests(self) -> int:
        return sum(1 for path, _ in self.requests if path == "/runs")

    async def list(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.requests.append((request.path, auth))
        if auth == "Bearer nope":
            return web.json_response({"error": "unauthorized"}, status=401)
        items: list[Any] = [self.statuses[r] for r in self.listed] + self.junk
        headers = {}
        if self.page_size:
            page = int(request.query.get("page", "1"))
            start = (page - 1) * self.page_size
            if start + self.page_size < len(items):
                headers["Link"] = f'</runs?page={page + 1}>; rel="next"'
            items = items[start : start + self.page_size]
        if self.etags:
            etag = '"' + hashlib.sha256(json.dumps(items).encode()).hexdigest() + '"'
            headers["ETag"] = etag
            if request.headers.get("If-None-Match") == etag:
                self.not_modified += 1
                return web.Response(status=304, headers=headers)
        return web.json_response(items, headers=headers)

    async def one(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Authorization")))
        status = self.statuses.get(request.match_info["run_id"])
        if status is None:
            return web.json_response({"error": "no such run"}, status=404)
        return web.json_response(status)


@asynccontextmanager
async def list_upstream() -> AsyncIterator[ListUpstream]:
    upstream = ListUpstream()
    app = web.Application()
    app.router.add_get("/runs", upstream.list)
    app.router.add_get("/runs/{run_id}", upstream.one)
    async with serving_app(app) as url:
        upstream.url = url
        yield upstream
