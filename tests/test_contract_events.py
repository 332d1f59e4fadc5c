"""DESIGN.md "Events that say what happened" and "Deltas", read as a black-box tester
reads them: each bullet through the real bridge (Hypercorn on loopback) against a
scripted upstream (aiohttp on loopback), with DESIGN.md's example file verbatim."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import subprocess
import sys
from typing import Any

import jsonpatch
import pytest

from bridge.demo.legacy_api import LegacyApi
from tests.support import running_bridge, sse
from tests.test_derived_events import step_through

#: DESIGN.md's example BRIDGE_EVENTS_FILE, character for character.
DESIGN_EXAMPLE = """\
# Built-in events (progress, complete, error, timeout, ping): rename, reshape, turn off.
# `data` is a jq filter over the status; $run_id, $state and $progress are bound.
[builtin.progress]
enabled = false
[builtin.complete]
event = "run.completed"
data = '{runId: $run_id, run: {status: .status, conclusion: .conclusion}}'
[builtin.ping]
data = '{}'

# Derived events: at each change of a run's status, each rule's `items` is run on the new
# status and on the previous one, and the items are matched by `key`.
[[rule]]
event = "job.started"
items = '.jobs[] | select(.status != "queued") | {runId: $run_id, jobId: .id, job: {name}}'
key = '.jobId'
on = "appear"

[[rule]]
event = "step.log"
items = '.jobs[] as $j | $j.steps[] | {runId: $run_id, jobId: $j.id, stepNumber: .number, text: .log}'
key = '[.jobId, .stepNumber]'
on = "lines"
"""  # noqa: E501 (verbatim: DESIGN.md's line is that long)


def runner(run_id: str) -> list[dict[str, Any]]:
    """A run shaped for the example: one job whose one step logs three lines, the last
    without its newline when the run completes."""

    def status(state: str, job: str, log: str, conclusion: str | None = None) -> dict[str, Any]:
        return {
            "id": run_id,
            "status": state,
            "conclusion": conclusion,
            "jobs": [
                {"id": 7, "name": "build", "status": job, "steps": [{"number": 1, "log": log}]}
            ],
        }

    return [
        status("queued", "queued", ""),
        status("in_progress", "in_progress", "fetch\nbui"),
        status("in_progress", "in_progress", "fetch\nbuild\ntes"),
        status("completed", "completed", "fetch\nbuild\ntest", "success"),
    ]


def write(tmp_path: pathlib.Path, text: str, name: str = "events.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def named(events: list[Any]) -> list[tuple[str, Any]]:
    return [(e.event, json.loads(e.data)) for e in events if e.event != "ping"]


EXPECTED = [
    ("job.started", {"runId": "e1", "jobId": 7, "job": {"name": "build"}}),
    ("step.log", {"runId": "e1", "jobId": 7, "stepNumber": 1, "line": "fetch"}),
    ("step.log", {"runId": "e1", "jobId": 7, "stepNumber": 1, "line": "build"}),
    # The terminal status: the last line, without a newline, is sent too.
    ("step.log", {"runId": "e1", "jobId": 7, "stepNumber": 1, "line": "test"}),
    ("run.completed", {"runId": "e1", "run": {"status": "completed", "conclusion": "success"}}),
]


async def test_the_design_example_file_works_verbatim(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    run = legacy.scripted("e1", runner("e1"))
    events_file = write(tmp_path, DESIGN_EXAMPLE)
    async with running_bridge(legacy.url, events_file=events_file) as b:
        async with sse(f"{b.url}/v1/runs/e1/stream") as s:
            await step_through(b, run)
            events = await s.rest()
        assert named(events) == EXPECTED
        assert all(e.id for e in events) and len({e.id for e in events}) == len(events)
        # Progress off: a later viewer without a resume id gets the history from its start.
        async with sse(f"{b.url}/v1/runs/e1/stream") as late:
            again = await late.rest()
        assert [e.id for e in again] == [e.id for e in events]


async def test_a_run_first_seen_midway_starts_with_its_past(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    run = legacy.scripted("e1", runner("e1"))
    run.advance(2)
    async with running_bridge(legacy.url, events_file=write(tmp_path, DESIGN_EXAMPLE)) as b:
        async with sse(f"{b.url}/v1/runs/e1/stream") as s:
            first = [await s.next_event() for _ in range(3)]
            assert named(first) == EXPECTED[:3]
            run.advance()
            assert named(await s.rest()) == EXPECTED[3:]


async def test_ping_data_follows_the_file_and_has_no_id(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    legacy.scripted("e1", runner("e1"))
    events_file = write(tmp_path, DESIGN_EXAMPLE)
    async with running_bridge(legacy.url, events_file=events_file, ping_interval=0.05) as b:
        async with sse(f"{b.url}/v1/runs/e1/stream") as s:
            ping = await s.next_event()
            assert (ping.event, ping.data, ping.has_id) == ("ping", "{}", False)


ORDER = """\
[[rule]]
event = "a"
items = '.xs[]'
key = '.k'
on = "appear"

