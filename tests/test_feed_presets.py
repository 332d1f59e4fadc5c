"""Profiles with a list of runs or a feed, end to end: the real bridge against loopback
upstreams shaped as the documentation pages the profiles cite (bridge/profiles.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.support import running_bridge, serving_app, sse

# --- GitHub Actions: "List workflow runs for a repository" ------------------------------


def workflow_run(run_id: int, status: str, conclusion: str | None = None) -> dict[str, Any]:
    return {
        "id": run_id,
        "name": "CI",
        "status": status,
        "conclusion": conclusion,
        "updated_at": "2026-12-07T10:00:00Z",
    }


@asynccontextmanager
async def github(runs: dict[int, dict[str, Any]], seen: list[dict[str, str]]) -> AsyncIterator[str]:
    """``/repos/o/r/actions/runs``: the runs in progress, two per page, Link rel="next"."""

    async def listed(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        going = [r for r in runs.values() if r["status"] == request.query.get("status")]
        page = int(request.query.get("page", "1"))
        per_page = int(request.query["per_page"])
        chunk = going[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(going):
            headers["Link"] = (
                f'<{request.url.with_query({**request.query, "page": str(page + 1)})}>; rel="next"'
            )
        body = {"total_count": len(going), "workflow_runs": chunk}
        return web.json_response(body, headers=headers)

    async def one(request: web.Request) -> web.Response:
        return web.json_response(runs[int(request.match_info["run_id"])])

    app = web.Application()
    app.router.add_get("/repos/o/r/actions/runs", listed)
    app.router.add_get("/repos/o/r/actions/runs/{run_id}", one)
    async with serving_app(app) as url:
        yield url


async def test_github_actions_workflow_runs_follow_the_list() -> None:
    runs = {n: workflow_run(n, "in_progress") for n in (101, 102, 103)}
    seen: list[dict[str, str]] = []
    async with github(runs, seen) as url:
        settings = {
            "profile": "github-actions",
            "upstream_run_path": "/repos/o/r/actions/runs/{run_id}",
            "upstream_list_path": "/repos/o/r/actions/runs?status=in_progress&per_page=2",
        }
        async with running_bridge(url, **settings) as b, sse(f"{b.url}/v1/events") as s:
            opened = [s.data(await s.next_named("progress")) for _ in range(3)]
            assert [o["run_id"] for o in opened] == ["101", "102", "103"]
            assert {o["state"] for o in opened} == {"in_progress"}
            runs[102] = workflow_run(102, "completed", "success")
            done = await s.next_named("complete")
            assert s.data(done)["run_id"] == "102" and s.data(done)["state"] == "success"
    # The profile's headers go with the list requests too.
    assert seen and all(h.get("X-GitHub-Api-Version") == "2022-11-28" for h in seen)


# --- Apache Livy: a batch's log as its feed ----------------------------------------------


@asynccontextmanager
async def livy(batch: dict[str, Any]) -> AsyncIterator[str]:
    async def state(request: web.Request) -> web.Response:
        return web.json_response({"id": 7, "state": batch["state"], "appId": None})

    async def log(request: web.Request) -> web.Response:
        start = int(request.query["from"])
        size = int(request.query["size"])
        lines = batch["log"][start : start + size]
        return web.json_response({"id": 7, "from": start, "size": len(lines), "log": lines})

    app = web.Application()
    app.router.add_get("/batches/{batch_id}", state)
    app.router.add_get("/batches/{batch_id}/log", log)
    async with serving_app(app) as url:
        yield url


async def test_livy_batch_log_lines_are_the_runs_events() -> None:
    batch: dict[str, Any] = {"state": "running", "log": ["stdout: ", "starting job", "stage 1"]}
    async with livy(batch) as url:
        settings = {
            "profile": "livy-batches",
            "upstream_run_path": "/batches/{run_id}",
            "feed_path": "/batches/{run_id}/log?from={cursor}&size=1000",
        }
        async with running_bridge(url, **settings) as b, sse(f"{b.url}/v1/runs/7/stream") as s:
            first = [await s.next_named("log") for _ in range(3)]
            assert [e.id for e in first] == ["1", "2", "3"]
            assert [s.data(e)["line"] for e in first] == batch["log"]
            batch["log"] = [*batch["log"], "stage 2", "done"]
            batch["state"] = "success"
            rest = await s.rest()
            assert [(e.event, e.id) for e in rest] == [
                ("log", "4"),
                ("log", "5"),
                ("complete", "5"),
            ]
            assert s.data(rest[0])["line"] == "stage 2"
        # A viewer resuming from line 2 gets the lines after it, then the end.
        async with running_bridge(url, **settings) as b:
            async with sse(f"{b.url}/v1/runs/7/stream", {"Last-Event-ID": "2"}) as s:
                got = await s.rest()
                assert [e.id for e in got] == ["3", "4", "5", "5"]
                assert got[-1].event == "complete"
