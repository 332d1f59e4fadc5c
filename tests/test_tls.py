"""HTTPS and HTTP/2: BRIDGE_TLS_CERTFILE / BRIDGE_TLS_KEYFILE, served by Hypercorn's own TLS.

The certificate is made here with the `openssl` command (the venv has no `cryptography`):
self-signed, for 127.0.0.1. Every bridge is the real one (Hypercorn on a loopback port)
in front of the simulated legacy API; clients are aiohttp (HTTP/1.1 over TLS), the `h2`
library over an ALPN `h2` TLS connection (Hypercorn's own dependency), and headless
Chromium, which trusts the certificate by its public key hash
(``--ignore-certificate-errors-spki-list``), not by ignoring every certificate error.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout
from prometheus_client.parser import text_string_to_metric_families

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.runs import ScriptedRun
from bridge.server.serve import CannotLoadCertificate, serve
from bridge.settings import load
from bridge.tasks import cancel_and_wait
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from bridge.web.app import create_app
from tests.certificates import Certificate, make_certificate, openssl
from tests.support import FAST, RunningBridge, loopback_socket, running_bridge, sse, wait_for
from tests.test_dashboard_browser import CHROMIUM_ARGS, chromium_path

WAIT_MS = 15_000
#: How long the HTTP/1.1 page is given to open a seventh stream (it cannot: six per host).
STALL_MS = 2_000


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


# --- the real bridge, serving HTTPS -----------------------------------------------------


@asynccontextmanager
async def tls_bridge(
    upstream_url: str,
    certificate: Certificate,
    sock: socket.socket | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningBridge]:
    """``running_bridge`` with the TLS settings: the same bridge, ready over HTTPS."""
    async with running_bridge(
        upstream_url,
        sock,
        client_ssl=certificate.client_context(["http/1.1"]),
        tls_certfile=certificate.certfile,
        tls_keyfile=certificate.keyfile,
        **overrides,
    ) as bridge:
        yield bridge


def metric(b: RunningBridge, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(b.bridge.metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def asgi_fallbacks(b: RunningBridge) -> float | None:
    """Streams that took the ASGI path because of their HTTP version (HTTP/2 does)."""
    return metric(b, "bridge_fast_path_fallbacks_total", reason="http_version")


# --- an HTTP/2 client: the h2 library over an ALPN h2 TLS connection --------------------


@dataclass
class H2Stream:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    parser: EventStreamParser = field(default_factory=EventStreamParser)
    events: asyncio.Queue[ParsedEvent | None] = field(default_factory=asyncio.Queue)
    ended: bool = False


class H2Client:
    """Several streams on one HTTP/2 connection; each stream's body read as SSE."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.streams: dict[int, H2Stream] = {}
        self.authority = "127.0.0.1"
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, certificate: Certificate) -> AsyncIterator[H2Client]:
        host, port = url.removeprefix("https://").split(":")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, int(port), ssl=certificate.client_context(["h2"]), server_hostname=host
            ),
            timeout=5,
        )
        client = cls(reader, writer)
        client.authority = f"{host}:{port}"
        client.conn.initiate_connection()
        writer.write(client.conn.data_to_send())
        client._reading = asyncio.create_task(client._read())
        try:
            yield client
        finally:
            await cancel_and_wait(client._reading)
            writer.close()
            with suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=5)

    @property
    def alpn(self) -> str | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.selected_alpn_protocol() if ssl_object is not None else None

    def get(self, path: str) -> H2Stream:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", self.authority),
            (":path", path),
            ("accept", "text/event-stream"),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        self.streams[stream_id] = stream = H2Stream()
        return stream

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                self._on(event)
            self.writer.write(self.conn.data_to_send())
        for stream in self.streams.values():
            stream.events.put_nowait(None)

    def _on(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            pairs = [(bytes(k).decode(), bytes(v).decode()) for k, v in event.headers or []]
            stream.headers = dict(pairs)
            stream.status = int(stream.headers[":status"])
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            # Give the window back at once: a test client must never be what holds data up.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            for parsed in stream.parser.feed(event.data or b""):
                stream.events.put_nowait(parsed)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset) and stream:
            stream.ended = True
            stream.events.put_nowait(None)


async def next_named(stream: H2Stream, *names: str, timeout: float = 5.0) -> ParsedEvent:
    """The next event with one of ``names`` on an HTTP/2 stream, skipping pings."""
    async with asyncio.timeout(timeout):
        while True:
            event = await stream.events.get()
            if event is None:
                raise EOFError("the stream ended")
            if event.event in names:
                return event
            assert event.event == "ping", f"expected {names}, got {event.event}: {event.data}"


