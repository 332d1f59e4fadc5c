"""Any legacy API by configuration alone: the real bridge against a real upstream whose
shape is not seed 004's (nested state, upper-case states, a timestamp on every answer,
the run id in the query string, ids with ':' and '+', static headers)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge import run_id as run_ids
from tests.support import running_bridge, serving_app, sse, wait_for

AIRFLOW_ID = "manual__2026-11-30T12:00:00+00:00"


@dataclass
class ScriptedApi:
    """``GET /jobs/get?id=<id>`` (or ``/jobs/<id>``) answers the run's current status."""

    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)
    served: int = 0
    #: Every request's run id and headers, as the upstream saw them.
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def advance(self, run_id: str) -> None:
        self.position[run_id] = min(
            self.position.get(run_id, 0) + 1, len(self.statuses[run_id]) - 1
        )

    async def handle(self, request: web.Request) -> web.Response:
        run_id = request.query.get("id") or request.match_info.get("run_id", "")
        self.seen.append((run_id, dict(request.headers)))
        if run_id not in self.statuses:
            return web.json_response({"message": "no such run"}, status=404)
        self.served += 1
        status = dict(self.statuses[run_id][self.position.get(run_id, 0)])
        # A timestamp that changes on every answer, as many real APIs send.
        status["server_time"] = self.served
        return web.json_response(status)


@asynccontextmanager
async def scripted_api() -> AsyncIterator[ScriptedApi]:
    api = ScriptedApi()
    app = web.Application()
    app.router.add_get("/jobs/get", api.handle)
    app.router.add_get("/jobs/{run_id}", api.handle)
    async with serving_app(app) as api.url:
        yield api


NESTED = {
    "state_expr": ".job.state",
    "success_statuses": "done",
    "failure_statuses": "failed,killed",
    "ignore_fields": ".server_time",
    "progress_expr": ".job.percent / 100",
}


async def test_a_nested_upper_case_state_ends_the_stream_and_timestamps_make_no_event() -> None:
    async with scripted_api() as api:
        api.statuses["j1"] = [
            {"job": {"state": "QUEUED", "percent": 0}},
            {"job": {"state": "RUNNING", "percent": 40}},
            {"job": {"state": "DONE", "percent": 100}},
        ]
        async with (
            running_bridge(api.url, upstream_run_path="/jobs/{run_id}", **NESTED) as b,
            sse(f"{b.url}/v1/runs/j1/stream") as s,
        ):
            first = await s.next_named("progress")
            assert json.loads(first.data)["job"]["state"] == "QUEUED"
            # Several polls, each with a new server_time: no event.
            polled = api.served
            await wait_served(api, polled + 5)
            api.advance("j1")
            second = await s.next_named("progress", timeout=5)
            # The event carries the status exactly as the upstream sent it.
            assert json.loads(second.data)["job"] == {"state": "RUNNING", "percent": 40}
            assert "server_time" in json.loads(second.data)
            api.advance("j1")
            done = await s.next_event(timeout=5)
            assert done.event == "complete"
            assert json.loads(done.data)["job"]["state"] == "DONE"
            assert [e.event for e in s.events if e.event != "ping"] == [
                "progress",
                "progress",
                "complete",
            ]


async def test_the_multi_stream_carries_state_and_progress() -> None:
    async with scripted_api() as api:
        api.statuses["j2"] = [
            {"job": {"state": "RUNNING", "percent": 25}},
            {"job": {"state": "KILLED", "percent": 50}},
        ]
        async with (
            running_bridge(api.url, upstream_run_path="/jobs/{run_id}", **NESTED) as b,
            sse(f"{b.url}/v1/streams?runs=j2") as s,
        ):
            first = json.loads((await s.next_named("progress")).data)
            assert (first["state"], first["progress"]) == ("RUNNING", 0.25)
            assert first["data"]["job"] == {"state": "RUNNING", "percent": 25}
            api.advance("j2")
            end = await s.next_named("error", timeout=5)
            body = json.loads(end.data)
            assert (body["state"], body["progress"]) == ("KILLED", 0.5)


