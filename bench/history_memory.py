"""What one run's history costs in memory when its ~900 KB status changes on every poll.

    .venv/bin/python -m bench.history_memory [--events 106,300] [--skip-fanout]

Each figure is the RSS growth of a fresh child process (VmRSS, /proc) that polls such a
status N times and keeps the history, divided by the runs it kept (``--runs``, 4 by
default, so that a process's one-off slack is shared out; "old" keeps 1 run, which costs
it far more than that slack). Representations:

    old        a faithful copy of the history before the byte bound: per event the parsed
               status, its JSON, the SSE frame and the chunk-framed frame; 256 events
    one-copy   the history as built now (bridge/events/history.py), bounded by count only
    new        the history as built now with the default bounds (256 events, 4 MiB)
    bridge     the real bridge (Hypercorn on loopback, one viewer on the fast path,
               a loopback upstream in the same process), new code, default bounds

All rows come from the same run of this script on the same machine, so they compare.
A second part times the fast path's write of one event to many viewers for each way of
sending the HTTP/1.1 chunk without storing it (the choice made in bridge/events/history.py's
``http_chunk``). Writes bench/out/history_memory.json and prints both tables.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR
from bridge.events import sse
from bridge.events.history import Event, RunHistory, http_chunk, is_terminal
from bridge.settings import load

MiB = 1 << 20
#: Nodes of the status: ~900 KB of JSON in all, under the default 1 MiB body cap.
NODES = 7_600
REPRESENTATIONS = ("old", "one-copy", "new", "bridge")


def node_list() -> bytes:
    """The bulk of the status: many small objects, as a real run's node list is."""
    nodes = [
        {
            "name": f"node-{i:05d}",
            "state": "running",
            "progress": round(i / NODES, 4),
            "attempt": 1,
            "message": f"step {i} of the pipeline is running",
        }
        for i in range(NODES)
    ]
    return json.dumps(nodes, separators=(",", ":")).encode()


def body(nodes: bytes, poll: int) -> bytes:
    """What the upstream answers at poll ``poll``: different every time."""
    return b'{"id":"big","status":"running","poll":%d,"nodes":%s}' % (poll, nodes)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- the history before the byte bound, as it was -----------------------------------------


@dataclass(frozen=True, slots=True)
class OldEvent:
    seq: int
    id: str
    name: str
    status: dict[str, Any]
    data: str
    frame: bytes
    chunk: bytes

    @property
    def terminal(self) -> bool:
        return is_terminal(self.name)


class OldHistory:
    """RunHistory.append as it was: a dict, the JSON, the frame and the chunk per event."""

    def __init__(self, size: int, epoch: int = 1_700_000_000_000) -> None:
        self.epoch = epoch
        self._events: deque[OldEvent] = deque(maxlen=size)
        self._seq = 0

    def append(self, name: str, status: dict[str, Any]) -> OldEvent:
        self._seq += 1
        event_id = f"{self.epoch}-{self._seq}"
        payload = sse.encode_json(status)
        frame = sse.frame(name, payload, event_id)
        event = OldEvent(self._seq, event_id, name, status, payload, frame, sse.chunk(frame))
        self._events.append(event)
        return event

    def __len__(self) -> int:
        return len(self._events)

    @property
    def nbytes(self) -> int:
        """The encoded buffers held (the parsed dicts not counted: see RSS)."""
        return sum(len(e.data) + len(e.frame) + len(e.chunk) for e in self._events)


# --- one child process: one representation, N polls ----------------------------------------


def child_histories(representation: str, events: int, runs: int) -> dict[str, Any]:
    """Poll ``events`` times for each of ``runs`` runs the way the pollers do, keeping the
    histories; RSS growth over the polls."""
    defaults = load()
    nodes = node_list()
    # One poll's temporaries (body, parsed status, JSON, frame) before the baseline, so
    # that the figure is what the history keeps, not the allocator's first growth.
    scratch = RunHistory(1, 1)
    for poll in (-1, 0):
        scratch.append(sse.PROGRESS, sse.encode_json(json.loads(body(nodes, poll))))
    del scratch
    gc.collect()
    before = rss()
    kept: list[OldHistory | RunHistory] = []
    for _ in range(runs):
        history: OldHistory | RunHistory
        if representation == "old":
            history = OldHistory(defaults.history_size)
        elif representation == "one-copy":
            history = RunHistory(defaults.history_size, 1 << 62)
        else:
            history = RunHistory(defaults.history_size, defaults.history_max_bytes)
        for poll in range(1, events + 1):
            status = json.loads(body(nodes, poll))
            if isinstance(history, OldHistory):
                history.append(sse.PROGRESS, status)
            else:
                # The poller encodes once and hands the history the text only.
                history.append(sse.PROGRESS, sse.encode_json(status))
            del status
        kept.append(history)
    gc.collect()
    grown = rss() - before
    return {
        "representation": representation,
        "events": events,
        "runs": runs,
        "held_events": len(kept[0]),
        "held_bytes": kept[0].nbytes,
        "rss_mib_per_run": grown / runs / MiB,
    }


