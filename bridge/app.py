"""The Quart app: routes, error answers, and the lifetime of the shared services."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from bridge import run_id as run_ids
from bridge.auth import ForwardAuth
from bridge.cluster import Cluster
from bridge.cors import install_cors
from bridge.direct import SEND_KEY, CaptureSend, Ticker, transport_of
from bridge.errors import BridgeError, Draining, InvalidRunId
from bridge.gc_tuning import GcTuner
from bridge.history import Event
from bridge.hub import Channel, Hub, create_hub
from bridge.limits import StreamLimiter
from bridge.metrics import Metrics
from bridge.pollers import PollerRegistry
from bridge.readiness import Readiness
from bridge.settings import Settings
from bridge.sse import encode_json
from bridge.stream import StreamLimits, events
from bridge.upstream import UpstreamClient, forwardable
from bridge.watchdog import SendWatchdog

log = logging.getLogger("bridge.app")

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Bridge:
    """The services one app shares: upstream client, hub, pollers, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.upstream = UpstreamClient(settings, self.metrics)
        self.hub: Hub = create_hub(
            settings.redis_url,
            history_size=settings.history_size,
            history_runs=settings.history_runs,
            history_ttl=settings.history_ttl,
        )
        self.pollers = PollerRegistry(settings, self.upstream, self.hub, self.metrics)
        self.limiter = StreamLimiter(settings.max_streams, settings.max_streams_per_client)
        self.watchdog = SendWatchdog(settings.send_timeout)
        self.ticker = Ticker(settings.ping_interval, settings.stream_timeout, settings.send_timeout)
        self.metrics.track(lambda: self.pollers.active, lambda: self.ticker.viewers)
        self.gc: GcTuner | None = None
        if settings.gc_freeze_interval > 0:
            self.gc = GcTuner(settings.gc_freeze_interval, settings.gc_full_interval)
        self.auth = ForwardAuth(settings) if settings.auth_url is not None else None
        self.readiness = Readiness(settings, self.upstream)
        self.cluster: Cluster | None = None
        if settings.redis_url is not None:
            # Cluster mode: pollers lead or follow through Redis (bridge/cluster/).
            self.cluster = Cluster(settings, self.upstream, self.hub, self.metrics)
            self.pollers = self.cluster.pollers
            self.readiness = self.cluster.readiness
        self.draining = False

    async def start(self) -> None:
        await self.upstream.start()
        if self.cluster is not None:
            await self.cluster.start()
        if self.auth is not None:
            await self.auth.start()
        self.watchdog.start()
        self.ticker.start()
        if self.gc is not None:
            self.gc.start()

    async def stop(self) -> None:
        self.drain()
        await self.watchdog.stop()
        await self.ticker.stop()
        if self.gc is not None:
            await self.gc.stop()
        await self.pollers.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self.auth is not None:
            await self.auth.close()
        await self.upstream.close()

    def drain(self) -> None:
        """Refuse new streams and end the open ones (clients reconnect and resume)."""
        self.draining = True
        for channel in self.hub.live_channels():
            channel.close_all()

    def limits(self) -> StreamLimits:
        s = self.settings
        # Jitter spreads the reconnects of many viewers after a restart.
        retry = int(s.retry_ms * (1 + random.uniform(0, 0.2)))
        return StreamLimits(s.ping_interval, s.stream_timeout, s.viewer_buffer, retry)

    def fast_path(self) -> tuple[asyncio.WriteTransport, Ticker] | None:
        """This request's transport for direct writes (bridge/direct.py), if it has one."""
        if not self.settings.direct_writes:
            return None
        transport = transport_of(request.scope.get(SEND_KEY))
        return None if transport is None else (transport, self.ticker)

    def credentials(self) -> dict[str, str]:
        return forwardable(self.settings.forward_headers, dict(request.headers.items()))

    async def upstream_headers(self, run_id: str, viewer: dict[str, str]) -> dict[str, str]:
        """The headers this request's viewer polls ``run_id`` with (after admission).

        Viewer mode: the viewer's own allow-listed headers, so a viewer shares a poller
        only with viewers presenting the same credentials. Forward-auth mode: the auth
        service admits the viewer (or raises), then the bridge's own headers are used.
        """
        if self.auth is None:
            return viewer
        await self.auth.admit(run_id, viewer)
        return dict(self.settings.upstream_headers)

    def client_address(self) -> str:
        if self.settings.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
            if hops:
                return hops[-1]
        return request.remote_addr or "unknown"


def error_response(error: BridgeError) -> Response:
    response = Response(
        encode_json(error.body()), status=error.status, content_type="application/json"
    )
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return response


def last_event_id() -> str | None:
    """Last-Event-ID header, else the cursor (or since) query parameter."""
    value = request.headers.get("Last-Event-ID")
    if not value:
        value = request.args.get("cursor") or request.args.get("since")
    return value or None


