"""Helpers every bench process shares: limits, pinning, /proc readings, the status payload.

All times that cross a process boundary are CLOCK_REALTIME nanoseconds
(``time.time_ns()``), the clock the kernel's ``SO_TIMESTAMPNS`` receive stamps use.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"

#: Markers are fixed-width ASCII that JSON never escapes: ``BMK:<channel>:<seq>``.
MARKER_PREFIX = b"BMK:"
MARKER_LEN = len(b"BMK:000000:000000")

#: File descriptors each bench process asks for (10,000 viewers need about 20,000).
NOFILE = 65_536


def marker(channel_index: int, seq: int) -> str:
    return f"BMK:{channel_index:06d}:{seq:06d}"


def raise_nofile(want: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as allowed; the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, OSError):
        # Not privileged: the hard limit is the ceiling.
        target = min(target, hard) if hard != resource.RLIM_INFINITY else target
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(core: int | None, nice: int = -20) -> None:
    """Run this process on ``core`` at niceness ``nice`` (as far as allowed)."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def status_doc(run_id: str, seq: int, mark: str) -> dict[str, Any]:
    """A realistic ExecutionStatus (about 600 bytes) that changes with every ``seq``."""
    nodes = ("fetch-inputs", "validate", "transform", "render", "publish")
    done = seq % len(nodes)
    return {
        "id": run_id,
        "status": "running",
        "progress": round(done / len(nodes), 3),
        "currentNode": nodes[done],
        "createdAt": "2026-01-01T00:00:00Z",
        "startedAt": "2026-01-01T00:00:02Z",
        "nodes": [
            {
                "id": name,
                "status": "completed" if i < done else "running" if i == done else "pending",
            }
            for i, name in enumerate(nodes)
        ],
        "outputs": None,
        "errorMessage": None,
        "benchMarker": mark,
        "step": seq,
    }


def status_json(run_id: str, seq: int, mark: str) -> bytes:
    return json.dumps(status_doc(run_id, seq, mark), separators=(",", ":")).encode()


# --- /proc readings ---------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time (user + system, all threads) of another process, in nanoseconds."""
    clock = ((~pid) << 3) | 2  # CPUCLOCK_SCHED, process-wide (clock_getcpuclockid)
    return time.clock_gettime_ns(clock)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


# --- tiny blocking HTTP for control calls -----------------------------------------


class Http:
    """One keep-alive connection to a loopback control endpoint."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self._port = port
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self._port, timeout=self._timeout
                )
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                response = self._conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, data = self.request(method, path, body, headers)
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def wait_http(port: int, path: str, timeout: float, ok: tuple[int, ...] = (200,)) -> None:
    """Wait until GET path answers with one of ``ok`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        client = Http(port, timeout=2.0)
        try:
            status, _ = client.request("GET", path)
            if status in ok:
                return
        except OSError as error:
            last = error
        finally:
            client.close()
        time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port}{path} not ready after {timeout:g} s ({last!r})")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def busy_ns() -> int:
    """CPU time all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) * _TICK_NS


class Machine:
    """How much CPU processes other than ours use: other developers' test runs share
    these two cores, and a round they disturbed should be recognisable as such."""

    def __init__(self) -> None:
        self.ours: set[int] = {os.getpid()}

    def _ours_ns(self) -> int:
        total = 0
        for pid in list(self.ours):
            try:
                total += cpu_ns(pid)
            except OSError:
                self.ours.discard(pid)
        return total

    def snapshot(self) -> tuple[int, int]:
        return busy_ns(), self._ours_ns()

    @staticmethod
    def foreign_ms(a: tuple[int, int], b: tuple[int, int]) -> float:
        """CPU milliseconds others used between two snapshots (10 ms resolution)."""
        return round(max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / 1e6), 1)

    def wait_quiet(self, max_wait: float, share: float = 0.1, window: float = 0.5) -> float:
        """Wait (at most ``max_wait`` s) for a ``window`` in which others used under
        ``share`` of one core; the seconds waited."""
        started = time.monotonic()
        while True:
            a = self.snapshot()
            time.sleep(window)
            if self.foreign_ms(a, self.snapshot()) < share * window * 1000:
                break
            if time.monotonic() - started >= max_wait:
                break
        return round(time.monotonic() - started, 1)


def own_autogroup(nice: int = -20) -> str:
    """Give the bench's processes their own scheduler autogroup at ``nice``.

    With ``kernel.sched_autogroup_enabled`` a process's niceness counts only inside its
    session's group: the groups of other sessions (other developers' test runs) share
    the CPU equally with ours whatever our niceness. A new session is a new group; its
    nice is what weighs against theirs. Children inherit the session.
    """
    with contextlib.suppress(OSError):
        os.setsid()  # fails for a group leader: the current session's group is used
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
        with open("/proc/self/autogroup") as f:
            return f.read().strip()
    except OSError as error:
        return f"unchanged ({type(error).__name__})"
