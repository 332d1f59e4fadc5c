"""Hostile input from both sides: upstream values that try to break out of ``data``, and
viewers sending bad run ids, bad resume cursors, connection headers and oversized requests.

Properties are checked with Hypothesis and the WHATWG parser; the rest against the real
bridge on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from bridge.demo.legacy_api import Fault, LegacyApi
from bridge.events import sse
from bridge.events.history import RunHistory
from bridge.polling.status import StatusReader
from bridge.polling.upstream import UpstreamClient
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from tests.support import SseStream, running_bridge, serving_app, wait_for
from tests.support import sse as sse_stream

# --- strategies ---------------------------------------------------------------------------

#: Every code point, controls and lone surrogates included (JSON can carry them escaped).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
#: Pieces that break naive SSE writers or parsers.
NASTY = st.sampled_from(
    [
        "\r",
        "\n",
        "\r\n",
        "\n\n",
        "\x00",
        "\u2028",
        "\u2029",
        "\u0085",
        "\ufeff",
        "\ud800",
        "\udfff",
        "\udbff\udfff",
        "event: complete",
        "\n\nevent: complete\ndata: {}\n\n",
        "\r\rid: 1\r\r",
        "data: forged",
        "retry: 0",
        ":",
        '"}',
        "\\",
    ]
)
HOSTILE = st.lists(st.one_of(st.text(ANY_CHAR, max_size=12), NASTY), max_size=5).map("".join)
STATES = ["queued", "running", "completed", "failed", "cancelled"]
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    HOSTILE,
)
JSON = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(HOSTILE, inner, max_size=4)
    ),
    max_leaves=12,
)
EXECUTION_STATUS = st.fixed_dictionaries(
    {
        "id": HOSTILE,
        "status": st.one_of(st.sampled_from(STATES), HOSTILE),
        "progress": st.one_of(st.floats(0, 1), HOSTILE),
        "currentNode": st.one_of(st.none(), HOSTILE),
        "nodes": st.lists(
            st.fixed_dictionaries({"id": HOSTILE, "status": st.one_of(HOSTILE, JSON)}),
            max_size=3,
        ),
        "outputs": JSON,
        "errorMessage": st.one_of(st.none(), HOSTILE),
        "createdAt": HOSTILE,
    }
)


def _as_json_reads_it(value: dict[str, Any]) -> dict[str, Any]:
    # What any JSON parser makes of it: an escaped surrogate *pair* is one astral character.
    out: dict[str, Any] = json.loads(json.dumps(value))
    return out


STATUS = st.builds(
    lambda base, extra: _as_json_reads_it({**extra, **base}),
    EXECUTION_STATUS,
    st.dictionaries(HOSTILE, JSON, max_size=3),
)

READER = StatusReader(state_expr=".status", success=["completed"], failure=["failed", "cancelled"])


def parse_in_chunks(raw: bytes, cuts: list[int]) -> list[ParsedEvent]:
    parser = EventStreamParser()
    out: list[ParsedEvent] = []
    start = 0
    for cut in [*sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]:
        out.extend(parser.feed(raw[start:cut]))
        start = cut
    return out


# --- properties -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    statuses=st.lists(STATUS, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_every_emit_is_exactly_one_event_with_the_same_object(
    statuses: list[dict[str, Any]], cuts: list[int]
) -> None:
    history = RunHistory(16, 1 << 20, epoch=1_700_000_000_000)
    raw = bytearray(sse.retry(3000))
    emitted = []
    for status in statuses:
        if history.terminal:
            break
        event = history.append(READER.read(status).event, sse.encode_json(status))
        emitted.append((event, status))
        raw += event.frame + sse.ping(1_700_000_000)
    parsed = [e for e in parse_in_chunks(bytes(raw), cuts) if e.event != "ping"]
    assert len(parsed) == len(emitted)
    for got, (sent, status) in zip(parsed, emitted, strict=True):
        assert got.event == READER.read(status).event == sent.name
        assert got.event in (sse.PROGRESS, sse.COMPLETE, sse.ERROR)
        assert got.has_id and got.id == sent.id
        assert json.loads(got.data) == status


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=STATUS, ascii_only=st.booleans())
def test_upstream_body_to_viewer_round_trip(status: dict[str, Any], ascii_only: bool) -> None:
    """Whatever JSON the upstream writes (escaped or raw UTF-8, raw U+2028, surrogates
    the way Python writes them), the viewer parses back the object the upstream meant."""
    body = json.dumps(status, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    received = UpstreamClient._parse(body)
    assert received == status
    frame = sse.frame(READER.read(received).event, sse.encode_json(received), "1-1")
    (event,) = EventStreamParser().feed(frame)
    assert json.loads(event.data) == status
    assert event.event == READER.read(status).event


@settings(max_examples=200, deadline=None)
@given(state=HOSTILE)
def test_a_hostile_state_is_never_mistaken_for_a_terminal_one(state: str) -> None:
    event = READER.read({"status": state}).event
    # Case-insensitive, as the contract says, but never trimmed or partly matched.
    if state.casefold() == "completed":
        assert event == sse.COMPLETE
    elif state.casefold() in ("failed", "cancelled"):
        assert event == sse.ERROR
    else:
        assert event == sse.PROGRESS


# --- a real bridge with hostile upstream values ---------------------------------------------


HOSTILE_VALUES = [
    "a\rb",
    "a\nb",
    "a\r\nb",
    '\n\nevent: complete\ndata: {"status":"completed"}\n\n',
    "id: 999\r\n\r\n",
    "nul\x00nul",
    "\u2028\u2029\u0085",
    "\ud800 lone",
    "\udfff lone",
    "\ufeffbom",
    "\x1b[2J",
]


def hostile_statuses() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, value in enumerate(HOSTILE_VALUES):
        out.append(
            {
                "id": value,
                "status": "running" if i % 2 else "running\r\nevent: complete",
                "progress": i / len(HOSTILE_VALUES),
                "currentNode": value,
                "nodes": [{"id": value, "status": value}],
                "outputs": {value: [value]},
                "errorMessage": value,
            }
        )
    out.append({"id": "x", "status": "completed", "outputs": {"\n": "\r"}, "errorMessage": None})
    return out


async def test_hostile_statuses_through_the_real_bridge(legacy: LegacyApi) -> None:
    run = legacy.scripted("hostile", statuses=hostile_statuses())
    async with running_bridge(legacy.url) as b, sse_stream(f"{b.url}/v1/runs/hostile/stream") as s:
        assert s.status == 200
        first = await s.next_event()
        assert (first.event, json.loads(first.data)) == ("progress", run.statuses[0])
        for expected in run.statuses[1:]:
            run.advance()
            event = await s.next_named("progress", "complete")
            assert json.loads(event.data) == expected
        assert event.event == "complete"
        assert await s.rest() == []
    # One event per status, nothing forged, nothing lost.
    assert [e.event for e in s.events] == ["progress"] * len(HOSTILE_VALUES) + ["complete"]
    assert len({e.id for e in s.events}) == len(s.events)


@dataclass
class Scripted:
    """A tiny upstream that answers whatever raw body it is told to (aiohttp, loopback)."""

    body: bytes = b'{"status":"running"}'
    served: dict[bytes, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.served[self.body] = self.served.get(self.body, 0) + 1
        self.changed.set()
        return web.Response(body=self.body, content_type="application/json")


@asynccontextmanager
async def scripted_upstream() -> AsyncIterator[Scripted]:
    upstream = Scripted()
    app = web.Application()
    app.add_routes([web.get("/runs/{run_id}", upstream.handle)])
    async with serving_app(app) as upstream.url:
        yield upstream


async def test_raw_utf8_separators_and_surrogates_from_upstream() -> None:
    body = (
        '{"status":"running","s":"\u2028\u2029\u0085 é \U0001f600","e":"\\u0000\\r\\n"}'.encode()
        + b"\n"
    )
    async with scripted_upstream() as up:
        up.body = body
        async with running_bridge(up.url) as b, sse_stream(f"{b.url}/v1/runs/r/stream") as s:
            event = await s.next_event()
            assert event.event == "progress"
            assert json.loads(event.data) == json.loads(body)
            # The wire carries escapes only: no raw separator for any parser to trip on.
            assert "\u2028".encode() not in s.raw and "\u0085".encode() not in s.raw


async def test_out_of_range_number_mid_stream_does_not_stall_the_viewer() -> None:
    """1e400 is valid JSON that Python reads as inf, which JSON cannot carry on: it must be a
    failed poll like any bad body, not a crash of the poller that leaves viewers hanging."""
    bad = b'{"status":"running","progress":1e400}'
    async with (
        scripted_upstream() as up,
        running_bridge(up.url, upstream_give_up=30.0) as b,
        sse_stream(f"{b.url}/v1/runs/r/stream") as s,
    ):
        assert (await s.next_event()).event == "progress"
        up.body = bad
        await wait_for(lambda: up.served.get(bad, 0) >= 2, timeout=5)
        up.body = b'{"status":"completed"}'
        event = await s.next_named("complete", timeout=5)
        assert json.loads(event.data) == {"status": "completed"}


async def test_out_of_range_number_on_first_fetch_is_a_502_bad_body() -> None:
    async with scripted_upstream() as up, running_bridge(up.url) as b:
        up.body = b'{"status":"running","progress":-1e999}'
        async with aiohttp.ClientSession() as http, http.get(f"{b.url}/v1/runs/r") as response:
            assert response.status == 502
            assert (await response.json())["error"] == "upstream_unavailable"


# --- run ids --------------------------------------------------------------------------------

#: (what goes into the URL, already percent-encoded as sent) for ids that must be refused.
BAD_IDS = [
    "..",
    ".",
    "%2e%2e",
    "%2E",
    "%252e%252e",
    "a%2Fb",
    "a%2F..%2Fb",
    "a%3Fb",
    "a%23b",
    "a@b",
    "a!b",
    "a;b",
    "%5C",
    "%00",
    "a%00",
    "%0d%0a",
    "a%0aevent:%20complete",
    "a%20b",
    "%C3%A9",
    "run-%E2%80%A8",
    "%EF%BC%B2",
    "%ED%A0%80",
    "-a",
    "x" * 129,
    "x" * 300,
]


async def expect_invalid_run_id(response: aiohttp.ClientResponse, sent: str) -> None:
    assert response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["error"] == "invalid_run_id"
    assert isinstance(body["message"], str) and body["message"]
    if len(sent) > 3:
        assert sent not in json.dumps(body)


@pytest.mark.parametrize("raw_id", BAD_IDS)
async def test_bad_run_id_is_400_json_and_upstream_is_never_called(
    legacy: LegacyApi, raw_id: str
) -> None:
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        for suffix in ("/stream", ""):
            url = URL(f"{b.url}/v1/runs/{raw_id}{suffix}", encoded=True)
            async with http.get(url, allow_redirects=False) as response:
                await expect_invalid_run_id(response, raw_id)
    assert list(legacy.seen) == []
    assert sum(legacy.requests.values()) == 0


@pytest.mark.parametrize("raw_id", ["%2F", "", "%2F%2F", "%2Fa"])
async def test_id_of_slashes_is_400_not_a_redirect(legacy: LegacyApi, raw_id: str) -> None:
    legacy.scripted("stream")
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        url = URL(f"{b.url}/v1/runs/{raw_id}/stream", encoded=True)
        # A browser's EventSource follows redirects: so does this client.
        async with http.get(url) as response:
            await expect_invalid_run_id(response, raw_id)
    assert list(legacy.seen) == []


@pytest.mark.parametrize(
    "target",
    [b"/v1/runs/\xc3\xa9/stream", b"/v1/runs/a b/stream", b"/v1/runs/a\x00b/stream"],
)
async def test_raw_bytes_in_the_request_target_are_refused(
    legacy: LegacyApi, target: bytes
) -> None:
    async with running_bridge(legacy.url) as b:
        head = await raw_request(b.url, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4")
    assert list(legacy.seen) == []


async def raw_request(base: str, data: bytes) -> bytes:
    """Send raw bytes, return the response's status line and headers (within 5 s)."""
    url = URL(base)
    assert url.host == "127.0.0.1"
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(data)
            await writer.drain()
            return await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()


