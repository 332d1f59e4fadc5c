"""The load client: EventSource subscribers on raw non-blocking sockets, over processes.

Each worker process owns an epoll and a few thousand subscribers. A subscriber is a
TCP socket with ``SO_TIMESTAMPNS`` on, so every ``recvmsg`` carries the kernel's receive
time (CLOCK_REALTIME): the time a frame reached the viewer does not depend on when this
client got round to reading it. Frames are recognised by fixed-width markers
(``BMK:<channel>:<seq>``) in the raw bytes, whatever the framing (chunked or not).

The parent drives the workers through pipes, one command at a time, and every command
has a deadline: ``connect`` (open N streams, at most ``inflight`` connecting at once),
``arm`` (markers to time), ``wait`` (until every armed marker reached every subscriber
of its channel, or the deadline), ``close`` (reset every stream) and ``quit``.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import select
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bench.harness.common import MARKER_LEN, MARKER_PREFIX, cpu_ns, percentile, pin, raise_nofile

# Linux, x86_64 and arm64: SO_TIMESTAMPNS == SCM_TIMESTAMPNS == 35 (struct timespec).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
ANCILLARY = socket.CMSG_SPACE(16)
LINGER_RESET = struct.pack("ii", 1, 0)
MAX_HEAD = 16 * 1024
RECV_SIZE = 64 * 1024
#: A worker lives at most this long whatever the parent does (every loop is bounded).
WORKER_LIFETIME = 3 * 3600.0

CONNECTING, HEAD, STREAM = 0, 1, 2


class Sub:
    __slots__ = ("buf", "fd", "path", "sock", "state", "t_start", "tail")

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.path = path
        self.state = CONNECTING
        self.buf = b""
        self.tail = b""
        self.t_start = time.time_ns()


@dataclass
class ConnectOp:
    host: str
    port: int
    paths: list[str]
    inflight_cap: int
    deadline: float
    next_index: int = 0
    inflight: int = 0
    opened: int = 0
    failed: int = 0
    t_first: int = 0
    t_last: int = 0
    cpu_start: int = 0

    def __post_init__(self) -> None:
        self.latencies: list[int] = []
        self.errors: Counter[str] = Counter()


class Worker:
    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.index = index
        self.epoll = select.epoll()
        self.epoll.register(conn.fileno(), select.EPOLLIN)
        self.subs: dict[int, Sub] = {}
        self.armed: dict[bytes, list[int]] = {}
        self.expected: dict[bytes, int] = {}
        self.connecting: ConnectOp | None = None
        self.wait_deadline: float | None = None
        self.closed_by_server = 0
        #: Reads that came without a kernel stamp (the client's clock was used instead),
        #: in all and among the timed frames of the current wait.
        self.stamp_fallbacks = 0
        self.armed_fallbacks = 0

    # --- the loop -------------------------------------------------------------------

    def run(self) -> None:
        end = time.monotonic() + WORKER_LIFETIME
        conn_fd = self.conn.fileno()
        while time.monotonic() < end:
            busy = self.connecting is not None or self.wait_deadline is not None
            events = self.epoll.poll(0.02 if busy else 0.5, 4096)
            for fd, mask in events:
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
            if self.connecting is not None:
                self.progress_connect()
            if self.wait_deadline is not None:
                self.progress_wait()

    def command(self) -> bool:
        try:
            name, args = self.conn.recv()
        except EOFError:
            return False
        if name == "quit":
            self.close_all()
            self.conn.send({"ok": True})
            return False
        if name == "connect":
            self.connecting = ConnectOp(
                args["host"],
                args["port"],
                list(args["paths"]),
                max(1, int(args["inflight"])),
                time.monotonic() + float(args["timeout"]),
            )
            self.connecting.cpu_start = time.process_time_ns()
            self.progress_connect()
        elif name == "arm":
            self.arm(args["markers"])
        elif name == "wait":
            self.wait_deadline = time.monotonic() + float(args["timeout"])
            self.progress_wait()
        elif name == "close":
            self.conn.send({"closed": self.close_all()})
        elif name == "status":
            self.conn.send(self.status())
        else:
            self.conn.send({"error": f"unknown command {name}"})
        return True

    # --- connecting -----------------------------------------------------------------

    def progress_connect(self) -> None:
        op = self.connecting
        assert op is not None
        if time.monotonic() >= op.deadline:
            for sub in [s for s in self.subs.values() if s.state != STREAM]:
                self.drop(sub, "deadline")
            op.failed += len(op.paths) - op.next_index
            op.next_index = len(op.paths)
        while op.inflight < op.inflight_cap and op.next_index < len(op.paths):
            path = op.paths[op.next_index]
            op.next_index += 1
            self.start(op, path)
        if op.inflight == 0 and op.next_index >= len(op.paths):
            lat = sorted(op.latencies)
            self.conn.send(
                {
                    "opened": op.opened,
                    "failed": op.failed,
                    "errors": dict(op.errors),
                    "t_first": op.t_first,
                    "t_last": op.t_last,
                    "latency_p50_ns": percentile(lat, 50) if lat else None,
                    "latency_p99_ns": percentile(lat, 99) if lat else None,
                    "latency_max_ns": lat[-1] if lat else None,
                    "cpu_ns": time.process_time_ns() - op.cpu_start,
                    "open": self.open_count(),
                }
            )
            self.connecting = None

    def start(self, op: ConnectOp, path: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sub = Sub(sock, path)
        if not op.t_first:
            op.t_first = sub.t_start
        self.subs[sub.fd] = sub
        op.inflight += 1
        code = sock.connect_ex((op.host, op.port))
        if code in (0, errno.EINPROGRESS):
            self.epoll.register(sub.fd, select.EPOLLOUT)
        else:
            self.drop(sub, errno.errorcode.get(code, str(code)))

    def connected(self, sub: Sub, mask: int) -> None:
        op = self.connecting
        code = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code or op is None:
            self.drop(sub, errno.errorcode.get(code, "late"))
            return
        request = (
            f"GET {sub.path} HTTP/1.1\r\nHost: {op.host}:{op.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        ).encode()
        try:
            sub.sock.send(request)
        except OSError as error:
            self.drop(sub, type(error).__name__)
            return
        sub.state = HEAD
        self.epoll.modify(sub.fd, select.EPOLLIN)

    def drop(self, sub: Sub, reason: str) -> None:
        """A subscriber that never opened: counted as failed by the connect op."""
        op = self.connecting
        if op is not None and sub.state != STREAM:
            op.inflight -= 1
            op.failed += 1
            op.errors[reason] += 1
        self.forget(sub)

    def forget(self, sub: Sub) -> None:
        self.subs.pop(sub.fd, None)
        with contextlib.suppress(OSError):
            sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sub.sock.close()  # also leaves the epoll

    # --- reading --------------------------------------------------------------------

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
        fallback = False
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(cdata) >= 16:
                seconds, nanos = struct.unpack("qq", cdata[:16])
                stamp = seconds * 1_000_000_000 + nanos
        if not stamp:
            stamp = time.time_ns()
            fallback = True
            self.stamp_fallbacks += 1
        if sub.state == HEAD:
            sub.buf += data
            end = sub.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(sub.buf) > MAX_HEAD:
                    self.drop(sub, "head-too-large")
                return
            status_line = sub.buf[: sub.buf.find(b"\r\n")]
            rest = sub.buf[end + 4 :]
            sub.buf = b""
            if b" 200 " not in status_line + b" ":
                self.drop(sub, status_line.decode("latin-1")[:40])
                return
            sub.state = STREAM
            op = self.connecting
            if op is not None:
                op.inflight -= 1
                op.opened += 1
                op.t_last = max(op.t_last, stamp)
                op.latencies.append(stamp - sub.t_start)
            data = rest
        if self.armed and data:
            self.scan(sub, data, stamp, fallback)

    def lost(self, sub: Sub, reason: str) -> None:
        if sub.state == STREAM:
            self.closed_by_server += 1
            self.forget(sub)
        else:
            self.drop(sub, reason)

    def scan(self, sub: Sub, data: bytes, stamp: int, fallback: bool) -> None:
        tail = sub.tail
        blob = tail + data if tail else data
        seen_upto = len(tail)
        armed = self.armed
        start = 0
        while True:
            i = blob.find(MARKER_PREFIX, start)
            if i < 0 or i + MARKER_LEN > len(blob):
                break
            if i + MARKER_LEN > seen_upto:
                stamps = armed.get(blob[i : i + MARKER_LEN])
                if stamps is not None:
                    stamps.append(stamp)
                    self.armed_fallbacks += fallback
            start = i + MARKER_LEN
        sub.tail = blob[-(MARKER_LEN - 1) :]

    # --- timing ---------------------------------------------------------------------

    def arm(self, markers: dict[str, str]) -> None:
        per_path = Counter(s.path for s in self.subs.values() if s.state == STREAM)
        expected: dict[str, int] = {}
        for mark, path in markers.items():
            key = mark.encode()
            self.armed[key] = []
            self.expected[key] = expected[mark] = per_path.get(path, 0)
        for sub in self.subs.values():
            sub.tail = b""
        self.conn.send({"expected": expected})

    def progress_wait(self) -> None:
        assert self.wait_deadline is not None
        done = all(len(self.armed[m]) >= n for m, n in self.expected.items())
        if not done and time.monotonic() < self.wait_deadline:
            return
        arrivals = {m.decode(): stamps for m, stamps in self.armed.items()}
        missing = {
            m.decode(): n - len(self.armed[m])
            for m, n in self.expected.items()
            if len(self.armed[m]) < n
        }
        self.armed = {}
        self.expected = {}
        self.wait_deadline = None
        self.conn.send(
            {"arrivals": arrivals, "missing": missing, "fallbacks": self.armed_fallbacks}
        )
        self.armed_fallbacks = 0

    # --- bookkeeping ----------------------------------------------------------------

    def open_count(self) -> int:
        return sum(1 for s in self.subs.values() if s.state == STREAM)

    def close_all(self) -> int:
        subs = list(self.subs.values())
        for sub in subs:
            self.forget(sub)
        return len(subs)

    def status(self) -> dict[str, Any]:
        return {
            "open": self.open_count(),
            "closed_by_server": self.closed_by_server,
            "stamp_fallbacks": self.stamp_fallbacks,
            "cpu_ns": time.process_time_ns(),
        }


def worker_main(conn: Connection, index: int, core: int | None, rt_priority: int) -> None:
    pin(core)
    if rt_priority:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
    raise_nofile()
    try:
        Worker(conn, index).run()
    finally:
        conn.close()


class ClientPool:
    """The parent's handle on the worker processes; every call has a deadline."""

    def __init__(self, procs: int, core: int | None, rt_priority: int = 0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for index in range(procs):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=worker_main,
                args=(child, index, core, rt_priority),
                name=f"bench-client-{index}",
            )
            process.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def cpu_ns(self) -> int:
        """CPU time the workers have used: well under the wall time means they kept up."""
        return sum(cpu_ns(pid) for pid in self.pids)

    def _call(self, commands: list[tuple[str, dict[str, Any]]], timeout: float) -> list[Any]:
        for conn, command in zip(self.conns, commands, strict=True):
            conn.send(command)
        deadline = time.monotonic() + timeout
        replies = []
        for conn in self.conns:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load client did not answer {commands[0][0]} in {timeout} s")
            replies.append(conn.recv())
        return replies

    def _same(self, name: str, args: dict[str, Any], timeout: float) -> list[Any]:
        return self._call([(name, args)] * len(self.conns), timeout)

    def connect(self, port: int, paths: list[str], inflight: int, timeout: float) -> dict[str, Any]:
        """Open one stream per path, split over the workers; the aggregate outcome."""
        n = len(self.conns)
        per_worker = max(1, inflight // n)
        commands = [
            (
                "connect",
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "paths": paths[i::n],
                    "inflight": per_worker,
                    "timeout": timeout,
                },
            )
            for i in range(n)
        ]
        replies = self._call(commands, timeout + 10)
        firsts = [r["t_first"] for r in replies if r["t_first"]]
        lasts = [r["t_last"] for r in replies if r["t_last"]]
        errors: Counter[str] = Counter()
        for r in replies:
            errors.update(r["errors"])
        p99s = [r["latency_p99_ns"] for r in replies if r["latency_p99_ns"] is not None]
        return {
            "requested": len(paths),
            "opened": sum(r["opened"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": dict(errors),
            "t_first": min(firsts) if firsts else 0,
            "t_last": max(lasts) if lasts else 0,
            "latency_p99_ms_max_worker": max(p99s) / 1e6 if p99s else None,
            "client_cpu_ms": sum(r["cpu_ns"] for r in replies) / 1e6,
            "open": sum(r["open"] for r in replies),
        }

    def arm(self, markers: dict[str, str]) -> dict[str, int]:
        """Start timing ``markers`` ({marker: path}); subscribers expected per marker."""
        replies = self._same("arm", {"markers": markers}, 30)
        expected: Counter[str] = Counter()
        for r in replies:
            expected.update(r["expected"])
        return dict(expected)

    def wait(self, timeout: float) -> tuple[dict[str, list[int]], dict[str, int], int]:
        """Arrival stamps per marker, how many subscribers each marker missed, and how
        many arrivals carried no kernel stamp (timed by the client's clock instead)."""
        replies = self._same("wait", {"timeout": timeout}, timeout + 30)
        arrivals: dict[str, list[int]] = {}
        missing: Counter[str] = Counter()
        for r in replies:
            for mark, stamps in r["arrivals"].items():
                arrivals.setdefault(mark, []).extend(stamps)
            missing.update(r["missing"])
        return arrivals, dict(missing), sum(r["fallbacks"] for r in replies)

    def close(self) -> int:
        return sum(r["closed"] for r in self._same("close", {}, 60))

    def status(self) -> dict[str, int]:
        replies = self._same("status", {}, 30)
        return {
            key: sum(r[key] for r in replies)
            for key in ("open", "closed_by_server", "stamp_fallbacks")
        }

    def shutdown(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit", {}))
        for process in self.procs:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for conn in self.conns:
            conn.close()
