"""Cluster mode at scale: Redis, replica and upstream work per run, and the viewers' delay.

    bench/run cluster_scale [--replicas 1,2,3] [--runs 10,100,1000]
        [--interval 0.5] [--max-polls 1000] [--window 6]

For each (R replicas, N runs): one real redis-server, R real bridges (``python -m bridge
serve`` with BRIDGE_REDIS_URL), the simulated legacy API in its own process as the
upstream, and N scripted runs each watched by 2 viewers on different replicas (the same
one when R = 1). Viewers are multi-run streams (``/v1/streams?runs=...``, up to 50 runs
per connection), so 5,000 runs take 200 connections, not 10,000. Every run changes once
every 3 intervals (a third of them at each interval). Over a window of ``--window``
intervals: Redis commands (``INFO commandstats`` deltas) and CPU (``INFO cpu``) per run
per interval, the replicas' CPU (``/proc/<pid>/stat``), upstream requests per run per
interval, the pub/sub messages and bytes each replica receives (its own metrics; each run
is on 2 replicas, so with targeted delivery a replica gets about 2/R of them), and the
delay from each change to its last viewer.

The poll interval is ``max(--interval, N / --max-polls)`` so that the upstream, the
replicas, Redis and the client (all on the same few cores) are not saturated; every
figure is per interval, and the table says which interval it used.

Writes bench/out/cluster_scale.json and bench/results/cluster_scale.md.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from bench.harness import cli
from bench.harness.common import BENCH_DIR, OUT_DIR

OUT = OUT_DIR
RESULTS = BENCH_DIR / "results"
PREFIX = "sse-bridge:"
#: Statuses per run: far more than a window's changes, so no run ends inside it.
STATUSES = 200
#: Runs per multi-run stream (the bridge's default BRIDGE_MULTI_MAX_RUNS).
PER_STREAM = 50
#: A run changes every CHANGE_EVERY intervals.
CHANGE_EVERY = 3
MARK = re.compile(rb"BMK:(c\d+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the upstream: the simulated legacy API in its own process -----------------------


def _upstream_main(conn: Connection) -> None:
    asyncio.run(_upstream(conn))


async def _upstream(conn: Connection) -> None:
    from bridge.demo.legacy_api import LegacyApi, serving

    api = LegacyApi()
    #: (run, status index) -> time.time() when the upstream first answered it.
    first_served: dict[str, float] = {}
    advanced: dict[str, float] = {}

    @web.middleware
    async def note_serving(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        run_id = request.match_info.get("run_id")
        run = api.runs.get(run_id) if run_id else None
        if run is not None and request.method == "GET":
            mark = f"{run_id}:{getattr(run, 'index', 0)}"
            if mark in advanced and mark not in first_served:
                first_served[mark] = time.time()
        return response

    async def setup(request: web.Request) -> web.Response:
        body = await request.json()
        for i in range(int(body["runs"])):
            run_id = f"c{i}"
            statuses = [
                {
                    "id": run_id,
                    "status": "running",
                    "progress": round(k / STATUSES, 4),
                    "currentNode": "work",
                    "bmk": f"BMK:{run_id}:{k}",
                }
                for k in range(STATUSES)
            ]
            api.scripted(run_id, statuses)
        first_served.clear()
        advanced.clear()
        return web.json_response({"ok": True})

    async def advance(request: web.Request) -> web.Response:
        body = await request.json()
        out: dict[str, int] = {}
        now = time.time()
        for run_id in body["runs"]:
            run = api.runs[run_id]
            run.advance()
            k = getattr(run, "index", 0)
            advanced[f"{run_id}:{k}"] = now
            out[run_id] = k
        return web.json_response({"t": now, "index": out})

    async def stats(request: web.Request) -> web.Response:
        total = sum(n for run_id, n in api.requests.items() if run_id.startswith("c"))
        return web.json_response(
            {"requests": total, "first_served": first_served, "advanced": advanced}
        )

    api.app.middlewares.append(note_serving)
    api.app.add_routes(
        [
            web.post("/_bench/setup", setup),
            web.post("/_bench/advance", advance),
            web.get("/_bench/stats", stats),
        ]
    )
    async with serving(api):
        conn.send(api.url)
        await asyncio.to_thread(conn.recv)  # until told to stop


@contextmanager
def upstream_process() -> Iterator[str]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_upstream_main, args=(child,), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the upstream did not start")
        yield str(parent.recv())
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# --- redis-server and the replicas ---------------------------------------------------


@contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--loglevel", "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_replica(upstream: str, redis_url: str, interval: float) -> Replica:
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_UPSTREAM_URL": upstream,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_POLL_INTERVAL": str(interval),
        "BRIDGE_LINGER": "600",
        "BRIDGE_ACCESS_LOG": "false",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_PING_INTERVAL": "3600",
        "BRIDGE_STREAM_TIMEOUT": "7200",
        "BRIDGE_MAX_STREAMS": "100000",
        "BRIDGE_MAX_STREAMS_PER_CLIENT": "100000",
        "BRIDGE_HISTORY_RUNS": "100000",
        "BRIDGE_UPSTREAM_CONCURRENCY": "256",
        "BRIDGE_SHUTDOWN_GRACE": "0",
        "BRIDGE_DRAIN_DELAY": "0",
        "BRIDGE_DRAIN_SPREAD": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Replica(proc, f"http://127.0.0.1:{port}")


async def wait_ready(replicas: list[Replica]) -> None:
    async with asyncio.timeout(30), aiohttp.ClientSession() as http:
        for replica in replicas:
            while True:
                if replica.proc.poll() is not None:
                    raise RuntimeError("a replica exited at start")
                try:
                    async with http.get(replica.url + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)


def stop_replicas(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.proc.poll() is None:
            replica.proc.kill()
    for replica in replicas:
        replica.proc.wait(10)


# --- viewers: multi-run streams over raw sockets --------------------------------------


@dataclass
class Receipts:
    #: "run:k" -> receipt time of each viewer that got it.
    seen: dict[str, list[float]] = field(default_factory=dict)
    bytes: int = 0


class Viewer(asyncio.Protocol):
    def __init__(self, receipts: Receipts, request: bytes) -> None:
        self.receipts = receipts
        self.request = request
        self.tail = b""
        self.status_ok: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.receipts.bytes += len(data)
        if not self.status_ok.done():
            self.status_ok.set_result(data.startswith(b"HTTP/1.1 200"))
        buf = self.tail + data
        for match in MARK.finditer(buf):
            if match.end() <= len(self.tail):
                continue  # seen in the previous chunk
            mark = f"{match.group(1).decode()}:{int(match.group(2))}"
            self.receipts.seen.setdefault(mark, []).append(now)
        self.tail = buf[-40:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status_ok.done():
            self.status_ok.set_result(False)


async def open_viewers(
    replicas: list[Replica], runs: int, receipts: Receipts
) -> list[asyncio.Transport]:
    """Two viewers per run: viewer v of run i on replica (i + v) % R."""
    loop = asyncio.get_running_loop()
    groups: dict[tuple[int, int], list[str]] = {}
    for i in range(runs):
        for v in (0, 1):
            groups.setdefault(((i + v) % len(replicas), v), []).append(f"c{i}")
    transports: list[asyncio.Transport] = []
    protocols: list[Viewer] = []
    sem = asyncio.Semaphore(32)

    async def connect(replica: Replica, chunk: list[str]) -> None:
        port = int(replica.url.rsplit(":", 1)[1])
        request = (
            f"GET /v1/streams?runs={','.join(chunk)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        async with sem:
            transport, protocol = await loop.create_connection(
                lambda: Viewer(receipts, request), "127.0.0.1", port
            )
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)
            protocols.append(protocol)
            async with asyncio.timeout(30):
                ok = await protocol.status_ok
            if not ok:
                raise RuntimeError(f"a stream was refused by {replica.url}")

    jobs = []
    for (r, _v), run_ids in groups.items():
        for start in range(0, len(run_ids), PER_STREAM):
            jobs.append(connect(replicas[r], run_ids[start : start + PER_STREAM]))
    await asyncio.gather(*jobs)
    return transports


# --- what each replica receives from Redis -------------------------------------------


async def received_by(http: aiohttp.ClientSession, replica: Replica) -> tuple[float, float]:
    """Pub/sub messages and bytes the replica received so far (its own metrics)."""
    async with http.get(replica.url + "/metrics") as response:
        text = await response.text()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return (
        values["bridge_redis_messages_received_total"],
        values["bridge_redis_message_bytes_received_total"],
    )


# --- one (R, N) configuration ---------------------------------------------------------


def command_calls(stats: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        out[name] = {"calls": float(value["calls"]), "usec": float(value["usec"])}
    return out


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    upstream: str, redis_port: int, replicas_n: int, runs: int, interval: float, window: int
) -> dict[str, Any]:
    redis = Redis(host="127.0.0.1", port=redis_port)
    await redis.flushall()
    http = aiohttp.ClientSession()
    replicas = [
        start_replica(upstream, f"redis://127.0.0.1:{redis_port}/0", interval)
        for _ in range(replicas_n)
    ]
    transports: list[asyncio.Transport] = []
    try:
        async with http.post(f"{upstream}/_bench/setup", json={"runs": runs}) as response:
            response.raise_for_status()
        await wait_ready(replicas)
        receipts = Receipts()
        t_connect = time.monotonic()
        transports = await open_viewers(replicas, runs, receipts)
        connect_s = time.monotonic() - t_connect
        # Every viewer has the first status of every run (bounded wait).
        for _ in range(1200):  # 60 s at most
            if sum(len(receipts.seen.get(f"c{i}:0", [])) for i in range(runs)) >= 2 * runs:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("not every viewer got its runs' first status within 60 s")
        await asyncio.sleep(2 * interval)  # settle: every poller on its cadence

        async def snapshot() -> dict[str, Any]:
            async with http.get(f"{upstream}/_bench/stats") as response:
                up = await response.json()
            return {
                "t": time.monotonic(),
                "commands": command_calls(await redis.info("commandstats")),
                "redis_cpu": sum(
                    float(v)
                    for k, v in (await redis.info("cpu")).items()
                    if k in ("used_cpu_user", "used_cpu_sys")
                ),
                "net_out": int((await redis.info("stats"))["total_net_output_bytes"]),
                "replica_cpu": [r.cpu() for r in replicas],
                "upstream_requests": up["requests"],
                "received": [await received_by(http, r) for r in replicas],
                "viewer_bytes": receipts.bytes,
            }

        before = await snapshot()
        changes: dict[str, float] = {}
        start = time.monotonic()
        for step in range(window):
            # a third of the runs change at each interval, each run every CHANGE_EVERY
            batch = [f"c{i}" for i in range(runs) if i % CHANGE_EVERY == step % CHANGE_EVERY]
            async with http.post(f"{upstream}/_bench/advance", json={"runs": batch}) as response:
                body = await response.json()
            for run_id, k in body["index"].items():
                changes[f"{run_id}:{k}"] = float(body["t"])
            await asyncio.sleep(max(0.0, start + (step + 1) * interval - time.monotonic()))
        after = await snapshot()
        # Let the window's last changes reach their viewers (bounded), for the delays.
        for _ in range(int((3 * interval + 2) / 0.05)):
            if all(len(receipts.seen.get(mark, [])) >= 2 for mark in changes):
                break
            await asyncio.sleep(0.05)
        async with http.get(f"{upstream}/_bench/stats") as response:
            first_served = (await response.json())["first_served"]
    finally:
        for transport in transports:
            transport.close()
        stop_replicas(replicas)
        await http.close()
        await redis.aclose()

    elapsed = after["t"] - before["t"]
    intervals = elapsed / interval
    per = runs * intervals
    commands: dict[str, float] = {}
    usec: dict[str, float] = {}
    for name, value in after["commands"].items():
        if name in ("info", "flushall") or name.startswith("client"):
            continue
        prior = before["commands"].get(name, {"calls": 0.0, "usec": 0.0})
        calls = value["calls"] - prior["calls"]
        if calls > 0:
            commands[name] = calls / per
            usec[name] = (value["usec"] - prior["usec"]) / per
    # Commands a script runs are counted too; top-level ones are the scripts and the
    # commands no script sends (a script's usec includes its commands').
    in_scripts = {
        "pexpire",
        "get",
        "hmget",
        "time",
        "zcard",
        "zadd",
        "zremrangebyscore",
        "zrem",
        "set",
        "hset",
        "rpush",
        "lpop",
        "del",
        "exists",
        "hget",
        "hdel",
    }
    top_level = sum(v for n, v in commands.items() if n not in in_scripts and n != "publish")
    top_level += max(0.0, commands.get("publish", 0.0) - commands.get("rpush", 0.0))
    all_usec = sum(v for n, v in usec.items() if n in ("evalsha", "eval") or n not in in_scripts)
    redis_cpu = after["redis_cpu"] - before["redis_cpu"]
    replica_cpu = [a - b for a, b in zip(after["replica_cpu"], before["replica_cpu"], strict=True)]
    from_advance: list[float] = []
    from_served: list[float] = []
    missed = 0
    for mark, t_change in changes.items():
        got = receipts.seen.get(mark, [])
        if len(got) < 2:
            missed += 1
            continue
        last = max(got)
        from_advance.append(last - t_change)
        if mark in first_served:
            from_served.append(last - first_served[mark])
    return {
        "replicas": replicas_n,
        "runs": runs,
        "viewers": 2 * runs,
        "connections": len(transports),
        "interval_s": interval,
        "window_s": elapsed,
        "connect_s": connect_s,
        "commands_per_run_interval": commands,
        "command_usec_per_run_interval": usec,
        "redis_commands_per_run_interval": sum(commands.values()),
        "top_level_per_run_interval": top_level,
        "script_time_share": usec.get("evalsha", 0.0) / max(1e-9, all_usec),
        "redis_cpu_s": redis_cpu,
        "redis_cpu_us_per_run_interval": redis_cpu / per * 1e6,
        "redis_cpu_share": redis_cpu / elapsed,
        "redis_net_out_per_run_interval": (after["net_out"] - before["net_out"]) / per,
        "replica_cpu_s": replica_cpu,
        "replica_cpu_us_per_run_interval": sum(replica_cpu) / per * 1e6,
        "replica_cpu_share_max": max(replica_cpu) / elapsed,
        "upstream_per_run_interval": (after["upstream_requests"] - before["upstream_requests"])
        / per,
        "pubsub_bytes_per_replica_s": statistics.mean(
            (a[1] - b[1]) / elapsed
            for a, b in zip(after["received"], before["received"], strict=True)
        ),
        "pubsub_messages_per_replica_s": statistics.mean(
            (a[0] - b[0]) / elapsed
            for a, b in zip(after["received"], before["received"], strict=True)
        ),
        # What a replica receives of all the events Redis published (each run's viewers
        # are on 2 replicas: 2/R when delivery is targeted, 1 when every replica gets all).
        "pubsub_share_per_replica": statistics.mean(
            a[0] - b[0] for a, b in zip(after["received"], before["received"], strict=True)
        )
        / max(1.0, commands.get("publish", 0.0) * per),
        "changes": len(changes),
        "missed": missed,
        "delay_from_advance_s": {
            "p50": quantile(from_advance, 0.5),
            "p99": quantile(from_advance, 0.99),
            "max": max(from_advance, default=float("nan")),
        },
        "delay_from_upstream_serving_s": {
            "p50": quantile(from_served, 0.5),
            "p99": quantile(from_served, 0.99),
            "max": max(from_served, default=float("nan")),
        },
    }


# --- report ---------------------------------------------------------------------------


def runs_per_core(rows: list[dict[str, Any]], interval: float) -> float:
    """N at which Redis would use one core, at ``interval``, from the largest-N rows."""
    top = max(row["runs"] for row in rows)
    per = [row["redis_cpu_us_per_run_interval"] for row in rows if row["runs"] == top]
    return interval / (statistics.mean(per) / 1e6)


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    names = sorted(
        {n for row in rows for n in row["commands_per_run_interval"]},
        key=lambda n: -sum(row["command_usec_per_run_interval"].get(n, 0.0) for row in rows),
    )[:5]
    lines = [
        "# Cluster mode at scale: Redis, replicas and upstream per run (`bench/run cluster_scale`)",
        "",
        f"Made by `bench/run cluster_scale` on {meta['date']}, "
        f"{meta['cores']} cores shared by Redis, the replicas, the upstream and the client. "
        "Every run is watched by 2 viewers on different replicas (the same one when R = 1), "
        f"on multi-run streams of up to {PER_STREAM} runs; every run changes once every "
        f"{CHANGE_EVERY} intervals. Figures are per run per poll interval over a window of "
        f"{meta['window']} intervals (at most ~20 s, at least 3 intervals).",
        "",
        "Command columns: calls per run per interval, by `INFO commandstats`, which counts "
        "the commands a script runs too (so `pexpire`, `hmget`, ... are inside `evalsha`); "
        "ordered by the time Redis spent in them. *top-level* = evalsha + eval + commands "
        "sent directly; *script time %* = evalsha's share of all command time.",
        "",
        "| R | N runs | interval s | top-level cmds | all cmds | script time % | "
        + " | ".join(names)
        + " | Redis CPU us | replica CPU us (all) | busiest replica % core | upstream polls "
        "| received per replica msg/s, KB/s, share of all events "
        "| delay to last viewer p50 / p99 / max ms "
        "(from change) | from upstream serving p50 / max ms | missed |",
        "|" + "---|" * (15 + len(names)),
    ]
    for row in rows:
        cmds = row["commands_per_run_interval"]
        fa = row["delay_from_advance_s"]
        fs = row["delay_from_upstream_serving_s"]
        lines.append(
            f"| {row['replicas']} | {row['runs']:,} | {row['interval_s']:g} "
            f"| {row['top_level_per_run_interval']:.2f} "
            f"| {row['redis_commands_per_run_interval']:.2f} "
            f"| {row['script_time_share'] * 100:.0f} | "
            + " | ".join(f"{cmds.get(n, 0.0):.2f}" for n in names)
            + f" | {row['redis_cpu_us_per_run_interval']:.0f} "
            f"| {row['replica_cpu_us_per_run_interval']:.0f} "
            f"| {100 * row['replica_cpu_share_max']:.0f} "
            f"| {row['upstream_per_run_interval']:.2f} "
            f"| {row['pubsub_messages_per_replica_s']:.0f}, "
            f"{row['pubsub_bytes_per_replica_s'] / 1024:.1f}, "
            f"{100 * row['pubsub_share_per_replica']:.0f}% "
            f"| {1000 * fa['p50']:.0f} / {1000 * fa['p99']:.0f} / {1000 * fa['max']:.0f} "
            f"| {1000 * fs['p50']:.0f} / {1000 * fs['max']:.0f} "
            f"| {row['missed']} of {row['changes']} |"
        )
    lines += ["", *summary(rows, meta)]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """What the table says, computed from it (the largest N measured)."""
    top = max(row["runs"] for row in rows)
    big = [row for row in rows if row["runs"] == top]
    cpu = statistics.mean(row["redis_cpu_us_per_run_interval"] for row in big)
    usec = [row["command_usec_per_run_interval"] for row in big]
    script = statistics.mean(u.get("evalsha", 0.0) + u.get("eval", 0.0) for u in usec)
    lrange = statistics.mean(u.get("lrange", 0.0) for u in usec)
    per_core = meta["runs_per_redis_core"]
    served_p50 = [row["delay_from_upstream_serving_s"]["p50"] for row in rows]
    served_max = [row["delay_from_upstream_serving_s"]["max"] for row in rows]
    msgs = [row["pubsub_messages_per_replica_s"] for row in big]
    kb = [row["pubsub_bytes_per_replica_s"] / 1024 for row in big]
    return [
        "## What it shows",
        "",
        f"- **Runs per Redis core** (from the Redis CPU per run per interval at N = {top:,}, "
        f"{cpu:.0f} us averaged over R): about {per_core['0.5s']:,.0f} runs at a 0.5 s "
        f"poll interval and {per_core['2s']:,.0f} at the default 2 s (it scales with the "
        "interval: the work is per run per interval).",
        f"- **What Redis works on**: the scripts. `evalsha` is {script:.0f} us of command "
        f"time per run per interval at N = {top:,} ({100 * script / cpu:.0f}% of Redis's CPU"
        "; the rest is reading commands and writing replies and messages on the sockets); "
        "the commands inside them (`hmget`, `pexpire`, `get`, `zremrangebyscore`, `zadd`, "
        "...) are part of that time. One `tick` per replica with viewers of the run and one "
        "`commit` from the leader: 2 scripts per run per interval with one replica, 3 when "
        "the run's viewers are on two replicas, whatever R is. `lrange` (replays, on "
        f"joins) takes {lrange:.2f} us; `publish` runs inside `commit`.",
        f"- **Targeted delivery**: a replica subscribes to the channel of each run its "
        "viewers watch and receives only those runs' events (plus pokes): at N = "
        f"{top:,}, {statistics.mean(msgs):,.0f} messages/s and {statistics.mean(kb):,.0f} "
        "KB/s per replica on average over R. The share of all published events a replica "
        "receives is "
        + ", ".join(
            f"{100 * row['pubsub_share_per_replica']:.0f}% at R = {row['replicas']}" for row in big
        )
        + " (each run's viewers are on 2 replicas: 2/R is the ideal); Redis writes each "
        "event to the replicas that watch it, so its output grows with the watched runs "
        "and the replicas per run, not with R x N.",
        "- **Upstream**: 1.00 request per run per interval at every (R, N): one poll "
        "cluster-wide, whatever the replica count.",
        "- **Delay** from the change at the upstream (`run.advance()`) to the last viewer "
        "is dominated by the wait for the next poll (up to one interval). From the "
        "upstream's first serving of the new status to the last viewer: p50 "
        f"{1000 * min(served_p50):.0f} to {1000 * max(served_p50):.0f} ms over all (R, N), "
        f"max {1000 * max(served_max):.0f} ms (the largest N, where one poll interval's "
        "polls, commits and fan-outs come in bursts on cores shared with everything else).",
    ]


async def main_async(argv: list[str] | None) -> None:
    parser = cli.parser("cluster_scale", __doc__)
    parser.add_argument("--replicas", type=cli.comma_list(int), default=[1, 2, 3])
    parser.add_argument("--runs", type=cli.comma_list(int), default=[10, 100, 1000])
    cli.add_interval(parser, 0.5, "the shortest poll interval, seconds")
    parser.add_argument("--max-polls", type=float, default=1000.0)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--max-window-s", type=float, default=20.0)
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads((OUT / "cluster_scale.json").read_text())
        print(write(saved["rows"], saved["meta"]))
        return
    replica_counts: list[int] = args.replicas
    run_counts: list[int] = args.runs
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
    meta["window"] = args.window
    OUT.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        redis_server(Path(tmp)) as redis_port,
        upstream_process() as upstream,
    ):
        for runs in run_counts:
            interval = max(args.interval, runs / args.max_polls)
            for replicas in replica_counts:
                window = max(3, min(args.window, round(args.max_window_s / interval)))
                row = await measure(upstream, redis_port, replicas, runs, interval, window)
                rows.append(row)
                write(rows, meta)  # after every row: a cut-short run keeps what it measured
                print(
                    f"R={replicas} N={runs} interval={interval:g}s "
                    f"redis cmds/run/int={row['redis_commands_per_run_interval']:.2f} "
                    f"redis cpu us/run/int={row['redis_cpu_us_per_run_interval']:.0f} "
                    f"replica cpu us/run/int={row['replica_cpu_us_per_run_interval']:.0f} "
                    f"upstream/run/int={row['upstream_per_run_interval']:.2f} "
                    f"delay max={row['delay_from_advance_s']['max']:.3f}s "
                    f"missed={row['missed']}/{row['changes']}",
                    flush=True,
                )
    print(write(rows, meta))
    print("runs per Redis core:", meta["runs_per_redis_core"])


def write(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    meta["runs_per_redis_core"] = {f"{iv:g}s": runs_per_core(rows, iv) for iv in (0.5, 2.0)}
    text = report(rows, meta)
    (OUT / "cluster_scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (RESULTS / "cluster_scale.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(argv))


if __name__ == "__main__":
    main()