# --- resume cursors --------------------------------------------------------------------------


@asynccontextmanager
async def run_with_history(legacy: LegacyApi, run_id: str) -> AsyncIterator[tuple[str, Any]]:
    """A bridge whose history of ``run_id`` holds three events, one viewer keeping it live."""
    run = legacy.scripted(run_id, nodes=("a", "b", "c"))
    async with running_bridge(legacy.url) as b, sse_stream(f"{b.url}/v1/runs/{run_id}/stream") as s:
        await s.next_event()
        for _ in range(2):
            run.advance()
            await s.next_named("progress")
        yield b.url, run


async def finish(s: SseStream, run: Any) -> None:
    """Drive the run to its end and read the stream to EOF, so ``raw`` holds every byte."""
    run.advance(len(run.statuses))
    await s.next_named("complete")
    assert await s.rest() == []


MARK = "ZqX9echo"
GARBAGE_HEADERS = [
    MARK,
    f"{MARK}-1",
    "1-" + "9" * 400,
    "9" * 4000,
    "0-0",
    "1-1",
    "-1",
    "1e3-1",
    f"{MARK} \t {MARK}",
    "é" + MARK,
]
GARBAGE_QUERIES = [
    f"cursor={MARK}",
    f"since={MARK}",
    f"cursor={MARK}%0d%0aevent:%20complete%0d%0a%0d%0a",
    f"since=1-1%0aid:%20{MARK}",
    f"cursor=%00{MARK}",
    "cursor=" + "9" * 4000,
    "since=1-" + "9" * 400,
    f"cursor=%E2%80%A8{MARK}",
    f"cursor={MARK}&since={MARK}",
]


