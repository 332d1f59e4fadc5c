"""The fast path is taken only where its chunk framing is the response's framing.

Served tests run `python -m bridge serve` (real Hypercorn on a loopback port, the real
legacy API) and speak HTTP over raw sockets, so the bytes on the wire are checked as
they are, not as a client library repairs them. Unit tests drive
``fast_path_transport`` with scopes and fake Hypercorn objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.demo.legacy_api import LegacyApi
from bridge.ops.metrics import FALLBACK_REASONS, FallbackReason, Metrics
from bridge.server import hypercorn_transport
from bridge.server.hypercorn_transport import fast_path_transport
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from tests.support import running_bridge, serve_process, sse

TERMINAL = {"complete", "error", "cancelled", "timeout"}
#: The one line the module logs when every stream falls back.
WARNING_TEXT = "fast path off"


# --- raw HTTP over loopback ---------------------------------------------------------


@dataclass
class RawResponse:
    """One response read off a raw socket; its body de-chunked strictly if chunked."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status_line: str
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    events: list[ParsedEvent] = field(default_factory=list)
    ended: bool = False
    _parser: EventStreamParser = field(default_factory=EventStreamParser)
    _ready: list[ParsedEvent] = field(default_factory=list)

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def _more(self) -> None:
        if self.chunked:
            size_line = await self.reader.readuntil(b"\r\n")
            # A chunk-size line is hex digits only (the bridge sends no extensions).
            assert re.fullmatch(rb"[0-9a-fA-F]+\r\n", size_line), size_line
            size = int(size_line, 16)
            data = await self.reader.readexactly(size)
            assert await self.reader.readexactly(2) == b"\r\n", "chunk not closed by CRLF"
            if size == 0:
                self.ended = True
        else:
            data = await self.reader.read(65536)
            if not data:
                self.ended = True
        self.body += data
        self._ready.extend(self._parser.feed(data))

    async def next_event(self, timeout: float = 5.0) -> ParsedEvent:
        async with asyncio.timeout(timeout):
            while not self._ready:
                if self.ended:
                    raise EOFError("the response ended")
                await self._more()
        event = self._ready.pop(0)
        self.events.append(event)
        return event

    async def next_named(self, *names: str, timeout: float = 5.0) -> ParsedEvent:
        """The next event with one of ``names``, skipping pings."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if event.event in names:
                    return event
                assert event.event == "ping", f"expected {names}, got {event.event}"

    async def rest(self, timeout: float = 5.0) -> None:
        """Read to the end of the body: the last chunk, or the server's close."""
        async with asyncio.timeout(timeout):
            while not self.ended:
                await self._more()
        self.events.extend(self._ready)
        self._ready.clear()


