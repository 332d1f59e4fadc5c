"""The stream routes, served as a plain ASGI app in front of Quart.

    GET|HEAD /v1/runs/{run_id}/stream   one run's SSE stream
    GET|HEAD /v1/streams?runs=a,b,c      several runs on one stream

Why: a stream is opened once and then held for minutes, so what its opening costs and
what it keeps alive is per viewer: under a reconnect storm thousands open within
seconds. Through Quart each would cost a request and a response object, werkzeug headers,
two tasks (Quart's request handler and its receiver), a copied context and an exit stack
kept alive for the stream's whole life (bench/FINDINGS.md, "Why memory and connects are
not met"). Here a stream costs the coroutine the server already runs for the request: a
fast-path viewer waits for its sink's end or for the disconnect in that coroutine
(bridge/web/asgi.py), and only the ASGI path (HTTP/1.0, HEAD, HTTP/2) adds one task to
pump frames while the disconnect is watched.

Everything else goes to Quart, including other methods on these paths (the CORS
preflight ``OPTIONS``, 405 for the rest): Quart keeps both rules in its URL map, so
routing, ``OPTIONS`` and the OpenAPI check know them. What Quart gave these routes is
done here once, with the same code the Quart routes use: JSON errors and the EventSource
retry form (bridge/web/reply.py), CORS (bridge/web/cors.py's policy), a JSON 500 for a failure.
The access log is the server's, for both. Nothing here parses HTTP or knows the server:
the request is the ASGI scope the server built, and the fast path's socket is found by
the lookup the server hands in (``use_fast_path``; bridge/server/serve.py gives
bridge/server/hypercorn_transport.py's), called with the request's scope and ``send``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Final, TypeAlias
from urllib.parse import parse_qsl

from bridge import run_id as run_ids
from bridge.errors import BridgeError
from bridge.ops.metrics import Metrics
from bridge.settings import Settings
from bridge.streams.direct import DirectSink
from bridge.streams.fleet import NoList, parse_envelope
from bridge.streams.multi import multi_frames, parse_runs
from bridge.streams.opening import Framer, Opened, Opener, RunRefused
from bridge.streams.stream import Frames, run_frames
from bridge.streams.ticker import Sending, Ticker
from bridge.streams.viewer import Viewer
from bridge.tasks import cancel_and_wait
from bridge.web import asgi
from bridge.web.asgi import App, Receive, Scope, Send
from bridge.web.cors import CorsPolicy
from bridge.web.reply import (
    SSE_HEADERS,
    Headers,
    Reply,
    error_reply,
    http_error_reply,
    retry_reply,
    transient,
)
from bridge.web.viewers import viewer_from

log = logging.getLogger("bridge.web.front")

RUN_PREFIX: Final = "/v1/runs/"
RUN_SUFFIX: Final = "/stream"
MULTI_PATH: Final = "/v1/streams"
EVENTS_PATH: Final = "/v1/events"
#: The request headers the stream routes read, besides the forwarded ones.
_READ: Final = frozenset({b"accept", b"last-event-id", b"origin", b"x-forwarded-for"})
_INTERNAL_ERROR: Final = http_error_reply(
    500,
    "Internal Server Error",
    "The server encountered an internal error and was unable to complete your request.",
)

#: The server's way to a viewer's socket for the fast path: from the request's scope and
#: the server's ``send``, the transport, or None (then the stream takes the ASGI path).
TransportLookup: TypeAlias = Callable[[Scope, Send], asyncio.WriteTransport | None]
#: An open stream (its viewer and what the opening gave), or the answer that ends the request.
Opening: TypeAlias = tuple[Viewer, Opened] | Reply


def stream_route(scope: Scope) -> tuple[bool, str | None]:
    """(a stream route, its run id or None for /v1/streams), as werkzeug would match it.

    A run id is one non-empty path segment; anything else (``/v1/runs//stream``, an
    encoded slash) is not this route, and Quart answers it (400).
    """
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False, None
    path: str = scope["path"]
    if path in (MULTI_PATH, EVENTS_PATH):
        return True, None
    if path.startswith(RUN_PREFIX) and path.endswith(RUN_SUFFIX):
        run_id = path[len(RUN_PREFIX) : -len(RUN_SUFFIX)]
        if run_id and "/" not in run_id:
            return True, run_id
    return False, None


class StreamFront:
    """ASGI middleware: the stream routes here, every other request to ``app`` (Quart)."""

    def __init__(
        self,
        app: App,
        *,
        opener: Opener,
        ticker: Ticker,
        metrics: Metrics,
        settings: Settings,
        cors: CorsPolicy | None,
    ) -> None:
        self.app = app
        self.opener = opener
        self.ticker = ticker
        self.metrics = metrics
        self.settings = settings
        self.cors = cors
        #: None until the server offers the fast path (``use_fast_path``).
        self.transports: TransportLookup | None = None
        self.single_run: Framer = partial(run_frames, ticker=ticker)
        #: ``GET /v1/events`` (bridge/streams/fleet.py), when the bridge follows a list.
        self.events: Callable[[Viewer, bool], Awaitable[Opened]] | None = None
        # Matched against the scope's (lower-case) header names without decoding them all.
        self.forward = frozenset(h.encode("latin-1") for h in settings.forward_headers)

    def use_fast_path(self, lookup: TransportLookup) -> None:
        """Serve single-run streams on the fast path wherever ``lookup`` finds the socket."""
        self.transports = lookup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched, run_id = stream_route(scope)
        if not matched:
            await self.app(scope, receive, send)
            return
        opened, cors = await self._open(scope, send, run_id)
        if isinstance(opened, Reply):
            await asgi.send_reply(send, opened, cors)
            return
        viewer, stream = opened
        await asgi.start(send, 200, SSE_HEADERS + cors)
        try:
            if viewer.transport is not None:
                left = await self._serve_fast(send, receive, stream.first, stream.frames)
            else:
                left = await self._serve_asgi(send, receive, stream.first, stream.frames)
        finally:
            await stream.close()
        # Hack H3 (docs/hacks.md): no final body once the viewer left, or Hypercorn takes
        # the dead connection for an idle keep-alive one and holds it for 75 s.
        if not left:
            await send(asgi.END)

    # --- the request, read once, and the opening (refusals answer here) ---------------

    async def _open(self, scope: Scope, send: Send, run_id: str | None) -> tuple[Opening, Headers]:
        """The stream opened, or the answer that refuses it; and the answer's CORS headers.

        The request's headers are read here, so that nothing of them but the viewer is
        kept for the stream's life.
        """
        request = self._read(scope)
        cors = self.cors.headers(request.get(b"origin"), scope["method"]) if self.cors else ()
        try:
            if scope["path"] == EVENTS_PATH:
                args = first_values(query_args(scope))
                envelope = parse_envelope(args.get("envelope"))
                viewer = self._viewer(scope, send, request, args, stream=False)
                try:
                    if self.events is None:
                        raise NoList()
                    return (viewer, await self.events(viewer, envelope)), cors
                except BridgeError as error:
                    return self._refusal(error, viewer, False), cors
            viewer, runs, framer, name_run = self._parse(scope, send, request, run_id)
            try:
                opened = await self.opener.open(viewer, runs, framer)
            except (RunRefused, BridgeError) as refused:
                return self._refusal(refused, viewer, name_run), cors
        except BridgeError as error:  # the request itself is refused (400)
            self.metrics.streams_refused.labels(error.code).inc()
            return error_reply(error), cors
        except Exception:
            log.exception("stream request failed")
            return _INTERNAL_ERROR, cors
        if opened is None:
            # The viewer already has every final event: 204 stops EventSource.
            return Reply(204, ()), cors
        self.metrics.streams_opened.inc()
        return (viewer, opened), cors

    def _parse(
        self, scope: Scope, send: Send, request: dict[bytes, str], run_id: str | None
    ) -> tuple[Viewer, list[str], Framer, bool]:
        """The viewer, its runs, their framer, and whether a refusal names its run."""
        query = query_args(scope)
        args = first_values(query)
        if run_id is not None:
            runs = [run_ids.validate(run_id)]
            viewer = self._viewer(scope, send, request, args, stream=True)
            return viewer, runs, self.single_run, False
        wanted = [value for name, value in query if name == "runs"]
        runs = parse_runs(wanted, self.settings.multi_max_runs)
        envelope = parse_envelope(args.get("envelope"))
        viewer = self._viewer(scope, send, request, args, stream=False)
        return viewer, runs, partial(multi_frames, envelope=envelope), True

    def _refusal(self, refused: RunRefused | BridgeError, viewer: Viewer, name_run: bool) -> Reply:
        """A run's refusal or the bridge's own: JSON, or the form EventSource retries."""
        error = refused.error if isinstance(refused, RunRefused) else refused
        named = refused.run_id if isinstance(refused, RunRefused) and name_run else None
        self.metrics.streams_refused.labels(error.code).inc()
        if viewer.wants_events and transient(error):
            return retry_reply(error, self.settings.retry_ms, named)
        return error_reply(error, refused.body() if named is not None else None)

    def _read(self, scope: Scope) -> dict[bytes, str]:
        """The headers the routes read (first of each) and the forwarded ones (last wins,
        as a dict of all headers would have it), decoded; nothing else is decoded."""
        found: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in self.forward or (name in _READ and name not in found):
                found[name] = value.decode("latin-1")
        return found

    def _viewer(
        self,
        scope: Scope,
        send: Send,
        request: dict[bytes, str],
        args: Mapping[str, str],
        *,
        stream: bool,
    ) -> Viewer:
        """What the request says about its viewer (``args``: the first value of each query
        parameter; ``stream``: it may take the fast path)."""
        transports = self.transports
        transport = transports(scope, send) if stream and transports is not None else None
        client = scope.get("client")
        return viewer_from(
            self.settings,
            offered={
                name.decode("latin-1"): request[name] for name in self.forward & request.keys()
            },
            forwarded_for=request.get(b"x-forwarded-for", ""),
            remote_addr=client[0] if client else None,
            last_event_id=request.get(b"last-event-id"),
            args=args,
            accept=request.get(b"accept", ""),
            transport=transport,
        )

    # --- the two ways a stream is served ----------------------------------------------

    async def _serve_fast(self, send: Send, receive: Receive, first: bytes, frames: Frames) -> bool:
        """The opening through ASGI, then (once caught up) the sink writes: wait for its
        end or for the viewer leaving, in this coroutine. True: the viewer is gone."""
        ticker = self.ticker
        sending = ticker.watch()
        left = False
        try:
            await timed(send, sending, first)
            async for item in frames:
                if isinstance(item, DirectSink):
                    # Nothing more goes through ASGI but the end: no send to time.
                    ticker.unwatch(sending)
                    if await asgi.disconnected_before(item.ended, receive):
                        item.finish("disconnected")
                    # A sink that found its socket closed, or dropped a viewer, ended it.
                    left = item.ended.result() in ("disconnected", "dropped")
                else:
                    await timed(send, sending, item)
            return left
        finally:
            ticker.unwatch(sending)

    async def _serve_asgi(self, send: Send, receive: Receive, first: bytes, frames: Frames) -> bool:
        """Every frame through ASGI: one task sends them while this one watches for the
        viewer leaving (it wakes nothing else: a frame loop waits on its run's events).
        True: the viewer is gone."""
        pump = asyncio.create_task(self._pump(send, first, frames), name="bridge:stream")
        try:
            if await asgi.disconnected_before(pump, receive):
                return True
            if not pump.cancelled():  # cancelled: the ticker dropped a stalled viewer
                pump.result()  # a failure is the request's
            return False
        finally:
            await cancel_and_wait(pump)

    async def _pump(self, send: Send, first: bytes, frames: Frames) -> None:
        ticker = self.ticker
        sending = ticker.watch()  # this task: the ticker cancels it if a send stalls
        try:
            await timed(send, sending, first)
            async for item in frames:
                if isinstance(item, bytes):  # never a sink: this viewer has no transport
                    await timed(send, sending, item)
        finally:
            ticker.unwatch(sending)
            # Hack H4 (docs/hacks.md): a cancelled task's error holds this frame, and the
            # entry holds the task.
            del sending


async def timed(send: Send, sending: Sending, data: bytes) -> None:
    """One frame through ASGI, timed by the ticker (which drops a send that stalls)."""
    sending.since = asyncio.get_running_loop().time()
    await asgi.body(send, data)
    sending.since = None


def query_args(scope: Scope) -> list[tuple[str, str]]:
    raw: bytes = scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else []


def first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Each name's first value, as a multidict's ``get`` gives it."""
    out: dict[str, str] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out
