"""What HTTP/2 costs against HTTP/1.1: one run's change fanned out to N viewers.

Three real bridges (`python -m bridge serve`, each its own process on the server core) in
front of one scripted upstream (bench.harness.upstream), in the same run:

- ``http1.1``: plain HTTP, N HTTP/1.1 connections. Frames take the fast path (written
  straight to each viewer's socket).
- ``http1.1+tls``: HTTPS (BRIDGE_TLS_CERTFILE/KEYFILE), N HTTP/1.1 connections (ALPN
  ``http/1.1``): still the fast path, each frame encrypted for each connection.
- ``h2``: HTTPS, N HTTP/2 streams over C connections (ALPN ``h2``, N/C streams each, as a
  browser puts a page's EventSources on one connection). HTTP/2 takes the ASGI path:
  Quart's response loop, then Hypercorn's h2 framing, priority tree and flow control.

The middle one splits what ``h2`` costs into TLS and HTTP/2 proper. Each round changes one
bridge's run at the upstream; rounds go round-robin over the three bridges, so a slow
moment of this shared machine hits all of them alike, and start at a random phase of the
poll interval. Figures as in bench/README.md ("How each figure is measured"):

- fan-out delay: from t0, the moment the upstream first served the changed status to the
  bridge, to each viewer's kernel receive stamp (``SO_TIMESTAMPNS``) of the bytes that
  carried the change (for TLS, of the read that completed the TLS record); the last
  viewer's delay is the headline;
- server CPU per delivered frame: the bridge's CPU time (all threads) from just before the
  change to 100 ms after the last viewer got it, divided by the viewers.

The client is this process: one epoll loop over non-blocking sockets, TLS through
``ssl.MemoryBIO``, HTTP/2 through the ``h2`` library (Hypercorn's own dependency), every
viewer's window given back at once and the connection window opened wide, so the client
never holds the server back. It runs on the other core with the upstream.

    bench/run h2_fanout [--viewers 1000] [--connections 10] [--rounds 12]
        [--interval 1] [--out bench/out/h2_fanout.json] [--report bench/results/h2_fanout.md]
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import platform
import random
import select
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from bench.harness import cli
from bench.harness.common import (
    MARKER_LEN,
    OUT_DIR,
    ROOT,
    Machine,
    cpu_ns,
    marker,
    own_autogroup,
    percentile,
    pin,
    raise_nofile,
    rss_kib,
)
from bench.harness.servers import PYTHON, Process, Upstream, free_port, pinned

SERVER_CORE = 0
CLIENT_CORE = 1
# Linux, x86_64 and arm64: SO_TIMESTAMPNS == SCM_TIMESTAMPNS == 35 (struct timespec).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
ANCILLARY = socket.CMSG_SPACE(16)
RECV_SIZE = 256 * 1024
#: Connections being set up at once (Hypercorn listens with a backlog of 100).
INFLIGHT = 64
#: Hypercorn's default h2_max_concurrent_streams: streams one connection may carry.
H2_MAX_STREAMS = 100
#: The client's HTTP/2 windows: far more than a round sends, so flow control never waits.
H2_WINDOW = 2**30 - 1
#: CPU is read this long after the last viewer got the change (as in the suite).
CPU_TAIL = 0.1
CONFIGS = ("http1.1", "http1.1+tls", "h2")
#: Longest wait, before each round, for other processes on this machine to go quiet.
QUIET_WAIT = 5.0


# --- the client ---------------------------------------------------------------------


@dataclass(eq=False)
class Viewer:
    """One stream: an HTTP/1.1 connection's response, or one HTTP/2 stream."""

    path: str
    open: bool = False
    #: Kernel receive stamp of the armed marker (0: not yet).
    got: int = 0
    tail: bytes = b""
    lost: str | None = None


@dataclass(eq=False)
class Conn:
    """One TCP connection: plain or TLS (MemoryBIO), HTTP/1.1 (one viewer) or h2 (many)."""

    sock: socket.socket
    host: str
    viewers: dict[int, Viewer]
    tls: ssl.SSLObject | None
    h2: h2.connection.H2Connection | None
    incoming: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    outgoing: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    connected: bool = False
    ready: bool = False  # handshake done and request(s) sent
    head: bytes = b""
    out: bytearray = field(default_factory=bytearray)
    alpn: str | None = None