async def request(
    url: str, target: str, version: str, method: str = "GET"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    # A Host header, as curl --http1.0 and nginx's proxy_http_version 1.0 send.
    writer.write(f"{method} {target} HTTP/{version}\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def read_head(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 5.0
) -> RawResponse:
    async with asyncio.timeout(timeout):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.removesuffix("\r\n\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(reader, writer, status_line, headers)


def clean_sse(body: bytes) -> list[ParsedEvent]:
    """The events of ``body``, which must hold nothing but SSE lines.

    The bridge ends lines with LF only, so a CR in the body is HTTP framing that leaked in;
    and every line is a field the bridge writes, so a bare ``116`` (a chunk size) fails.
    """
    assert b"\r" not in body, body[:400]
    for line in body.decode().split("\n"):
        assert line == "" or re.match(r"(retry|event|id|data): ", line), repr(line)
    assert body.endswith(b"\n\n"), body[-200:]
    parser = EventStreamParser()
    return parser.feed(body)


# --- metrics of a served process ----------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


async def metrics_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


async def metrics_until(
    http: aiohttp.ClientSession, url: str, ready: Callable[[str], bool], timeout: float = 5.0
) -> str:
    """/metrics once ``ready`` holds for it (the hand-over follows the opening's send)."""
    async with asyncio.timeout(timeout):
        while True:
            text = await metrics_text(http, url)
            if ready(text):
                return text
            await asyncio.sleep(0.02)


def fallbacks(text: str, reason: str) -> float | None:
    return sample(text, "bridge_fast_path_fallbacks_total", reason=reason)


def fast_path_streams(text: str) -> float | None:
    return sample(text, "bridge_fast_path_streams")


async def stop_and_stderr(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode()


async def follow_run(
    response: RawResponse, statuses: list[dict[str, Any]], advance: Callable[[], object]
) -> None:
    """Advance the run one status at a time and check each arrives, in order."""
    for expected in statuses[1:]:
        advance()
        event = await response.next_named("progress", "complete")
        assert json.loads(event.data) == expected


# --- served: HTTP/1.1 takes the fast path -------------------------------------------


async def test_http11_takes_the_fast_path_with_well_formed_chunks(legacy: LegacyApi) -> None:
    run = legacy.scripted("fast11")
    env = {"BRIDGE_POLL_INTERVAL": "0.05"}
    async with serve_process(legacy.url, env) as (proc, url):
        async with aiohttp.ClientSession() as http:
            reader, writer = await request(url, "/v1/runs/fast11/stream", "1.1")
            response = await read_head(reader, writer)
            assert response.status_line.startswith("HTTP/1.1 200")
            assert response.chunked
            first = await response.next_named("progress")
            assert json.loads(first.data) == run.statuses[0]

            text = await metrics_until(http, url, lambda t: fast_path_streams(t) == 1.0)
            assert all(fallbacks(text, reason) == 0.0 for reason in ("http_version", "internals"))

            # Live events: written by the fast path, each as a chunk the strict reader checks.
            await follow_run(response, run.statuses, run.advance)
            await response.rest()  # h11's closing chunk, after the directly written ones
            assert response.ended
            events = clean_sse(bytes(response.body))
            assert [e.event for e in events if e.event != "ping"][-1] == "complete"
            assert [json.loads(e.data) for e in events if e.event != "ping"] == run.statuses

            # The framing ended exactly where h11 thinks it did: the connection is reusable.
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            health = await read_head(reader, writer)
            assert health.status_line.startswith("HTTP/1.1 200")
            length = int(health.headers["content-length"])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            assert json.loads(body) == {"status": "ok"}
            writer.close()

            text = await metrics_until(http, url, lambda t: fast_path_streams(t) == 0.0)
            assert fallbacks(text, "http_version") == 0.0
        stderr = await stop_and_stderr(proc)
    assert WARNING_TEXT not in stderr
    assert "Traceback" not in stderr


# --- served: HTTP/1.0 gets a clean close-delimited stream on either path ------------


@pytest.mark.parametrize("direct", ["true", "false"], ids=["direct-writes-on", "direct-writes-off"])
async def test_http10_gets_a_clean_close_delimited_stream(legacy: LegacyApi, direct: str) -> None:
    run = legacy.scripted("old10")
    env = {"BRIDGE_POLL_INTERVAL": "0.05", "BRIDGE_DIRECT_WRITES": direct}
    async with serve_process(legacy.url, env) as (proc, url):
        async with aiohttp.ClientSession() as http:
            reader, writer = await request(url, "/v1/runs/old10/stream", "1.0")
            response = await read_head(reader, writer)
            assert response.status_line.split()[1] == "200"
            assert "transfer-encoding" not in response.headers
            assert "content-length" not in response.headers
            assert response.headers["connection"].lower() == "close"
            first = await response.next_named("progress")
            assert json.loads(first.data) == run.statuses[0]

            # With direct writes on, wait until the stream is past its opening, on whichever
            # path it took, so live events come where the fast path would take over.
            wanted = 1.0 if direct == "true" else 0.0

            def past_opening(t: str) -> bool:
                return fast_path_streams(t) == 1.0 or fallbacks(t, "http_version") == wanted

            text = await metrics_until(http, url, past_opening)

            # Live events: the ones the fast path would have chunk-framed.
            await follow_run(response, run.statuses, run.advance)
            await response.rest()  # the body ends when the server closes the connection
            assert response.ended
            events = clean_sse(bytes(response.body))
            named = [e for e in events if e.event != "ping"]
            assert named[-1].event == "complete"
            assert [json.loads(e.data) for e in named] == run.statuses
            writer.close()

            # Counted when direct writes wanted the fast path; never on it.
            assert fallbacks(text, "http_version") == wanted
            assert fast_path_streams(text) == 0.0
        stderr = await stop_and_stderr(proc)
    # HTTP/1.0 falls back by design: counted, never logged as a warning.
    assert WARNING_TEXT not in stderr
    assert "Traceback" not in stderr


async def test_head_gets_no_body_and_the_connection_stays_in_step(legacy: LegacyApi) -> None:
    run = legacy.scripted("head11")
    env = {"BRIDGE_POLL_INTERVAL": "0.05"}
    async with serve_process(legacy.url, env) as (proc, url):
        async with aiohttp.ClientSession() as http:
            reader, writer = await request(url, "/v1/runs/head11/stream", "1.1", method="HEAD")
            # Pipelined: answered once the HEAD response is over (the run's end).
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await read_head(reader, writer)
            assert head.status_line.startswith("HTTP/1.1 200")

            # Wait until the stream is past its opening, on whichever path it took, so a
            # fast path that wrote a body here would have written it by now.
            def past_opening(t: str) -> bool:
                return fast_path_streams(t) == 1.0 or fallbacks(t, "method") == 1.0

            text = await metrics_until(http, url, past_opening)
            run.advance(len(run.statuses))

            # The next bytes are the pipelined answer: a HEAD response has no body.
            health = await read_head(reader, writer, timeout=5)
            assert health.status_line.startswith("HTTP/1.1 200"), health.status_line
            length = int(health.headers["content-length"])
            body = await asyncio.wait_for(reader.readexactly(length), 5)
            assert json.loads(body) == {"status": "ok"}
            writer.close()
            assert fallbacks(text, "method") == 1.0
        stderr = await stop_and_stderr(proc)
    assert WARNING_TEXT not in stderr


async def test_untested_hypercorn_streams_every_viewer_on_the_asgi_path(
    legacy: LegacyApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # In process, so the version lookup can be replaced; the server is still real Hypercorn.
    monkeypatch.setattr(hypercorn_transport, "installed_hypercorn", lambda: "0.19.1")
    caplog.set_level(logging.INFO)
    run = legacy.scripted("newer")
    viewers = 3
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        async with AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(sse(f"{b.url}/v1/runs/newer/stream"))
                for _ in range(viewers)
            ]
            for s in streams:
                assert json.loads((await s.next_named("progress")).data) == run.statuses[0]
            text = await metrics_text(http, b.url)
            assert fallbacks(text, "hypercorn_version") == viewers
            assert fast_path_streams(text) == 0.0
            for expected in run.statuses[1:]:
                run.advance()
                for s in streams:
                    event = await s.next_named("progress", "complete")
                    assert json.loads(event.data) == expected
            for s in streams:
                assert await s.rest() == []
    (warning,) = warnings_of(caplog)
    assert "Hypercorn 0.19.1 is outside the tested range" in warning.getMessage()


# --- unit: fast_path_transport ------------------------------------------------------


class FakeTransport(asyncio.WriteTransport):
    def __init__(self, closing: bool = False) -> None:
        super().__init__()
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing


def hypercorn_shaped(
    transport: asyncio.WriteTransport,
    *,
    protocol_name: str = "H11Protocol",
    module: str = "hypercorn.protocol",
    stream_attr: str = "send",
    protocol_attr: str = "send",
    server_attr: str = "writer",
) -> Callable[[object], Awaitable[None]]:
    """A send with Hypercorn 0.18's shape (HTTPStream -> H11Protocol -> TCPServer ->
    writer.transport); the keywords move one piece, as a release might."""

    async def method(self: object, event: object) -> None:
        return None

    def instance(name: str) -> Any:
        return type(name, (), {"__module__": module, "method": method})()

    server = instance("TCPServer")
    setattr(server, server_attr, SimpleNamespace(transport=transport))
    protocol = instance(protocol_name)
    setattr(protocol, protocol_attr, server.method)
    stream = instance("HTTPStream")
    setattr(stream, stream_attr, protocol.method)
    send: Callable[[object], Awaitable[None]] = stream.method
    return send


def scope_of(http_version: str = "1.1", method: str = "GET") -> dict[str, Any]:
    return {"type": "http", "http_version": http_version, "method": method}


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees a process that has not yet checked Hypercorn nor warned."""
    hypercorn_transport.untested_hypercorn.cache_clear()
    monkeypatch.setattr(hypercorn_transport, "_warned", set())
    yield
    hypercorn_transport.untested_hypercorn.cache_clear()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "bridge.server.hypercorn_transport" and r.levelno >= logging.WARNING
    ]


def test_the_hypercorn_shaped_send_takes_the_fast_path() -> None:
    # The control for the tests below: the same send, nothing moved, gives the transport.
    transport = FakeTransport()
    seen: list[FallbackReason] = []
    assert fast_path_transport(scope_of(), hypercorn_shaped(transport), seen.append) is transport
    assert seen == []


def test_the_installed_hypercorn_is_in_the_tested_range() -> None:
    assert hypercorn_transport.untested_hypercorn() is None


@pytest.mark.parametrize("http_version", ["1.0", "2", "3"])
def test_other_http_versions_fall_back_without_a_warning(
    http_version: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    send = hypercorn_shaped(FakeTransport())
    seen: list[FallbackReason] = []
    for _ in range(3):
        assert fast_path_transport(scope_of(http_version), send, seen.append) is None
    assert seen == ["http_version"] * 3
    assert warnings_of(caplog) == []


def test_head_falls_back_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen: list[FallbackReason] = []
    send = hypercorn_shaped(FakeTransport())
    assert fast_path_transport(scope_of(method="HEAD"), send, seen.append) is None
    assert seen == ["method"]
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("version", ["0.19.1", "0.19.0rc1", "0.16.0", "1.0", "unknown", None])
def test_untested_hypercorn_falls_back_and_warns_once(
    version: str | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lookups: list[None] = []

    def installed() -> str | None:
        lookups.append(None)
        return version

    monkeypatch.setattr(hypercorn_transport, "installed_hypercorn", installed)
    caplog.set_level(logging.INFO)
    send = hypercorn_shaped(FakeTransport())
    seen: list[FallbackReason] = []
    for _ in range(50):
        assert fast_path_transport(scope_of(), send, seen.append) is None
    assert seen == ["hypercorn_version"] * 50
    assert len(lookups) == 1  # looked up once per process, not per stream
    (warning,) = warnings_of(caplog)
    assert WARNING_TEXT in warning.getMessage()
    assert f"Hypercorn {version} is outside the tested range >=0.17,<0.19" in warning.getMessage()


@pytest.mark.parametrize("version", ["0.17.0", "0.18.0", "0.18.5.post1"])
def test_tested_hypercorn_versions_take_the_fast_path(
    version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hypercorn_transport, "installed_hypercorn", lambda: version)
    transport = FakeTransport()
    seen: list[FallbackReason] = []
    assert fast_path_transport(scope_of(), hypercorn_shaped(transport), seen.append) is transport
    assert seen == []


@pytest.mark.parametrize(
    "moved",
    [
        pytest.param({"stream_attr": "_send"}, id="HTTPStream.send renamed"),
        pytest.param({"protocol_attr": "_send"}, id="H11Protocol.send renamed"),
        pytest.param({"server_attr": "_writer"}, id="TCPServer.writer renamed"),
        pytest.param({"protocol_name": "H11Connection"}, id="H11Protocol renamed"),
        pytest.param({"module": "otherserver.protocol"}, id="not Hypercorn's classes"),
    ],
)
def test_moved_internals_fall_back_and_warn_once(
    moved: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    send = hypercorn_shaped(FakeTransport(), **moved)
    seen: list[FallbackReason] = []
    for _ in range(20):
        assert fast_path_transport(scope_of(), send, seen.append) is None
    assert seen == ["internals"] * 20
    (warning,) = warnings_of(caplog)
    assert WARNING_TEXT in warning.getMessage()
    assert "(internals)" in warning.getMessage()


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(None, id="no send captured"),
        pytest.param(lambda message: None, id="a plain function"),
    ],
)
def test_a_send_that_is_not_hypercorns_counts_as_internals(
    send: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen: list[FallbackReason] = []
    assert fast_path_transport(scope_of(), send, seen.append) is None
    assert seen == ["internals"]
    assert len(warnings_of(caplog)) == 1


def test_a_transport_that_is_not_a_write_transport_counts_as_internals() -> None:
    send = hypercorn_shaped(object())  # type: ignore[arg-type]
    seen: list[FallbackReason] = []
    assert fast_path_transport(scope_of(), send, seen.append) is None
    assert seen == ["internals"]


def test_a_closing_transport_is_not_a_fallback() -> None:
    # The viewer already left: no fast path, but nothing is wrong with the server.
    seen: list[FallbackReason] = []
    send = hypercorn_shaped(FakeTransport(closing=True))
    assert fast_path_transport(scope_of(), send, seen.append) is None
    assert seen == []


def test_the_metric_counts_each_reason_from_zero() -> None:
    metrics = Metrics()
    text = metrics.render().decode()
    for reason in FALLBACK_REASONS:
        assert fallbacks(text, reason) == 0.0
    metrics.fast_path_fell_back("internals")
    metrics.fast_path_fell_back("internals")
    text = metrics.render().decode()
    assert fallbacks(text, "internals") == 2.0
    assert fallbacks(text, "http_version") == 0.0
