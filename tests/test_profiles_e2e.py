"""BRIDGE_PROFILE end to end: for every profile, the real bridge configured only by
``profile=<name>`` and the profile's example run path (placeholders filled) follows a
scripted upstream that answers with that API's documented field names and values through
a whole run, and a second run that ends badly.

Each step is served until the bridge has seen it; a step marked "no event" (a change only
in an ignored field, or the same answer again) must make no event while it is polled
several times. Events carry the upstream objects unchanged; the run ends with `complete`
or `error` and the stream closes. Waits are bounded; nothing sleeps and hopes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import jq
import pytest
from aiohttp import web

from bridge.profiles import PROFILES, Profile
from tests.support import SseStream, running_bridge, serving_app, sse, wait_for

Status = dict[str, Any]

#: A step of a scripted run: the status served, and the event it must make (None: none).
Step = tuple[Status, str | None]


@dataclass
class Run:
    path: str
    query: dict[str, str]
    steps: list[Step]
    position: int = 0
    served: int = 0
    #: Requests served at the current position.
    served_here: int = 0

    def advance(self) -> None:
        self.position += 1
        self.served_here = 0


@dataclass
class ScriptedUpstream:
    """Serves each run's current step at the path the bridge should ask for."""

    runs: dict[str, Run] = field(default_factory=dict)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    url: str = ""

    def add(self, template: str, run_id: str, steps: list[Step]) -> Run:
        parts = urlsplit(template.replace("{run_id}", run_id))
        run = Run(parts.path, dict(parse_qsl(parts.query)), steps)
        self.runs[run_id] = run
        return run

    async def handle(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        for run in self.runs.values():
            if request.path == run.path and query == run.query:
                self.headers_seen.append(dict(request.headers))
                run.served += 1
                run.served_here += 1
                return web.json_response(run.steps[run.position][0])
        self.unknown.append(request.path_qs)
        return web.json_response({"message": "Not Found"}, status=404)


@asynccontextmanager
async def scripted_upstream() -> AsyncIterator[ScriptedUpstream]:
    api = ScriptedUpstream()
    app = web.Application()
    app.router.add_get("/{tail:.*}", api.handle)
    async with serving_app(app) as api.url:
        yield api


@dataclass(frozen=True)
class Scenario:
    #: Values for the upper-case placeholders of the profile's example run path.
    fill: dict[str, str]
    good_id: str
    #: queued -> running -> (a change the bridge must not report) -> ... -> success.
    good: list[Step]
    bad_id: str
    #: ... -> a failure or cancellation.
    bad: list[Step]


P, C, E = "progress", "complete", "error"


def github(status: str, conclusion: str | None, updated: str) -> Status:
    return {
        "id": 30433642,
        "name": "Build",
        "head_branch": "main",
        "run_number": 562,
        "run_attempt": 1,
        "event": "push",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": 159038,
        "created_at": "2026-11-30T12:00:00Z",
        "updated_at": updated,
    }


def gitlab(status: str, updated: str, duration: int | None = None) -> Status:
    return {
        "id": 287,
        "iid": 144,
        "project_id": 21,
        "status": status,
        "ref": "main",
        "sha": "50f0acb76a40e34a4ff304f7347dcc6587da8a14",
        "created_at": "2026-11-30T12:00:00.000Z",
        "updated_at": updated,
        "duration": duration,
        "detailed_status": {"group": status},
    }


OPERATION = "projects/demo/locations/us-central1/operations/operation-1700000000000-abc"


def google(**more: Any) -> Status:
    return {
        "name": OPERATION,
        "metadata": {"@type": "type.googleapis.com/google.cloud.run.v2.Service"},
        **more,
    }


def azure(status: str, **more: Any) -> Status:
    return {"name": "9a062a88-e463-4697-bef2-fe039df73a02", "status": status, **more}


def jenkins(building: bool, result: str | None, **more: Any) -> Status:
    return {
        "_class": "hudson.model.FreeStyleBuild",
        "number": 42,
        "building": building,
        "result": result,
        "duration": 0 if building else 61234,
        "estimatedDuration": 60000,
        "timestamp": 1700000000000,
        **more,
    }


def k8s_job(status: Status, rv: str = "100", manager_time: str = "12:00:00") -> Status:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "pi",
            "namespace": "default",
            "resourceVersion": rv,
            "managedFields": [
                {"manager": "kube-controller-manager", "time": f"2026-11-30T{manager_time}Z"}
            ],
        },
        "spec": {"completions": 2, "parallelism": 2},
        "status": status,
    }


