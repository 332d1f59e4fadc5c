"""The bridge behind a real nginx: deploy/nginx's configuration, and nginx's defaults.

Every test runs Debian's nginx (``NGINX`` overrides the binary) as its own non-daemon
process on loopback ports, with its prefix, temp directories, pid file and error log in
``tmp_path``, in front of ``python -m bridge serve`` (a real process, so the fast path is
the real one) polling the simulated legacy API. Without nginx these tests fail and say to
run scripts/install; they are never skipped.

What they pin down (deploy/nginx/README.md reports it):

- deploy/nginx/sse-bridge.conf, as shipped (only ports, the bridge's address and the
  certificate substituted): events arrive live, unaltered, the run ends with ``complete``,
  the bridge serves the stream on its fast path, the upstream connection is kept alive
  and reused, resume by Last-Event-ID works, and with BRIDGE_TRUST_FORWARDED_FOR the
  per-client cap counts each viewer's own address; the same over TLS + HTTP/2 (client:
  the ``h2`` library over ALPN ``h2``).
- nginx's defaults (a bare ``proxy_pass``: HTTP/1.0 to the bridge, buffering on): still
  live and clean, because nginx honours the bridge's ``X-Accel-Buffering: no``; the bridge
  takes its ASGI path (HTTP/1.0) and each request costs a new upstream connection; every
  viewer counts as nginx's one address for the per-client cap.
- nginx's defaults with ``proxy_ignore_headers X-Accel-Buffering`` (what a location that
  ignores the header gets): not live. Nothing reaches the viewer, not even the response
  head, until a 4 KiB proxy buffer is full or the run has ended; then events come in
  batches. Late, but never corrupted.
- a ``proxy_read_timeout`` shorter than the bridge's silences (nginx's default is 60 s)
  cuts a stream in the middle of a run; pings more often than it keep the stream open.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.runs import ScriptedRun
from bridge.tasks import cancel_and_wait
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from tests.certificates import Certificate, make_certificate
from tests.support import SseStream, serve_process, sse, wait_for

pytestmark = pytest.mark.nginx

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
NGINX = os.environ.get("NGINX")
#: Bound of every wait for nginx or openssl to start, answer or stop.
START_TIMEOUT = 15.0
#: The longest an event may take from the run's change to the viewer through nginx
#: (the bridge polls every 50 ms here): far above that, far below "at the end".
LIVE = 5.0
#: How long a buffered stream is watched for an event that must not come.
HELD = 2.0

BRIDGE_ENV = {
    "BRIDGE_POLL_INTERVAL": "0.05",
    # Pings would be bytes on the wire in the middle of what is measured.
    "BRIDGE_PING_INTERVAL": "120",
    "BRIDGE_ACCESS_LOG": "false",
    "BRIDGE_LOG_LEVEL": "WARNING",
}

#: Where the tests' own requests to the bridge come from (metrics, a second viewer): not
#: 127.0.0.1, so that the bridge's connections from nginx can be told apart.
DIRECT_ADDRESS = "127.0.0.9"


def nginx_path() -> str:
    # Debian puts nginx in /usr/sbin, which not every user has on PATH.
    path = (
        shutil.which(NGINX) if NGINX else shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    )
    if path is None:
        pytest.fail(
            f"nginx is missing ({NGINX or 'nginx'}): run scripts/install, which installs "
            "Debian's nginx package, or set NGINX to an nginx binary",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("nginx-tls"), "nginx")


# --- nginx configurations -------------------------------------------------------------------

#: The main configuration around a site: one worker, non-daemon, everything in ``run``.
MAIN_CONF = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {run}/nginx.pid;
error_log {run}/error.log notice;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    include {site};
}}
"""

#: nginx's defaults: a bare proxy_pass (HTTP/1.0, "Connection: close", buffering on).
DEFAULT_SITE = """\
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{bridge};{extra}
    }}
}}
"""


