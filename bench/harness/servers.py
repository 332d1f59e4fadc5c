"""The processes under test, each started pinned to the server core on a loopback port.

A ``Target`` knows how to start and stop its server, which processes its CPU and RSS
are read from, the stream path of a channel, how to make a channel change, and when
the fan-out of that change started (t0):

- ``bridge``: the real ``python -m bridge serve``; a change is made at the scripted
  upstream, t0 is when the upstream first served the changed status to the bridge.
- ``nchan``: nginx + nchan; a change is an HTTP POST to the publisher location, t0 the
  moment just before the POST was sent.
- ``floor``: ``bench.harness.floor``, the plain asyncio write loop; same as nchan.
- ``naive``: ``bench.harness.naive``, every viewer polls the upstream; t0 is the moment the
  upstream changed (there is no single moment the server "received" it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.harness.common import ROOT, Http, children, cpu_ns, rss_kib, status_json, wait_http

PYTHON = sys.executable
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """One child process we own: started with a log file, stopped by its pid only."""

    def __init__(
        self, name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        code = self.popen.poll()
        if code is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {code}:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


#: Niceness of every bench process (servers, upstream, client): other developers' test
#: runs share these cores, and at -20 they get little of them while the bench runs.
NICE = -20
#: Set by ``--rt``: run the servers under SCHED_FIFO at this priority (0: no).
RT_PRIORITY = 0


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """``argv`` on one core (``taskset``) at the bench's niceness (``nice``), or real-time."""
    if RT_PRIORITY:
        argv = ["chrt", "-f", str(RT_PRIORITY), *argv]
    elif NICE:
        argv = ["nice", "-n", str(NICE), *argv]
    return argv if core is None else ["taskset", "-c", str(core), *argv]


class Upstream:
    """The scripted legacy API (bench.harness.upstream), pinned to the client core."""

    def __init__(self, core: int | None, logs: Path) -> None:
        self.port = free_port()
        self.proc = Process(
            "upstream",
            pinned(core, [PYTHON, "-m", "bench.harness.upstream", "--port", str(self.port)]),
            logs,
        )
        wait_http(self.port, "/control/health", 20)
        self.http = Http(self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    def set(self, changes: dict[str, tuple[int, str]]) -> dict[str, int]:
        reply = self.http.json("POST", "/control/set", {"changes": changes})
        return {k: int(v) for k, v in reply["changed_at"].items()}

    def served(self, runs: dict[str, str]) -> dict[str, int | None]:
        reply = self.http.json("POST", "/control/served", {"runs": runs})
        return dict(reply["served"])

    def requests(
        self, runs: list[str], since: int, until: int, times: bool = False
    ) -> tuple[dict[str, int], dict[str, list[int]]]:
        reply = self.http.json(
            "POST",
            "/control/requests",
            {"runs": runs, "since": since, "until": until, "times": times},
        )
        return dict(reply["counts"]), dict(reply["times"])

    def stop(self) -> None:
        self.http.close()
        self.proc.stop()


class Target:
    name = "target"
    #: True when changes reach the server by polling the upstream.
    polls = False

    def __init__(self, core: int | None, logs: Path) -> None:
        self.core = core
        self.logs = logs
        self.port = free_port()
        self.proc: Process | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]

    def proc_signal(self, sig: int) -> None:
        for pid in self.pids():
            os.kill(pid, sig)

    def cpu_ns(self) -> int:
        return sum(cpu_ns(pid) for pid in self.pids())

    def rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids())

    def sub_path(self, channel: str) -> str:
        return f"/sub/{channel}"

    def change(self, changes: dict[str, tuple[int, str]]) -> dict[str, int]:
        """Make each channel change to (seq, marker); the change time of each."""
        raise NotImplementedError

    def fanout_start(
        self, changes: dict[str, str], changed_at: dict[str, int]
    ) -> dict[str, int | None]:
        """t0 of each channel's fan-out, given {channel: marker} and the change times."""
        return {channel: changed_at.get(channel) for channel in changes}