def cond(kind: str) -> Status:
    return {"type": kind, "status": "True", "lastTransitionTime": "2026-11-30T12:01:00Z"}


def databricks(life_cycle: str, result: str | None = None) -> Status:
    state: Status = {"life_cycle_state": life_cycle, "state_message": ""}
    if result is not None:
        state["result_state"] = result
    return {"job_id": 11223344, "run_id": 455644833, "state": state, "run_type": "JOB_RUN"}


def argo(phase: str, progress: str, rv: str = "900") -> Status:
    return {
        "metadata": {"name": "hello-world-x7k2p", "namespace": "argo", "resourceVersion": rv},
        "spec": {"entrypoint": "main"},
        "status": {"phase": phase, "progress": progress, "startedAt": "2026-11-30T12:00:00Z"},
    }


def airflow(state: str, decision: str | None) -> Status:
    return {
        "dag_id": "example_bash_operator",
        "dag_run_id": "manual__2026-11-30T12:00:00+00:00",
        "logical_date": "2026-11-30T12:00:00+00:00",
        "state": state,
        "last_scheduling_decision": decision,
        "run_type": "manual",
        "external_trigger": True,
        "conf": {},
    }


def replicate(status: str, logs: str = "", **more: Any) -> Status:
    return {
        "id": "gm3qorzdhgbfurvjtvhg6dckhu",
        "model": "replicate/hello-world",
        "input": {"text": "Alice"},
        "logs": logs,
        "output": None,
        "error": None,
        "status": status,
        **more,
    }


def openai(status: str, completed: int = 0, total: int = 100) -> Status:
    return {
        "id": "batch_abc123",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "status": status,
        "created_at": 1711471533,
        "request_counts": {"total": total, "completed": completed, "failed": 0},
    }


def livy(state: str, log: list[str] | None = None) -> Status:
    # Livy REST API's batch object: id, appId, appInfo, log, state.
    return {
        "id": 7,
        "appId": "application_1700000000000_0007",
        "appInfo": {"driverLogUrl": None, "sparkUiUrl": None},
        "log": log or [],
        "state": state,
    }