DETAILED = {**NESTED, "detail_expr": ".job.error // .job.stage"}


async def test_the_detail_goes_beside_state_and_progress_everywhere() -> None:
    async with scripted_api() as api:
        api.statuses["j3"] = [
            {"job": {"state": "RUNNING", "percent": 25, "stage": "compile\n  (step 2/5)"}},
            {"job": {"state": "KILLED", "percent": 50, "stage": "test", "error": "OOM: café"}},
        ]
        async with (
            running_bridge(api.url, upstream_run_path="/jobs/{run_id}", **DETAILED) as b,
            sse(f"{b.url}/v1/streams?runs=j3") as s,
            aiohttp.ClientSession() as http,
        ):
            first = json.loads((await s.next_named("progress")).data)
            # One line: the line break and the indent are one space.
            assert first["detail"] == "compile (step 2/5)"
            async with http.get(f"{b.url}/v1/runs/j3/events") as got:
                page = await got.json()
                assert page["detail"] == "compile (step 2/5)"
                assert got.headers["X-Run-Detail"] == "compile (step 2/5)"
            async with http.get(f"{b.url}/v1/runs/j3") as got:
                assert got.headers["X-Run-State"] == "RUNNING"
                assert got.headers["X-Run-Detail"] == "compile (step 2/5)"
                assert (await got.json())["job"]["stage"] == "compile\n  (step 2/5)"
            api.advance("j3")
            end = json.loads((await s.next_named("error", timeout=5)).data)
            assert (end["state"], end["detail"]) == ("KILLED", "OOM: café")
            async with http.get(f"{b.url}/v1/runs/j3/result") as got:
                assert got.status == 200
                # Not ASCII: percent-encoded, as X-Run-State is.
                assert got.headers["X-Run-Detail"] == "OOM%3A%20caf%C3%A9"


async def test_the_run_id_goes_in_the_query_string_percent_encoded() -> None:
    async with scripted_api() as api:
        api.statuses[AIRFLOW_ID] = [{"state": "success"}]
        async with (
            running_bridge(
                api.url,
                upstream_run_path="/jobs/get?id={run_id}",
                state_expr=".state",
                success_statuses="success",
            ) as b,
            sse(f"{b.url}/v1/runs/{AIRFLOW_ID}/stream") as s,
        ):
            event = await s.next_event()
            assert event.event == "complete"
        # '+' reached the upstream as '+', not as a space: it was sent as %2B.
        assert api.seen[0][0] == AIRFLOW_ID


@pytest.mark.parametrize(
    "hostile",
    ["a&id=other", "a#x", "a?x=1", "a b", "a%2Fb", "a/b", "..", "a\u00e9", "a\nb", ""],
)
def test_hostile_ids_never_shape_the_query(hostile: str) -> None:
    with pytest.raises(Exception) as caught:
        run_ids.upstream_path("/jobs/get?id={run_id}&v=2", hostile)
    assert type(caught.value).__name__ == "InvalidRunId"


def test_accepted_ids_are_encoded_wherever_they_stand() -> None:
    assert run_ids.upstream_path("/jobs/get?id={run_id}&v=2", "a:b+c~d") == (
        "/jobs/get?id=a%3Ab%2Bc~d&v=2"
    )
    assert run_ids.upstream_path("/runs/{run_id}", AIRFLOW_ID) == (
        "/runs/manual__2026-11-30T12%3A00%3A00%2B00%3A00"
    )


async def test_upstream_headers_go_with_every_request_in_viewer_mode() -> None:
    async with scripted_api() as api:
        api.statuses["h1"] = [{"state": "done"}]
        headers = {"X-Api-Version": "2022-11-28", "Accept": "application/vnd.example+json"}
        async with (
            running_bridge(
                api.url,
                upstream_run_path="/jobs/{run_id}",
                state_expr=".state",
                success_statuses="done",
                upstream_headers=headers,
            ) as b,
            sse(f"{b.url}/v1/runs/h1/stream", headers={"Authorization": "Bearer viewer"}) as s,
        ):
            assert (await s.next_event()).event == "complete"
        _, seen = api.seen[0]
        assert seen["X-Api-Version"] == "2022-11-28"
        assert seen["Accept"] == "application/vnd.example+json"
        assert seen["Authorization"] == "Bearer viewer"