class Client:
    """Every viewer of every bridge, in one epoll loop; kernel stamps for every read."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.armed = b""
        self.stamp_fallbacks = 0

    # --- connecting -----------------------------------------------------------------

    def open(
        self,
        port: int,
        paths: list[str],
        context: ssl.SSLContext | None,
        streams_per_conn: int,
        timeout: float = 120.0,
    ) -> list[Viewer]:
        """Open one viewer per path (``streams_per_conn`` > 1: HTTP/2 connections)."""
        groups = [paths[i : i + streams_per_conn] for i in range(0, len(paths), streams_per_conn)]
        pending = list(reversed(groups))
        started: list[Conn] = []
        deadline = time.monotonic() + timeout

        def settled(conn: Conn) -> bool:
            return all(v.open or v.lost for v in conn.viewers.values())

        while pending or not all(settled(c) for c in started):
            if time.monotonic() > deadline:
                raise TimeoutError(f"connecting to :{port} took more than {timeout:g} s")
            inflight = sum(not settled(c) for c in started)
            while pending and inflight < INFLIGHT:
                started.append(self._start(port, pending.pop(), context, streams_per_conn > 1))
                inflight += 1
            self.pump(0.02)
        viewers = [v for c in started for v in c.viewers.values()]
        lost = [v.lost for v in viewers if v.lost]
        if lost:
            raise RuntimeError(f"{len(lost)} of {len(viewers)} viewers failed: {lost[:3]}")
        return viewers

    def _start(
        self, port: int, paths: list[str], context: ssl.SSLContext | None, multiplex: bool
    ) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host = "127.0.0.1"
        conn = Conn(sock, f"{host}:{port}", {}, None, None)
        if context is not None:
            conn.tls = context.wrap_bio(conn.incoming, conn.outgoing, server_hostname=host)
        if multiplex:
            conn.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        # Stream ids are known only once h2 is up; HTTP/1.1's one viewer is "stream" 0.
        conn.viewers = {-i - 1: Viewer(path) for i, path in enumerate(paths)}
        self.conns[sock.fileno()] = conn
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, f"connect to {host}:{port}: {errno.errorcode.get(code)}")
        self.epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        return conn

    def _on_connected(self, conn: Conn) -> None:
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"connect: {errno.errorcode.get(code)}")
        conn.connected = True
        self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
        if conn.tls is None:
            self._send_requests(conn)
        else:
            self._handshake(conn)

    def _handshake(self, conn: Conn) -> None:
        assert conn.tls is not None
        try:
            conn.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush(conn)
            return
        conn.alpn = conn.tls.selected_alpn_protocol()
        want = "h2" if conn.h2 is not None else "http/1.1"
        if conn.alpn != want:
            raise RuntimeError(f"ALPN chose {conn.alpn!r}, not {want!r}")
        self._send_requests(conn)

    def _send_requests(self, conn: Conn) -> None:
        host = conn.host
        if conn.h2 is None:
            ((_, viewer),) = conn.viewers.items()
            conn.viewers = {0: viewer}
            request = (
                f"GET {viewer.path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
            self._write(conn, request)
        else:
            h2c = conn.h2
            h2c.local_settings = h2.settings.Settings(
                client=True,
                initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: H2_WINDOW},
            )
            h2c.initiate_connection()
            h2c.increment_flow_control_window(H2_WINDOW - 65_535)
            viewers = list(conn.viewers.values())
            conn.viewers = {}
            for viewer in viewers:
                stream_id = h2c.get_next_available_stream_id()
                headers = [
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", host),
                    (":path", viewer.path),
                    ("accept", "text/event-stream"),
                ]
                h2c.send_headers(stream_id, headers, end_stream=True)
                conn.viewers[stream_id] = viewer
            self._write(conn, h2c.data_to_send())
        conn.ready = True

    # --- bytes in and out -------------------------------------------------------------

    def _write(self, conn: Conn, data: bytes) -> None:
        if conn.tls is None:
            conn.out += data
        else:
            conn.tls.write(data)
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        if conn.tls is not None:
            conn.out += conn.outgoing.read()
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                self.epoll.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                return
            del conn.out[:sent]

    def pump(self, seconds: float) -> None:
        """Read whatever arrives for ``seconds`` (one epoll round at least)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            for fd, mask in self.epoll.poll(max(left, 0.0), 4096):
                conn = self.conns.get(fd)
                if conn is None:  # lost earlier in this batch
                    continue
                if not conn.connected:
                    self._on_connected(conn)
                    continue
                if mask & select.EPOLLOUT:
                    self.epoll.modify(fd, select.EPOLLIN)
                    self._flush(conn)
                if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self._readable(conn)
            if left <= 0:
                return

    def _readable(self, conn: Conn) -> None:
        try:
            data, ancillary, _, _ = conn.sock.recvmsg(RECV_SIZE, ANCILLARY)
        except BlockingIOError:
            return
        except OSError as error:
            self._lose(conn, type(error).__name__)
            return
        if not data:
            self._lose(conn, "eof")
            return
        stamp = 0
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(cdata) >= 16:
                seconds, nanos = struct.unpack("qq", cdata[:16])
                stamp = seconds * 1_000_000_000 + nanos
        if not stamp:
            stamp = time.time_ns()
            self.stamp_fallbacks += 1
        if conn.tls is None:
            self._plain(conn, data, stamp)
            return
        conn.incoming.write(data)
        if not conn.ready:
            self._handshake(conn)
            if not conn.ready:
                return
        plain = bytearray()
        while True:
            try:
                plain += conn.tls.read(RECV_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
        self._flush(conn)  # TLS 1.3 may want to answer (key updates)
        if plain:
            self._plain(conn, bytes(plain), stamp)

    def _plain(self, conn: Conn, data: bytes, stamp: int) -> None:
        if conn.h2 is None:
            viewer = conn.viewers[0]
            if not viewer.open:
                conn.head += data
                end = conn.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                status = conn.head[: conn.head.find(b"\r\n")]
                if b" 200 " not in status + b" ":
                    viewer.lost = status.decode("latin-1")[:60]
                    return
                viewer.open = True
                data = conn.head[end + 4 :]
                conn.head = b""
            self._scan(viewer, data, stamp)
            return
        h2c = conn.h2
        for event in h2c.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self._scan(conn.viewers[event.stream_id], event.data or b"", stamp)
            elif isinstance(event, h2.events.ResponseReceived):
                assert event.stream_id is not None
                code = dict(event.headers or []).get(b":status")
                viewer = conn.viewers[event.stream_id]
                viewer.open = code == b"200"
                if not viewer.open:
                    viewer.lost = f"HTTP {code!r}"
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                assert event.stream_id is not None
                conn.viewers[event.stream_id].lost = type(event).__name__
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._lose(conn, "goaway")
        pending = h2c.data_to_send()
        if pending:
            self._write(conn, pending)

    def _scan(self, viewer: Viewer, data: bytes, stamp: int) -> None:
        if self.armed and not viewer.got:
            window = viewer.tail + data
            if self.armed in window:
                viewer.got = stamp
            viewer.tail = window[-(MARKER_LEN - 1) :]

    def _lose(self, conn: Conn, why: str) -> None:
        for viewer in conn.viewers.values():
            viewer.lost = viewer.lost or why
        self.epoll.unregister(conn.sock.fileno())
        del self.conns[conn.sock.fileno()]
        conn.sock.close()

    def arm(self, mark: str, viewers: list[Viewer]) -> None:
        self.armed = mark.encode()
        for viewer in viewers:
            viewer.got = 0
            viewer.tail = b""

    def close(self) -> None:
        for conn in list(self.conns.values()):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.sock.close()
        self.conns.clear()
        self.epoll.close()


# --- the servers ----------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    certfile, keyfile = directory / "bench.crt", directory / "bench.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(keyfile), "-out",
            str(certfile),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    return certfile, keyfile


@dataclass
class BridgeProc:
    name: str
    port: int
    proc: Process
    context: ssl.SSLContext | None

    def get(self, path: str) -> tuple[int, bytes]:
        conn: http.client.HTTPConnection
        if self.context is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        else:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=5, context=self.context
            )
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def metric(self, name: str, labels: str = "") -> float | None:
        _, body = self.get("/metrics")
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in body.decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return None