SCENARIOS: dict[str, Scenario] = {
    "github-actions": Scenario(
        {"OWNER": "octo-org", "REPO": "octo-repo"},
        "30433642",
        [
            (github("queued", None, "2026-11-30T12:00:00Z"), P),
            (github("in_progress", None, "2026-11-30T12:00:05Z"), P),
            (github("in_progress", None, "2026-11-30T12:01:40Z"), None),  # updated_at only
            (github("completed", "success", "2026-11-30T12:02:00Z"), C),
        ],
        "30433643",
        [
            (github("in_progress", None, "2026-11-30T12:00:05Z"), P),
            (github("completed", "failure", "2026-11-30T12:03:00Z"), E),
        ],
    ),
    "gitlab-pipelines": Scenario(
        {"PROJECT_ID": "21"},
        "287",
        [
            (gitlab("pending", "2026-11-30T12:00:01.000Z"), P),
            (gitlab("running", "2026-11-30T12:00:09.000Z"), P),
            (gitlab("running", "2026-11-30T12:00:30.000Z"), None),  # updated_at only
            (gitlab("success", "2026-11-30T12:01:00.000Z", 51), C),
        ],
        "288",
        [
            (gitlab("running", "2026-11-30T12:00:09.000Z"), P),
            (gitlab("canceled", "2026-11-30T12:00:40.000Z", 31), E),
        ],
    ),
    "google-operations": Scenario(
        {"PROJECT": "demo", "LOCATION": "us-central1"},
        "operation-1700000000000-abc",
        [
            (google(), P),
            (google(done=False, metadata={"progressPercent": 40}), P),
            (google(done=False, metadata={"progressPercent": 40}), None),  # the same again
            (google(done=True, response={"@type": "type.googleapis.com/x.Service"}), C),
        ],
        "operation-1700000000001-def",
        [
            (google(), P),
            (google(done=True, error={"code": 1, "message": "Operation was cancelled"}), E),
        ],
    ),
    "azure-operations": Scenario(
        {
            "SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
            "PROVIDER_NAMESPACE": "Microsoft.Compute",
            "LOCATION": "westus",
            "API_VERSION": "2024-03-01",
        },
        "9a062a88-e463-4697-bef2-fe039df73a02",
        [
            (azure("Accepted"), P),
            (azure("InProgress", percentComplete=40.0), P),
            (azure("InProgress", percentComplete=40.0), None),  # the same again
            (azure("Succeeded", percentComplete=100.0), C),
        ],
        "0c3b0d5e-1f2a-4b6c-9d8e-7f6a5b4c3d2e",
        [
            (azure("InProgress"), P),
            (azure("Failed", error={"code": "AllocationFailed", "message": "No capacity"}), E),
        ],
    ),
    "jenkins": Scenario(
        {"JOB_NAME": "build"},
        "42",
        [
            (jenkins(True, None), P),
            (jenkins(True, None, description="deploying"), P),
            (jenkins(True, None, description="deploying"), None),  # the same again
            (jenkins(False, "SUCCESS", description="deploying"), C),
        ],
        "43",
        [
            (jenkins(True, None), P),
            # A step marks the build UNSTABLE while it still runs: not the end yet.
            (jenkins(True, "UNSTABLE"), P),
            (jenkins(False, "UNSTABLE"), E),
        ],
    ),
    "kubernetes-jobs": Scenario(
        {"NAMESPACE": "default"},
        "pi",
        [
            (k8s_job({}), P),
            (k8s_job({"active": 2, "startTime": "2026-11-30T12:00:01Z"}, rv="101"), P),
            # Only write bookkeeping moved.
            (
                k8s_job({"active": 2, "startTime": "2026-11-30T12:00:01Z"}, "102", "12:00:09"),
                None,
            ),
            (k8s_job({"succeeded": 2, "conditions": [cond("SuccessCriteriaMet")]}, "103"), P),
            (
                k8s_job(
                    {
                        "succeeded": 2,
                        "completionTime": "2026-11-30T12:02:00Z",
                        "conditions": [cond("SuccessCriteriaMet"), cond("Complete")],
                    },
                    "104",
                ),
                C,
            ),
        ],
        "pi-fail",
        [
            (k8s_job({"active": 2}, rv="201"), P),
            (k8s_job({"failed": 7, "conditions": [cond("FailureTarget")]}, "202"), P),
            (k8s_job({"failed": 7, "conditions": [cond("FailureTarget"), cond("Failed")]}), E),
        ],
    ),
    "databricks-runs": Scenario(
        {},
        "455644833",
        [
            (databricks("QUEUED"), P),
            (databricks("RUNNING"), P),
            (databricks("RUNNING"), None),  # the same again
            (databricks("TERMINATING", "SUCCESS"), P),  # the result shows before the end
            (databricks("TERMINATED", "SUCCESS"), C),
        ],
        "455644834",
        [(databricks("RUNNING"), P), (databricks("TERMINATED", "CANCELED"), E)],
    ),
    "argo-workflows": Scenario(
        {"NAMESPACE": "argo"},
        "hello-world-x7k2p",
        [
            (argo("Pending", "0/3"), P),
            (argo("Running", "1/3", rv="901"), P),
            (argo("Running", "1/3", rv="902"), None),  # resourceVersion only
            (argo("Succeeded", "3/3", rv="903"), C),
        ],
        "hello-world-b4dq9",
        [(argo("Running", "1/3"), P), (argo("Error", "1/3", rv="905"), E)],
    ),
    "airflow-dag-runs": Scenario(
        {"DAG_ID": "example_bash_operator"},
        "manual__2026-11-30T12:00:00+00:00",
        [
            (airflow("queued", None), P),
            (airflow("running", "2026-11-30T12:00:05+00:00"), P),
            (airflow("running", "2026-11-30T12:00:10+00:00"), None),  # the scheduler's loop
            (airflow("success", "2026-11-30T12:00:15+00:00"), C),
        ],
        "scheduled__2026-11-30T00:00:00+00:00",
        [
            (airflow("running", "2026-11-30T12:00:05+00:00"), P),
            (airflow("failed", "2026-11-30T12:00:20+00:00"), E),
        ],
    ),
    "livy-batches": Scenario(
        {},
        "7",
        [
            (livy("starting"), P),
            (livy("running", ["stdout: ", "stage 1"]), P),
            (livy("running", ["stdout: ", "stage 1"]), None),  # the same answer again
            (livy("success", ["stdout: ", "stage 1", "done"]), C),
        ],
        "8",
        [
            (livy("running"), P),
            (livy("dead", ["stderr: ", "Exception in thread main"]), E),
        ],
    ),
    "replicate-predictions": Scenario(
        {},
        "gm3qorzdhgbfurvjtvhg6dckhu",
        [
            (replicate("starting"), P),
            (replicate("processing", "Using seed: 1\n"), P),
            # Growing logs are progress a viewer wants to see.
            (replicate("processing", "Using seed: 1\n 45%|####      | 45/100\n"), P),
            (replicate("processing", "Using seed: 1\n 45%|####      | 45/100\n"), None),
            (
                replicate(
                    "succeeded",
                    "Using seed: 1\n100%|##########| 100/100\n",
                    output="hello Alice",
                    metrics={"predict_time": 0.012683},
                ),
                C,
            ),
        ],
        "rrr4xq2b7fdtjxyzfk3q5w2zja",
        # The deadline passed before the prediction started.
        [(replicate("starting"), P), (replicate("aborted"), E)],
    ),
    "openai-batches": Scenario(
        {},
        "batch_abc123",
        [
            (openai("validating", total=0), P),
            (openai("in_progress", 23), P),
            (openai("in_progress", 23), None),  # the same again
            (openai("in_progress", 60), P),  # request counts moving is progress
            (openai("finalizing", 100), P),
            (openai("completed", 100), C),
        ],
        "batch_def456",
        [(openai("in_progress", 60), P), (openai("expired", 60), E)],
    ),
}


