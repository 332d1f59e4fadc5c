"""`sse-bridge demo --profile NAME`: the simulated API speaks GitHub Actions, Argo
Workflows or Databricks, and the real bridge, configured only by ``profile`` and
``upstream_run_path`` (what the demo sets), reads it: the event sequence, the state and
progress of every ``/v1/streams`` envelope, no event for a change only in an ignored
field. Then the `sse-bridge demo` command itself: bound before it prints, one line for a
port in use, listening where ``--host`` says, its printed `watch` line working as printed.

Each scripted step is held until the bridge has fetched it twice in full (the poll loop
asks again only after it handled the previous answer), so no step is skipped and an
event that should not exist would be in the stream before the next real change. Waits
are bounded; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.demo.legacy_api import LegacyApi, serving
from bridge.demo.main import settings_overrides
from bridge.demo.runs import Outcome, ScriptedRun
from bridge.demo.shapes import DEMO_PROFILES
from bridge.profiles import PROFILES
from tests.support import running_bridge, sse, wait_for

NODES = ("a", "b", "c")
#: (event, state, progress) of one /v1/streams envelope.
Seen = tuple[str, str | None, float | None]

#: Where the demo serves each API's run: the profile's example path, placeholders filled.
PATHS = {
    "github-actions": "/repos/demo/demo/actions/runs/{run_id}",
    "argo-workflows": "/api/v1/workflows/demo/{run_id}",
    "databricks-runs": "/api/2.1/jobs/runs/get?run_id={run_id}",
}

#: What the bridge must send for a scripted run over NODES, per profile and outcome. A
#: step whose only change the API does not show (GitHub: the next node, plus updated_at)
#: makes no event.
EXPECTED: dict[str, dict[Outcome, list[Seen]]] = {
    "github-actions": {
        "completed": [
            ("progress", "queued", None),
            ("progress", "in_progress", None),
            ("complete", "success", None),
        ],
        "failed": [
            ("progress", "queued", None),
            ("progress", "in_progress", None),
            ("error", "failure", None),
        ],
        "cancelled": [
            ("progress", "queued", None),
            ("progress", "in_progress", None),
            ("error", "cancelled", None),
        ],
    },
    "argo-workflows": {
        "completed": [
            ("progress", "Pending", None),  # no pods yet: no progress
            ("progress", "Running", 0.0),
            ("progress", "Running", 1 / 3),
            ("progress", "Running", 2 / 3),
            ("complete", "Succeeded", 1.0),
        ],
        "failed": [
            ("progress", "Pending", None),
            ("progress", "Running", 0.0),
            ("progress", "Running", 1 / 3),
            ("progress", "Running", 2 / 3),
            ("error", "Failed", 2 / 3),
        ],
        "cancelled": [
            ("progress", "Pending", None),
            ("progress", "Running", 0.0),
            ("error", "Failed", 0.0),
        ],
    },
    "databricks-runs": {
        # Each task's state is in the run object: every node step is an event.
        "completed": [
            ("progress", "PENDING", None),
            ("progress", "RUNNING", None),
            ("progress", "RUNNING", None),
            ("progress", "RUNNING", None),
            ("complete", "SUCCESS", None),
        ],
        "failed": [
            ("progress", "PENDING", None),
            ("progress", "RUNNING", None),
            ("progress", "RUNNING", None),
            ("progress", "RUNNING", None),
            ("error", "FAILED", None),
        ],
        "cancelled": [
            ("progress", "PENDING", None),
            ("progress", "RUNNING", None),
            ("error", "CANCELED", None),
        ],
    },
}


@asynccontextmanager
async def demo_api(profile: str | None, step: float = 0.05) -> AsyncIterator[LegacyApi]:
    async with serving(LegacyApi(step=step, seed=5, profile=profile)) as api:
        yield api


def seen(envelope: dict[str, Any], event: str) -> Seen:
    progress = envelope["progress"]
    return (event, envelope["state"], None if progress is None else round(progress, 4))


def rounded(expected: list[Seen]) -> list[Seen]:
    return [(e, s, None if p is None else round(p, 4)) for e, s, p in expected]


async def hold(api: LegacyApi, run_id: str) -> None:
    """Until the bridge has fetched the run's current status twice, and handled both."""
    asked = api.requests[run_id]
    await wait_for(lambda: api.requests[run_id] >= asked + 3, timeout=10)