async def assert_current_status_first(url: str, run: Any, s: SseStream) -> None:
    assert s.status == 200
    first = await s.next_event()
    assert first.event == "progress"
    assert json.loads(first.data) == run.statuses[run.index]
    await finish(s, run)


def assert_not_echoed(raw: bytes, value: str) -> None:
    assert MARK.encode() not in raw
    assert b"9" * 40 not in raw
    assert value.encode() not in raw or len(value) < 4


@pytest.mark.parametrize("value", GARBAGE_HEADERS)
async def test_garbage_last_event_id_gets_the_current_status_and_is_not_echoed(
    legacy: LegacyApi, value: str
) -> None:
    async with (
        run_with_history(legacy, "resume") as (url, run),
        sse_stream(f"{url}/v1/runs/resume/stream", {"Last-Event-ID": value}) as s,
    ):
        await assert_current_status_first(url, run, s)
    assert_not_echoed(bytes(s.raw), value)


@pytest.mark.parametrize("query", GARBAGE_QUERIES)
async def test_garbage_cursor_gets_the_current_status_and_is_not_echoed(
    legacy: LegacyApi, query: str
) -> None:
    async with run_with_history(legacy, "resume") as (url, run):
        target = URL(f"{url}/v1/runs/resume/stream?{query}", encoded=True)
        async with sse_stream(str(target)) as s:
            # str() of an encoded URL is re-parsed: the query must survive (hex case aside).
            assert s.response.url.raw_query_string.lower() == query.lower()
            await assert_current_status_first(url, run, s)
    assert_not_echoed(bytes(s.raw), query)