def run_path(name: str) -> str:
    path = PROFILES[name].example_run_path
    for placeholder, value in SCENARIOS[name].fill.items():
        path = path.replace(placeholder, value)
    assert not re.search(r"\b[A-Z][A-Z_]{2,}\b", path), f"unfilled placeholder in {path}"
    return path


def read(profile: Profile, status: Status) -> tuple[Any, Any]:
    """The state and progress the profile's own expressions give for ``status``."""
    states = jq.compile(profile.state_expr).input_value(status).all()
    progress = None
    if profile.progress_expr is not None:
        out = jq.compile(profile.progress_expr).input_value(status).all()
        progress = min(1.0, max(0.0, float(out[0]))) if out and out[0] is not None else None
    return (states[0] if states else None), progress


async def follow(s: SseStream, run: Run, multi: Profile | None = None) -> None:
    """Walk ``run`` through its steps, checking each event (or its absence). With
    ``multi``, the stream is /v1/streams and each envelope's state and progress must be
    what that profile reads from the status."""
    for index, (status, expected) in enumerate(run.steps):
        if index:
            run.advance()
        if expected is None:
            # Polled several times at this step: had it made an event, it would be here.
            await wait_for(lambda: run.served_here >= 4, timeout=5)
            with pytest.raises(TimeoutError):
                await s.next_event(timeout=0.1)
            continue
        event = await s.next_named(P, C, E, timeout=5)
        body = json.loads(event.data)
        if multi is None:
            assert (event.event, body) == (expected, status), f"step {index}"
        else:
            state, progress = read(multi, status)
            assert (event.event, body["data"]) == (expected, status), f"step {index}"
            assert body["state"] == state, f"step {index}"
            assert body["progress"] == pytest.approx(progress), f"step {index}"
    # The terminal event closes the stream.
    assert await s.rest(timeout=5) == []


def test_every_profile_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(PROFILES)
    for name, scenario in SCENARIOS.items():
        for steps, last in ((scenario.good, C), (scenario.bad, E)):
            assert steps[-1][1] == last, name
            assert all(event in (P, None) for _, event in steps[:-1]), name
        assert any(event is None for _, event in scenario.good), name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_profile_end_to_end(name: str) -> None:
    scenario = SCENARIOS[name]
    path = run_path(name)
    async with scripted_upstream() as api:
        good = api.add(path, scenario.good_id, scenario.good)
        bad = api.add(path, scenario.bad_id, scenario.bad)
        async with running_bridge(api.url, profile=name, upstream_run_path=path) as b:
            async with sse(f"{b.url}/v1/runs/{scenario.good_id}/stream") as s:
                assert s.status == 200
                await follow(s, good)
            async with sse(f"{b.url}/v1/runs/{scenario.bad_id}/stream") as s:
                assert s.status == 200
                await follow(s, bad)
        assert api.unknown == [], "the bridge asked for a path the profile does not use"
        # The profile's static headers went with every request.
        expected = dict(PROFILES[name].upstream_headers)
        assert api.headers_seen
        for seen in api.headers_seen:
            assert {k: seen.get(k) for k in expected} == expected


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_profile_state_and_progress_in_multi_run_envelopes(name: str) -> None:
    """/v1/streams carries the state and progress the profile reads, for any API shape."""
    scenario = SCENARIOS[name]
    path = run_path(name)
    async with scripted_upstream() as api:
        good = api.add(path, scenario.good_id, scenario.good)
        async with (
            running_bridge(api.url, profile=name, upstream_run_path=path) as b,
            # A '+' in a query value means a space: the Airflow id is percent-encoded.
            sse(f"{b.url}/v1/streams?runs={quote(scenario.good_id, safe='')}") as s,
        ):
            assert s.status == 200
            await follow(s, good, multi=PROFILES[name])