async def cancel(api: LegacyApi, run_id: str) -> None:
    """Through the demo's own control (what the page's Cancel button reaches)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/runs/{run_id}/cancel") as answer,
    ):
        assert answer.status == 200


def test_each_demo_profile_serves_at_its_profiles_path() -> None:
    assert set(DEMO_PROFILES) == set(PATHS)
    for name, path in PATHS.items():
        assert LegacyApi(profile=name).run_path == path
        # The path the profile documents, only its upper-case placeholders filled.
        assert re.sub(r"[A-Z][A-Z_]*[A-Z]", "demo", PROFILES[name].example_run_path) == path
        overrides = settings_overrides(name)
        assert overrides == {"profile": name, "upstream_run_path": path}


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
@pytest.mark.parametrize("profile", sorted(PATHS))
async def test_a_scripted_run_in_each_profile(profile: str, outcome: Outcome) -> None:
    run_id = f"{profile}-{outcome}"
    async with demo_api(profile) as api:
        run: ScriptedRun = api.scripted(
            run_id, nodes=NODES, outcome="completed" if outcome == "cancelled" else outcome
        )
        async with (
            running_bridge(api.url, profile=profile, upstream_run_path=api.run_path) as b,
            sse(f"{b.url}/v1/streams?runs={run_id}") as stream,
        ):
            assert stream.status == 200
            await stream.next_named("progress")
            await hold(api, run_id)
            if outcome == "cancelled":
                run.advance()
                await hold(api, run_id)
                await cancel(api, run_id)
            else:
                for _ in run.statuses[2:]:
                    run.advance()
                    await hold(api, run_id)
                run.advance()  # the end: the bridge stops polling once it has it
            events = [stream.events[0], *await stream.rest(timeout=10)]
        got = [seen(stream.data(e), e.event) for e in events if e.event != "ping"]
        assert got == rounded(EXPECTED[profile][outcome])
        envelopes = [stream.data(e) for e in events if e.event != "ping"]
        assert {e["run_id"] for e in envelopes} == {run_id}
        # The bridge asked the profile's path, with the id where the path puts it.
        expected_path = PATHS[profile].replace("{run_id}", run_id)
        assert {r.path for r in api.seen if r.run_id == run_id} == {expected_path}
        # The events carry the API's own object, as it was served.
        last = envelopes[-1]["data"]
        if profile == "github-actions":
            assert last["status"] == "completed"
            assert last["conclusion"] == envelopes[-1]["state"]
        elif profile == "argo-workflows":
            assert last["status"]["phase"] == envelopes[-1]["state"]
        else:
            assert last["state"]["life_cycle_state"] == "TERMINATED"
            assert last["state"]["result_state"] == envelopes[-1]["state"]
        # The demo's run list says the state in the same words as the bridge.
        async with aiohttp.ClientSession() as session, session.get(api.url + "/runs") as answer:
            listed = {r["id"]: r for r in (await answer.json())["runs"]}
        assert listed[run_id]["state"] == envelopes[-1]["state"]


async def test_a_change_only_in_githubs_updated_at_makes_no_event() -> None:
    run_id = "quiet"
    async with demo_api("github-actions") as api:
        run = api.scripted(run_id, nodes=NODES)
        run.advance()  # in_progress, where it stays while only updated_at moves
        # Every answer differs from the last (updated_at, to the millisecond).
        first, later = api.answer(run, now=1000.0), api.answer(run, now=1000.25)
        assert first["updated_at"] != later["updated_at"]
        assert {**first, "updated_at": None} == {**later, "updated_at": None}
        async with (
            running_bridge(api.url, profile="github-actions", upstream_run_path=api.run_path) as b,
            sse(f"{b.url}/v1/streams?runs={run_id}") as stream,
        ):
            assert stream.data(await stream.next_named("progress"))["state"] == "in_progress"
            asked = api.requests[run_id]
            await wait_for(lambda: api.requests[run_id] >= asked + 8, timeout=10)
            # Eight more answers, each with a new updated_at: the next event is the end.
            run.advance(len(run.statuses))
            end = await stream.next_named("progress", "complete", timeout=10)
            assert (end.event, stream.data(end)["state"]) == ("complete", "success")
        # The control: without the profile's ignored field, every answer is an event.
        run2 = api.scripted("noisy", nodes=NODES)
        run2.advance()
        async with (
            running_bridge(
                api.url,
                profile="github-actions",
                upstream_run_path=api.run_path,
                ignore_fields=[],
            ) as b,
            sse(f"{b.url}/v1/streams?runs=noisy") as stream,
        ):
            for _ in range(3):
                event = await stream.next_named("progress", timeout=10)
                assert stream.data(event)["state"] == "in_progress"


@pytest.mark.parametrize("profile", sorted(PATHS))
async def test_timed_runs_started_and_cancelled_through_the_demo_controls(profile: str) -> None:
    """The clock-driven runs the demo starts (its Start and Cancel controls), each shape."""
    async with demo_api(profile, step=0.1) as api, aiohttp.ClientSession() as session:
        started: dict[str, Outcome] = {}
        outcomes: tuple[Outcome, ...] = ("completed", "failed", "completed")
        for outcome in outcomes:
            async with session.post(f"{api.url}/runs", json={"outcome": outcome}) as answer:
                assert answer.status == 201
                body = await answer.json()
            started[body["id"]] = outcome
            assert body["path"] == PATHS[profile].replace("{run_id}", body["id"])
        to_cancel = list(started)[-1]
        async with session.post(f"{api.url}/runs/{to_cancel}/cancel") as answer:
            assert answer.status == 200
        started[to_cancel] = "cancelled"
        async with (
            running_bridge(api.url, profile=profile, upstream_run_path=api.run_path) as b,
            sse(f"{b.url}/v1/streams?runs={','.join(started)}") as stream,
        ):
            events = [e for e in await stream.rest(timeout=20) if e.event != "ping"]
    final: dict[str, Seen] = {}
    for event in events:
        envelope = stream.data(event)
        final[envelope["run_id"]] = seen(envelope, event.event)
    for run_id, outcome in started.items():
        expected_event, expected_state, _ = EXPECTED[profile][outcome][-1]
        assert final[run_id][:2] == (expected_event, expected_state), (run_id, outcome)


async def test_the_default_demo_reads_seed_004s_progress() -> None:
    async with demo_api(None) as api:
        run = api.scripted("plain", nodes=NODES)
        assert api.run_path == "/runs/{run_id}"
        demo_settings: dict[str, Any] = settings_overrides(None)
        async with (
            running_bridge(api.url, **demo_settings) as b,
            sse(f"{b.url}/v1/streams?runs=plain") as stream,
        ):
            await stream.next_named("progress")
            await hold(api, "plain")
            for _ in run.statuses[2:]:
                run.advance()
                await hold(api, "plain")
            run.advance()
            events = [stream.events[0], *await stream.rest(timeout=10)]
    envelopes = [(e.event, stream.data(e)) for e in events if e.event != "ping"]
    assert [(name, m["state"], m["progress"]) for name, m in envelopes] == [
        (name, s["status"], s["progress"])
        for name, s in zip(
            ["progress"] * (len(run.statuses) - 1) + ["complete"], run.statuses, strict=True
        )
    ]
    assert envelopes[-1][1]["progress"] == 1.0


# --- the `sse-bridge demo` command ------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def demo_process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "demo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"BRIDGE_POLL_INTERVAL": "0.1", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def announced(process: asyncio.subprocess.Process) -> dict[str, str]:
    """The demo's printed lines, by label, once it has printed them all."""
    assert process.stdout is not None
    lines: dict[str, str] = {}
    async with asyncio.timeout(20):
        while True:
            raw = await process.stdout.readline()
            assert raw, "the demo exited before it was ready"
            line = raw.decode().rstrip("\n")
            if line.startswith("Stop with"):
                return lines
            label, _, value = line.partition(":")
            lines[label.strip()] = value.strip()