#: What an http block may already say, which sse-bridge-proxy.conf must override: compress
#: event streams and JSON (Debian's nginx.conf has `gzip on`, and some widen gzip_types),
#: and cache every answer for minutes.
HOSTILE_HTTP_LEVEL = """\
gzip on;
gzip_types text/event-stream application/json;
gzip_proxied any;
gzip_min_length 0;
proxy_cache_path {run}/cache keys_zone=everything:1m;
proxy_cache everything;
proxy_cache_valid any 10m;
proxy_ignore_headers Cache-Control Expires Set-Cookie;
"""


def documented_site(
    run: Path, bridge_port: int, http_port: int, https_port: int, certificate: Certificate
) -> Path:
    """deploy/nginx/sse-bridge.conf as shipped, its addresses and certificate replaced,
    under an http level it must hold its own against (HOSTILE_HTTP_LEVEL)."""
    text = HOSTILE_HTTP_LEVEL.format(run=run) + (DEPLOY / "sse-bridge.conf").read_text()
    for old, new in (
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{bridge_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("/etc/ssl/certs/sse.example.com.pem", str(certificate.certfile)),
        ("/etc/ssl/private/sse.example.com.key", str(certificate.keyfile)),
    ):
        # The test must run the file users copy: if it changes shape, say so here.
        assert text.count(old) == 1, f"deploy/nginx/sse-bridge.conf: {old!r} is not there once"
        text = text.replace(old, new)
    # Its `include snippets/sse-bridge-proxy.conf` is relative to nginx.conf's directory,
    # as /etc/nginx/snippets/ is on Debian.
    (run / "snippets").mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / "sse-bridge-proxy.conf", run / "snippets" / "sse-bridge-proxy.conf")
    site = run / "sse-bridge.conf"
    site.write_text(text)
    return site


def default_site(run: Path, bridge_port: int, http_port: int, extra: str = "") -> Path:
    site = run / "default-site.conf"
    site.write_text(DEFAULT_SITE.format(port=http_port, bridge=bridge_port, extra=extra))
    return site


# --- nginx, run for one test ----------------------------------------------------------------


@dataclass
class Nginx:
    url: str
    run: Path
    proc: asyncio.subprocess.Process

    def error_log(self) -> str:
        path = self.run / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@asynccontextmanager