async def test_id_from_the_current_history_resumes_exactly(legacy: LegacyApi) -> None:
    """The contrast case: a real id replays what came after it, nothing twice."""
    async with run_with_history(legacy, "resume") as (url, run):
        async with sse_stream(f"{url}/v1/runs/resume/stream") as s:
            latest = await s.next_event()
        epoch, seq = latest.id.split("-")
        resume_from = f"{epoch}-{int(seq) - 2}"
        async with sse_stream(f"{url}/v1/runs/resume/stream?cursor={resume_from}") as s:
            replay = [await s.next_event(), await s.next_event()]
            assert [e.id for e in replay] == [f"{epoch}-{int(seq) - 1}", latest.id]
            assert json.loads(replay[-1].data) == run.statuses[run.index]


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        (b"1\r2", True),
        (b"1\x002", True),
        (MARK.encode() + b"\rdata: x", True),
        (b"1\x0b" + MARK.encode(), True),
        # DEL and obs-text get through HTTP parsing: then they are just an unknown id.
        (b"\x7f" + MARK.encode(), False),
        (b"\xff\xfe" + MARK.encode(), False),
    ],
)
async def test_control_characters_in_last_event_id(
    legacy: LegacyApi, value: bytes, refused: bool
) -> None:
    run = legacy.scripted("ctl")
    async with running_bridge(legacy.url) as b:
        url = URL(b.url)
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(url.host, url.port)
            try:
                writer.write(
                    b"GET /v1/runs/ctl/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: "
                    + value
                    + b"\r\n\r\n"
                )
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                if not refused:
                    current = sse.encode_json(run.statuses[run.index]).encode()
                    while current not in body:
                        chunk = await reader.read(65536)
                        assert chunk, "the stream ended before the current status"
                        body += chunk
            finally:
                writer.close()
    if refused:
        assert head.startswith(b"HTTP/1.1 400")
    else:
        assert head.startswith(b"HTTP/1.1 200")
        assert b"event: progress" in body
    assert MARK.encode() not in head + body


# --- viewer headers -----------------------------------------------------------------------------


