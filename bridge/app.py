"""The Quart app: the API's routes and its error answers.

    GET /v1/runs/{id}/stream   one run's SSE stream        \\ both opened by
    GET /v1/streams?runs=a,b   several runs on one stream  / bridge/opening.py
    GET /v1/runs/{id}          the latest status as JSON
    GET /healthz, /readyz, /metrics

Routes read the request once (``viewer_of``) and pass data on; the services they use
are built and owned by ``Services`` (bridge/services.py). The dashboard page and the
demo's run list are bridge/dashboard.py's.
"""

from __future__ import annotations

import asyncio
import hmac
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial

from pydantic import SecretStr
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from bridge import catchup, sse
from bridge import run_id as run_ids
from bridge.cors import install_cors
from bridge.dashboard import register_dashboard
from bridge.errors import BridgeError, Draining, InvalidRunId, PokeDisabled, PokeUnauthorized
from bridge.hypercorn_transport import CaptureSend, fast_path_transport
from bridge.multi import multi_frames, parse_runs
from bridge.openapi import register_openapi
from bridge.opening import Framer, RunRefused, stream_body
from bridge.services import Services
from bridge.settings import Settings
from bridge.sse import encode_json
from bridge.stream import run_frames
from bridge.upstream import forwardable
from bridge.viewer import Viewer, client_address, resume_from

#: app.extensions key of the app's Services.
SERVICES = "bridge"

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def error_response(error: BridgeError, body: dict[str, str] | None = None) -> Response:
    response = Response(
        encode_json(body or error.body()), status=error.status, content_type="application/json"
    )
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return response


def viewer_of(services: Services, *, stream: bool) -> Viewer:
    """What this request says about its viewer (``stream``: it may take the fast path)."""
    settings = services.settings
    headers = request.headers
    transport = None
    if stream and settings.direct_writes:
        transport = fast_path_transport(request.scope, services.metrics.fast_path_fell_back)
    return Viewer(
        credentials=forwardable(settings.forward_headers, dict(headers.items())),
        client=client_address(
            settings.trust_forwarded_for,
            headers.get("X-Forwarded-For", ""),
            request.remote_addr,
        ),
        resume_from=resume_from(headers.get("Last-Event-ID"), request.args),
        transport=transport,
        wants_events="text/event-stream" in headers.get("Accept", ""),
    )


async def open_stream(
    services: Services, viewer: Viewer, runs: list[str], framer: Framer, *, name_run: bool
) -> Response:
    """The SSE response, or the error that refused it (``name_run``: say which run)."""
    body = stream_body(services, viewer, runs, framer)
    try:
        if services.draining:
            raise Draining("The bridge is shutting down.")
        opening = await anext(body)
    except StopAsyncIteration:
        # The viewer already has every final event: 204 stops EventSource.
        return Response("", status=204)
    except (RunRefused, BridgeError) as refused:
        error = refused.error if isinstance(refused, RunRefused) else refused
        run_id = refused.run_id if isinstance(refused, RunRefused) and name_run else None
        services.metrics.streams_refused.labels(error.code).inc()
        if viewer.wants_events and transient(error):
            return retry_later(services, error, run_id)
        return error_response(error, refused.body() if run_id is not None else None)
    services.metrics.streams_opened.inc()
    response = Response(watched(services, opening, body), headers=SSE_HEADERS)
    # Quart's RESPONSE_TIMEOUT (60 s) would cut every stream; ours ends by itself.
    response.timeout = None
    return response


def transient(error: BridgeError) -> bool:
    """A refusal that may pass by itself: upstream trouble, a full or draining bridge."""
    return error.status in (429, 502, 503, 504)


def retry_later(services: Services, error: BridgeError, run_id: str | None) -> Response:
    """A transient refusal as EventSource understands it: 200, ``retry:``, a comment, close.

    Browsers fail an EventSource for good on any non-200 answer (WHATWG HTML, "Server-sent
    events": a response whose status is not 200 fails the connection) and never retry;
    this form makes them reconnect after ``retry`` ms and resume by Last-Event-ID.
    """
    seconds = error.retry_after
    base = services.settings.retry_ms if seconds is None else seconds * 1000
    retry = int(base * (1 + random.uniform(0, 0.2)))  # spread the reconnects
    which = f" (run {run_id})" if run_id is not None else ""
    comment = f": {error.code}{which}: {error.message}\n\n".encode()
    return Response(sse.retry(retry) + comment, status=200, headers=SSE_HEADERS)


async def watched(
    services: Services, first: bytes, rest: AsyncGenerator[bytes, None]
) -> AsyncIterator[bytes]:
    """The response body: ``first``, then ``rest``, each send timed by the ticker."""
    loop = asyncio.get_running_loop()
    sending = services.ticker.watch()
    try:
        sending.since = loop.time()
        yield first
        sending.since = None
        async for chunk in rest:
            sending.since = loop.time()
            yield chunk
            sending.since = None
    finally:
        services.ticker.unwatch(sending)
        await rest.aclose()