async def running_nginx(run: Path, site: Path, http_port: int) -> AsyncIterator[Nginx]:
    """nginx serving ``site`` until the block ends; ready when it proxies /healthz."""
    binary = nginx_path()
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run / name).mkdir(parents=True, exist_ok=True)
    # As root, nginx would run its worker as `nobody`, which cannot write the temp
    # directories under tmp_path: the worker runs as the current user instead (as any
    # user but root, nginx ignores the directive, with a warning).
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = run / "nginx.conf"
    conf.write_text(MAIN_CONF.format(user=user, run=run, site=site))
    log = (run / "nginx.out").open("wb")
    # -e: the error log from the very start, not /var/log/nginx (before the config is read).
    proc = await asyncio.create_subprocess_exec(
        binary, "-p", f"{run}/", "-c", str(conf), "-e", str(run / "error.log"),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    nginx = Nginx(f"http://127.0.0.1:{http_port}", run, proc)
    try:
        async with asyncio.timeout(START_TIMEOUT), aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    raise AssertionError(f"nginx exited at start:\n{nginx.error_log()[-2000:]}")
                try:
                    async with http.get(nginx.url + "/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        yield nginx
        for level in ("[emerg]", "[alert]", "[crit]"):
            assert level not in nginx.error_log(), nginx.error_log()[-2000:]
    finally:
        if proc.returncode is None:
            # SIGTERM is nginx's fast shutdown; SIGQUIT would wait for open streams.
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), START_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


# --- what the bridge sees -------------------------------------------------------------------


def direct_session() -> aiohttp.ClientSession:
    """A session to the bridge itself, from DIRECT_ADDRESS (not counted as nginx's)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(DIRECT_ADDRESS, 0)))


async def bridge_metric(bridge_url: str, name: str, **labels: str) -> float | None:
    async with direct_session() as http, http.get(bridge_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


async def wait_for_metric(bridge_url: str, name: str, value: float, **labels: str) -> None:
    async with asyncio.timeout(LIVE):
        while await bridge_metric(bridge_url, name, **labels) != value:
            await asyncio.sleep(0.02)


def upstream_connections(bridge_port: int) -> list[int]:
    """The client ports of the bridge's established connections from 127.0.0.1 (nginx's).

    Read from /proc/net/tcp: "local remote state" in hex, 0100007F being 127.0.0.1 and 01
    ESTABLISHED. The tests' own requests come from DIRECT_ADDRESS and are left out.
    """
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        local_port = int(local.split(":")[1], 16)
        remote_ip, remote_port = remote.split(":")
        if local_port == bridge_port and remote_ip == "0100007F" and state == "01":
            ports.append(int(remote_port, 16))
    return sorted(ports)


async def settled_connections(bridge_port: int, expected: int) -> list[int]:
    """``upstream_connections`` once there are ``expected`` of them (closes take a moment)."""
    await wait_for(lambda: len(upstream_connections(bridge_port)) == expected, timeout=LIVE)
    return upstream_connections(bridge_port)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# --- the stream, as the viewer gets it ------------------------------------------------------


async def follow_live(stream: SseStream, run: ScriptedRun) -> None:
    """Each status reaches the viewer while the run is still going, in order, then the end.

    The first ``progress`` must come before the run is advanced at all: a proxy that held
    the stream back until the end would fail here, since the end never comes by itself.
    """
    first = await stream.next_named("progress", timeout=LIVE)
    assert json.loads(first.data) == run.statuses[0]
    for expected in run.statuses[1:]:
        run.advance()
        event = await stream.next_named("progress", "complete", timeout=LIVE)
        assert json.loads(event.data) == expected
    assert event.event == "complete"
    assert await stream.rest(timeout=LIVE) == [], "the stream went on after complete"


def clean_events(body: bytes) -> list[ParsedEvent]:
    """The events of ``body``, which must hold nothing but the lines the bridge writes.

    The bridge ends lines with LF only, so a CR is HTTP framing that leaked into the body,
    and a line that is not a field it writes (a bare ``1a3``: a chunk size) is corruption.
    """
    assert b"\r" not in body, body[:400]
    for line in body.decode().split("\n"):
        assert line == "" or line.startswith(":") or re.match(r"(retry|event|id|data): ", line), (
            repr(line)
        )
    assert body.endswith(b"\n\n"), body[-200:]
    return EventStreamParser().feed(body)


def assert_whole_run(body: bytes, run: ScriptedRun) -> list[ParsedEvent]:
    """The body carries exactly the run's statuses, as JSON, ending with ``complete``."""
    events = [e for e in clean_events(body) if e.event != "ping"]
    assert [json.loads(e.data) for e in events] == run.statuses
    assert [e.event for e in events] == ["progress"] * (len(run.statuses) - 1) + ["complete"]
    assert all(e.has_id for e in events)
    return events


# --- the documented configuration -----------------------------------------------------------