SERVICE_KEY = "svc-key-5d1e07"


async def test_a_service_key_for_every_viewer_is_one_warning_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.web.auth")
    async with scripted_api() as api:
        api.statuses["k1"] = [{"state": "running"}]
        async with (
            running_bridge(
                api.url,
                upstream_run_path="/jobs/{run_id}",
                state_expr=".state",
                success_statuses="done",
                upstream_headers={"X-Api-Key": SERVICE_KEY, "X-Api-Version": "2"},
                forward_headers="cookie",
            ) as b,
            # A viewer with no credential at all reads the run with the operator's key.
            sse(f"{b.url}/v1/runs/k1/stream") as s,
        ):
            assert (await s.next_event()).event == "progress"
    assert api.seen[0][1]["X-Api-Key"] == SERVICE_KEY
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.web.auth"]
    assert lines == [
        "BRIDGE_UPSTREAM_HEADERS sends X-Api-Key with every upstream request and no viewer "
        "is admitted by BRIDGE_AUTH_URL: every viewer who can reach the bridge sees every "
        "run with that key; set BRIDGE_AUTH_URL (forward-auth mode, docs/security.md) so "
        "that an auth service decides who may watch"
    ]
    assert all(SERVICE_KEY not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("headers", "auth_url"),
    [
        ({"X-Api-Version": "2", "Accept": "application/json"}, None),  # no credential
        ({"Authorization": "Bearer svc"}, "http://127.0.0.1:9/auth"),  # forward-auth decides
    ],
)
def test_no_warning_without_a_shared_credential(
    headers: dict[str, str], auth_url: str | None
) -> None:
    from bridge.settings import load
    from bridge.web.auth import shared_key_warning

    settings = load(upstream_url="http://127.0.0.1:9", upstream_headers=headers, auth_url=auth_url)
    assert shared_key_warning(settings) is None


async def test_a_state_the_expression_cannot_find_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scripted_api() as api:
        api.statuses["lost"] = [{"job": {"state": "DONE"}}]
        caplog.set_level(logging.WARNING, logger="bridge.polling.poller")
        async with (
            running_bridge(api.url, upstream_run_path="/jobs/{run_id}") as b,
            sse(f"{b.url}/v1/runs/lost/stream") as s,
        ):
            await s.next_named("progress")
            await wait_served(api, 12)
        lines = [r.getMessage() for r in caplog.records if "run lost" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "BRIDGE_STATE_EXPR" in lines[0] and "inspect" in lines[0]


async def test_an_unknown_state_is_logged_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scripted_api() as api:
        api.statuses["u1"] = [{"status": "DONE"}]
        api.statuses["u2"] = [{"status": "DONE"}]
        caplog.set_level(logging.WARNING, logger="bridge.polling.poller")
        async with running_bridge(api.url, upstream_run_path="/jobs/{run_id}") as b:
            async with (
                sse(f"{b.url}/v1/runs/u1/stream") as s1,
                sse(f"{b.url}/v1/runs/u2/stream") as s2,
            ):
                await s1.next_named("progress")
                await s2.next_named("progress")
                await wait_served(api, 16)
        lines = [r.getMessage() for r in caplog.records if "'DONE'" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "BRIDGE_SUCCESS_STATUSES" in lines[0]


async def wait_served(api: ScriptedApi, count: int) -> None:
    """Until the upstream has answered ``count`` status requests (bounded)."""
    await wait_for(lambda: api.served >= count)


async def test_the_scripted_api_is_real() -> None:
    async with scripted_api() as api:
        api.statuses["r"] = [{"state": "x"}]
        async with aiohttp.ClientSession() as http, http.get(f"{api.url}/jobs/get?id=r") as r:
            assert r.status == 200 and (await r.json())["state"] == "x"
