"""``bench/run soak``: the bridge under steady churn for many minutes.

The real bridge (``python -m bridge serve``, core 0) and the scripted upstream (core 1)
start as in the suite; N viewers (default 10,000) watch one run, a share of them
(default 1 %) closes and reopens its stream every second (half of them resuming with
``Last-Event-ID``, half closing with a FIN and half with a reset), and the run changes
once per poll interval. Per minute it records:

1. every event's delay from t0 (the moment the upstream first served the change, the
   suite's t0) to each viewer that was connected before t0 (kernel receive stamps):
   p50, p99, max, and how many arrived later than one poll interval or never;
2. the bridge's event-loop lag, as the bridge itself measures it
   (``bridge_event_loop_lag_seconds`` and ``bridge_event_loop_lag_max_seconds``);
3. the bridge's RSS (flat within 5 % after the warm-up minute is the target);
4. its streams, pollers, channels and asyncio tasks (from /metrics), so a leak shows;

and, from the GC probe (bench/harness/gcprobe), every collection pause of 1 ms or more.
``--census`` adds, at the end of each minute, a full collection inside the bridge that
counts the cyclic garbage piled up among frozen objects (it pauses the bridge: for
measurement runs, not for the lag figures).

    bench/run soak [--minutes 15] [--viewers 10000]
        [--reconnect-per-s 1%] [--interval 2] [--bridge-env BRIDGE_X=v] [--name soak]

Writes ``bench/out/<name>.json`` and ``bench/results/<name>.md``. Every loop is bounded
in time (the soak's length, a deadline on every call) and in count (the viewers).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import multiprocessing
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.harness import cli, servers
from bench.harness.client import (
    ANCILLARY,
    CONNECTING,
    HEAD,
    LINGER_RESET,
    MAX_HEAD,
    RECV_SIZE,
    SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS,
    STREAM,
    ClientPool,
    Sub,
    Worker,
)
from bench.harness.common import (
    BENCH_DIR,
    MARKER_LEN,
    MARKER_PREFIX,
    OUT_DIR,
    Http,
    Machine,
    marker,
    own_autogroup,
    percentile,
    pin,
    raise_nofile,
)
from bench.harness.servers import Bridge, Upstream

#: How long a reconnect may take before it counts as failed (and is tried again).
CONNECT_DEADLINE = 30.0
#: Arrivals a worker keeps between two reports (10,000 viewers x 1 change/s is 10,000).
MAX_ARRIVALS = 1_000_000
#: The id of a frame, and how far back a read's tail is kept to find split markers/ids.
ID_FIELD = b"\nid: "
TAIL = 96
SERVER_CORE, CLIENT_CORE = 0, 1
CHANNEL_INDEX = 1


# --- the load client: the suite's worker, with churn and continuous timing ----------


class SoakWorker(Worker):
    """Keeps its viewers connected (reopening what closes), churns some every second,
    and records every marker that reaches a viewer with the viewer's opening time."""

    def __init__(self, conn: Connection, index: int, host: str, port: int, inflight: int) -> None:
        super().__init__(conn, index)
        self.host = host
        self.port = port
        self.inflight_cap = max(1, inflight)
        self.rng = random.Random(index)
        #: Viewers waiting to (re)connect: (path, Last-Event-ID or None); at most the viewers.
        self.queue: deque[tuple[str, bytes | None]] = deque()
        self.resume: dict[int, bytes | None] = {}
        self.deadlines: dict[int, float] = {}
        #: fd -> kernel stamp of the response head, highest marker seq seen, last event id.
        self.opened: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self.last_id: dict[int, bytes] = {}
        self.arrivals: list[tuple[int, int, int]] = []  # (seq, stamp, opened)
        self.arrivals_dropped = 0
        self.opens = 0
        self.failures: Counter[str] = Counter()
        self.latencies: list[int] = []
        self.churned = 0

    def run(self) -> None:
        end = time.monotonic() + 3 * 3600.0
        conn_fd = self.conn.fileno()
        while time.monotonic() < end:
            for fd, mask in self.epoll.poll(0.02, 4096):
                if fd == conn_fd:
                    if not self.command():
                        return
                    continue
                sub = self.subs.get(fd)
                if sub is None:
                    continue
                if sub.state == CONNECTING:
                    self.connected(sub, mask)
                else:
                    self.readable(sub)
            self.progress()

    def command(self) -> bool:
        try:
            name, args = self.conn.recv()
        except EOFError:
            return False
        if name == "quit":
            self.close_all()
            self.conn.send({"ok": True})
            return False
        if name == "open":
            self.queue.extend((path, None) for path in args["paths"])
            self.conn.send({"queued": len(self.queue)})
        elif name == "churn":
            self.conn.send({"closed": self.churn(int(args["count"]), float(args["resume"]))})
        elif name == "report":
            self.conn.send(self.report())
        elif name == "status":
            self.conn.send(self.status())
        elif name == "check":
            self.conn.send({"missed": self.missed(int(args["seq"]), int(args["t0"]))})
        elif name == "close":
            self.queue.clear()
            self.conn.send({"closed": self.close_all()})
        else:
            self.conn.send({"error": f"unknown command {name}"})
        return True

    # --- connecting ------------------------------------------------------------------

    def progress(self) -> None:
        now = time.monotonic()
        for fd in [fd for fd, deadline in self.deadlines.items() if deadline < now]:
            sub = self.subs.get(fd)
            if sub is not None:
                self.failed(sub, "deadline")
        while len(self.deadlines) < self.inflight_cap and self.queue:
            path, resume = self.queue.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sub = Sub(sock, path)
            self.subs[sub.fd] = sub
            self.resume[sub.fd] = resume
            self.deadlines[sub.fd] = now + CONNECT_DEADLINE
            code = sock.connect_ex((self.host, self.port))
            if code in (0, errno.EINPROGRESS):
                self.epoll.register(sub.fd, select.EPOLLOUT)
            else:
                self.failed(sub, f"connect:{code}")

    def connected(self, sub: Sub, mask: int) -> None:
        code = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.failed(sub, f"connect:{code}")
            return
        resume = self.resume.get(sub.fd)
        request = (
            f"GET {sub.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
        ).encode()
        if resume:
            request += b"Last-Event-ID: " + resume + b"\r\n"
        try:
            sub.sock.send(request + b"\r\n")
        except OSError as error:
            self.failed(sub, type(error).__name__)
            return
        sub.state = HEAD
        self.epoll.modify(sub.fd, select.EPOLLIN)

    def failed(self, sub: Sub, reason: str) -> None:
        """A (re)connect that did not open: counted, and queued again (as EventSource)."""
        self.failures[reason] += 1
        resume = self.resume.get(sub.fd)
        self.forget(sub)
        self.queue.append((sub.path, resume))

    def forget(self, sub: Sub, reset: bool = True) -> None:
        for table in (self.resume, self.deadlines, self.opened, self.seen, self.last_id):
            table.pop(sub.fd, None)
        self.subs.pop(sub.fd, None)
        if reset:
            with contextlib.suppress(OSError):
                sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sub.sock.close()

    def drop(self, sub: Sub, reason: str) -> None:
        self.failed(sub, reason)

    def lost(self, sub: Sub, reason: str) -> None:
        if sub.state != STREAM:
            self.failed(sub, reason)
            return
        # The bridge ended the stream: reconnect and resume, as EventSource would.
        self.closed_by_server += 1
        resume = self.last_id.get(sub.fd)
        self.forget(sub)
        self.queue.append((sub.path, resume))

    def churn(self, count: int, resume_share: float) -> int:
        """Close ``count`` open viewers (FIN or reset) and queue their reconnects."""
        streams = [sub for sub in self.subs.values() if sub.state == STREAM]
        chosen = self.rng.sample(streams, min(count, len(streams)))
        for sub in chosen:
            resume = self.last_id.get(sub.fd) if self.rng.random() < resume_share else None
            self.forget(sub, reset=self.rng.random() < 0.5)
            self.queue.append((sub.path, resume))
        self.churned += len(chosen)
        return len(chosen)

    # --- reading -----------------------------------------------------------------------

    def readable(self, sub: Sub) -> None:
        try:
            data, ancillary, _, _ = sub.sock.recvmsg(RECV_SIZE, ANCILLARY)
        except BlockingIOError:
            return
        except OSError as error:
            self.lost(sub, type(error).__name__)
            return
        if not data:
            self.lost(sub, "eof")
            return
        stamp = 0
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(cdata) >= 16:
                seconds, nanos = struct.unpack("qq", cdata[:16])
                stamp = seconds * 1_000_000_000 + nanos
        if not stamp:
            stamp = time.time_ns()
            self.stamp_fallbacks += 1
        if sub.state == HEAD:
            sub.buf += data
            end = sub.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(sub.buf) > MAX_HEAD:
                    self.failed(sub, "head-too-large")
                return
            status_line = sub.buf[: sub.buf.find(b"\r\n")]
            data = sub.buf[end + 4 :]
            sub.buf = b""
            if b" 200 " not in status_line + b" ":
                self.failed(sub, status_line.decode("latin-1")[9:12])
                return
            sub.state = STREAM
            self.deadlines.pop(sub.fd, None)
            self.resume.pop(sub.fd, None)
            self.opened[sub.fd] = stamp
            self.opens += 1
            self.latencies.append(stamp - sub.t_start)
        if data:
            self.scan(sub, data, stamp, False)

    def scan(self, sub: Sub, data: bytes, stamp: int, fallback: bool) -> None:
        tail = sub.tail
        blob = tail + data if tail else data
        seen_upto = len(tail)
        seen = self.seen.get(sub.fd, -1)
        opened = self.opened.get(sub.fd, stamp)
        start = 0
        while True:
            i = blob.find(MARKER_PREFIX, start)
            if i < 0 or i + MARKER_LEN > len(blob):
                break
            if i + MARKER_LEN > seen_upto:
                seq = int(blob[i + MARKER_LEN - 6 : i + MARKER_LEN])
                if seq > seen:
                    seen = seq
                    if len(self.arrivals) < MAX_ARRIVALS:
                        self.arrivals.append((seq, stamp, opened))
                    else:
                        self.arrivals_dropped += 1
            start = i + MARKER_LEN
        self.seen[sub.fd] = seen
        at = blob.rfind(ID_FIELD)
        if at >= 0:
            end = blob.find(b"\n", at + len(ID_FIELD))
            if end > 0:
                self.last_id[sub.fd] = blob[at + len(ID_FIELD) : end]
        sub.tail = blob[-TAIL:]

    # --- answers -----------------------------------------------------------------------

    def missed(self, seq: int, t0: int) -> int:
        """Viewers open since before t0 that have not had marker ``seq`` (or a later one)."""
        return sum(
            1
            for fd, opened in self.opened.items()
            if opened < t0 and self.seen.get(fd, -1) < seq and fd in self.subs
        )

    def report(self) -> dict[str, Any]:
        arrivals, self.arrivals = self.arrivals, []
        latencies, self.latencies = self.latencies, []
        out = {
            "arrivals": arrivals,
            "arrivals_dropped": self.arrivals_dropped,
            "opens": self.opens,
            "failures": dict(self.failures),
            "latencies": latencies,
            "open": self.open_count(),
            "queued": len(self.queue),
            "connecting": len(self.deadlines),
            "churned": self.churned,
            "closed_by_server": self.closed_by_server,
            "cpu_ns": time.process_time_ns(),
        }
        self.opens = 0
        self.failures = Counter()
        self.arrivals_dropped = 0
        return out