[[rule]]
event = "b"
items = '.ys[]'
key = '.k'
on = "appear"
"""


async def test_order_within_one_change_rules_items_then_progress_or_the_end(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    statuses = [
        {"status": "running", "xs": [], "ys": []},
        {"status": "running", "xs": [{"k": 2}, {"k": 1}], "ys": [{"k": 9}, {"k": 8}]},
        {"status": "completed", "xs": [{"k": 2}, {"k": 1}, {"k": 3}], "ys": [{"k": 7}]},
    ]
    run = legacy.scripted("o1", statuses)
    async with running_bridge(legacy.url, events_file=write(tmp_path, ORDER)) as b:
        async with sse(f"{b.url}/v1/runs/o1/stream") as s:
            # Progress on: the current status first.
            first = await s.next_named("progress")
            assert json.loads(first.data) == statuses[0]
            await step_through(b, run)
            events = await s.rest()
    assert [(e.event, json.loads(e.data)) for e in events] == [
        ("a", {"k": 2}),
        ("a", {"k": 1}),
        ("b", {"k": 9}),
        ("b", {"k": 8}),
        ("progress", statuses[1]),
        ("a", {"k": 3}),
        ("b", {"k": 7}),
        ("complete", statuses[2]),
    ]


CHANGE_AND_ONE_THING = """\
[[rule]]
event = "job"
items = '.jobs[]'
key = '.id'

[[rule]]
event = "head"
items = '.jobs[]'

[[rule]]
event = "message"
items = '.jobs[] | {id, status}'
key = '.id'
on = "appear"