async def test_documented_config_streams_live_on_the_fast_path_with_keepalive(
    legacy: LegacyApi, certificate: Certificate, tmp_path: Path
) -> None:
    run = legacy.scripted("doc-live")
    http_port, https_port = free_port(), free_port()
    async with serve_process(legacy.url, BRIDGE_ENV) as (_, bridge_url):
        bridge_port = port_of(bridge_url)
        site = documented_site(tmp_path, bridge_port, http_port, https_port, certificate)
        async with running_nginx(tmp_path, site, http_port) as nginx:
            # Asked before the run moves, and again after: an answer nginx cached would
            # still say "queued" (the http level caches everything; proxy_cache off wins).
            status_url = f"{nginx.url}/v1/runs/doc-live"
            async with aiohttp.ClientSession() as http, http.get(status_url) as response:
                assert response.status == 200
                assert (await response.json())["status"] == "queued"

            # aiohttp offers gzip (Accept-Encoding): the snippet's `gzip off` must win.
            async with sse(f"{nginx.url}/v1/runs/doc-live/stream") as stream:
                assert stream.status == 200
                headers = stream.response.headers
                assert headers["Content-Type"].startswith("text/event-stream")
                assert headers["Cache-Control"] == "no-cache"
                # nginx keeps X-Accel-* to itself (proxy_hide_header's default).
                assert "X-Accel-Buffering" not in headers
                assert "Content-Encoding" not in headers
                assert headers.get("Transfer-Encoding") == "chunked"

                # nginx speaks HTTP/1.1 to the bridge: the stream is on the fast path.
                await wait_for_metric(bridge_url, "bridge_fast_path_streams", 1.0)
                await follow_live(stream, run)
                assert_whole_run(bytes(stream.raw), run)
            assert await bridge_metric(
                bridge_url, "bridge_fast_path_fallbacks_total", reason="http_version"
            ) in (None, 0.0)

            # The stream ended where nginx's HTTP/1.1 parser expected (the fast path's chunk
            # framing is right), so nginx keeps the connection and sends the next request
            # down the same one: same client port at the bridge.
            kept = await settled_connections(bridge_port, 1)
            async with aiohttp.ClientSession() as http, http.get(status_url) as response:
                assert response.status == 200
                assert "Content-Encoding" not in response.headers
                assert (await response.json())["status"] == "completed"
            assert await settled_connections(bridge_port, 1) == kept

            # /metrics is for the scraper: nginx answers 403 to anyone but 127.0.0.1.
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            ) as http:
                async with http.get(f"{nginx.url}/metrics") as response:
                    assert response.status == 403


# --- nginx's defaults -----------------------------------------------------------------------


async def test_nginx_defaults_stay_live_because_nginx_honours_x_accel_buffering(
    legacy: LegacyApi, tmp_path: Path
) -> None:
    run = legacy.scripted("def-live")
    http_port = free_port()
    async with serve_process(legacy.url, BRIDGE_ENV) as (_, bridge_url):
        bridge_port = port_of(bridge_url)
        site = default_site(tmp_path, bridge_port, http_port)
        async with running_nginx(tmp_path, site, http_port) as nginx:
            async with sse(f"{nginx.url}/v1/runs/def-live/stream") as stream:
                assert stream.status == 200
                assert "X-Accel-Buffering" not in stream.response.headers
                # Buffering is on, but the bridge's X-Accel-Buffering: no turns it off for
                # this response: the first event comes before the run moves at all.
                await follow_live(stream, run)
                # HTTP/1.0 from nginx: a close-delimited body from the bridge's ASGI path,
                # re-framed by nginx for the viewer, nothing of either framing in the body.
                assert_whole_run(bytes(stream.raw), run)
            assert (
                await bridge_metric(
                    bridge_url, "bridge_fast_path_fallbacks_total", reason="http_version"
                )
                == 1.0
            )
            # "Connection: close": nothing is kept, the next request opens a new connection.
            assert await settled_connections(bridge_port, 0) == []


@dataclass
class Arrivals:
    """What reached a viewer, and when (loop time): the response head, then each read."""

    head_at: float | None = None
    status: int | None = None
    reads: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.reads)