def soak_worker_main(
    conn: Connection, index: int, host: str, port: int, inflight: int, core: int | None
) -> None:
    pin(core)
    raise_nofile()
    try:
        SoakWorker(conn, index, host, port, inflight).run()
    finally:
        conn.close()


class SoakPool(ClientPool):
    """The parent's handle on the soak workers (every call has a deadline)."""

    def __init__(self, procs: int, core: int | None, port: int, inflight: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for index in range(procs):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=soak_worker_main,
                args=(child, index, "127.0.0.1", port, max(1, inflight // procs), core),
                name=f"bench-soak-{index}",
            )
            process.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(process)

    def open(self, paths: list[str]) -> None:
        n = len(self.conns)
        self._call([("open", {"paths": paths[i::n]}) for i in range(n)], 30)

    def churn(self, count: int, resume: float) -> int:
        n = len(self.conns)
        counts = [count // n + (1 if i < count % n else 0) for i in range(n)]
        commands = [("churn", {"count": c, "resume": resume}) for c in counts]
        return sum(r["closed"] for r in self._call(commands, 30))

    def report(self) -> list[dict[str, Any]]:
        return self._same("report", {}, 30)

    def missed(self, seq: int, t0: int) -> int:
        return sum(r["missed"] for r in self._same("check", {"seq": seq, "t0": t0}, 30))


# --- the bridge's own view: /metrics ------------------------------------------------


def scrape(http: Http) -> dict[str, Any]:
    """The gauges and lag figures of the bridge's /metrics (loopback, one connection)."""
    status, body = http.request("GET", "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out: dict[str, Any] = {"lag_buckets": {}}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            name = sample.name
            if name == "bridge_event_loop_lag_seconds_bucket":
                out["lag_buckets"][sample.labels["le"]] = sample.value
            elif name in (
                "bridge_open_streams",
                "bridge_pollers",
                "bridge_channels",
                "bridge_asyncio_tasks",
                "bridge_event_loop_lag_max_seconds",
                "bridge_event_loop_lag_seconds_count",
                "bridge_gc_pause_max_seconds",
                "bridge_gc_frozen_objects",
                "bridge_fast_path_streams",
            ):
                out[name.removeprefix("bridge_")] = sample.value
            elif name == "bridge_gc_collections_total":
                out.setdefault("gc_collections", {})[sample.labels.get("generation", "")] = (
                    sample.value
                )
    return out


def over(buckets_a: dict[str, float], buckets_b: dict[str, float], limit: float) -> int | None:
    """Samples above ``limit`` seconds between two readings of a cumulative histogram."""
    if not buckets_b:
        return None
    key = next((k for k in buckets_b if k != "+Inf" and float(k) >= limit), None)
    if key is None:
        return None
    total = buckets_b.get("+Inf", 0) - buckets_a.get("+Inf", 0)
    under = buckets_b[key] - buckets_a.get(key, 0)
    return int(total - under)


# --- the soak -----------------------------------------------------------------------


@dataclass
class Change:
    seq: int
    mark: str
    changed_at: int
    t0: int | None = None
    asked: int = 0
    checked: bool = False


@dataclass
class Minute:
    index: int
    delays: list[int] = field(default_factory=list)
    openings: int = 0
    changes: int = 0
    never_polled: int = 0
    missed: int = 0
    opens: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    connect_latencies: list[int] = field(default_factory=list)
    lag_max: float | None = None
    scrapes: list[dict[str, Any]] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    census: dict[str, Any] | None = None


def parse_rate(text: str, viewers: int) -> int:
    """``1%`` of the viewers, or a plain count, reconnecting per second."""
    text = text.strip()
    if text.endswith("%"):
        return max(0, round(viewers * float(text[:-1]) / 100))
    return max(0, int(text))


class Soak:
    def __init__(self, args: argparse.Namespace, bridge_env: dict[str, str]) -> None:
        self.args = args
        self.interval: float = args.interval
        self.viewers: int = args.viewers
        self.rate = parse_rate(args.reconnect_per_s, args.viewers)
        self.logs = OUT_DIR / f"logs-{args.name}"
        self.census_path = (self.logs / "census.json").resolve()
        env = {
            # A production-like stream: pings at the default 15 s (they are part of the load).
            "BRIDGE_PING_INTERVAL": "15",
            **bridge_env,
        }
        if args.census:
            env["BENCH_GC_CENSUS"] = str(self.census_path)
        self.bridge_env = env
        self.machine = Machine()
        self.changes: dict[int, Change] = {}
        self.minutes: dict[int, Minute] = {}
        #: Arrivals of changes whose t0 is not known yet (bounded: recent changes only).
        self.pending: dict[int, list[tuple[int, int]]] = {}
        self.started_ns = 0
        self.seq = 0

    def minute_of(self, ns: int) -> Minute:
        index = max(0, (ns - self.started_ns) // 60_000_000_000)
        minute = self.minutes.get(index)
        if minute is None:
            minute = self.minutes[index] = Minute(index)
        return minute

    def run(self) -> dict[str, Any]:
        args = self.args
        raise_nofile()
        autogroup = own_autogroup()
        pin(CLIENT_CORE)
        upstream = Upstream(CLIENT_CORE, self.logs)
        bridge = Bridge(SERVER_CORE, self.logs, upstream, self.interval, self.bridge_env)
        pool: SoakPool | None = None
        http: Http | None = None
        try:
            bridge.start()
            self.machine.ours.update([*bridge.pids(), upstream.proc.pid])
            http = Http(bridge.port, timeout=30)
            pool = SoakPool(args.client_procs, CLIENT_CORE, bridge.port, args.inflight)
            self.machine.ours.update(pool.pids)
            path = bridge.sub_path(f"b{CHANNEL_INDEX:06d}")
            rss_start = bridge.rss_kib()
            connect = self.connect_all(pool, bridge, path)
            print(
                f"soak: {connect['open']:,} viewers open in {connect['seconds']} s; "
                f"{args.minutes} min, {self.rate}/s reconnecting",
                flush=True,
            )
            self.loop(pool, bridge, upstream, http)
            final = self.finish(pool, upstream)
        finally:
            if http is not None:
                http.close()
            if pool is not None:
                with contextlib.suppress(Exception):
                    pool.close()
                pool.shutdown()
            bridge.stop()
            upstream.stop()
        return self.result(bridge, connect, final, rss_start, autogroup)

    def connect_all(self, pool: SoakPool, bridge: Bridge, path: str) -> dict[str, Any]:
        started = time.monotonic()
        pool.open([path])  # the poller runs before the crowd arrives
        self.wait_open(pool, bridge, 1, 30)
        pool.open([path] * (self.viewers - 1))
        open_now = self.wait_open(pool, bridge, self.viewers, 300)
        pool.report()  # the connects' arrivals and latencies are not the soak's
        return {"open": open_now, "seconds": round(time.monotonic() - started, 1)}

    def wait_open(self, pool: SoakPool, bridge: Bridge, want: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            assert bridge.proc is not None
            bridge.proc.check()
            open_now = pool.status()["open"]
            if open_now >= want or time.monotonic() > deadline:
                return open_now
            time.sleep(0.5)

    def loop(self, pool: SoakPool, bridge: Bridge, upstream: Upstream, http: Http) -> None:
        args = self.args
        self.started_ns = time.time_ns()
        start = time.monotonic()
        end = start + args.minutes * 60
        next_tick = start + 1.0
        next_change = start + random.uniform(0.1, self.interval)
        next_scrape = start
        next_minute = start + 60
        cpu = (bridge.cpu_ns(), self.machine.snapshot(), pool.cpu_ns(), time.monotonic())
        previous: dict[str, Any] | None = None
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_change:
                self.change(upstream)
                next_change += self.interval
            if now >= next_tick:
                assert bridge.proc is not None
                bridge.proc.check()
                if self.rate:
                    pool.churn(self.rate, args.resume_share)
                self.collect(pool)
                self.resolve(pool, upstream)
                next_tick += 1.0
            if now >= next_scrape:
                sample = scrape(http)
                sample["t_ns"] = time.time_ns()
                sample["rss_kib"] = bridge.rss_kib()
                minute = self.minute_of(sample["t_ns"])
                if previous is not None:
                    sample["lag_over_100ms"] = over(
                        previous["lag_buckets"], sample["lag_buckets"], 0.1
                    )
                lag = sample.get("event_loop_lag_max_seconds")
                if lag is not None:
                    minute.lag_max = max(minute.lag_max or 0.0, lag)
                minute.rss_kib.append(sample["rss_kib"])
                minute.scrapes.append({k: v for k, v in sample.items() if k != "lag_buckets"})
                previous = sample
                next_scrape += args.scrape
            if now >= next_minute:
                cpu = self.close_minute(bridge, pool, cpu)
                next_minute += 60
            wake = min(next_change, next_tick, next_scrape, next_minute, end)
            time.sleep(max(0.0, wake - time.monotonic()))
        self.close_minute(bridge, pool, cpu)

    def close_minute(
        self, bridge: Bridge, pool: SoakPool, cpu: tuple[int, tuple[int, int], int, float]
    ) -> tuple[int, tuple[int, int], int, float]:
        now = (bridge.cpu_ns(), self.machine.snapshot(), pool.cpu_ns(), time.monotonic())
        minute = self.minute_of(time.time_ns() - 1_000_000_000)
        wall = now[3] - cpu[3]
        minute.scrapes.append(
            {
                "bridge_cpu_share": round((now[0] - cpu[0]) / 1e9 / wall, 3),
                "client_cpu_share": round((now[2] - cpu[2]) / 1e9 / wall, 3),
                "foreign_cpu_ms": self.machine.foreign_ms(cpu[1], now[1]),
            }
        )
        if self.args.census:
            minute.census = self.census(bridge)
        print(f"  minute {minute.index}: {self.minute_line(minute)}", flush=True)
        return (bridge.cpu_ns(), self.machine.snapshot(), pool.cpu_ns(), time.monotonic())

    def census(self, bridge: Bridge) -> dict[str, Any] | None:
        self.census_path.unlink(missing_ok=True)
        bridge.proc_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, Any] = json.loads(self.census_path.read_text())
                return data
            time.sleep(0.2)
        return None

    def change(self, upstream: Upstream) -> None:
        self.seq += 1
        mark = marker(CHANNEL_INDEX, self.seq)
        changed_at = upstream.set({f"b{CHANNEL_INDEX:06d}": (self.seq, mark)})
        self.changes[self.seq] = Change(self.seq, mark, changed_at[f"b{CHANNEL_INDEX:06d}"])

    def collect(self, pool: SoakPool) -> None:
        for reply in pool.report():
            minute = self.minute_of(time.time_ns())
            minute.opens += reply["opens"]
            minute.failures.update(reply["failures"])
            minute.connect_latencies.extend(reply["latencies"])
            for seq, stamp, opened in reply["arrivals"]:
                change = self.changes.get(seq)
                if change is None:
                    continue
                self.pending.setdefault(seq, []).append((stamp, opened))
        for seq in list(self.pending):
            change = self.changes[seq]
            if change.t0 is not None:
                self.settle(change, self.pending.pop(seq))

    def settle(self, change: Change, arrivals: list[tuple[int, int]]) -> None:
        assert change.t0 is not None
        minute = self.minute_of(change.t0)
        for stamp, opened in arrivals:
            if opened < change.t0:
                minute.delays.append(stamp - change.t0)
            else:
                minute.openings += 1  # joined after the change: its opening, not a fan-out

    def resolve(self, pool: SoakPool, upstream: Upstream) -> None:
        """t0 of recent changes (once polled), and the viewers that never had one."""
        now = time.time_ns()
        interval_ns = int(self.interval * 1e9)
        unresolved = {
            c.seq: c
            for c in self.changes.values()
            if c.t0 is None and c.asked < 4 and now - c.changed_at > interval_ns
        }
        run = f"b{CHANNEL_INDEX:06d}"
        for change in unresolved.values():
            # /control/served answers one marker per run per call.
            t0 = upstream.served({run: change.mark})[run]
            change.asked += 1
            if t0 is not None:
                change.t0 = int(t0)
                self.minute_of(change.t0).changes += 1
            elif change.asked >= 4:
                # Superseded before any poll saw it (two changes within one interval).
                self.minute_of(change.changed_at).never_polled += 1
        for change in self.changes.values():
            if change.t0 is not None and not change.checked and now - change.t0 > 3 * interval_ns:
                change.checked = True
                self.minute_of(change.t0).missed += pool.missed(change.seq, change.t0)
        # Bounded: changes older than five minutes are done with.
        for seq in [s for s, c in self.changes.items() if now - c.changed_at > 300e9]:
            self.changes.pop(seq)
            self.pending.pop(seq, None)

    def finish(self, pool: SoakPool, upstream: Upstream) -> dict[str, Any]:
        # The last changes' t0, arrivals and checks: a few intervals more, no churn.
        deadline = time.monotonic() + 4 * self.interval + 2
        while time.monotonic() < deadline:
            time.sleep(1.0)
            self.collect(pool)
            self.resolve(pool, upstream)
        status = pool.status()
        return {"client_open": status["open"], "closed_by_server": status["closed_by_server"]}

    # --- figures -----------------------------------------------------------------------

    def minute_figures(self, minute: Minute) -> dict[str, Any]:
        delays = sorted(minute.delays)
        lat = sorted(minute.connect_latencies)
        interval_ns = self.interval * 1e9
        gauges = [s for s in minute.scrapes if "open_streams" in s]
        last = gauges[-1] if gauges else {}
        shares = next((s for s in minute.scrapes if "bridge_cpu_share" in s), {})
        lag_over = [s.get("lag_over_100ms") for s in gauges if s.get("lag_over_100ms") is not None]
        row: dict[str, Any] = {
            "minute": minute.index,
            "changes": minute.changes,
            "never_polled": minute.never_polled,
            "events": len(delays),
            "p50_ms": round(percentile(delays, 50) / 1e6, 1) if delays else None,
            "p99_ms": round(percentile(delays, 99) / 1e6, 1) if delays else None,
            "max_ms": round(delays[-1] / 1e6, 1) if delays else None,
            "later_than_interval": sum(1 for d in delays if d > interval_ns),
            "missed": minute.missed,
            "openings": minute.openings,
            "reconnects": minute.opens,
            "reconnect_failures": dict(minute.failures),
            "reconnect_p99_ms": round(percentile(lat, 99) / 1e6, 1) if lat else None,
            "loop_lag_max_ms": None if minute.lag_max is None else round(minute.lag_max * 1e3, 1),
            "loop_lag_over_100ms": sum(lag_over) if lag_over else 0,
            "rss_kib": minute.rss_kib[-1] if minute.rss_kib else None,
            "open_streams": last.get("open_streams"),
            "pollers": last.get("pollers"),
            "channels": last.get("channels"),
            "asyncio_tasks": last.get("asyncio_tasks"),
            "gc_pause_max_ms": None
            if last.get("gc_pause_max_seconds") is None
            else round(last["gc_pause_max_seconds"] * 1e3, 1),
            **shares,
        }
        if minute.census is not None:
            census = minute.census
            row["census"] = {
                k: census.get(k)
                for k in (
                    "frozen_before",
                    "garbage_objects",
                    "garbage_bytes_shallow",
                    "full_collection_ms",
                    "freeing_collection_ms",
                    "by_type",
                    "by_code",
                )
            }
        return row

    def minute_line(self, minute: Minute) -> str:
        r = self.minute_figures(minute)
        text = (
            f"{r['events']} events p99 {r['p99_ms']} max {r['max_ms']} ms "
            f"(>{self.interval:g}s: {r['later_than_interval']}, missed {r['missed']}), "
            f"lag max {r['loop_lag_max_ms']} ms, RSS {r['rss_kib']} KiB, "
            f"streams {r['open_streams']} tasks {r['asyncio_tasks']}, "
            f"foreign CPU {r.get('foreign_cpu_ms')} ms"
        )
        if r.get("census"):
            c = r["census"]
            text += (
                f"; census: {c['garbage_objects']} garbage objects, full collection "
                f"{c['full_collection_ms']:.0f} ms over {c['frozen_before']} frozen"
            )
        return text

    def result(
        self,
        bridge: Bridge,
        connect: dict[str, Any],
        final: dict[str, Any],
        rss_start: int,
        autogroup: str,
    ) -> dict[str, Any]:
        args = self.args
        rows = [self.minute_figures(self.minutes[i]) for i in sorted(self.minutes)]
        rows = [r for r in rows if r["minute"] < args.minutes]
        after = rows[args.warmup :] or rows
        rss = [r["rss_kib"] for r in after if r["rss_kib"]]
        tasks = [r["asyncio_tasks"] for r in after if r["asyncio_tasks"] is not None]
        lags = [r["loop_lag_max_ms"] for r in rows if r["loop_lag_max_ms"] is not None]
        maxes = [r["max_ms"] for r in rows if r["max_ms"] is not None]
        gc_log = self.gc_pauses(bridge)
        summary = {
            "events": sum(r["events"] for r in rows),
            "event_max_ms": max(maxes) if maxes else None,
            "event_p99_ms_worst_minute": max((r["p99_ms"] or 0) for r in rows) if rows else None,
            "later_than_interval": sum(r["later_than_interval"] for r in rows),
            "missed": sum(r["missed"] for r in rows),
            "never_polled": sum(r["never_polled"] for r in rows),
            "loop_lag_max_ms": max(lags) if lags else None,
            "loop_lag_over_100ms": sum(r["loop_lag_over_100ms"] for r in rows),
            "rss_first_kib": rss[0] if rss else None,
            "rss_last_kib": rss[-1] if rss else None,
            "rss_spread": round((max(rss) - min(rss)) / min(rss), 4) if rss else None,
            "tasks_first": tasks[0] if tasks else None,
            "tasks_last": tasks[-1] if tasks else None,
            "reconnects": sum(r["reconnects"] for r in rows),
            "gc_longest_ms": gc_log.get("longest_ms"),
        }
        summary["targets"] = {
            "no_event_later_than_interval": summary["later_than_interval"] == 0
            and summary["missed"] == 0,
            "no_loop_pause_over_100ms": (summary["loop_lag_max_ms"] or 0) <= 100,
            "rss_flat_within_5pct": summary["rss_spread"] is not None
            and summary["rss_spread"] <= 0.05,
            "no_leak": rows[-1]["pollers"] == 1 and rows[-1]["channels"] == 1 if rows else False,
        }
        return {
            "command": args.command,
            "started": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(self.started_ns / 1e9)),
            "config": {
                "minutes": args.minutes,
                "viewers": args.viewers,
                "reconnect_per_s": self.rate,
                "resume_share": args.resume_share,
                "interval": self.interval,
                "warmup_minutes": args.warmup,
                "bridge_env": self.bridge_env,
                "census": args.census,
                "autogroup": autogroup,
            },
            "connect": connect,
            "rss_before_viewers_kib": rss_start,
            "final": final,
            "summary": summary,
            "minutes": rows,
            "gc": gc_log,
        }

    def gc_pauses(self, bridge: Bridge) -> dict[str, Any]:
        """The GC probe's log (written when the bridge exits): pauses per minute."""
        try:
            data = json.loads(bridge.gc_log.read_text())
        except (OSError, ValueError):
            return {}
        pauses = data.get("pauses", [])
        per_minute: dict[int, float] = {}
        for p in pauses:
            m = int((p["end_ns"] - self.started_ns) // 60_000_000_000)
            per_minute[m] = max(per_minute.get(m, 0.0), p["ms"])
        return {
            "generations": data.get("generations"),
            "longest_ms": round(max((p["ms"] for p in pauses), default=0.0), 1),
            "over_100ms": [
                {"minute": int((p["end_ns"] - self.started_ns) // 60e9), **p}
                for p in pauses
                if p["ms"] >= 100
            ][:50],
            "longest_ms_per_minute": {str(k): round(v, 1) for k, v in sorted(per_minute.items())},
        }


# --- report -------------------------------------------------------------------------


def render(data: dict[str, Any]) -> str:
    cfg = data["config"]
    s = data["summary"]
    lines = [
        f"# Soak: {cfg['viewers']:,} viewers, {cfg['reconnect_per_s']}/s reconnecting, "
        f"{cfg['minutes']} min (`bench/run soak`)",
        "",
        f"One run changing every {cfg['interval']:g} s, watched by {cfg['viewers']:,} viewers "
        f"of the real bridge (core 0); every second {cfg['reconnect_per_s']} of them close "
        f"(FIN or reset) and reopen ({cfg['resume_share']:.0%} with Last-Event-ID). Delays are "
        "from t0, the moment the upstream first served the change, to each viewer that was "
        "connected before it (kernel receive stamps); loop lag is the bridge's own "
        "measurement (`bridge_event_loop_lag_max_seconds`); GC pauses from bench/harness/gcprobe.",
        "",
        "| minute | events | p99 ms | max ms | > interval | missed | loop lag max ms "
        "| GC longest ms | RSS MiB | streams | tasks | pollers | channels | bridge CPU "
        "| others' CPU ms |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    gc_minutes = data.get("gc", {}).get("longest_ms_per_minute", {})
    for r in data["minutes"]:
        rss = f"{r['rss_kib'] / 1024:.1f}" if r["rss_kib"] else ""
        lines.append(
            f"| {r['minute']} | {r['events']:,} | {r['p99_ms']} | {r['max_ms']} "
            f"| {r['later_than_interval']} | {r['missed']} | {r['loop_lag_max_ms']} "
            f"| {gc_minutes.get(str(r['minute']), 0)} | {rss} "
            f"| {_int(r['open_streams'])} | {_int(r['asyncio_tasks'])} | {_int(r['pollers'])} "
            f"| {_int(r['channels'])} | {r.get('bridge_cpu_share', '')} "
            f"| {r.get('foreign_cpu_ms', '')} |"
        )
    t = s["targets"]
    lines += [
        "",
        f"Events timed: {s['events']:,}; worst minute's p99 {s['event_p99_ms_worst_minute']} ms, "
        f"max {s['event_max_ms']} ms; later than one interval: {s['later_than_interval']}, "
        f"never arrived: {s['missed']} "
        f"({'met' if t['no_event_later_than_interval'] else 'NOT met'}).",
        f"Event-loop lag, longest: {s['loop_lag_max_ms']} ms; samples over 100 ms: "
        f"{s['loop_lag_over_100ms']} ({'met' if t['no_loop_pause_over_100ms'] else 'NOT met'}); "
        f"longest GC pause {s['gc_longest_ms']} ms.",
        f"RSS after the warm-up ({cfg['warmup_minutes']} min): {_mib(s['rss_first_kib'])} -> "
        f"{_mib(s['rss_last_kib'])} MiB, spread {_pct(s['rss_spread'])} "
        f"({'met' if t['rss_flat_within_5pct'] else 'NOT met'}: within 5 %).",
        f"Asyncio tasks after the warm-up: {_int(s['tasks_first'])} -> {_int(s['tasks_last'])}; "
        f"pollers and channels at the end: 1 each is no leak "
        f"({'met' if t['no_leak'] else 'NOT met'}). Reconnects: {s['reconnects']:,}.",
        "",
        f"Bridge settings beyond the suite's: `{json.dumps(cfg['bridge_env'])}`.",
        f"`{data['command']}`; {data['started']}.",
        "",
    ]
    return "\n".join(lines)


def _int(value: float | None) -> str:
    return "" if value is None else f"{int(value):,}"


def _mib(kib: float | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f}"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.1%}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.parser("soak", __doc__)
    parser.add_argument("--minutes", type=int, default=15)
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--reconnect-per-s", default="1%", help="a share (1%%) or a count")
    parser.add_argument("--resume-share", type=float, default=0.5)
    cli.add_interval(parser, 2.0)
    parser.add_argument("--warmup", type=int, default=1, help="minutes left out of RSS")
    parser.add_argument("--scrape", type=float, default=5.0, help="seconds between /metrics")
    cli.add_client_procs(parser, 4)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--census", action="store_true", help="count cyclic garbage (pauses)")
    cli.add_bridge_env(parser)
    parser.add_argument("--name", default="soak", help="output names (bench/out/<name>.json)")
    args = parser.parse_args(argv)
    if args.minutes < 1 or args.minutes > 180 or args.viewers < 1 or args.viewers > 50_000:
        parser.error("--minutes 1..180 and --viewers 1..50,000")
    args.command = cli.command_line("soak", argv)
    servers.NICE = -20
    data = Soak(args, dict(args.bridge_env)).run()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{args.name}.json"
    out.write_text(json.dumps(data, indent=1))
    report = BENCH_DIR / "results" / f"{args.name}.md"
    report.write_text(render(data))
    print(render(data))
    print(f"wrote {out} and {report}")


if __name__ == "__main__":
    main()