def create_app(settings: Settings) -> Quart:
    app = Quart("bridge")
    app.asgi_app = CaptureSend(app.asgi_app)  # type: ignore[method-assign]
    # Werkzeug would 308-redirect /v1/runs//stream to /v1/runs/stream: the status of a
    # run called "stream". Empty segments must be refused, not merged.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    services = Services(settings)
    app.extensions[SERVICES] = services
    install_cors(app, settings)
    single_run: Framer = partial(run_frames, ticker=services.ticker)

    @app.before_serving
    async def _start() -> None:
        await services.start()

    @app.after_serving
    async def _stop() -> None:
        await services.stop()

    @app.errorhandler(BridgeError)
    async def _bridge_error(error: BridgeError) -> Response:
        services.metrics.streams_refused.labels(error.code).inc()
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
        if services.draining:
            return error_response(Draining("The bridge is shutting down."))
        report = await services.readiness.check()
        status = 200 if report["ready"] else 503
        return Response(encode_json(report), status=status, content_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(services.metrics.render(), content_type=services.metrics.content_type)

    @app.get("/v1/runs/<run_id>")
    async def run_status(run_id: str) -> Response:
        run_ids.validate(run_id)
        viewer = viewer_of(services, stream=False)
        headers = await services.upstream_headers(run_id, viewer.credentials)
        async with services.pollers.lease(run_id, headers) as channel:
            latest = channel.history.latest
            assert latest is not None  # a lease always comes with a first status
            response = Response(latest.data, content_type="application/json")
            response.headers["Cache-Control"] = "no-cache"
            return response

    @app.get("/v1/runs/<run_id>/stream")
    async def run_stream(run_id: str) -> Response:
        runs = [run_ids.validate(run_id)]
        viewer = viewer_of(services, stream=True)
        return await open_stream(services, viewer, runs, single_run, name_run=False)

    @app.get("/v1/streams")
    async def multi_stream() -> Response:
        runs = parse_runs(request.args.getlist("runs"), settings.multi_max_runs)
        viewer = viewer_of(services, stream=False)
        return await open_stream(services, viewer, runs, multi_frames, name_run=True)

    @app.post("/v1/runs/<run_id>/poll")
    async def poke(run_id: str) -> Response:
        # Checked before the id, so that nothing about runs is told without the token.
        refusal = poke_refusal(settings.poke_token, request.headers.get("Authorization"))
        if refusal is not None:
            services.metrics.pokes.labels(refusal.code).inc()
            response = error_response(refusal)
            if isinstance(refusal, PokeUnauthorized):
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        run_ids.validate(run_id)
        poked = await services.pollers.poke(run_id)
        services.metrics.pokes.labels(poked.outcome).inc()
        body = {"run_id": run_id, "outcome": poked.outcome, "pollers": poked.pollers}
        return Response(encode_json(body), status=202, content_type="application/json")

    @app.get("/v1/runs/<run_id>/events")
    async def run_events(run_id: str) -> Response:
        run_ids.validate(run_id)
        wait = catchup.parse_wait(request.args.get("wait"), settings.longpoll_max)
        viewer = viewer_of(services, stream=False)
        return await answered(
            lambda: catchup.events(services, viewer, run_id, viewer.resume_from, wait)
        )

    @app.get("/v1/runs/<run_id>/result")
    async def run_result(run_id: str) -> Response:
        run_ids.validate(run_id)
        wait = catchup.parse_wait(request.args.get("wait"), settings.longpoll_max)
        viewer = viewer_of(services, stream=False)
        return await answered(lambda: catchup.result(services, viewer, run_id, wait))

    async def answered(asked: Callable[[], Awaitable[catchup.Answer]]) -> Response:
        """A JSON catch-up answer; refusals as the stream's, as JSON (these are not SSE)."""
        if services.draining:
            raise Draining("The bridge is shutting down.")
        try:
            answer = await asked()
        except RunRefused as refusal:
            raise refusal.error from None
        return Response(
            answer.body,
            status=answer.status,
            content_type="application/json",
            headers=answer.headers,
        )

    register_openapi(app)
    register_dashboard(app, services)
    return app


def poke_refusal(token: SecretStr | None, authorization: str | None) -> BridgeError | None:
    """Why a poke is refused (404 when poke is off, 401 without the token), else None."""
    if token is None:
        return PokeDisabled()
    scheme, _, given = (authorization or "").strip().partition(" ")
    # compare_digest: the time taken tells nothing about how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    ):
        return PokeUnauthorized()
    return None
