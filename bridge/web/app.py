"""The Quart app: the API's routes and its error answers, and the wiring of its services.

    GET /v1/runs/{id}/stream   one run's SSE stream        \\ served in front of Quart
    GET /v1/streams?runs=a,b   several runs on one stream  / by bridge/web/front.py
    GET /v1/runs/{id}          the latest status as JSON
    GET /healthz, /readyz, /metrics

``create_app`` is the one place that holds the whole ``Services`` (bridge/web/services.py):
it hands each part of the app only what that part uses. Routes read the request once
(``viewer_of``) and pass data on. The dashboard page and the demo's run list are
bridge/web/dashboard.py's; the server (bridge/server/serve.py) is handed ``Serving``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import SecretStr
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from bridge import run_id as run_ids
from bridge.errors import BridgeError, Draining, InvalidRunId, PokeDisabled, PokeUnauthorized
from bridge.events.feed import current_status
from bridge.events.sse import encode_json
from bridge.ops.metrics import Metrics
from bridge.polling.registry import PollerRegistry
from bridge.settings import Settings
from bridge.streams import catchup
from bridge.streams.feed import FeedFramer, FeedReach
from bridge.streams.limits import StreamLimiter
from bridge.streams.opening import Admit, Opener, RunRefused
from bridge.streams.viewer import Viewer
from bridge.web.cors import cors_policy, install_cors
from bridge.web.dashboard import register_dashboard
from bridge.web.front import StreamFront
from bridge.web.openapi import register_openapi
from bridge.web.readiness import Readiness
from bridge.web.reply import Reply, error_reply, http_error_reply
from bridge.web.services import Services
from bridge.web.viewers import viewer_from

#: app.extensions key of the app's Services (for tests and operators to inspect).
SERVICES = "bridge"
#: app.extensions key of what the server is handed (``Serving``).
SERVING = "bridge.serving"


@dataclass(frozen=True, slots=True)
class Serving:
    """What the server (bridge/server/serve.py) is handed of the app it serves."""

    #: Refuse new streams and end the open ones (the server's shutdown trigger fired).
    drain: Callable[[], None]
    #: Where the server offers its fast-path socket lookup (``StreamFront.use_fast_path``).
    front: StreamFront
    #: Where that lookup counts the streams it sends down the ASGI path.
    metrics: Metrics


def serving(app: Quart) -> Serving:
    """What ``create_app`` left for the server in ``app``."""
    handed = app.extensions.get(SERVING)
    if not isinstance(handed, Serving):
        raise RuntimeError("the bridge serves only an app that create_app built")
    return handed


def response_of(reply: Reply) -> Response:
    return Response(reply.body, status=reply.status, headers=dict(reply.headers))


def error_response(error: BridgeError, body: dict[str, str] | None = None) -> Response:
    return response_of(error_reply(error, body))


def json_response(body: object, status: int = 200) -> Response:
    return Response(encode_json(body), status=status, content_type="application/json")


def viewer_of(settings: Settings) -> Viewer:
    """What this request says about its viewer (the JSON routes: never a stream)."""
    headers = request.headers
    return viewer_from(
        settings,
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
    app.before_serving(services.start)
    app.after_serving(services.stop)
    cors = cors_policy(settings)
    install_cors(app, cors)
    # The stream routes are served in front of Quart (bridge/web/front.py: what a viewer costs
    # to open and to hold); Quart still knows their rules, for OPTIONS, 405 and OpenAPI.
    front = StreamFront(
        app.asgi_app,
        opener=services.opener,
        ticker=services.ticker,
        metrics=services.metrics,
        settings=settings,
        cors=cors,
    )
    if services.feed is not None:
        front.single_run = FeedFramer(
            FeedReach(services.feed, services.fetch_page, services.polled_with)
        )
    front.events = services.open_fleet
    app.asgi_app = front  # type: ignore[method-assign,assignment]
    for rule, endpoint in (
        ("/v1/runs/<run_id>/stream", "run_stream"),
        ("/v1/streams", "multi_stream"),
        ("/v1/events", "fleet_stream"),
    ):
        app.add_url_rule(rule, endpoint, methods=["GET"])
    Routes(
        settings,
        metrics=services.metrics,
        readiness=services.readiness,
        pollers=services.pollers,
        admit=services.upstream_headers,
        opener=services.opener,
        limiter=services.limiter,
    ).register(app)
    register_openapi(app, settings)
    register_dashboard(app, settings)
    app.extensions[SERVICES] = services
    app.extensions[SERVING] = Serving(services.drain, front, services.metrics)
    return app


class Routes:
    """The JSON and health routes, and the error answers of every Quart route."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics,
        readiness: Readiness,
        pollers: PollerRegistry,
        admit: Admit,
        opener: Opener,
        limiter: StreamLimiter,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.readiness = readiness
        self.pollers = pollers
        self.admit = admit
        self.opener = opener
        self.limiter = limiter

    def register(self, app: Quart) -> None:
        app.register_error_handler(BridgeError, self.bridge_error)
        app.register_error_handler(NotFound, self.not_found)
        app.register_error_handler(HTTPException, self.http_error)
        for rule, endpoint, view, method in (
            ("/healthz", "healthz", self.healthz, "GET"),
            ("/readyz", "readyz", self.readyz, "GET"),
            ("/metrics", "metrics", self.metrics_text, "GET"),
            ("/v1/runs/<run_id>", "run_status", self.run_status, "GET"),
            ("/v1/runs/<run_id>/poll", "poke", self.poke, "POST"),
            ("/v1/runs/<run_id>/events", "run_events", self.run_events, "GET"),
            ("/v1/runs/<run_id>/result", "run_result", self.run_result, "GET"),
        ):
            app.add_url_rule(rule, endpoint, view, methods=[method])

    # --- error answers ----------------------------------------------------------------

    async def bridge_error(self, error: BridgeError) -> Response:
        self.metrics.streams_refused.labels(error.code).inc()
        return error_response(error)

    async def not_found(self, error: NotFound) -> Response:
        if request.path.startswith("/v1/runs/"):
            # An empty id, or one with an (encoded) slash or a dot segment, matches no route.
            return error_response(
                InvalidRunId("The run id must not be empty or contain '/' or be '.' or '..'.")
            )
        return await self.http_error(error)

    async def http_error(self, error: HTTPException) -> Response:
        return response_of(http_error_reply(error.code or 500, error.name, error.description or ""))

    # --- health -----------------------------------------------------------------------

    async def healthz(self) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self) -> Response:
        if self.limiter.draining:
            return error_response(Draining("The bridge is shutting down."))
        report = await self.readiness.check()
        return json_response(report, 200 if report["ready"] else 503)

    async def metrics_text(self) -> Response:
        return Response(self.metrics.render(), content_type=self.metrics.content_type)

    # --- one run as JSON, and poke ------------------------------------------------------

    async def run_status(self, run_id: str) -> Response:
        run_ids.validate(run_id)
        viewer = viewer_of(self.settings)
        headers = await self.admit(run_id, viewer.credentials)
        channel, release = await self.pollers.lease(run_id, headers)
        try:
            latest = channel.history.status
            status = current_status(channel.history)
            assert status is not None  # a lease always comes with a first status
            return Response(
                status, content_type="application/json", headers=catchup.run_headers(latest)
            )
        finally:
            release()

    async def poke(self, run_id: str) -> Response:
        # Checked before the id, so that nothing about runs is told without the token.
        refusal = poke_refusal(self.settings.poke_token, request.headers.get("Authorization"))
        if refusal is not None:
            self.metrics.pokes.labels(refusal.code).inc()
            response = error_response(refusal)
            if isinstance(refusal, PokeUnauthorized):
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        run_ids.validate(run_id)
        poked = await self.pollers.poke(run_id)
        self.metrics.pokes.labels(poked.outcome).inc()
        body = {"run_id": run_id, "outcome": poked.outcome, "pollers": poked.pollers}
        return json_response(body, 202)

    # --- catch-up and long-poll (bridge/streams/catchup.py) -----------------------------

    async def run_events(self, run_id: str) -> Response:
        viewer, wait = self.waiting_viewer(run_id)
        return await answered(
            lambda: catchup.events(self.opener, viewer, run_id, viewer.resume_from, wait)
        )

    async def run_result(self, run_id: str) -> Response:
        viewer, wait = self.waiting_viewer(run_id)
        return await answered(lambda: catchup.result(self.opener, viewer, run_id, wait))

    def waiting_viewer(self, run_id: str) -> tuple[Viewer, float]:
        """A catch-up request's viewer and ``wait``, once its run id is valid."""
        run_ids.validate(run_id)
        wait = catchup.parse_wait(request.args.get("wait"), self.settings.longpoll_max)
        return viewer_of(self.settings), wait


async def answered(asked: Callable[[], Awaitable[catchup.Answer]]) -> Response:
    """A JSON catch-up answer; refusals as the stream's, as JSON (these are not SSE)."""
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
