"""The tools speak the vocabulary: `sse-bridge inspect` shows the events a run's stream
starts with, `sse-bridge watch` prints derived events as lines."""

from __future__ import annotations

import asyncio
import json

import pytest

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.vocabularies import DEMOS, runner_statuses
from tests.support import running_bridge
from tests.test_derived_events import step_through
from tests.test_onboarding import (  # noqa: F401  (fixtures)
    Upstream,
    clean_env,
    point_at,
    run_cli,
    upstream,
)


async def test_inspect_shows_the_events_derived_from_the_run_as_first_seen(
    upstream: Upstream,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = runner_statuses("r9", lines=2)[3]  # the first step's log has two lines
    upstream.statuses["r9"] = status
    point_at(monkeypatch, upstream, events_file=str(DEMOS["runner"].path))
    code, out, err = await run_cli(capsys, "inspect", "r9")
    assert code == 0, out + err
    assert "events (first seen)" in out
    for name in ("run.started", "job.started", "step.started", "step.log"):
        assert name in out
    assert "progress  (turned off: not sent)" in out
    code, out, _ = await run_cli(capsys, "inspect", "r9", "--json")
    events = json.loads(out)["events"]
    assert [(e["event"], e["sent"]) for e in events] == [
        ("run.started", True),
        ("job.started", True),
        ("step.started", True),
        ("step.log", True),
        ("step.log", True),
        ("progress", False),
    ]
    assert events[3]["data"] == {
        "runId": "r9",
        "jobId": "build",
        "stepNumber": 1,
        "line": "build Checkout: line 1",
    }


async def test_watch_prints_derived_events_as_lines(
    legacy: LegacyApi, capsys: pytest.CaptureFixture[str]
) -> None:
    run = legacy.scripted("w1", DEMOS["task"].statuses("w1", "completed"))
    async with running_bridge(legacy.url, events_file=str(DEMOS["task"].path)) as b:
        watching = run_cli(capsys, "watch", "w1", "--url", b.url)
        task = asyncio.create_task(watching)
        try:
            await step_through(b, run)
            code, out, err = await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if line.strip()]
    assert any(line.startswith("status") and '"waiting"' in line for line in lines), out
    assert any(line.startswith("completed  {") for line in lines), out
    # The end event is renamed: the run's end is read from /result (exit 0, the outcome).
    assert lines[-1] == "✔ w1 completed"