[builtin.progress]
enabled = false
[builtin.complete]
enabled = false
[builtin.error]
enabled = false
"""


async def test_change_is_the_default_and_no_key_is_about_the_first_item(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    def status(state: str, a: str, b: str) -> dict[str, Any]:
        return {"status": state, "jobs": [{"id": "a", "status": a}, {"id": "b", "status": b}]}

    statuses = [
        status("running", "queued", "queued"),
        status("running", "queued", "running"),
        status("running", "running", "running"),
        status("running", "running", "running"),
        status("failed", "running", "failed"),
    ]
    run = legacy.scripted("c1", statuses)
    events_file = write(tmp_path, CHANGE_AND_ONE_THING)
    async with running_bridge(legacy.url, events_file=events_file) as b:
        async with sse(f"{b.url}/v1/runs/c1/stream") as s:
            await step_through(b, run)
            # The end events are off, and the stream closes at the terminal status all the same.
            events = await s.rest()
            raw = bytes(s.raw).decode()
    jobs = [json.loads(e.data) for e in events if e.event == "job"]
    heads = [json.loads(e.data) for e in events if e.event == "head"]
    messages = [json.loads(e.data) for e in events if e.event == "message"]
    assert jobs == [
        {"id": "a", "status": "queued"},
        {"id": "b", "status": "queued"},
        {"id": "b", "status": "running"},
        {"id": "a", "status": "running"},
        {"id": "b", "status": "failed"},
    ]
    # No key: one thing, the first item; the second item's changes are not its events.
    assert heads == [{"id": "a", "status": "queued"}, {"id": "a", "status": "running"}]
    assert messages == [{"id": "a", "status": "queued"}, {"id": "b", "status": "queued"}]
    # `message`: unnamed events, what EventSource.onmessage receives.
    assert "event: message" not in raw and "event:message" not in raw
    assert [e.event for e in events][-1] != "error"


BOUND = """\
[builtin.progress]
event = "tick"
data = '{run: $run_id, state: $state, progress: $progress, raw: .pct}'
[builtin.error]
event = "run.failed"
data = '{run: $run_id, state: $state, progress: $progress}'
"""


async def test_builtin_data_binds_run_id_state_and_progress(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    run = legacy.scripted("v1", [{"status": "Running", "pct": 40}, {"status": "FAILED", "pct": 50}])
    events_file = write(tmp_path, BOUND)
    async with running_bridge(legacy.url, events_file=events_file, progress_expr=".pct / 100") as b:
        async with sse(f"{b.url}/v1/runs/v1/stream") as s:
            tick = await s.next_named("tick")
            assert json.loads(tick.data) == {
                "run": "v1",
                "state": "Running",
                "progress": 0.4,
                "raw": 40,
            }
            run.advance()
            end = await s.next_named("run.failed")
            assert json.loads(end.data) == {"run": "v1", "state": "FAILED", "progress": 0.5}
            assert await s.rest() == []


FAILING = """\
[[rule]]
event = "named"
items = '.name | ascii_downcase | {name: .}'
"""


async def test_a_failing_rule_is_logged_once_per_run_and_the_stream_goes_on(
    legacy: LegacyApi, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    statuses = [
        {"status": "running", "name": 1},
        {"status": "running", "name": 2},
        {"status": "running", "name": "Ok"},
        {"status": "completed", "name": "Done"},
    ]
    run = legacy.scripted("f1", statuses)
    caplog.set_level(logging.INFO)
    async with running_bridge(legacy.url, events_file=write(tmp_path, FAILING)) as b:
        async with sse(f"{b.url}/v1/runs/f1/stream") as s:
            await step_through(b, run)
            events = await s.rest()
    assert [(e.event, json.loads(e.data)) for e in events] == [
        ("progress", statuses[0]),
        ("progress", statuses[1]),
        ("named", {"name": "ok"}),
        ("progress", statuses[2]),
        ("named", {"name": "done"}),
        ("complete", statuses[3]),
    ]
    about = [r for r in caplog.records if "f1" in r.getMessage() and "named" in r.getMessage()]
    assert len(about) == 1, [r.getMessage() for r in about]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[builtin.progress\n", []),
        ("[nope]\nx = 1\n", ["nope"]),
        ("[builtin.complete]\ncolour = 'red'\n", ["[builtin.complete]", "colour"]),
        ("[[rule]]\nevent = 'x'\nitems = '.[] | {'\n", ["[[rule]]", "items"]),
        ("[[rule]]\nevent = 'x'\nitems = '.[]'\non = 'vanish'\n", ["[[rule]]", "on"]),
    ],
)
def test_serve_refuses_a_bad_file_in_one_line_naming_file_table_and_key(
    tmp_path: pathlib.Path, text: str, names: list[str]
) -> None:
    path = write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_UPSTREAM_URL="http://127.0.0.1:9",
        BRIDGE_PORT="0",
        BRIDGE_HOST="127.0.0.1",
        BRIDGE_EVENTS_FILE=path,
    )
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert path in lines[0] and "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0]


async def test_a_delta_viewer_resumes_by_last_event_id_with_patches(
    legacy: LegacyApi,
) -> None:
    statuses = [{"status": "running", "n": i, "keep": "x" * 40} for i in range(4)]
    statuses.append({"status": "completed", "n": 4, "keep": "x" * 40})
    run = legacy.scripted("p1", statuses)
    async with running_bridge(legacy.url) as b:
        url = f"{b.url}/v1/runs/p1/stream?delta=json-patch"
        async with sse(url) as s:
            first = await s.next_named("progress")
            await step_through(b, run, until=2)
            patches = [await s.next_named("patch") for _ in range(2)]
        current = json.loads(first.data)
        for patch in patches:
            current = jsonpatch.JsonPatch(json.loads(patch.data)).apply(current)
        assert current == statuses[2]
        async with sse(url, {"Last-Event-ID": patches[0].id}) as again:
            resumed = await again.next_event()
            assert resumed.event == "patch" and resumed.id == patches[1].id
            await step_through(b, run)
            rest = await again.rest()
        assert [e.event for e in rest] == ["patch", "complete"]
        # A viewer that does not ask gets whole statuses.
        async with sse(f"{b.url}/v1/runs/p1/stream", {"Last-Event-ID": patches[0].id}) as plain:
            assert {e.event for e in await plain.rest()} == {"progress", "complete"}


LINES = """\
[[rule]]
event = "log"
items = '.steps[] | {step: .n, text: .log}'
key = '.step'
on = "lines"

