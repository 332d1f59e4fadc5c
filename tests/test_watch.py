"""`sse-bridge watch` in a subprocess against the real bridge on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from bridge.demo.legacy_api import LegacyApi, serving
from bridge.demo.runs import ScriptedRun
from tests.support import loopback_socket, running_bridge, sse, wait_for

NODES = ("a", "b", "c")
LINE_TIMEOUT = 10.0
#: Colours and cursor control in a terminal's output.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Watcher:
    process: asyncio.subprocess.Process

    async def line(self, within: float = LINE_TIMEOUT) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not raw:
            raise EOFError("watch closed its stdout")
        return raw.decode()

    async def event(self, within: float = LINE_TIMEOUT) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self.line(within))
        return value

    async def finish(self, within: float = LINE_TIMEOUT) -> tuple[int, str, str]:
        """Exit code, the rest of stdout, all of stderr."""
        out, err = await asyncio.wait_for(self.process.communicate(), within)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def watch(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Watcher]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SSE_BRIDGE_")}
    environment.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "100", **(env or {})})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        yield Watcher(process)
    finally:
        if process.returncode is None:
            process.kill()
            with suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)


async def test_complete_exits_0_and_prints_each_event_as_json(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=NODES)
    async with running_bridge(legacy.url) as b, watch("r1", "--url", b.url, "--json") as w:
        first = await w.event()
        assert first["event"] == "progress" and first["data"] == run.statuses[0]
        assert first["id"]
        for expected in run.statuses[1:]:
            run.advance()
            got = await w.event()
            assert got["data"] == expected
        assert got["event"] == "complete"
        code, rest, _ = await w.finish()
        assert (code, rest) == (0, "")


async def test_error_exits_1_and_says_why(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=NODES, outcome="failed")
    run.advance(len(run.statuses))
    async with running_bridge(legacy.url) as b, watch("r1", "--url", b.url) as w:
        code, out, err = await w.finish()
    assert code == 1
    assert "failed" in out  # one plain line per change when stdout is not a terminal
    assert "r1 failed: Node c failed" in err


async def test_a_terminal_gets_a_real_progress_bar(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=NODES)
    run.advance(len(run.statuses))
    async with (
        running_bridge(legacy.url) as b,
        watch("r1", "--url", b.url, env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0"}) as w,
    ):
        code, out, err = await w.finish()
    assert code == 0, err
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # colours and cursor control
    assert "━" in out and "100%" in out and "completed" in out
    assert "r1 completed" in out and '"result": "r1 done"' in out


async def test_timeout_exits_2(legacy: LegacyApi) -> None:
    legacy.scripted("r1", nodes=NODES)
    async with (
        running_bridge(legacy.url, stream_timeout=0.5) as b,
        watch("r1", "--url", b.url, "--json") as w,
    ):
        assert (await w.event())["event"] == "progress"
        last = await w.event()
        code, _, _ = await w.finish()
    assert last == {
        "event": "timeout",
        "id": None,
        "data": {"message": "Stream timeout after 0.5 seconds"},
    }
    assert code == 2


async def test_a_refused_stream_exits_2_with_the_bridges_message(legacy: LegacyApi) -> None:
    run = legacy.scripted("secret", nodes=NODES)
    run.advance(len(run.statuses))
    legacy.require("secret", "x-api-key", "k-1")
    async with running_bridge(legacy.url) as b:
        async with watch("secret", "--url", b.url, "--json") as w:
            code, out, err = await w.finish()
        assert (code, out) == (2, "")
        assert "The upstream API refused these credentials. (HTTP 401 unauthorized)" in err
        async with watch("secret", "--url", b.url, "-H", "X-Api-Key: k-2") as w:
            code, out, err = await w.finish()
        assert code == 2
        assert "does not allow these credentials to see this run. (HTTP 403 forbidden)" in err
        async with watch("nope", "--url", b.url) as w:
            code, out, err = await w.finish()
        assert code == 2 and "does not know this run" in err
        # Credentials from --header or from the environment.
        async with watch("secret", "--url", b.url, "--json", "--header", "X-Api-Key: k-1") as w:
            code, out, err = await w.finish()
        assert code == 0 and json.loads(out)["event"] == "complete"
        async with watch(
            "secret",
            "--json",
            env={"SSE_BRIDGE_URL": b.url, "SSE_BRIDGE_HEADERS": "X-Api-Key: k-1"},
        ) as w:
            code, out, err = await w.finish()
        assert code == 0, err
    # A run id the bridge would refuse never leaves the machine.
    async with watch("../etc", "--url", "http://127.0.0.1:9") as w:
        code, out, err = await w.finish()
    assert code == 2 and "run id" in err


async def test_a_malformed_header_is_refused_without_echoing_it() -> None:
    # A token given without its header name must not be printed back.
    async with watch("r1", "--url", "http://127.0.0.1:9", "-H", "Bearer s3cret") as w:
        code, _out, err = await w.finish()
    assert code == 2 and "--header number 1 must look like 'Name: value'" in err
    assert "s3cret" not in err
    async with watch("r1", env={"SSE_BRIDGE_HEADERS": "X-Ok: 1\nsecret-token-2"}) as w:
        code, _out, err = await w.finish()
    assert code == 2 and "$SSE_BRIDGE_HEADERS line number 2" in err
    assert "secret-token-2" not in err


async def test_reconnects_with_last_event_id_and_misses_nothing(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=("a", "b", "c", "d"))
    async with (
        running_bridge(legacy.url) as b,
        sse(f"{b.url}/v1/runs/r1/stream") as keeper,
        watch("r1", "--url", b.url, "--json") as w,
    ):
        await keeper.next_named("progress")
        assert (await w.event())["data"] == run.statuses[0]
        # End every open stream (the bridge stays up, history too), then move on twice.
        for channel in b.bridge.hub.live_channels():
            channel.close_all()
        assert await keeper.rest() == []
        async with sse(f"{b.url}/v1/runs/r1/stream") as keeper2:
            await keeper2.next_named("progress")
            for _ in range(2):
                run.advance()
                await keeper2.next_named("progress")
            # Exactly the missed events, in order, none twice, then the rest live.
            assert (await w.event())["data"] == run.statuses[1]
            assert (await w.event())["data"] == run.statuses[2]
            run.advance(len(run.statuses))
            assert (await w.event())["event"] == "complete"
        code, rest, err = await w.finish()
        assert (code, rest) == (0, "")
        assert "reconnecting" in err


async def test_reconnects_after_the_bridge_restarts(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=("a", "b", "c", "d"))
    sock = loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with watch("r1", "--url", url, "--json") as w:
            async with running_bridge(legacy.url, sock=sock):
                assert (await w.event())["data"] == run.statuses[0]
                run.advance()
                assert (await w.event())["data"] == run.statuses[1]
            # The bridge stopped (its streams ended cleanly); the run moves on meanwhile.
            run.advance(2)
            async with running_bridge(legacy.url, sock=sock):
                # A new bridge has no history: the current status, then live again.
                assert (await w.event())["data"] == run.statuses[3]
                run.advance(len(run.statuses))
                assert (await w.event())["event"] == "complete"
                code, rest, err = await w.finish()
        assert (code, rest) == (0, "")
        assert "reconnecting" in err
    finally:
        sock.close()


async def test_gives_up_with_2_when_the_bridge_stays_unreachable() -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: every connection is refused
    async with watch("r1", "--url", f"http://127.0.0.1:{port}", "--reconnect-for", "1") as w:
        code, out, err = await w.finish()
    assert (code, out) == (2, "")
    assert f"no stream from the bridge at http://127.0.0.1:{port} for 1 s" in err


async def test_an_unreachable_upstream_is_said_and_ends_with_2() -> None:
    # The bridge is up; its upstream is not. It refuses each stream the way EventSource
    # understands (200, retry:, a comment naming the error): that is no connection.
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    async with running_bridge(f"http://127.0.0.1:{port}") as b:
        async with watch("r1", "--url", b.url, "--reconnect-for", "2") as w:
            code, out, err = await w.finish(within=30)
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert re.fullmatch(
        r"sse-bridge watch: upstream unavailable: the upstream API could not be reached; "
        r"reconnecting in \d+\.\d s",
        lines[0],
    ), err
    assert "connected" not in err
    assert lines[-1] == (
        f"sse-bridge watch: no stream from the bridge at {b.url} for 2 s (upstream "
        "unavailable: the upstream API could not be reached)"
    )


async def test_wait_result_gives_up_with_2_when_the_upstream_stays_down() -> None:
    sock = loopback_socket()
    port = sock.getsockname()[1]
    sock.close()
    async with running_bridge(f"http://127.0.0.1:{port}", breaker_threshold=10_000) as b:
        async with watch("r1", "--url", b.url, "--wait-result", "--reconnect-for", "1") as w:
            code, out, err = await w.finish(within=30)
    assert (code, out) == (2, "")
    said = "The upstream API could not be reached. (HTTP 502 upstream_unavailable)"
    assert f"sse-bridge watch: {said}; asking again" in err.splitlines()
    assert err.splitlines()[-1] == (
        f"sse-bridge watch: no result from the bridge at {b.url} for 1 s ({said})"
    )


def test_the_refusal_comment_is_read_as_a_reason() -> None:
    from bridge.tools.watch import refusal_reason

    assert refusal_reason(
        "upstream_timeout (run r-1): The upstream API did not answer in time."
    ) == ("upstream timeout: the upstream API did not answer in time")
    assert refusal_reason("over_capacity: The bridge is at its stream limit.") == (
        "over capacity: the bridge is at its stream limit"
    )
    assert refusal_reason("keep-alive") is None and refusal_reason(None) is None


# --- any configured API: state and progress from /v1/streams ---------------------------


async def held(api: LegacyApi, run_id: str) -> None:
    """Until the bridge has fetched the run's current status twice and handled both."""
    asked = api.requests[run_id]
    await wait_for(lambda: api.requests[run_id] >= asked + 3, timeout=10)


