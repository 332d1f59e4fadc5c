"""Answers as plain data (status, headers, body), so that the Quart routes (bridge/web/app.py)
and the ASGI stream front (bridge/web/front.py) refuse a request in one and the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from bridge.errors import BridgeError
from bridge.events import sse
from bridge.events.sse import encode_json
from bridge.streams.keepalive import spread

#: Response headers as (name, value) pairs, in order.
Headers: TypeAlias = tuple[tuple[str, str], ...]

#: The headers of every SSE answer (DESIGN.md, "The stream").
SSE_HEADERS: Final[Headers] = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)
JSON_HEADERS: Final[Headers] = (("Content-Type", "application/json"),)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Headers
    body: bytes = b""


def error_reply(error: BridgeError, body: dict[str, str] | None = None) -> Reply:
    """The JSON error answer: ``{"error", "message"}`` (or ``body``), Retry-After if any."""
    headers = JSON_HEADERS
    if error.retry_after is not None:
        headers += (("Retry-After", str(max(1, round(error.retry_after)))),)
    return Reply(error.status, headers, encode_json(body or error.body()).encode())


def transient(error: BridgeError) -> bool:
    """A refusal that may pass by itself: upstream trouble, a full or draining bridge."""
    return error.status in (429, 502, 503, 504)


def retry_reply(error: BridgeError, retry_ms: int, run_id: str | None) -> Reply:
    """A transient refusal as EventSource understands it: 200, ``retry:``, a comment, close.

    Browsers fail an EventSource for good on any non-200 answer (WHATWG HTML, "Server-sent
    events": a response whose status is not 200 fails the connection) and never retry;
    this form makes them reconnect after ``retry`` ms and resume by Last-Event-ID.
    ``retry_ms`` is used when the error names no Retry-After.
    """
    seconds = error.retry_after
    base = retry_ms if seconds is None else seconds * 1000
    which = f" (run {run_id})" if run_id is not None else ""
    comment = f": {error.code}{which}: {error.message}\n\n".encode()
    return Reply(200, SSE_HEADERS, sse.retry(spread(base)) + comment)


def http_error_reply(status: int, name: str, description: str) -> Reply:
    """An HTTP-level error (404, 405, 500, ...) in the bridge's JSON error shape."""
    code = (name or "error").lower().replace(" ", "_")
    body = {"error": code, "message": description or code}
    return Reply(status, JSON_HEADERS, encode_json(body).encode())