async def follow_h2(stream: H2Stream, run: ScriptedRun) -> list[dict[str, Any]]:
    """Advance ``run`` one status at a time; every status arrives, in order, then the end."""
    first = await next_named(stream, "progress")
    seen = [json.loads(first.data)]
    for _ in run.statuses[1:]:
        run.advance()
        event = await next_named(stream, "progress", "complete")
        seen.append(json.loads(event.data))
    assert event.event == "complete"
    async with asyncio.timeout(5):
        while (await stream.events.get()) is not None:
            pass
    assert stream.ended
    return seen


# --- HTTP/1.1 over TLS ----------------------------------------------------------------


async def test_http11_over_tls_follows_a_run_on_the_fast_path(
    legacy: LegacyApi, certificate: Certificate
) -> None:
    run = legacy.scripted("tls11")
    async with tls_bridge(legacy.url, certificate) as b:
        connector = aiohttp.TCPConnector(ssl=certificate.client_context(["http/1.1"]))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with sse(f"{b.url}/v1/runs/tls11/stream", session=http) as stream:
                assert stream.status == 200
                assert stream.response.version == aiohttp.HttpVersion11
                assert stream.response.headers["Content-Type"].startswith("text/event-stream")
                first = await stream.next_named("progress")
                assert json.loads(first.data) == run.statuses[0]
                # The SSL transport is a WriteTransport like a plain one: the stream is
                # handed to the fast path, which writes its frames through TLS.
                await wait_for(lambda: b.bridge.ticker.viewers == 1)
                for expected in run.statuses[1:]:
                    run.advance()
                    event = await stream.next_named("progress", "complete")
                    assert json.loads(event.data) == expected
                assert event.event == "complete"
                assert await stream.rest() == []
            # The chunk framing ended where h11 thinks it did: the TLS connection is reused.
            async with http.get(b.url + "/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}
            assert connector._conns, "the TLS connection was not kept for reuse"
        await wait_for(lambda: b.bridge.ticker.viewers == 0)
        assert asgi_fallbacks(b) == 0.0


async def test_a_slow_tls_viewer_gets_the_latest_status_not_a_backlog(
    legacy: LegacyApi, certificate: Certificate
) -> None:
    # Over TLS the fast path reads the SSL transport's buffer (bytes the TLS layer still
    # holds): it must grow while the viewer reads nothing, so that the viewer is skipped
    # and later caught up with the latest status, as over plain TCP.
    blob = "y" * 8_000
    statuses: list[dict[str, Any]] = [
        {"status": "running", "step": i, "blob": blob} for i in range(60)
    ]
    statuses.append({"status": "completed", "step": 60})
    run = legacy.scripted("tlsslow", statuses)
    listener = loopback_socket()
    # Small send buffers (inherited by accepted sockets) make "stopped reading" show fast.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    async with tls_bridge(legacy.url, certificate, sock=listener, linger=5) as b:
        context = certificate.client_context(["http/1.1"])
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(5)

        def connect() -> ssl.SSLSocket:
            raw.connect(listener.getsockname())
            slow = context.wrap_socket(raw, server_hostname="127.0.0.1")
            slow.sendall(b"GET /v1/runs/tlsslow/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            return slow

        def read_to_the_end(slow: ssl.SSLSocket) -> list[ParsedEvent]:
            parser = EventStreamParser()
            events: list[ParsedEvent] = []
            while not events or events[-1].event != "complete":
                data = slow.recv(65536)  # the socket's timeout bounds each wait
                assert data, "the bridge closed the stream early"
                events.extend(e for e in parser.feed(data) if e.event != "ping")
            return events

        slow = await asyncio.to_thread(connect)
        try:
            await wait_for(lambda: b.bridge.ticker.viewers == 1)
            channel = b.bridge.hub.find(b.bridge.pollers.key("tlsslow", {}))
            assert channel is not None

            def at(step: int) -> bool:
                latest = channel.history.latest
                return latest is not None and json.loads(latest.data)["step"] == step

            # The viewer reads nothing while the run moves on 60 times.
            for step in range(1, 61):
                run.advance()
                await wait_for(lambda step=step: at(step))
            events = await asyncio.wait_for(asyncio.to_thread(read_to_the_end, slow), 30)
        finally:
            slow.close()
    listener.close()
    steps = [json.loads(e.data)["step"] for e in events]
    # Far behind, it skipped to the latest status instead of a 60-event backlog.
    assert steps == sorted(steps) and steps[-1] == 60
    assert len(steps) < 30, steps


# --- HTTP/2 -----------------------------------------------------------------------------


async def test_an_http2_client_follows_a_run_over_h2(
    legacy: LegacyApi, certificate: Certificate
) -> None:
    run = legacy.scripted("h2run")
    async with tls_bridge(legacy.url, certificate) as b:
        async with H2Client.connect(b.url, certificate) as client:
            assert client.alpn == "h2"
            stream = client.get("/v1/runs/h2run/stream")
            seen = await follow_h2(stream, run)
            assert stream.status == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert stream.headers["cache-control"] == "no-cache"
            # No HTTP/1.1 framing leaks into an HTTP/2 response.
            assert "transfer-encoding" not in stream.headers
            assert "connection" not in stream.headers
        assert seen == run.statuses
        # HTTP/2 streams take the ASGI path, by design, and are counted as such.
        assert asgi_fallbacks(b) == 1.0
        assert b.bridge.ticker.viewers == 0


async def test_ten_runs_on_one_http2_connection(
    legacy: LegacyApi, certificate: Certificate
) -> None:
    runs = [legacy.scripted(f"multi-{i}", nodes=("a",)) for i in range(10)]
    async with tls_bridge(legacy.url, certificate) as b:
        async with H2Client.connect(b.url, certificate) as client:
            assert client.alpn == "h2"
            streams = [client.get(f"/v1/runs/{run.id}/stream") for run in runs]
            seen = await asyncio.gather(
                *(follow_h2(stream, run) for stream, run in zip(streams, runs, strict=True))
            )
        assert seen == [run.statuses for run in runs]
        assert asgi_fallbacks(b) == 10.0


# --- a bad certificate or key: one line, exit 2 -----------------------------------------


@pytest.fixture(scope="module")
def bad_files(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bad-tls")
    other = make_certificate(directory, "other")
    junk = directory / "junk.pem"
    junk.write_text("this is not PEM\n")
    encrypted = directory / "encrypted.key"
    encrypted.write_bytes(
        openssl("pkey", "-in", str(certificate.keyfile), "-aes256", "-passout", "pass:s3cret")
    )
    return {"junk": junk, "other_key": other.keyfile, "encrypted": encrypted}


@pytest.mark.parametrize(
    ("cert", "key", "variable", "says"),
    [
        ("junk", "good", "BRIDGE_TLS_CERTFILE", "holds no PEM certificate"),
        ("good", "junk", "BRIDGE_TLS_KEYFILE", "holds no PEM private key"),
        ("good", "other_key", "BRIDGE_TLS_KEYFILE", "is not the key of the certificate"),
        ("good", "encrypted", "BRIDGE_TLS_KEYFILE", "is encrypted"),
    ],
)
def test_a_bad_certificate_or_key_is_one_line_and_exit_2(
    certificate: Certificate,
    bad_files: dict[str, Path],
    cert: str,
    key: str,
    variable: str,
    says: str,
) -> None:
    certfile = certificate.certfile if cert == "good" else bad_files[cert]
    keyfile = certificate.keyfile if key == "good" else bad_files[key]
    env = {
        **os.environ,
        "BRIDGE_UPSTREAM_URL": "http://127.0.0.1:9",
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": "0",
        "BRIDGE_TLS_CERTFILE": str(certfile),
        "BRIDGE_TLS_KEYFILE": str(keyfile),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
        # Never a prompt: an encrypted key must fail at once, not wait for a passphrase.
        stdin=subprocess.DEVNULL,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sse-bridge: cannot serve HTTPS: "), stderr
    named = certfile if variable == "BRIDGE_TLS_CERTFILE" else keyfile
    assert f"{variable}={named} " in lines[0], stderr
    assert says in lines[0]
    assert "Traceback" not in stderr


async def test_serve_refuses_a_bad_certificate_before_the_app_starts(
    legacy: LegacyApi, certificate: Certificate, bad_files: dict[str, Path]
) -> None:
    settings = load(
        **{
            **FAST,
            "upstream_url": legacy.url,
            "tls_certfile": bad_files["junk"],
            "tls_keyfile": certificate.keyfile,
        }
    )
    app = create_app(settings)
    sock = loopback_socket()
    try:
        with pytest.raises(CannotLoadCertificate) as raised:
            await asyncio.wait_for(serve(app, settings, sock=sock), timeout=10)
    finally:
        sock.close()
    assert raised.value.variable == "BRIDGE_TLS_CERTFILE"
    assert legacy.requests.total() == 0


# --- Chromium: ten EventSources on one page ---------------------------------------------

#: Opens one EventSource per run and records when each got its first event and its end.
OPEN_TEN = """
(ids) => {
  window.__first = {};
  window.__done = {};
  for (const id of ids) {
    const source = new EventSource(`/v1/runs/${id}/stream`);
    source.addEventListener("progress", () => {
      if (!(id in window.__first)) window.__first[id] = performance.now();
    });
    source.addEventListener("complete", () => {
      if (!(id in window.__first)) window.__first[id] = performance.now();
      window.__done[id] = performance.now();
      source.close();
    });
  }
}
"""


@asynccontextmanager
async def chromium(certificate: Certificate) -> AsyncIterator[Browser]:
    # Trusts this one key (Playwright gives Chromium a --user-data-dir, which the flag needs).
    args = [*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={certificate.spki}"]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=args
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_ten(browser: Browser, url: str, runs: list[ScriptedRun]) -> Page:
    page = await browser.new_page()
    # A page of the bridge's own origin (no CORS); any same-origin page would do.
    response = await page.goto(url + "/healthz")
    assert response is not None and response.ok
    await page.evaluate(OPEN_TEN, [run.id for run in runs])
    return page


async def count(page: Page, what: str) -> int:
    found: int = await page.evaluate(f"Object.keys(window.{what}).length")
    return found


async def protocol(page: Page) -> str:
    found: str = await page.evaluate(
        "performance.getEntriesByType('navigation')[0].nextHopProtocol"
    )
    return found


@pytest.mark.browser
async def test_one_page_holds_ten_event_sources_over_https_h2(
    legacy: LegacyApi, certificate: Certificate
) -> None:
    runs = [legacy.scripted(f"page-h2-{i}", nodes=("a",)) for i in range(10)]
    async with tls_bridge(legacy.url, certificate) as b, chromium(certificate) as browser:
        page = await open_ten(browser, b.url, runs)
        assert await protocol(page) == "h2"
        # All ten are open at once: each has its first event before any run moves.
        await page.wait_for_function("Object.keys(window.__first).length === 10", timeout=WAIT_MS)
        await wait_for(lambda: b.bridge.limiter.open == 10)
        for run in runs:
            run.advance(len(run.statuses))
        await page.wait_for_function("Object.keys(window.__done).length === 10", timeout=WAIT_MS)
        assert asgi_fallbacks(b) == 10.0


@pytest.mark.browser
async def test_the_same_page_over_http11_stalls_at_six(
    legacy: LegacyApi, certificate: Certificate
) -> None:
    runs = [legacy.scripted(f"page-h1-{i}", nodes=("a",)) for i in range(10)]
    async with running_bridge(legacy.url) as b, chromium(certificate) as browser:
        page = await open_ten(browser, b.url, runs)
        assert await protocol(page) == "http/1.1"
        await page.wait_for_function("Object.keys(window.__first).length >= 6", timeout=WAIT_MS)
        with suppress(PlaywrightTimeout):
            await page.wait_for_function("Object.keys(window.__first).length > 6", timeout=STALL_MS)
        started = await count(page, "__first")
        assert started <= 6, (
            f"over plain HTTP/1.1, {started} of 10 EventSources got their first event within "
            f"{STALL_MS} ms; Chromium holds at most six connections per host, so at most 6 should"
        )
        # The server saw six streams: the other four requests never left the browser.
        assert b.bridge.limiter.open == 6, b.bridge.limiter.open
        # They go out only as the first six end (each page closes its EventSource on complete).
        first: dict[str, float] = await page.evaluate("window.__first")
        for run in runs:
            if run.id in first:
                run.advance(len(run.statuses))
        await page.wait_for_function("Object.keys(window.__first).length === 10", timeout=WAIT_MS)
        for run in runs:
            run.advance(len(run.statuses))
        await page.wait_for_function("Object.keys(window.__done).length === 10", timeout=WAIT_MS)
        later: dict[str, float] = await page.evaluate("window.__first")
        done: dict[str, float] = await page.evaluate("window.__done")
        waited = [later[i] for i in later if i not in first]
        assert len(waited) == 4
        assert min(waited) >= min(done[i] for i in first), "a stalled stream started early"