async def play(api: LegacyApi, run: ScriptedRun) -> None:
    """Every scripted status in turn, each seen by the bridge; the last one ends polling."""
    await wait_for(lambda: api.requests[run.id] >= 1, timeout=10)
    await held(api, run.id)
    for _ in run.statuses[2:]:
        run.advance()
        await held(api, run.id)
    run.advance()


def plain(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


async def test_state_and_a_real_progress_for_argo_workflows() -> None:
    async with serving(LegacyApi(step=0.05, profile="argo-workflows")) as api:
        run = api.scripted("wf-1", nodes=NODES)
        async with (
            running_bridge(api.url, profile="argo-workflows", upstream_run_path=api.run_path) as b,
            watch("wf-1", "--url", b.url) as w,
        ):
            await play(api, run)
            code, out, err = await w.finish()
    assert code == 0, err
    # One line per change: the state the profile reads, and the progress where it has one.
    assert plain(out) == [
        "wf-1 Pending",
        "wf-1 Running 0.0%",
        "wf-1 Running 33.3%",
        "wf-1 Running 66.7%",
        "wf-1 Succeeded 100.0%",
        "✔ wf-1 Succeeded",
    ]


async def test_json_carries_state_and_progress_and_a_failure_exits_1() -> None:
    async with serving(LegacyApi(step=0.05, profile="databricks-runs")) as api:
        run = api.scripted("42", nodes=NODES, outcome="failed")
        path = api.run_path
        async with (
            running_bridge(api.url, profile="databricks-runs", upstream_run_path=path) as b,
            watch("42", "--url", b.url, "--json") as w,
        ):
            await play(api, run)
            code, out, err = await w.finish()
        async with (
            running_bridge(api.url, profile="databricks-runs", upstream_run_path=path) as b,
            watch("42", "--url", b.url) as w,
        ):
            code_lines, out_lines, err_lines = await w.finish()
    assert code == 1, err
    records = [json.loads(line) for line in out.splitlines()]
    # detail: the profile's BRIDGE_DETAIL_EXPR, Databricks' state_message.
    assert [(r["event"], r["state"], r["progress"], r["detail"]) for r in records] == [
        ("progress", "PENDING", None, None),
        ("progress", "RUNNING", None, "In run"),
        ("progress", "RUNNING", None, "In run"),
        ("progress", "RUNNING", None, "In run"),
        ("error", "FAILED", None, "Node c failed"),
    ]
    # data: the API's own object; id: the run's own event id, as on the single-run stream.
    assert records[-1]["data"]["state"]["result_state"] == "FAILED"
    assert all(re.fullmatch(r"\d+-\d+", r["id"]) for r in records)
    # Without --json: the state, no invented percentage, the detail, and the API's
    # failure message.
    assert code_lines == 1
    assert plain(out_lines) == ["42 FAILED Node c failed"]
    assert "✘ 42 FAILED: Node c failed" in err_lines


async def test_a_terminal_gets_a_pulsing_bar_when_the_api_has_no_progress() -> None:
    async with serving(LegacyApi(step=0.05, profile="github-actions")) as api:
        run = api.scripted("7", nodes=NODES)
        run.advance()
        async with (
            running_bridge(api.url, profile="github-actions", upstream_run_path=api.run_path) as b,
            watch("7", "--url", b.url, env={"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}) as w,
        ):
            assert w.process.stdout is not None
            shown = ""
            async with asyncio.timeout(LINE_TIMEOUT):
                while "in_progress" not in shown:
                    chunk = await w.process.stdout.read(4096)
                    assert chunk, "watch closed its stdout"
                    shown += ANSI.sub("", chunk.decode(errors="replace"))
            run.advance(len(run.statuses))
            code, rest, err = await w.finish()
    assert code == 0, err
    frames = [f for f in re.split(r"[\r\n]", shown) if "in_progress" in f]
    # While it runs: the state, a bar, and no percentage (nothing says how far it is).
    assert frames and all("━" in f and "%" not in f for f in frames), frames
    final = ANSI.sub("", rest)
    assert "success" in final and "100%" in final and "✔ 7 success" in final


async def test_timeout_exits_2_for_another_api_too() -> None:
    async with serving(LegacyApi(step=0.05, profile="github-actions")) as api:
        api.scripted("7", nodes=NODES)
        async with (
            running_bridge(
                api.url,
                profile="github-actions",
                upstream_run_path=api.run_path,
                stream_timeout=0.5,
            ) as b,
            watch("7", "--url", b.url, "--json") as w,
        ):
            first = await w.event()
            last = await w.event()
            code, _, _ = await w.finish()
    assert (first["event"], first["state"], first["progress"]) == ("progress", "queued", None)
    assert last == {
        "event": "timeout",
        "id": None,
        "data": {"message": "Stream timeout after 0.5 seconds"},
    }
    assert code == 2


async def test_wait_result_prints_only_the_final_status(legacy: LegacyApi) -> None:
    run = legacy.scripted("wr", nodes=NODES)
    async with running_bridge(legacy.url) as b, watch("wr", "--url", b.url, "--wait-result") as w:
        # It long-polls /result: nothing is printed while the run goes on.
        await wait_for(lambda: b.bridge.limiter.open == 1)
        run.advance(len(run.statuses))
        code, out, err = await w.finish()
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [run.statuses[-1]]


async def test_wait_result_exits_1_for_a_failed_run_and_2_when_refused(legacy: LegacyApi) -> None:
    run = legacy.scripted("wf", nodes=NODES, outcome="failed")
    run.advance(len(run.statuses))
    async with running_bridge(legacy.url) as b:
        async with watch("wf", "--url", b.url, "--wait-result") as w:
            code, out, _ = await w.finish()
        assert code == 1 and json.loads(out) == run.statuses[-1]
        async with watch("nobody", "--url", b.url, "--wait-result") as w:
            code, out, err = await w.finish()
        assert (code, out) == (2, "") and "not_found" in err