async def record(url: str, arrivals: Arrivals) -> None:
    """One stream request, every arrival timed; returns at the end of the body."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        async with http.get(
            url,
            headers={"Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            arrivals.head_at = loop.time()
            arrivals.status = response.status
            async for data in response.content.iter_any():
                arrivals.reads.append((loop.time(), data))


async def test_nginx_defaults_ignoring_x_accel_buffering_hold_events_back_in_batches(
    legacy: LegacyApi, tmp_path: Path
) -> None:
    # Fourteen statuses of ~550 bytes of SSE each: more than one proxy buffer (4 KiB).
    run = legacy.scripted("def-held", nodes=tuple(f"node-{i}" for i in range(12)))
    http_port = free_port()
    loop = asyncio.get_running_loop()
    async with serve_process(legacy.url, BRIDGE_ENV) as (_, bridge_url):
        bridge_port = port_of(bridge_url)
        # What a location gets when it ignores the bridge's header (as some setups do, or a
        # proxy that does not know it): nginx's own default, proxy_buffering on.
        extra = "\n        proxy_ignore_headers X-Accel-Buffering;"
        site = default_site(tmp_path, bridge_port, http_port, extra)
        async with running_nginx(tmp_path, site, http_port) as nginx:
            arrivals = Arrivals()
            task = asyncio.create_task(record(f"{nginx.url}/v1/runs/def-held/stream", arrivals))
            try:
                # The bridge has answered and written the first event (a stream counts as
                # opened once its first status is on its way) ...
                await wait_for_metric(bridge_url, "bridge_streams_opened_total", 1.0)
                # ... and the viewer gets nothing, not even the response head: nginx holds
                # it with the body (postpone_output) until a buffer is full.
                await asyncio.sleep(HELD)
                assert arrivals.head_at is None and not arrivals.reads
                changed = []
                for _ in run.statuses[1:]:
                    run.advance()
                    changed.append(loop.time())
                    await asyncio.sleep(0.2)
                async with asyncio.timeout(LIVE):
                    await task
            finally:
                await cancel_and_wait(task)
        assert arrivals.status == 200
        # Not live: the first event reached the viewer only after several later changes had
        # happened, in one read with the events that had piled up behind it.
        first_at, first_read = arrivals.reads[0]
        assert first_at > changed[2]
        assert len(EventStreamParser().feed(first_read)) > 3
        # Late, but whole and uncorrupted, ending with complete.
        assert_whole_run(arrivals.body, run)


@pytest.mark.parametrize("ping", ["0.3", "120"], ids=["pings-inside", "pings-outside"])
async def test_a_stream_quieter_than_proxy_read_timeout_is_cut(
    legacy: LegacyApi, tmp_path: Path, ping: str
) -> None:
    # proxy_read_timeout 1s stands in for nginx's default 60 s (the same cut, a minute
    # sooner): a bridge quieter than that between two writes loses its viewers mid-run.
    run = legacy.scripted("quiet")
    http_port = free_port()
    env = {**BRIDGE_ENV, "BRIDGE_PING_INTERVAL": ping}
    async with serve_process(legacy.url, env) as (_, bridge_url):
        extra = "\n        proxy_read_timeout 1s;"
        site = default_site(tmp_path, port_of(bridge_url), http_port, extra)
        async with running_nginx(tmp_path, site, http_port) as nginx:
            async with sse(f"{nginx.url}/v1/runs/quiet/stream") as stream:
                await stream.next_named("progress", timeout=LIVE)
                if ping == "120":
                    # Cut while the run goes on: the viewer's chunked body just stops
                    # (no last chunk), and EventSource would reconnect.
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await stream.next_event(timeout=LIVE)
                    assert "upstream timed out" in nginx.error_log()
                else:
                    # Pings more often than the timeout keep a quiet run's stream open.
                    with pytest.raises(TimeoutError):
                        await stream.next_named("progress", timeout=3 * HELD / 2)
                    for _ in run.statuses[1:]:
                        run.advance()
                    events = await stream.rest(timeout=LIVE)
                    assert [e.event for e in events if e.event != "ping"][-1] == "complete"
                    assert any(e.event == "ping" for e in stream.events)


# --- resume through nginx -------------------------------------------------------------------


@pytest.mark.parametrize("config", ["documented", "defaults"])
async def test_resume_by_last_event_id_through_nginx(
    legacy: LegacyApi, certificate: Certificate, tmp_path: Path, config: str
) -> None:
    run = legacy.scripted("resume")
    http_port = free_port()
    async with serve_process(legacy.url, BRIDGE_ENV) as (_, bridge_url):
        bridge_port = port_of(bridge_url)
        if config == "documented":
            site = documented_site(tmp_path, bridge_port, http_port, free_port(), certificate)
        else:
            site = default_site(tmp_path, bridge_port, http_port)
        async with running_nginx(tmp_path, site, http_port) as nginx:
            url = f"{nginx.url}/v1/runs/resume/stream"
            # A viewer on the bridge itself keeps the run polled while the resuming viewer
            # is away, so that there is something to miss.
            async with (
                direct_session() as direct,
                sse(f"{bridge_url}/v1/runs/resume/stream", session=direct) as keeper,
            ):
                await keeper.next_named("progress")
                async with sse(url) as first:
                    await first.next_named("progress", timeout=LIVE)
                    run.advance()
                    seen = await first.next_named("progress", timeout=LIVE)
                    assert json.loads(seen.data) == run.statuses[1]
                    assert json.loads((await keeper.next_named("progress")).data) == run.statuses[1]
                # Away: two changes happen.
                for expected in run.statuses[2:4]:
                    run.advance()
                    event = await keeper.next_named("progress")
                    assert json.loads(event.data) == expected

                async with sse(url, headers={"Last-Event-ID": seen.id}) as second:
                    assert second.status == 200
                    # The missed changes, replayed once each, then live again to the end.
                    for expected in run.statuses[2:4]:
                        event = await second.next_named("progress", timeout=LIVE)
                        assert json.loads(event.data) == expected
                    for expected in run.statuses[4:]:
                        run.advance()
                        event = await second.next_named("progress", "complete", timeout=LIVE)
                        assert json.loads(event.data) == expected
                    assert event.event == "complete"
                    assert await second.rest(timeout=LIVE) == []
                    events = [e for e in clean_events(bytes(second.raw)) if e.event != "ping"]
                    assert [json.loads(e.data) for e in events] == run.statuses[2:]
                    assert seen.id not in {e.id for e in events}


# --- the per-client cap behind nginx --------------------------------------------------------


def session_from(address: str) -> aiohttp.ClientSession:
    """A viewer on its own loopback address (all of 127/8 is this machine's)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def refused(http: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> Any:
    """A stream request that does not accept text/event-stream: the 429 and its JSON."""
    async with http.get(url, headers={"Accept": "application/json", **headers}) as response:
        assert response.status == 429, await response.text()
        assert response.headers["Content-Type"].startswith("application/json")
        assert int(response.headers["Retry-After"]) >= 1
        return await response.json()


@pytest.mark.parametrize("trust", ["true", "false"])
async def test_per_client_cap_counts_the_forwarded_client_only_when_trusted(
    legacy: LegacyApi, certificate: Certificate, tmp_path: Path, trust: str
) -> None:
    legacy.scripted("capped")
    http_port = free_port()
    env = {
        **BRIDGE_ENV,
        "BRIDGE_MAX_STREAMS_PER_CLIENT": "1",
        "BRIDGE_TRUST_FORWARDED_FOR": trust,
    }
    async with serve_process(legacy.url, env) as (_, bridge_url):
        site = documented_site(tmp_path, port_of(bridge_url), http_port, free_port(), certificate)
        async with running_nginx(tmp_path, site, http_port) as nginx:
            url = f"{nginx.url}/v1/runs/capped/stream"
            async with session_from("127.0.0.2") as alice, session_from("127.0.0.3") as bob:
                async with sse(url, session=alice) as first:
                    assert first.status == 200
                    await first.next_named("progress", timeout=LIVE)

                    # Alice's second stream is over her cap of one, whatever she claims:
                    # nginx appends her real address, and the bridge reads the last hop.
                    body = await refused(alice, url, {})
                    assert body["error"] == "too_many_streams"
                    await refused(alice, url, {"X-Forwarded-For": "203.0.113.7"})

                    if trust == "true":
                        # Bob is another client, though both come through nginx.
                        async with sse(url, session=bob) as other:
                            assert other.status == 200
                            await other.next_named("progress", timeout=LIVE)
                    else:
                        # Untrusted, every viewer is nginx's address: one cap for all.
                        await refused(bob, url, {})


# --- TLS and HTTP/2 at nginx ----------------------------------------------------------------


@dataclass
class H2Response:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    parser: EventStreamParser = field(default_factory=EventStreamParser)
    events: asyncio.Queue[ParsedEvent | None] = field(default_factory=asyncio.Queue)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False

    async def next_named(self, *names: str, timeout: float = LIVE) -> ParsedEvent:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event is None:
                    raise EOFError("the stream ended")
                if event.event in names:
                    return event
                assert event.event == "ping", f"expected {names}, got {event.event}"


@asynccontextmanager
async def h2_get(
    host: str, port: int, path: str, context: ssl.SSLContext
) -> AsyncIterator[tuple[H2Response, str | None]]:
    """One GET over HTTP/2 (TLS, ALPN), its body read as an event stream; and the ALPN."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=host), LIVE
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", f"{host}:{port}"),
            (":path", path),
            ("accept", "text/event-stream"),
        ],
        end_stream=True,
    )
    writer.write(conn.data_to_send())
    response = H2Response()

    async def read() -> None:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    pairs = [(bytes(k).decode(), bytes(v).decode()) for k, v in event.headers or []]
                    response.headers = dict(pairs)
                    response.status = int(response.headers[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    # Window back at once: the test client must never be what holds data up.
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    response.body += event.data or b""
                    for parsed in response.parser.feed(event.data or b""):
                        response.events.put_nowait(parsed)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    response.ended = True
                    response.events.put_nowait(None)
            writer.write(conn.data_to_send())
        response.events.put_nowait(None)

    reading = asyncio.create_task(read())
    ssl_object = writer.get_extra_info("ssl_object")
    try:
        yield response, ssl_object.selected_alpn_protocol() if ssl_object else None
    finally:
        await cancel_and_wait(reading)
        writer.close()
        with suppress(ConnectionError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), LIVE)


async def test_http2_over_tls_at_nginx_streams_live_on_the_fast_path(
    legacy: LegacyApi, certificate: Certificate, tmp_path: Path
) -> None:
    run = legacy.scripted("h2-live")
    http_port, https_port = free_port(), free_port()
    async with serve_process(legacy.url, BRIDGE_ENV) as (_, bridge_url):
        site = documented_site(tmp_path, port_of(bridge_url), http_port, https_port, certificate)
        async with running_nginx(tmp_path, site, http_port):
            context = certificate.client_context(["h2"])
            async with h2_get("127.0.0.1", https_port, "/v1/runs/h2-live/stream", context) as (
                response,
                alpn,
            ):
                assert alpn == "h2"
                first = await response.next_named("progress")
                assert response.status == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert json.loads(first.data) == run.statuses[0]
                # HTTP/2 ends at nginx; the bridge gets HTTP/1.1 and takes its fast path.
                await wait_for_metric(bridge_url, "bridge_fast_path_streams", 1.0)
                for expected in run.statuses[1:]:
                    run.advance()
                    event = await response.next_named("progress", "complete")
                    assert json.loads(event.data) == expected
                assert event.event == "complete"
                async with asyncio.timeout(LIVE):
                    while await response.events.get() is not None:
                        pass
                assert response.ended
                assert_whole_run(bytes(response.body), run)