def create_app(settings: Settings) -> Quart:
    app = Quart("bridge")
    app.asgi_app = CaptureSend(app.asgi_app)  # type: ignore[method-assign]
    # Werkzeug would 308-redirect /v1/runs//stream to /v1/runs/stream: the status of a
    # run called "stream". Empty segments must be refused, not merged.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    bridge = Bridge(settings)
    app.extensions["bridge"] = bridge
    install_cors(app, settings)

    @app.before_serving
    async def _start() -> None:
        await bridge.start()

    @app.after_serving
    async def _stop() -> None:
        await bridge.stop()

    @app.errorhandler(BridgeError)
    async def _bridge_error(error: BridgeError) -> Response:
        bridge.metrics.streams_refused.labels(error.code).inc()
        return error_response(error)

    @app.errorhandler(NotFound)
    async def _not_found(error: NotFound) -> Response:
        if request.path.startswith("/v1/runs/"):
            # An empty id, or one with an (encoded) slash or a dot segment, matches no route.
            return error_response(
                InvalidRunId("The run id must not be empty or contain '/' or be '.' or '..'.")
            )
        return await _http_error(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = (error.name or "error").lower().replace(" ", "_")
        body = {"error": code, "message": error.description or code}
        return Response(
            encode_json(body), status=error.code or 500, content_type="application/json"
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(encode_json({"status": "ok"}), content_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        if bridge.draining:
            return error_response(Draining("The bridge is shutting down."))
        report = await bridge.readiness.check()
        status = 200 if report["ready"] else 503
        return Response(encode_json(report), status=status, content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(bridge.metrics.render(), content_type=bridge.metrics.content_type)

    @app.get("/v1/runs/<run_id>")
    async def run_status(run_id: str) -> Response:
        run_ids.validate(run_id)
        headers = await bridge.upstream_headers(run_id, bridge.credentials())
        async with bridge.pollers.lease(run_id, headers) as channel:
            latest = channel.history.latest
            assert latest is not None  # a lease always comes with a first status
            response = Response(latest.data, content_type="application/json")
            response.headers["Cache-Control"] = "no-cache"
            return response

    @app.get("/v1/runs/<run_id>/stream")
    async def run_stream(run_id: str) -> Response:
        run_ids.validate(run_id)
        if bridge.draining:
            raise Draining("The bridge is shutting down.")
        body = _stream_body(
            bridge,
            run_id,
            bridge.credentials(),
            bridge.client_address(),
            last_event_id(),
            bridge.fast_path(),
        )
        try:
            opening = await anext(body)
        except StopAsyncIteration:
            # The viewer already has the run's final event: 204 stops EventSource.
            return Response("", status=204)
        bridge.metrics.streams_opened.inc()
        response = Response(watched(bridge, opening, body), headers=SSE_HEADERS)
        # Quart's RESPONSE_TIMEOUT (60 s) would cut every stream; ours ends by itself.
        response.timeout = None
        return response

    from bridge.dashboard import register_watching  # imports this module

    register_watching(app, bridge)  # /v1/streams, the dashboard page, the demo's run list
    return app


async def _stream_body(
    bridge: Bridge,
    run_id: str,
    viewer: dict[str, str],
    client: str,
    resume_from: str | None,
    direct: tuple[asyncio.WriteTransport, Ticker] | None,
) -> AsyncGenerator[bytes, None]:
    """Takes a stream slot, admits the viewer, opens the lease and subscription.

    Everything that can refuse the viewer happens before the first yield, so the
    handler can still answer with an error status and JSON body.
    """
    async with AsyncExitStack() as stack:
        stack.enter_context(bridge.limiter.hold(client))
        headers = await bridge.upstream_headers(run_id, viewer)
        channel: Channel = await stack.enter_async_context(bridge.pollers.lease(run_id, headers))
        subscription = await stack.enter_async_context(bridge.hub.subscribe(channel))
        history = channel.history
        first: list[Event] = history.resume(resume_from)
        cursor = history.holds(resume_from) or 0
        if not first and history.terminal:
            return
        bridge.metrics.open_streams.inc()
        try:
            async for chunk in events(subscription, first, cursor, bridge.limits(), direct):
                yield chunk
        finally:
            bridge.metrics.open_streams.dec()


async def watched(
    bridge: Bridge, first: bytes, rest: AsyncGenerator[bytes, None]
) -> AsyncIterator[bytes]:
    """The response body: ``first``, then ``rest``, each send timed by the watchdog."""
    loop = asyncio.get_running_loop()
    sending = bridge.watchdog.watch()
    try:
        sending.since = loop.time()
        yield first
        sending.since = None
        async for chunk in rest:
            sending.since = loop.time()
            yield chunk
            sending.since = None
    finally:
        bridge.watchdog.unwatch(sending)
        await rest.aclose()