async def test_demo_binds_before_it_prints_and_its_watch_line_works_as_printed() -> None:
    port = free_port("127.0.0.2")
    async with demo_process(
        "--host", "127.0.0.2", "--port", str(port), "--profile", "argo-workflows", "--step", "0.1"
    ) as demo:
        lines = await announced(demo)
        base = f"http://127.0.0.2:{port}"
        assert lines["dashboard"] == base + "/"
        # Printed only once bound: the first request, made at once, is answered.
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz") as answer:
                assert answer.status == 200
            async with session.get(base + "/dashboard/config.json") as answer:
                assert (await answer.json())["demo"] is True
            # Where --host says, nowhere else.
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(f"http://127.0.0.1:{port}/healthz"):
                    pass
        assert lines["simulated API"].endswith("/api/v1/workflows/demo/run-0001")
        command = shlex.split(lines["in the terminal"])
        assert command[1:] == ["watch", "run-0001", "--url", base]
        # The running interpreter's own script: it works without PATH (the demo had none).
        assert command[0] == str(Path(sys.executable).parent / "sse-bridge")
        watcher = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(watcher.communicate(), 30)
    # run-0001 is started to complete; Argo says Succeeded, with its progress. (Whether
    # watch also saw it Running depends on the clock: tests/test_watch.py shows that.)
    assert watcher.returncode == 0, err.decode()
    shown = [" ".join(line.split()) for line in out.decode().splitlines()]
    assert shown[-2:] == ["run-0001 Succeeded 100.0%", "✔ run-0001 Succeeded"]
    assert all(re.fullmatch(r"run-0001 (Pending|Running \d+\.\d%)", x) for x in shown[:-2])


async def test_demo_on_a_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with demo_process("--port", str(port)) as demo:
            out, err = await asyncio.wait_for(demo.communicate(), 30)
    assert demo.returncode == 2
    assert out == b""
    assert err.decode().splitlines() == [
        f"sse-bridge: cannot listen on 127.0.0.1:{port}: address already in use; choose "
        f"another port with --port, e.g. sse-bridge demo --port {port + 1}"
    ]


async def test_demo_refuses_a_profile_it_cannot_simulate() -> None:
    async with demo_process("--profile", "jenkins") as demo:
        out, err = await asyncio.wait_for(demo.communicate(), 30)
    assert demo.returncode == 2 and out == b""
    assert "github-actions" in err.decode() and "Traceback" not in err.decode()


def test_the_demo_ignores_a_profile_left_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridge.settings import load

    monkeypatch.setenv("BRIDGE_PROFILE", "jenkins")
    settings = load(**settings_overrides(None))
    assert settings.profile is None and settings.progress_expr == ".progress"
    assert json.dumps(settings.success_statuses) == json.dumps(["completed"])