@asynccontextmanager
async def changing_upstream(nodes: bytes) -> AsyncIterator[str]:
    from aiohttp import web

    polls = 0

    async def status(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        return web.Response(body=body(nodes, polls), content_type="application/json")

    app = web.Application()
    app.router.add_get("/runs/{run_id}", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def child_bridge(events: int, interval: float) -> dict[str, Any]:
    """The real bridge in this process, one viewer, ``events`` changes: RSS growth from
    just before the viewer connected."""
    import aiohttp

    from tests.support import running_bridge

    nodes = node_list()
    async with (
        changing_upstream(nodes) as upstream,
        running_bridge(upstream, poll_interval=interval, log_level="WARNING") as b,
        aiohttp.ClientSession() as http,
    ):
        gc.collect()
        before = rss()
        started = time.monotonic()
        async with http.get(
            f"{b.url}/v1/runs/big/stream",
            headers={"Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=600, sock_read=30),
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"the bridge answered {response.status}")
            channel = b.bridge.hub.find(b.bridge.pollers.key("big", {}))
            seen = 0
            tail = b""
            async for chunk in response.content.iter_any():
                # Frames are counted by their id lines; nothing of them is kept.
                seen += (tail + chunk).count(b"\nid: ")
                tail = chunk[-8:]
                history = channel.history if channel is not None else None
                if history is not None and history.last_seq >= events:
                    break
        gc.collect()
        grown = rss() - before
        assert channel is not None
        return {
            "representation": "bridge",
            "events": channel.history.last_seq,
            "runs": 1,
            "held_events": len(channel.history),
            "held_bytes": channel.history.nbytes,
            "rss_mib_per_run": grown / MiB,
            "viewer_frames": seen,
            "seconds": time.monotonic() - started,
        }


def measure(representation: str, events: int, runs: int, interval: float) -> dict[str, Any]:
    """One figure, from a fresh process (its allocator starts clean)."""
    command = [
        sys.executable,
        "-m",
        "bench.history_memory",
        "--child",
        representation,
        "--events",
        str(events),
        "--runs",
        str(runs),
        "--interval",
        str(interval),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{representation} x {events}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the fan-out write: how to send the chunk without storing it -------------------------


@dataclass
class _Viewers:
    """The server side of the viewers' connections; ``all_in`` is set once all are open."""

    expected: int
    transports: list[asyncio.WriteTransport]
    all_in: asyncio.Event


class _Accept(asyncio.Protocol):
    def __init__(self, viewers: _Viewers) -> None:
        self.viewers = viewers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.viewers.transports.append(transport)
        if len(self.viewers.transports) == self.viewers.expected:
            self.viewers.all_in.set()


async def fanout(viewers: int, frame_bytes: int, rounds: int) -> dict[str, Any]:
    """Microseconds of CPU per viewer to write one event to ``viewers`` loopback sockets."""
    loop = asyncio.get_running_loop()
    accepted = _Viewers(viewers, [], asyncio.Event())
    transports = accepted.transports
    server = await loop.create_server(lambda: _Accept(accepted), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    clients = []
    try:
        for _ in range(viewers):
            client = socket.create_connection(("127.0.0.1", port))
            client.setblocking(False)
            clients.append(client)
        async with asyncio.timeout(30):
            await accepted.all_in.wait()
        history = RunHistory(4, 1 << 62)
        data = sse.encode_json({"status": "running", "blob": "x" * max(frame_bytes - 60, 0)})
        first = history.append(sse.PROGRESS, data)
        stored = sse.chunk(first.frame)
        tail = b"\r\n"

        def stored_chunk(t: asyncio.WriteTransport, e: Event) -> None:
            t.write(stored)  # the old way: a chunk kept with every event

        def three_writes(t: asyncio.WriteTransport, e: Event) -> None:
            t.write(b"%x\r\n" % len(e.frame))
            t.write(e.frame)
            t.write(tail)

        def framed_per_viewer(t: asyncio.WriteTransport, e: Event) -> None:
            t.write(sse.chunk(e.frame))

        def once_per_event(t: asyncio.WriteTransport, e: Event) -> None:
            t.write(http_chunk(e))  # what bridge/streams/direct.py does

        variants: dict[str, Callable[[asyncio.WriteTransport, Event], None]] = {
            "stored chunk (old)": stored_chunk,
            "3 writes per viewer": three_writes,
            "chunk framed per viewer": framed_per_viewer,
            "chunk once per event (chosen)": once_per_event,
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, write in variants.items():
                event = history.append(sse.PROGRESS, data)  # a new event: a cold chunk
                started = time.process_time_ns()
                for transport in transports:
                    write(transport, event)
                samples[name].append((time.process_time_ns() - started) / viewers / 1000)
                await _drain(transports, clients)
        return {
            "viewers": viewers,
            "frame_bytes": len(first.frame),
            "us_per_viewer_median": {k: sorted(v)[len(v) // 2] for k, v in samples.items()},
        }
    finally:
        for client in clients:
            client.close()
        server.close()


async def _drain(transports: list[asyncio.WriteTransport], clients: list[socket.socket]) -> None:
    """Read everything the viewers were sent, so the next round starts with empty sockets."""
    async with asyncio.timeout(60):
        while True:
            for client in clients:
                try:
                    while client.recv(1 << 22):
                        pass
                except BlockingIOError:
                    pass
            if not any(t.get_write_buffer_size() for t in transports):
                return
            await asyncio.sleep(0)


# --- the command -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", default="106,300", help="polls per run, comma-separated")
    parser.add_argument("--runs", type=int, default=4, help="runs kept per process")
    parser.add_argument("--interval", type=float, default=0.05, help="bridge poll interval")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--child", choices=REPRESENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        events = int(args.events)
        if args.child == "bridge":
            result = asyncio.run(child_bridge(events, args.interval))
        else:
            result = child_histories(args.child, events, args.runs)
        print(json.dumps(result))
        return

    rows = []
    for events in (int(e) for e in args.events.split(",")):
        for representation in REPRESENTATIONS:
            runs = 1 if representation in ("old", "bridge") else args.runs
            rows.append(measure(representation, events, runs, args.interval))
    fan = []
    if not args.skip_fanout:
        for viewers, frame_bytes, rounds in ((2000, 600, 15), (2000, 8000, 9), (40, 900_000, 9)):
            fan.append(asyncio.run(fanout(viewers, frame_bytes, rounds)))
    defaults = load()
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / "history_memory.json"
    out.write_text(
        json.dumps(
            {
                "status_bytes": len(body(node_list(), 1)),
                "history_size": defaults.history_size,
                "history_max_bytes": defaults.history_max_bytes,
                "memory": rows,
                "fanout": fan,
            },
            indent=2,
        )
    )
    print(f"one run, a {len(body(node_list(), 1)) / 1e3:.0f} KB status changing every poll")
    print("representation  polls  held events  held MiB  RSS MiB per run")
    for row in rows:
        print(
            f"{row['representation']:<14}  {row['events']:>5}  {row['held_events']:>11}"
            f"  {row['held_bytes'] / MiB:>8.1f}  {row['rss_mib_per_run']:>15.1f}"
        )
    for events in {row["events"] for row in rows if row["representation"] == "old"}:
        old = next(r for r in rows if r["representation"] == "old" and r["events"] == events)
        new = next(r for r in rows if r["representation"] == "new" and r["events"] == events)
        ratio = old["rss_mib_per_run"] / max(new["rss_mib_per_run"], 0.1)
        print(f"old / new after {events} polls: {ratio:.0f}x")
    for case in fan:
        print(f"\nfan-out write, {case['viewers']} viewers, {case['frame_bytes']} B frame")
        for name, micros in case["us_per_viewer_median"].items():
            print(f"  {name:<30} {micros:8.2f} us/viewer")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