def start_bridge(
    name: str,
    upstream: Upstream,
    interval: float,
    logs: Path,
    tls: tuple[Path, Path] | None,
) -> BridgeProc:
    """The real bridge, with the settings of bench/harness/servers.py's ``Bridge`` target.

    Not that class itself: it waits for /healthz over plain HTTP, which a bridge serving
    HTTPS does not answer.
    """
    port = free_port()
    env = {
        **os.environ,
        "BRIDGE_UPSTREAM_URL": upstream.url,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_POLL_INTERVAL": f"{interval:g}",
        "BRIDGE_PING_INTERVAL": "3600",
        "BRIDGE_STREAM_TIMEOUT": "7200",
        "BRIDGE_ACCESS_LOG": "false",
        "BRIDGE_MAX_STREAMS": "100000",
        "BRIDGE_MAX_STREAMS_PER_CLIENT": "100000",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    context = None
    if tls is not None:
        env["BRIDGE_TLS_CERTFILE"], env["BRIDGE_TLS_KEYFILE"] = map(str, tls)
        context = ssl.create_default_context(cafile=str(tls[0]))
    proc = Process(name, pinned(SERVER_CORE, [PYTHON, "-m", "bridge", "serve"]), logs, env)
    bridge = BridgeProc(name, port, proc, context)
    deadline = time.monotonic() + 30
    while True:
        proc.check()
        try:
            if bridge.get("/healthz")[0] == 200:
                return bridge
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after 30 s")
        time.sleep(0.05)


# --- rounds -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    bridge: BridgeProc
    run_id: str
    index: int
    viewers: list[Viewer] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def one_round(
    client: Client,
    upstream: Upstream,
    target: Target,
    seq: int,
    interval: float,
    machine: Machine,
) -> dict[str, Any]:
    mark = marker(target.index, seq)
    quiet_waited = machine.wait_quiet(QUIET_WAIT)
    before = machine.snapshot()
    client.arm(mark, target.viewers)
    # A random phase against the bridge's polls, as in the suite.
    client.pump(random.uniform(0, interval))
    pid = target.bridge.proc.pid
    cpu_before = cpu_ns(pid)
    client_cpu = time.process_time_ns()
    changed_at = upstream.set({target.run_id: (seq, mark)})[target.run_id]
    deadline = time.monotonic() + interval + 10
    waiting = target.viewers
    while time.monotonic() < deadline:
        waiting = [v for v in waiting if not v.got and not v.lost]
        if not waiting:
            break
        client.pump(0.005)
    client.pump(CPU_TAIL)
    cpu = cpu_ns(pid) - cpu_before
    client_cpu = time.process_time_ns() - client_cpu
    foreign = machine.foreign_ms(before, machine.snapshot())
    t0 = upstream.served({target.run_id: mark})[target.run_id]
    arrivals = sorted(v.got for v in target.viewers if v.got)
    got = len(arrivals)
    delays = [(t - t0) / 1e6 for t in arrivals] if t0 else []
    return {
        "seq": seq,
        "viewers": len(target.viewers),
        "delivered": got,
        "missed": len(target.viewers) - got,
        "last_ms": delays[-1] if delays else None,
        "p50_ms": percentile(delays, 50) if delays else None,
        "p99_ms": percentile(delays, 99) if delays else None,
        "first_ms": delays[0] if delays else None,
        "from_change_last_ms": (arrivals[-1] - changed_at) / 1e6 if arrivals else None,
        "cpu_us_per_frame": cpu / 1e3 / got if got else None,
        "server_cpu_ms": cpu / 1e6,
        "client_cpu_ms": client_cpu / 1e6,
        # CPU other processes used during the round: a large figure marks a disturbed one.
        "foreign_cpu_ms": foreign,
        "quiet_waited_s": quiet_waited,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        values = [r[key] for r in rounds if r[key] is not None]
        return statistics.median(values) if values else None

    lasts = [r["last_ms"] for r in rounds if r["last_ms"] is not None]
    return {
        "rounds": len(rounds),
        "last_ms_median": med("last_ms"),
        "last_ms_worst": max(lasts) if lasts else None,
        "p50_ms_median": med("p50_ms"),
        "p99_ms_median": med("p99_ms"),
        "cpu_us_per_frame_median": med("cpu_us_per_frame"),
        "missed": sum(r["missed"] for r in rounds),
        "foreign_cpu_ms_median": med("foreign_cpu_ms"),
    }


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# --- report ------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(results: dict[str, Any]) -> str:
    p = results["parameters"]
    s = results["summary"]
    r = results["ratios"]
    env = results["environment"]
    lines = [
        "# HTTP/2 against HTTP/1.1: fan-out of one run to "
        f"{p['viewers']:,} viewers (generated by `bench/studies/h2_fanout.py`)",
        "",
        f"Made {results['started']} on {env['cpus']} cores ({env['cpu']}), Python "
        f"{env['python']}, Hypercorn {env['hypercorn']}, h2 {env['h2']}, {env['openssl']}. "
        f"{p['rounds']} rounds per configuration, interleaved; poll interval {p['interval']:g} s; "
        f"HTTP/2: {p['viewers']:,} streams over {p['connections']} connections "
        f"({p['viewers'] // p['connections']} each). Each bridge on core {SERVER_CORE}, "
        f"upstream and client on core {CLIENT_CORE}. The command: "
        f"`bench/run h2_fanout --viewers {p['viewers']} --connections "
        f"{p['connections']} --rounds {p['rounds']} --interval {p['interval']:g}`.",
        "",
        "| configuration | path | last viewer, median round (ms) | last viewer, worst "
        "round (ms) | p50 viewer (ms) | server CPU per frame (µs) | missed |",
        "|---|---|---|---|---|---|---|",
    ]
    paths = {"http1.1": "fast path", "http1.1+tls": "fast path, through TLS", "h2": "ASGI"}
    for name in CONFIGS:
        c = s[name]
        lines.append(
            f"| `{name}` | {paths[name]} | {fmt(c['last_ms_median'])} | "
            f"{fmt(c['last_ms_worst'])} | {fmt(c['p50_ms_median'])} | "
            f"{fmt(c['cpu_us_per_frame_median'])} | {c['missed']} |"
        )
    lines += [
        "",
        "Ratios of the medians, same run:",
        "",
        "| ratio | last viewer | server CPU per frame |",
        "|---|---|---|",
    ]
    for key, label in (
        ("h2/http1.1", "h2 / HTTP/1.1 (plain): what HTTPS with HTTP/2 costs"),
        ("h2/http1.1+tls", "h2 / HTTP/1.1 over TLS: HTTP/2 proper (the ASGI path)"),
        ("http1.1+tls/http1.1", "HTTP/1.1 over TLS / plain: TLS on the fast path"),
    ):
        lines.append(f"| {label} | {fmt(r[key]['last'], 2)}x | {fmt(r[key]['cpu'], 2)}x |")
    checks = results["checks"]
    lines += [
        "",
        "Checked before the rounds, from each bridge's `/metrics`: "
        + "; ".join(
            f"`{name}`: {checks[name]['fast_path_streams']:g} streams on the fast path, "
            f"{checks[name]['http_version_fallbacks']:g} on the ASGI path by HTTP version"
            for name in CONFIGS
        )
        + ". Memory the open streams added to each bridge's RSS, MiB per 1,000 streams: "
        + ", ".join(f"`{n}` {fmt(checks[n]['rss_kib_per_1000'] / 1024)}" for n in CONFIGS)
        + ".",
        "",
        "How it is measured: see the docstring of `bench/studies/h2_fanout.py` and "
        "bench/README.md. "
        "t0 is when the upstream first served the change to the bridge; arrival is the "
        "kernel's receive stamp of the read that completed the bytes (for TLS: the record) "
        "carrying the change. CPU: the bridge's CPU time from just before the change to "
        f"{CPU_TAIL * 1000:g} ms after the last viewer got it, per delivered frame (it includes "
        "one poll of the upstream, the same for all three). The machine is shared; rounds "
        "are interleaved so a disturbance hits every configuration alike, and the ratios "
        "are what to read. Every round: `bench/out/h2_fanout.json`.",
        "",
    ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("h2_fanout", __doc__)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=10, help="HTTP/2 connections")
    parser.add_argument("--rounds", type=int, default=12, help="rounds per configuration")
    cli.add_interval(parser, 1.0)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "h2_fanout.json")
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "h2_fanout.md")
    args = parser.parse_args(argv)
    per_conn = -(-args.viewers // args.connections)
    if per_conn > H2_MAX_STREAMS:
        parser.error(f"--connections: at most {H2_MAX_STREAMS} HTTP/2 streams per connection")
    raise_nofile()
    autogroup = own_autogroup()
    pin(CLIENT_CORE)
    machine = Machine()
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    random.seed(args.viewers)
    # Server logs stay after the run (a bridge that failed says why there).
    logs = OUT_DIR / "h2_fanout"
    with tempfile.TemporaryDirectory(prefix="h2-fanout-") as tmp:
        tls = make_certificate(Path(tmp))
        upstream = Upstream(CLIENT_CORE, logs)
        bridges: list[BridgeProc] = []
        client = Client()
        try:
            plain = start_bridge("http1.1", upstream, args.interval, logs, None)
            bridges.append(plain)
            tls11 = start_bridge("http1.1+tls", upstream, args.interval, logs, tls)
            bridges.append(tls11)
            h2b = start_bridge("h2", upstream, args.interval, logs, tls)
            bridges.append(h2b)
            machine.ours.update([upstream.proc.pid, *(b.proc.pid for b in bridges)])
            targets = [
                Target(bridge.name, bridge, f"h2bench{i}", i)
                for i, bridge in enumerate((plain, tls11, h2b))
            ]
            checks: dict[str, dict[str, float]] = {}
            for target in targets:
                rss_before = rss_kib(target.bridge.proc.pid)
                context = None
                if target.bridge.context is not None:
                    context = ssl.create_default_context(cafile=str(tls[0]))
                    context.set_alpn_protocols(["h2" if target.name == "h2" else "http/1.1"])
                paths = [f"/v1/runs/{target.run_id}/stream"] * args.viewers
                t = time.monotonic()
                target.viewers = client.open(
                    target.bridge.port, paths, context, per_conn if target.name == "h2" else 1
                )
                print(
                    f"{target.name}: {len(target.viewers)} viewers open in "
                    f"{time.monotonic() - t:.1f} s",
                    file=sys.stderr,
                )
                # Hand-over to the fast path follows the opening: let it settle.
                client.pump(1.0)
                fast = target.bridge.metric("bridge_fast_path_streams") or 0.0
                fallbacks = target.bridge.metric(
                    "bridge_fast_path_fallbacks_total", 'reason="http_version"'
                )
                checks[target.name] = {
                    "fast_path_streams": fast,
                    "http_version_fallbacks": fallbacks or 0.0,
                    "rss_kib_per_1000": (rss_kib(target.bridge.proc.pid) - rss_before)
                    * 1000
                    / args.viewers,
                }
            seq = 0
            for r in range(args.rounds):
                order = targets[r % 3 :] + targets[: r % 3]
                for target in order:
                    seq += 1
                    result = one_round(client, upstream, target, seq, args.interval, machine)
                    target.rounds.append(result)
                    print(
                        f"round {r + 1}/{args.rounds} {target.name:12} last "
                        f"{fmt(result['last_ms'])} ms, cpu/frame "
                        f"{fmt(result['cpu_us_per_frame'])} us, missed {result['missed']}",
                        file=sys.stderr,
                    )
        finally:
            client.close()
            for bridge in bridges:
                bridge.proc.stop()
            upstream.stop()
    summary = {t.name: summarise(t.rounds) for t in targets}

    def pair(a: str, b: str) -> dict[str, float | None]:
        return {
            "last": ratio(summary[a]["last_ms_median"], summary[b]["last_ms_median"]),
            "cpu": ratio(
                summary[a]["cpu_us_per_frame_median"], summary[b]["cpu_us_per_frame_median"]
            ),
        }

    results = {
        "started": started,
        "parameters": {
            "viewers": args.viewers,
            "connections": args.connections,
            "rounds": args.rounds,
            "interval": args.interval,
        },
        "environment": {
            "python": platform.python_version(),
            "hypercorn": metadata.version("hypercorn"),
            "h2": metadata.version("h2"),
            "openssl": ssl.OPENSSL_VERSION,
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "autogroup": autogroup,
        },
        "checks": checks,
        "summary": summary,
        "ratios": {
            "h2/http1.1": pair("h2", "http1.1"),
            "h2/http1.1+tls": pair("h2", "http1.1+tls"),
            "http1.1+tls/http1.1": pair("http1.1+tls", "http1.1"),
        },
        "rounds": {t.name: t.rounds for t in targets},
        "client_stamp_fallbacks": client.stamp_fallbacks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