class Publisher(Target):
    """A server told about changes by HTTP POSTs (nchan, the floor).

    All the changes of one call go out at once, pipelined on one connection, as the
    bridge gets the changes of runs polled at the same tick at once: t0 of each is the
    moment just before that one write.
    """

    pub_prefix = "/pub/"

    def change(self, changes: dict[str, tuple[int, str]]) -> dict[str, int]:
        requests = []
        for channel, (seq, mark) in changes.items():
            body = status_json(channel, seq, mark)
            requests.append(
                f"POST {self.pub_prefix}{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nX-EventSource-Event: progress\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            t0 = time.time_ns()
            sock.sendall(b"".join(requests))
            statuses = read_responses(sock, len(requests))
        bad = [s for s in statuses if s not in (200, 201, 202)]
        if bad:
            raise RuntimeError(f"{self.name}: publish answered {bad[:5]}")
        return dict.fromkeys(changes, t0)


def read_responses(sock: socket.socket, count: int) -> list[int]:
    """The status codes of ``count`` HTTP/1.1 responses with Content-Length bodies."""
    buffer = b""
    statuses: list[int] = []
    while len(statuses) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(buffer) >= end + 4 + length:
                statuses.append(int(head.split(" ", 2)[1]))
                buffer = buffer[end + 4 + length :]
                continue
        chunk = sock.recv(65536)  # the socket's timeout bounds every wait
        if not chunk:
            raise ConnectionError(f"closed after {len(statuses)} of {count} responses")
        buffer += chunk
    return statuses


class Floor(Publisher):
    name = "floor"

    def start(self) -> None:
        argv = [PYTHON, "-m", "bench.harness.floor", "--port", str(self.port)]
        self.proc = Process(self.name, pinned(self.core, argv), self.logs)
        wait_http(self.port, "/healthz", 20)


class AsgiProbe(Publisher):
    """Hypercorn + a raw ASGI app, one fan-out loop per channel (``bench.harness.asgi_fanout``)."""

    def __init__(self, core: int | None, logs: Path, mode: str) -> None:
        super().__init__(core, logs)
        self.mode = mode
        self.name = "asgi-send" if mode == "send" else "asgi-transport"

    def start(self) -> None:
        argv = [
            PYTHON,
            "-m",
            "bench.harness.asgi_fanout",
            "--port",
            str(self.port),
            "--mode",
            self.mode,
        ]
        self.proc = Process(self.name, pinned(self.core, argv), self.logs)
        wait_http(self.port, "/healthz", 20)


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
worker_rlimit_nofile 65536;
load_module {module};
events {{
    worker_connections 32768;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    nchan_shared_memory_size 256m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /healthz {{ return 200 '{{"status":"ok"}}'; }}
        location ~ ^/sub/([A-Za-z0-9_-]+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}
        location ~ ^/pub/([A-Za-z0-9_-]+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 16;
            nchan_message_timeout 120s;
            nchan_eventsource_event progress;
        }}
    }}
}}
"""


def ensure_nchan(log: list[str]) -> bool:
    """nginx and the nchan module present, installing the Debian packages if not."""
    if shutil.which("nginx") and NCHAN_MODULE.exists():
        return True
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        log.append("nginx/nchan missing and cannot be installed (no apt-get or not root)")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "nginx", "libnginx-mod-nchan"],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
        if result.returncode != 0:
            log.append(f"{' '.join(argv)} failed: {result.stderr.decode()[-500:]}")
            return False
    # The package starts a system nginx on port 80; the bench starts its own.
    subprocess.run(["service", "nginx", "stop"], capture_output=True, timeout=60, check=False)
    return shutil.which("nginx") is not None and NCHAN_MODULE.exists()


def nginx_version() -> str:
    result = subprocess.run(["nginx", "-v"], capture_output=True, timeout=10, check=False)
    return result.stderr.decode().strip().split("/")[-1]


class Nchan(Publisher):
    name = "nchan"

    def start(self) -> None:
        run = (self.logs / "nginx").resolve()
        run.mkdir(parents=True, exist_ok=True)
        conf = run / "nginx.conf"
        conf.write_text(NGINX_CONF.format(run=run, module=NCHAN_MODULE, port=self.port))
        argv = ["nginx", "-c", str(conf), "-p", str(run)]
        self.proc = Process(self.name, pinned(self.core, argv), self.logs)
        wait_http(self.port, "/healthz", 20)
        deadline = time.monotonic() + 10
        while not children(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def pids(self) -> list[int]:
        # The worker does all the work; the master only watches it.
        assert self.proc is not None
        return children(self.proc.pid) or [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None:
            # SIGTERM is nginx's fast shutdown (SIGQUIT would wait for the streams).
            super().stop()


class Bridge(Target):
    name = "bridge"
    polls = True

    def __init__(
        self,
        core: int | None,
        logs: Path,
        upstream: Upstream,
        interval: float,
        extra_env: dict[str, str],
    ) -> None:
        super().__init__(core, logs)
        self.upstream = upstream
        self.interval = interval
        self.extra_env = extra_env
        self.gc_log = (logs / "gc-bridge.json").resolve()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.gc_log.unlink()
        pythonpath = os.pathsep.join(
            p
            for p in (str(ROOT / "bench" / "harness" / "gcprobe"), os.environ.get("PYTHONPATH"))
            if p
        )
        env = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "BENCH_GC_LOG": str(self.gc_log),
            "BRIDGE_UPSTREAM_URL": self.upstream.url,
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_POLL_INTERVAL": f"{self.interval:g}",
            # Pings and timeouts would land in the middle of rounds: out of the way.
            "BRIDGE_PING_INTERVAL": "3600",
            "BRIDGE_STREAM_TIMEOUT": "7200",
            "BRIDGE_ACCESS_LOG": "false",
            # Every viewer comes from 127.0.0.1: the per-client cap would refuse the 65th.
            "BRIDGE_MAX_STREAMS": "100000",
            "BRIDGE_MAX_STREAMS_PER_CLIENT": "100000",
            "BRIDGE_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        argv = [PYTHON, "-m", "bridge", "serve"]
        self.proc = Process(self.name, pinned(self.core, argv), self.logs, env)
        try:
            wait_http(self.port, "/healthz", 30)
        except TimeoutError:
            self.proc.check()
            raise

    def sub_path(self, channel: str) -> str:
        return f"/v1/runs/{channel}/stream"

    def change(self, changes: dict[str, tuple[int, str]]) -> dict[str, int]:
        return self.upstream.set(changes)

    def fanout_start(
        self, changes: dict[str, str], changed_at: dict[str, int]
    ) -> dict[str, int | None]:
        return self.upstream.served(changes)


class Naive(Target):
    name = "naive"
    polls = True

    def __init__(self, core: int | None, logs: Path, upstream: Upstream, interval: float) -> None:
        super().__init__(core, logs)
        self.upstream = upstream
        self.interval = interval

    def start(self) -> None:
        argv = [
            PYTHON,
            "-m",
            "bench.harness.naive",
            "--port",
            str(self.port),
            "--upstream",
            self.upstream.url,
            "--interval",
            f"{self.interval:g}",
        ]
        self.proc = Process(self.name, pinned(self.core, argv), self.logs)
        wait_http(self.port, "/healthz", 20)

    def change(self, changes: dict[str, tuple[int, str]]) -> dict[str, int]:
        return self.upstream.set(changes)