[builtin.progress]
enabled = false
"""


async def test_lines_restart_when_a_text_does_not_extend_and_end_at_a_failure(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    def status(state: str, *logs: str) -> dict[str, Any]:
        return {"status": state, "steps": [{"n": i, "log": t} for i, t in enumerate(logs)]}

    statuses = [
        status("running", "a\nb\npart"),
        status("running", "a\nb\npartial\n", ""),
        # Step 0's log was rewritten: it no longer extends what was sent; counted anew.
        status("running", "new\n", "x"),
        status("failed", "new\n", "x\ny"),
    ]
    run = legacy.scripted("l1", statuses)
    async with running_bridge(legacy.url, events_file=write(tmp_path, LINES)) as b:
        async with sse(f"{b.url}/v1/runs/l1/stream") as s:
            await step_through(b, run)
            events = await s.rest()
    lines = [
        (json.loads(e.data)["step"], json.loads(e.data)["line"]) for e in events if e.event == "log"
    ]
    assert lines == [
        (0, "a"),
        (0, "b"),
        (0, "partial"),
        (0, "new"),
        (1, "x"),
        # At the final status (a failure too), the last line without its newline.
        (1, "y"),
    ]
    assert events[-1].event == "error"
    assert all("text" not in json.loads(e.data) for e in events if e.event == "log")


@pytest.mark.parametrize(
    ("final", "end"),
    [
        ("canceled", "error"),
        ("cancelled", "error"),
        ("Failed", "error"),
        ("COMPLETED", "complete"),
    ],
)
async def test_the_default_state_lists_end_streams_case_insensitively(
    legacy: LegacyApi, final: str, end: str
) -> None:
    # BRIDGE_SUCCESS_STATUSES `completed`, BRIDGE_FAILURE_STATUSES `failed,cancelled,canceled`.
    run = legacy.scripted("s1", [{"status": "running"}, {"status": final}])
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/runs/s1/stream") as s:
        assert (await s.next_named("progress")).data == '{"status":"running"}'
        run.advance()
        last = await s.next_named(end)
        assert json.loads(last.data) == {"status": final}
        assert await s.rest() == []


async def test_inspect_shows_the_events_the_rules_derive_as_first_seen(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    run = legacy.scripted("e1", runner("e1"))
    run.advance(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(BRIDGE_UPSTREAM_URL=legacy.url, BRIDGE_EVENTS_FILE=write(tmp_path, DESIGN_EXAMPLE))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "inspect",
        "e1",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    lines = out.decode().splitlines()
    at = lines.index("events (first seen)")
    shown = [line.split() for line in lines[at + 1 : at + 5]]
    assert [words[0] for words in shown] == ["job.started", "step.log", "step.log", "progress"]
    assert '"line": "build"}' in lines[at + 3]
    assert "turned off" in lines[at + 4]
