"""The Quart app: the API's routes and its error answers.

    GET /v1/runs/{id}/stream   one run's SSE stream        \\ served in front of Quart
    GET /v1/streams?runs=a,b   several runs on one stream  / by bridge/web/front.py
    GET /v1/runs/{id}          the latest status as JSON
    GET /healthz, /readyz, /metrics

Routes read the request once (``viewer_of``) and pass data on; the services they use
are built and owned by ``Services`` (bridge/services.py). The dashboard page and the
demo's run list are bridge/web/dashboard.py's.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from pydantic import SecretStr
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from bridge import run_id as run_ids
from bridge.errors import BridgeError, Draining, InvalidRunId, PokeDisabled, PokeUnauthorized
from bridge.events.sse import encode_json
from bridge.services import Services
from bridge.settings import Settings
from bridge.streams import catchup
from bridge.streams.opening import RunRefused
from bridge.streams.viewer import Viewer, viewer_from
from bridge.web.cors import cors_policy, install_cors
from bridge.web.dashboard import register_dashboard
from bridge.web.front import StreamFront
from bridge.web.openapi import register_openapi
from bridge.web.reply import Reply, error_reply, http_error_reply

#: app.extensions key of the app's Services.
SERVICES = "bridge"


def response_of(reply: Reply) -> Response:
    return Response(reply.body, status=reply.status, headers=dict(reply.headers))


def error_response(error: BridgeError, body: dict[str, str] | None = None) -> Response:
    return response_of(error_reply(error, body))


def viewer_of(services: Services) -> Viewer:
    """What this request says about its viewer (the JSON routes: never a stream)."""
    headers = request.headers
    return viewer_from(
        services.settings,
        offered=dict(headers.items()),
        forwarded_for=headers.get("X-Forwarded-For", ""),
        remote_addr=request.remote_addr,
        last_event_id=headers.get("Last-Event-ID"),
        args=request.args,
        accept=headers.get("Accept", ""),
    )


def create_app(settings: Settings) -> Quart:
    app = Quart("bridge")
    # Werkzeug would 308-redirect /v1/runs//stream to /v1/runs/stream: the status of a
    # run called "stream". Empty segments must be refused, not merged.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    services = Services(settings)
    app.extensions[SERVICES] = services
    cors = cors_policy(settings)
    install_cors(app, cors)
    # The stream routes are served in front of Quart (bridge/web/front.py: what a viewer costs
    # to open and to hold); Quart still knows their rules, for OPTIONS, 405 and OpenAPI.
    app.asgi_app = StreamFront(app.asgi_app, services, cors)  # type: ignore[method-assign,assignment]
    for rule, endpoint in (
        ("/v1/runs/<run_id>/stream", "run_stream"),
        ("/v1/streams", "multi_stream"),
    ):
        app.add_url_rule(rule, endpoint, methods=["GET"])

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
        reply = http_error_reply(error.code or 500, error.name, error.description or "")
        return response_of(reply)

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
        viewer = viewer_of(services)
        headers = await services.upstream_headers(run_id, viewer.credentials)
        channel, release = await services.pollers.lease(run_id, headers)
        try:
            latest = channel.history.latest
            assert latest is not None  # a lease always comes with a first status
            response = Response(latest.data, content_type="application/json")
            response.headers["Cache-Control"] = "no-cache"
            return response
        finally:
            release()

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
        viewer = viewer_of(services)
        return await answered(
            lambda: catchup.events(services, viewer, run_id, viewer.resume_from, wait)
        )

    @app.get("/v1/runs/<run_id>/result")
    async def run_result(run_id: str) -> Response:
        run_ids.validate(run_id)
        wait = catchup.parse_wait(request.args.get("wait"), settings.longpoll_max)
        viewer = viewer_of(services)
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
