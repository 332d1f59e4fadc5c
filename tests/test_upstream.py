"""The upstream client: what each upstream answer becomes, and which headers go upstream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import RequestInfo
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from bridge.demo.legacy_api import Fault, LegacyApi
from bridge.errors import (
    InvalidRunId,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from bridge.polling.upstream import NEVER_FORWARDED, UpstreamClient, forwardable
from bridge.settings import load

BASE = "http://legacy.test"
RUN_URL = f"{BASE}/runs/r1"
SECRET = "Bearer s3cr3t-t0ken-never-shown"
CAP = 1024


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds ClientResponse without the ``stream_writer`` that
    aiohttp 3.14 requires; this fills it in (the request is already "sent")."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def reply(mock: aioresponses, url: str = RUN_URL, **kwargs: Any) -> None:
    mock.get(url, response_class=_Response, **kwargs)


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient(load(upstream_url=BASE, upstream_max_bytes=CAP, upstream_timeout=2.0))
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def fetch(client: UpstreamClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return await client.fetch_status("r1", headers or {"authorization": SECRET})


def sent_headers(mock: aioresponses, url: str = RUN_URL) -> CIMultiDict[str]:
    (call,) = mock.requests[("GET", URL(url))]
    return CIMultiDict(call.kwargs["headers"])


# --- answers ---------------------------------------------------------------------------


async def test_200_object_is_returned_as_sent(client: UpstreamClient, mock: aioresponses) -> None:
    status = {"id": "r1", "status": "running", "progress": 0.25, "nodes": [{"id": "a"}]}
    reply(mock, payload=status)
    assert await fetch(client) == status
    (call,) = mock.requests[("GET", URL(RUN_URL))]
    assert call.kwargs["allow_redirects"] is False
    headers = sent_headers(mock)
    assert headers["authorization"] == SECRET
    assert headers["Accept"] == "application/json"


async def test_run_path_template_is_used(mock: aioresponses) -> None:
    c = UpstreamClient(load(upstream_url=BASE + "/api/", upstream_run_path="/v2/x/{run_id}/s"))
    await c.start()
    try:
        reply(mock, f"{BASE}/api/v2/x/run.1_a-b/s", payload={"status": "queued"})
        assert await c.fetch_status("run.1_a-b", {}) == {"status": "queued"}
    finally:
        await c.close()


async def test_invalid_run_id_never_reaches_the_network(
    client: UpstreamClient, mock: aioresponses
) -> None:
    for bad in ("..", "a/b", "%2F", "a?b", "", "a\r\n"):
        with pytest.raises(InvalidRunId):
            await client.fetch_status(bad, {})
    assert mock.requests == {}


@pytest.mark.parametrize(
    ("status", "code"), [(401, "unauthorized"), (403, "forbidden"), (404, "not_found")]
)
async def test_refusals_pass_through_with_their_status(
    client: UpstreamClient, mock: aioresponses, status: int, code: str
) -> None:
    reply(mock, status=status, payload={"error": "nope"})
    with pytest.raises(UpstreamRefused) as caught:
        await fetch(client)
    assert caught.value.status == status
    assert caught.value.body()["error"] == code
    assert caught.value.transient is False


@pytest.mark.parametrize("status", [500, 502, 503, 504, 418, 204, 201])
async def test_other_statuses_are_502(
    client: UpstreamClient, mock: aioresponses, status: int
) -> None:
    reply(mock, status=status, payload={"status": "running"})
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch(client)
    assert caught.value.status == 502
    assert caught.value.transient


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_not_followed(
    client: UpstreamClient, mock: aioresponses, status: int
) -> None:
    reply(mock, status=status, headers={"Location": "http://elsewhere.test/steal"})
    reply(mock, "http://elsewhere.test/steal", payload={"status": "completed"})
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch(client)
    assert caught.value.status == 502
    assert ("GET", URL("http://elsewhere.test/steal")) not in mock.requests


@pytest.mark.parametrize(
    "exception",
    [TimeoutError(), aiohttp.ServerTimeoutError("read timeout")],
)
async def test_timeout_is_504(
    client: UpstreamClient, mock: aioresponses, exception: Exception
) -> None:
    reply(mock, exception=exception)
    with pytest.raises(UpstreamTimeout) as caught:
        await fetch(client)
    assert caught.value.status == 504


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("truncated"),
        ConnectionResetError(104, "reset"),
        OSError(113, "no route"),
    ],
)
async def test_connection_errors_are_502(
    client: UpstreamClient, mock: aioresponses, exception: Exception
) -> None:
    reply(mock, exception=exception)
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch(client)
    assert caught.value.status == 502


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"status": "running", ',
        b"<html>502 Bad Gateway</html>",
        b'{"a":"\xff\xfe"}',
        b'{"progress": NaN}',
        b'{"progress": Infinity}',
        b'{"progress": -Infinity}',
        b'{"progress": 1e400}',
        b'{"progress": -1e400}',
        b'{"n": ' + b"1" * 5000 + b"}",
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ],
)
async def test_non_json_is_502(mock: aioresponses, body: bytes) -> None:
    c = UpstreamClient(load(upstream_url=BASE))  # default cap: the bodies fit
    await c.start()
    try:
        reply(mock, body=body)
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(c)
        assert caught.value.status == 502
    finally:
        await c.close()


@pytest.mark.parametrize(
    "body", [b"[]", b'["running", 0.5]', b'"running"', b"0.5", b"null", b"true"]
)
async def test_json_that_is_not_an_object_is_502(
    client: UpstreamClient, mock: aioresponses, body: bytes
) -> None:
    reply(mock, body=body)
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch(client)
    assert caught.value.status == 502


async def test_hostile_but_valid_json_is_returned_exactly(
    client: UpstreamClient, mock: aioresponses
) -> None:
    status = {"status": "a\r\nevent: complete\n\n", "s": "\ud800\u2028\u0085\x00", "n": 1e300}
    reply(mock, body=json.dumps(status).encode())
    assert await fetch(client) == status
    # Raw (unescaped) U+2028 and a BOM are fine too.
    reply(mock, body=b'\xef\xbb\xbf{"s": "\xe2\x80\xa8"}')
    assert await fetch(client) == {"s": "\u2028"}


async def test_body_of_exactly_the_cap_is_accepted(
    client: UpstreamClient, mock: aioresponses
) -> None:
    body = b'{"a":"' + b"x" * (CAP - 8) + b'"}'
    assert len(body) == CAP
    reply(mock, body=body)
    assert await fetch(client) == {"a": "x" * (CAP - 8)}


@pytest.mark.parametrize("declare", [True, False])
async def test_body_over_the_cap_is_502(
    client: UpstreamClient, mock: aioresponses, declare: bool
) -> None:
    body = b'{"a":"' + b"x" * CAP + b'"}'
    headers = {"Content-Length": str(len(body))} if declare else {}
    reply(mock, body=body, headers=headers)
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch(client)
    assert caught.value.status == 502


async def test_gzip_bomb_is_capped_after_decompression(legacy: LegacyApi) -> None:
    """Against a real server: 2 MiB of inflated body, 1 KiB cap."""
    legacy.scripted("r1")
    legacy.inject("r1", Fault("gzip-bomb", size=2 * 1024 * 1024))
    c = UpstreamClient(load(upstream_url=legacy.url, upstream_max_bytes=CAP))
    await c.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            await c.fetch_status("r1", {})
        # The run itself is fine: the next request succeeds.
        assert (await c.fetch_status("r1", {}))["id"] == "r1"
    finally:
        await c.close()


async def test_real_timeout_is_504_in_bounded_time(legacy: LegacyApi) -> None:
    legacy.scripted("r1")
    legacy.inject("r1", Fault("hang"))
    c = UpstreamClient(load(upstream_url=legacy.url, upstream_timeout=0.2))
    await c.start()
    try:
        async with asyncio.timeout(5):
            with pytest.raises(UpstreamTimeout):
                await c.fetch_status("r1", {})
    finally:
        await c.close()


async def test_real_redirect_is_not_followed(legacy: LegacyApi) -> None:
    legacy.scripted("r1")
    legacy.scripted("r2")
    legacy.inject("r1", Fault("redirect", location=f"{legacy.url}/runs/r2"))
    c = UpstreamClient(load(upstream_url=legacy.url))
    await c.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            await c.fetch_status("r1", {"authorization": SECRET})
        assert legacy.requests["r2"] == 0
    finally:
        await c.close()


# --- credentials never leak into errors ---------------------------------------------------


def _leaky_response_error() -> aiohttp.ClientResponseError:
    info = RequestInfo(
        URL(RUN_URL), "GET", CIMultiDictProxy(CIMultiDict({"Authorization": SECRET})), URL(RUN_URL)
    )
    return aiohttp.ClientResponseError(info, (), status=500, message=f"boom {SECRET}")


SCENARIOS: list[dict[str, Any]] = [
    {"status": 401},
    {"status": 403},
    {"status": 404},
    {"status": 500},
    {"status": 302, "headers": {"Location": "http://elsewhere.test/"}},
    {"exception": TimeoutError()},
    {"exception": aiohttp.ClientConnectionError(f"cannot connect with {SECRET}")},
    {"exception": OSError(f"oops {SECRET}")},
    {"exception": "leaky"},
    {"body": b"not json"},
    {"body": b"[1]"},
    {"body": b'{"a":"' + b"x" * 2 * CAP + b'"}'},
]


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_no_error_ever_contains_the_authorization_value(
    client: UpstreamClient,
    mock: aioresponses,
    caplog: pytest.LogCaptureFixture,
    scenario: dict[str, Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    if scenario.get("exception") == "leaky":
        scenario = {"exception": _leaky_response_error()}
    reply(mock, **scenario)
    with pytest.raises(UpstreamError) as caught:
        await fetch(client)
    error = caught.value
    for text in (str(error), repr(error), error.message, json.dumps(error.body())):
        assert "s3cr3t" not in text
    # The aiohttp exception (whose text may carry headers) is not chained for display.
    assert error.__cause__ is None
    assert "s3cr3t" not in caplog.text


# --- forwardable --------------------------------------------------------------------------


def test_only_allow_listed_headers_are_forwarded_case_insensitively() -> None:
    viewer = {
        "Authorization": SECRET,
        "X-Api-Key": "k",
        "Cookie": "c=1",
        "X-Other": "no",
        "Accept": "text/event-stream",
        "Last-Event-ID": "1-1",
        "User-Agent": "browser",
    }
    assert forwardable(("authorization", "x-api-key", "cookie"), viewer) == {
        "authorization": SECRET,
        "cookie": "c=1",
        "x-api-key": "k",
    }
    assert forwardable((), viewer) == {}
    assert forwardable(("x-other",), viewer) == {"x-other": "no"}


@pytest.mark.parametrize(
    "name",
    [
        *sorted(NEVER_FORWARDED),
        *(
            "Host",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "x-forwarded-host",
            "X-Forwarded-Proto",
        ),
        *("Connection", "Transfer-Encoding", "TE", "Upgrade", "Keep-Alive", "Content-Length"),
    ],
)
def test_connection_headers_are_never_forwarded_even_if_allow_listed(name: str) -> None:
    viewer = {name: "viewer-value", "Authorization": SECRET}
    chosen = forwardable((name.lower(), "authorization"), viewer)
    assert chosen == {"authorization": SECRET}


def test_settings_lower_case_the_allow_list_so_mixed_case_config_works() -> None:
    allow = load(forward_headers="X-Api-Key,HOST,X-Forwarded-For").forward_headers
    assert forwardable(allow, {"x-api-key": "k", "Host": "evil", "X-Forwarded-For": "1.2.3.4"}) == {
        "x-api-key": "k"
    }


async def test_only_forwarded_headers_reach_the_upstream(
    client: UpstreamClient, mock: aioresponses
) -> None:
    reply(mock, payload={"status": "running"})
    viewer = {
        "Authorization": SECRET,
        "Host": "evil.example",
        "Proxy-Authorization": "Basic cHJveHk=",
        "X-Forwarded-For": "10.0.0.1",
        "Connection": "close",
        "X-Other": "no",
    }
    allow = ("authorization", "host", "proxy-authorization", "x-forwarded-for", "connection")
    await client.fetch_status("r1", forwardable(allow, viewer))
    sent = sent_headers(mock)
    assert sent["authorization"] == SECRET
    for name in ("Host", "Proxy-Authorization", "X-Forwarded-For", "Connection", "X-Other"):
        assert name not in sent
