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

from bridge.demo.legacy_api import LegacyApi
from tests.support import loopback_socket, running_bridge, sse

NODES = ("a", "b", "c")
LINE_TIMEOUT = 10.0


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
