"""Onboarding tells the truth: `inspect`, `profiles`, unknown variables, one-line errors.

`inspect` runs in-process (``bridge.cli.main`` in a worker thread, since it calls
``asyncio.run``) against a real aiohttp upstream on loopback; the start-up errors of
`serve` run as a subprocess, because "one line, no traceback" is about what the
operator's terminal shows.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge import cli
from bridge.settings import load, unknown_variables
from bridge.tools.inspection import examine
from tests.support import serving_app

ROOT = Path(__file__).resolve().parent.parent
SECRET = "secret-7f3a91"
#: Upper bound for one command, in seconds (they take well under one).
LIMIT = 30.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No BRIDGE_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    yield


@dataclass
class Upstream:
    url: str
    #: A run's status, or a function making a fresh one for each answer.
    statuses: dict[str, dict[str, Any] | Callable[[], dict[str, Any]]]
    seen: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A legacy API on loopback: GET /jobs/{id} answers the status set for that id."""
    api = Upstream("", {})

    async def job(request: web.Request) -> web.Response:
        api.seen.append(dict(request.headers))
        status = api.statuses.get(request.match_info["id"])
        if status is None:
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(status() if callable(status) else status)

    app = web.Application()
    app.router.add_get("/jobs/{id}", job)
    async with serving_app(app) as api.url:
        yield api


def point_at(monkeypatch: pytest.MonkeyPatch, api: Upstream, **variables: str) -> None:
    monkeypatch.setenv("BRIDGE_UPSTREAM_URL", api.url)
    monkeypatch.setenv("BRIDGE_UPSTREAM_RUN_PATH", "/jobs/{run_id}")
    # inspect fetches twice, a poll interval apart.
    monkeypatch.setenv("BRIDGE_POLL_INTERVAL", "0.05")
    for name, value in variables.items():
        monkeypatch.setenv(f"BRIDGE_{name.upper()}", value)


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``sse-bridge ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.wait_for(asyncio.to_thread(cli.main, list(argv)), LIMIT)
    out, err = capsys.readouterr()
    return code, out, err


def run_bridge(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m bridge ARGV`` as a subprocess with only ``env``'s BRIDGE_* variables."""
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *argv],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=LIMIT,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- inspect: exit 0 -----------------------------------------------------------------