async def test_connection_headers_never_reach_upstream_even_if_allow_listed(
    legacy: LegacyApi,
) -> None:
    legacy.scripted("fw")
    legacy.require("fw", "authorization", "Bearer ok")
    allow = (
        "authorization,host,proxy-authorization,x-forwarded-for,x-forwarded-host,"
        "connection,keep-alive,te,upgrade,transfer-encoding"
    )
    viewer = {
        "Authorization": "Bearer ok",
        "Host": "evil.example",
        "Proxy-Authorization": "Basic cHJveHktc2VjcmV0",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "evil.example",
        "Connection": "keep-alive, X-Viewer-Hop",
        "Keep-Alive": "timeout=5",
        "X-Viewer-Hop": "hop",
    }
    async with running_bridge(legacy.url, forward_headers=allow) as b:
        async with sse_stream(f"{b.url}/v1/runs/fw/stream", viewer) as s:
            assert s.status == 200
            assert (await s.next_event()).event == "progress"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{b.url}/v1/runs/fw", headers=viewer) as response,
        ):
            assert response.status == 200
    assert legacy.seen
    upstream_host = URL(legacy.url).raw_authority
    for seen in legacy.seen:
        headers = {k.lower(): v for k, v in seen.headers.items()}
        assert headers["authorization"] == "Bearer ok"
        assert headers["host"] == upstream_host
        for name in ("proxy-authorization", "x-forwarded-for", "x-forwarded-host", "x-viewer-hop"):
            assert name not in headers
        assert "keep-alive" not in headers or headers["keep-alive"] != "timeout=5"
        values = " ".join(headers.values())
        for secret in ("evil.example", "cHJveHktc2VjcmV0", "203.0.113.9", "X-Viewer-Hop"):
            assert secret not in values


SECRET = "Bearer s3cr3t-viewer-t0ken"


@pytest.mark.parametrize(
    "fault",
    ["401", "403", "500", "reset", "hang", "malformed", "not-object", "redirect", "huge"],
)
async def test_the_viewers_credentials_never_appear_in_answers_or_logs(
    legacy: LegacyApi, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    caplog.set_level(logging.DEBUG)
    legacy.scripted("cred")
    if fault in ("401", "403"):
        legacy.require("cred", "authorization", "Bearer other")
        headers = {} if fault == "401" else {"Authorization": SECRET}
    else:
        kind, status = ("status", 500) if fault == "500" else (fault, 503)
        legacy.inject("cred", Fault(kind, times=None, status=status))
        headers = {"Authorization": SECRET}
    async with (
        running_bridge(legacy.url, upstream_timeout=0.3, upstream_max_bytes=4096) as b,
        aiohttp.ClientSession() as http,
        asyncio.timeout(10),
        http.get(f"{b.url}/v1/runs/cred/stream", headers=headers) as response,
    ):
        assert response.status in (401, 403, 502, 504)
        body = await response.read()
        assert json.loads(body)["error"]
    assert b"s3cr3t" not in body
    assert "s3cr3t" not in caplog.text


# --- oversized requests ----------------------------------------------------------------------


async def test_oversized_header_gets_a_clear_4xx(legacy: LegacyApi) -> None:
    legacy.scripted("big")
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        for size in (64 * 1024, 1024 * 1024):
            async with asyncio.timeout(5):
                async with http.get(
                    f"{b.url}/v1/runs/big/stream", headers={"X-Big": "a" * size}
                ) as response:
                    assert 400 <= response.status < 500
                    assert response.status in (400, 413, 431)
        async with http.get(f"{b.url}/healthz") as response:
            assert response.status == 200
    assert list(legacy.seen) == []


async def test_many_headers_get_a_clear_4xx(legacy: LegacyApi) -> None:
    legacy.scripted("many")
    headers = {f"X-H{i}": "v" * 100 for i in range(1000)}
    async with (
        running_bridge(legacy.url) as b,
        aiohttp.ClientSession() as http,
        asyncio.timeout(5),
        http.get(f"{b.url}/v1/runs/many", headers=headers) as response,
    ):
        assert response.status in (400, 413, 431)
    assert list(legacy.seen) == []


@pytest.mark.parametrize(
    ("path", "expect"),
    [
        ("/v1/runs/" + "a" * 8 * 1024 + "/stream", 400),
        ("/v1/runs/" + "a" * 64 * 1024 + "/stream", None),
        ("/v1/runs/big/stream?cursor=" + "a" * 64 * 1024, None),
        ("/v1/runs/" + "a%2F" * 4000 + "/stream", 400),
    ],
)
async def test_very_long_url_gets_a_clear_4xx(
    legacy: LegacyApi, path: str, expect: int | None
) -> None:
    legacy.scripted("big")
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        async with asyncio.timeout(5), http.get(URL(b.url + path, encoded=True)) as response:
            if expect is None:
                assert response.status in (400, 414, 431)
            else:
                assert response.status == expect
                assert (await response.json())["error"] == "invalid_run_id"
        async with http.get(f"{b.url}/healthz") as response:
            assert response.status == 200
    assert list(legacy.seen) == []