async def test_a_known_state_exits_0_and_shows_the_event(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["r1"] = {"status": "completed", "outputs": {"url": "s3://out"}}
    point_at(monkeypatch, upstream)
    code, out, err = await run_cli(capsys, "inspect", "r1")
    assert code == 0, out + err
    assert f"GET {upstream.url}/jobs/r1" in out
    assert '"s3://out"' in out  # the status itself
    assert ".status" in out and '"completed"' in out
    assert "complete" in out and "hint" not in out


async def test_the_nested_example_works_once_configured(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["42"] = {"job": {"state": "DONE"}, "server_time": "2026-11-30T19:30:00Z"}
    point_at(
        monkeypatch,
        upstream,
        state_expr=".job.state",
        success_statuses="done",
        ignore_fields=".server_time",
    )
    code, out, _ = await run_cli(capsys, "inspect", "42")
    assert code == 0, out
    assert "success" in out and "complete" in out
    assert '.server_time = "2026-11-30T19:30:00Z"' in out


async def test_json_output_carries_the_findings(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    upstream.statuses["p"] = {"status": "running", "pct": 40}
    point_at(monkeypatch, upstream, progress_expr=".pct / 100")
    code, out, _ = await run_cli(capsys, "inspect", "p", "--json")
    assert code == 0
    found = json.loads(out)
    assert found["state"] == "running" and found["verdict"] == "in progress"
    assert found["progress"] == 0.4 and found["event"] == "progress"
    assert found["status"] == {"status": "running", "pct": 40}


# --- inspect: exit 1, with a hint naming the variable --------------------------------


async def test_a_nested_state_under_the_default_expression_exits_1_with_the_path(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["42"] = {"id": 42, "job": {"state": "DONE"}}
    point_at(monkeypatch, upstream)
    code, out, _ = await run_cli(capsys, "inspect", "42")
    assert code == 1
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1, out
    assert "BRIDGE_STATE_EXPR=.job.state" in hints[0]


async def test_a_finished_status_in_no_list_exits_1_naming_the_list(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["7"] = {"status": "DONE", "finished_at": "2026-11-30T19:29:58Z"}
    point_at(monkeypatch, upstream)
    code, out, _ = await run_cli(capsys, "inspect", "7")
    assert code == 1
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1, out
    assert "add DONE to BRIDGE_SUCCESS_STATUSES" in hints[0]
    assert "BRIDGE_SUCCESS_STATUSES=completed,DONE" in hints[0]
    assert ".finished_at" in hints[0]


def test_a_failed_looking_state_is_pointed_at_the_failure_list() -> None:
    found = examine(load(), {"status": "ABORTED", "ended_at": 1764531000})
    assert found.exit_code == 1
    assert found.hint is not None and found.hint.startswith("add ABORTED to BRIDGE_FAILURE_")


def test_a_state_expression_that_gives_an_object_suggests_the_field_inside() -> None:
    found = examine(load(), {"status": {"phase": "Running", "conditions": [{"status": "x"}]}})
    assert found.exit_code == 1
    assert found.hint is not None and "BRIDGE_STATE_EXPR=.status.phase" in found.hint
    assert "gave dict" in found.hint


def test_a_state_in_no_list_exits_1_even_when_nothing_says_the_run_ended() -> None:
    # "compiling" may be an in-progress word; "SUCCESS" and "CANCELED" are final ones the
    # lists miss. Neither is known, so a script gating on the exit code must not pass it.
    for state in ("compiling", "SUCCESS", "CANCELED"):
        found = examine(load(failure_statuses="failed"), {"status": state})
        assert found.exit_code == 1, state
        assert found.verdict == "unknown"
        assert found.hint is not None and f"add {state} to" in found.hint


async def test_a_finished_state_in_no_list_exits_1_in_json_too(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    upstream.statuses["9"] = {"pipeline": {"state": "SUCCESS", "percent": 80}}
    point_at(monkeypatch, upstream, state_expr=".pipeline.state")
    code, out, _ = await run_cli(capsys, "inspect", "9", "--json", "--once")
    assert code == 1
    assert json.loads(out)["exit_code"] == 1


def test_a_documented_in_progress_word_exits_0() -> None:
    # The usual words of bridge/polling/status.py, case-insensitively.
    assert examine(load(), {"status": "running"}).exit_code == 0
    assert examine(load(), {"status": "Waiting_For_Resource"}).exit_code == 0


def test_the_default_failure_list_has_both_spellings_of_cancelled() -> None:
    for state in ("cancelled", "canceled", "Canceled"):
        found = examine(load(), {"status": state})
        assert found.reading.event == "error" and found.exit_code == 0, state


def test_a_progress_expression_without_progress_yet_is_a_note() -> None:
    found = examine(load(progress_expr=".done / .total"), {"status": "queued"})
    assert found.exit_code == 0
    assert found.hint is not None and "BRIDGE_PROGRESS_EXPR" in found.hint


def test_an_end_time_of_zero_does_not_look_finished() -> None:
    # Databricks says "not ended yet" with end_time 0.
    found = examine(load(), {"status": "RUNNING", "end_time": 0})
    assert found.finished_by is None and found.exit_code == 0


# --- inspect: fields that change on every answer --------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def test_a_field_changing_on_every_answer_is_named_with_the_ignore_value(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(range(1000))
    upstream.statuses["5"] = lambda: {
        "pipeline": {"state": "running", "stages": [{"name": "build", "seen": next(answers)}]},
        "fetched_at": _now_iso(),
    }
    point_at(monkeypatch, upstream, state_expr=".pipeline.state")
    code, out, _ = await run_cli(capsys, "inspect", "5")
    assert code == 1, out
    assert len(upstream.seen) == 2  # fetched twice
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1, out
    assert ".pipeline.stages[].seen, .fetched_at changed between two answers" in hints[0]
    assert "BRIDGE_IGNORE_FIELDS=.pipeline.stages[].seen,.fetched_at " in hints[0]
    assert "changing fields" in out
    # Once set, nothing changes by itself: the verdict is ok.
    monkeypatch.setenv("BRIDGE_IGNORE_FIELDS", ".pipeline.stages[].seen,.fetched_at")
    code, out, _ = await run_cli(capsys, "inspect", "5")
    assert code == 0, out
    assert "ok: the bridge reads this run as configured" in out


async def test_the_changing_fields_row_says_the_value_even_beside_another_hint(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The API: a final state in no list, and the time of the answer.
    upstream.statuses["1"] = lambda: {
        "pipeline": {"state": "SUCCESS", "percent": 80},
        "fetched_at": _now_iso(),
    }
    point_at(monkeypatch, upstream, state_expr=".pipeline.state")
    code, out, _ = await run_cli(capsys, "inspect", "1")
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("changing fields")]
    assert rows == [
        "changing fields   .fetched_at  (between two answers 0.05 s apart; "
        "BRIDGE_IGNORE_FIELDS=.fetched_at leaves them out)"
    ]
    hints = [line for line in out.splitlines() if line.startswith("hint:")]
    assert len(hints) == 1 and "add SUCCESS to BRIDGE_SUCCESS_STATUSES" in hints[0]


async def test_the_ignore_value_keeps_the_fields_already_ignored(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    upstream.statuses["6"] = lambda: {"status": "completed", "served": _now_iso(), "at": _now_iso()}
    point_at(monkeypatch, upstream, ignore_fields=".served")
    code, out, _ = await run_cli(capsys, "inspect", "6", "--json")
    found = json.loads(out)
    assert code == 1 and found["exit_code"] == 1
    assert found["fetches"] == 2 and found["changing_fields"] == [".at"]
    assert found["ignore_fields_value"] == ".served,.at"


async def test_once_fetches_once_and_still_names_a_time_of_now(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["8"] = lambda: {"status": "completed", "meta": {"ts": int(time.time())}}
    point_at(monkeypatch, upstream)
    code, out, _ = await run_cli(capsys, "inspect", "8", "--once")
    assert len(upstream.seen) == 1
    assert code == 1, out
    assert "BRIDGE_IGNORE_FIELDS=.meta.ts " in out and "within a minute of now" in out


def test_an_old_time_is_not_named_from_one_answer() -> None:
    found = examine(load(), {"status": "completed", "finished_at": "2026-11-30T19:29:58Z"})
    assert found.changing == () and found.exit_code == 0 and found.hint is None


def test_a_running_run_that_moved_on_is_named_but_not_an_error() -> None:
    # percent moved with the run: worth saying, not surely noise.
    found = examine(
        load(), {"status": "running", "percent": 50}, {"status": "running", "percent": 40}, apart=2
    )
    assert found.changing == (".percent",) and found.exit_code == 0
    assert found.hint is not None and "BRIDGE_IGNORE_FIELDS=.percent" in found.hint


# --- inspect: exit 2, one line, no traceback -----------------------------------------


async def test_a_404_exits_2_with_one_line(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    point_at(monkeypatch, upstream)
    code, out, err = await run_cli(capsys, "inspect", "missing")
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "does not know this run" in err and "BRIDGE_UPSTREAM_RUN_PATH" in err
    assert "Traceback" not in err


async def test_an_unreachable_upstream_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRIDGE_UPSTREAM_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("BRIDGE_UPSTREAM_TIMEOUT", "5")
    code, out, err = await run_cli(capsys, "inspect", "r1")
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "could not be reached" in err and "Traceback" not in err


async def test_inspect_without_an_upstream_url_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await run_cli(capsys, "inspect", "r1")
    assert code == 2
    assert err.splitlines() == [
        "sse-bridge: configuration error: BRIDGE_UPSTREAM_URL: required for `inspect` "
        "(the base URL of the legacy API, e.g. http://legacy:9000)"
    ]


# --- credentials ---------------------------------------------------------------------


async def test_a_forwarded_header_is_sent_and_never_printed(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["r1"] = {"status": "queued"}
    point_at(monkeypatch, upstream)
    for extra in ([], ["--json"]):
        code, out, err = await run_cli(
            capsys, "inspect", "r1", "-H", f"Authorization: {SECRET}", "-H", "X-Other: 1", *extra
        )
        assert code == 0, out + err
        assert SECRET not in out + err
        assert "authorization" in out.lower()
        assert "X-Other" in out  # named as not sent: not in BRIDGE_FORWARD_HEADERS
    assert all(seen.get("Authorization") == SECRET for seen in upstream.seen)
    assert all("X-Other" not in seen for seen in upstream.seen)


async def test_forward_auth_mode_sends_the_bridges_headers_not_the_viewers(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["r1"] = {"status": "running"}
    point_at(
        monkeypatch,
        upstream,
        auth_url="http://127.0.0.1:9/auth",
        upstream_headers=f'{{"Authorization": "{SECRET}-operator"}}',
    )
    code, out, err = await run_cli(capsys, "inspect", "r1", "-H", f"Authorization: {SECRET}")
    assert code == 0, out + err
    assert upstream.seen[-1]["Authorization"] == f"{SECRET}-operator"
    assert SECRET not in out + err


async def test_a_malformed_header_argument_is_not_echoed(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    point_at(monkeypatch, upstream)
    code, out, err = await run_cli(capsys, "inspect", "r1", "-H", f"Bearer {SECRET}")
    assert code == 2
    assert len(err.splitlines()) == 1 and SECRET not in out + err
    assert upstream.seen == []


# --- unknown variables ---------------------------------------------------------------


def test_unknown_variables_are_matched_to_the_closest_known_name() -> None:
    found = unknown_variables(
        {"BRIDGE_POLL_INTERVALL": "3", "BRIDGE_PORT": "1", "bridge_state_expresion": "x", "X": "1"}
    )
    assert found == [
        ("BRIDGE_POLL_INTERVALL", "BRIDGE_POLL_INTERVAL"),
        ("bridge_state_expresion", "BRIDGE_STATE_EXPR"),
    ]
    assert unknown_variables({"BRIDGE_ZZZ": "1"}) == [("BRIDGE_ZZZ", None)]


async def test_an_unknown_variable_is_one_warning_naming_the_closest_known_one(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream.statuses["r1"] = {"status": "completed"}
    point_at(monkeypatch, upstream, poll_intervall="3")
    code, _, err = await run_cli(capsys, "inspect", "r1")
    assert code == 0
    warnings = err.splitlines()
    assert len(warnings) == 1, err
    assert "WARNING" in warnings[0] and "BRIDGE_POLL_INTERVALL" in warnings[0]
    assert "did you mean BRIDGE_POLL_INTERVAL?" in warnings[0]


def test_serve_warns_about_an_unknown_variable_before_its_own_error() -> None:
    result = run_bridge("serve", env={"BRIDGE_PORTT": "9000"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert "BRIDGE_PORTT" in lines[0] and "BRIDGE_PORT?" in lines[0]
    assert "BRIDGE_UPSTREAM_URL" in lines[1]


# --- serve: configuration mistakes are one line --------------------------------------


def test_malformed_upstream_headers_are_one_line_without_the_value() -> None:
    result = run_bridge(
        "serve",
        env={
            "BRIDGE_UPSTREAM_URL": "http://127.0.0.1:9",
            "BRIDGE_UPSTREAM_HEADERS": f'{{"Authorization": "Bearer {SECRET}"',
        },
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "BRIDGE_UPSTREAM_HEADERS" in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_bridge(
            "serve",
            env={
                "BRIDGE_UPSTREAM_URL": "http://127.0.0.1:9",
                "BRIDGE_HOST": "127.0.0.1",
                "BRIDGE_PORT": str(port),
            },
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sse-bridge: cannot listen on 127.0.0.1:{port}: address already in use "
        "(BRIDGE_HOST/BRIDGE_PORT)"
    ]


# --- help and profiles ---------------------------------------------------------------


def test_serve_help_lists_the_variables_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "BRIDGE_POLL_INTERVAL=2 " in out
    assert "BRIDGE_FORWARD_HEADERS=authorization,x-api-key,cookie" in out
    assert "BRIDGE_UPSTREAM_HEADERS=" in out
    assert "  BRIDGE_FAILURE_STATUSES=failed,cancelled,canceled\n" in out


def test_profiles_lists_them_and_shows_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["profiles"]) == 0
    listing = capsys.readouterr().out
    assert any(line.startswith("github-actions ") for line in listing.splitlines())
    assert cli.main(["profiles", "github-actions"]) == 0
    shown = capsys.readouterr().out
    assert "BRIDGE_UPSTREAM_RUN_PATH=/repos/OWNER/REPO/actions/runs/{run_id}" in shown
    assert "https://docs.github.com/" in shown
    assert cli.main(["profiles", "github"]) == 2
    assert "github-actions" in capsys.readouterr().err
