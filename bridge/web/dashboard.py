"""The live dashboard page, and the demo's run list.

``register_dashboard(app, settings)`` adds:

- ``GET /`` and ``/static/*`` when ``BRIDGE_DASHBOARD`` is on (``sse-bridge demo`` turns
  it on): a plain HTML/CSS/JS page shipped in ``bridge/web/static``, no build step, nothing
  fetched from elsewhere. It follows the runs named in ``?runs=a,b,c`` (or typed in), or
  with none, when BRIDGE_UPSTREAM_LIST_PATH is set, every listed run (``/v1/events``);
- ``GET /dashboard/config.json``: what the page needs to know (limits, demo mode);
- in demo mode only (``enable_demo_api``): ``GET/POST /demo/api/runs`` and
  ``POST /demo/api/runs/<id>/cancel``, forwarded to the simulated legacy API, so the page
  can list runs and start or cancel one. Outside demo mode these answer 404.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import aiohttp
from quart import Quart, Response, request
from werkzeug.exceptions import NotFound

from bridge import run_id as run_ids
from bridge.errors import InvalidRequest, UpstreamTimeout, UpstreamUnavailable
from bridge.events.sse import encode_json as _json
from bridge.settings import Settings
from bridge.web.events_doc import dashboard_events

#: app.extensions key holding the simulated legacy API's base URL (demo mode only).
DEMO_API = "bridge.demo_api_url"

#: The page's files; nothing else under /static is served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    # RFC 6902 patches applied by a well-kept library (static/vendor/README.md).
    "vendor/fast-json-patch.js": "text/javascript; charset=utf-8",
}

#: The page loads only its own files and talks only to this bridge.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_DEMO_BODY_LIMIT = 1024 * 1024


def enable_demo_api(app: Quart, url: str) -> None:
    """Let the page list, start and cancel runs on the simulated legacy API at ``url``."""
    app.extensions[DEMO_API] = url.rstrip("/")


def asset(name: str) -> bytes:
    return resources.files("bridge.web").joinpath("static", *name.split("/")).read_bytes()


def register_dashboard(app: Quart, settings: Settings) -> None:
    """The page (when BRIDGE_DASHBOARD is on) and, in demo mode, the demo's run list."""

    def page_file(name: str) -> Response:
        if not settings.dashboard or name not in ASSETS:
            raise NotFound()
        return Response(asset(name), content_type=ASSETS[name], headers=PAGE_HEADERS)

    @app.get("/")
    async def dashboard_page() -> Response:
        return page_file("index.html")

    async def static_file(filename: str) -> Response:
        return page_file(filename)

    # Quart serves bridge/web/static by itself; only the page's files, only when it is on.
    if "static" in app.view_functions:
        app.view_functions["static"] = static_file
    else:  # pragma: no cover - Quart without a static route
        app.add_url_rule("/static/<path:filename>", "static", static_file)

    @app.get("/dashboard/config.json")
    async def dashboard_config() -> Response:
        if not settings.dashboard:
            raise NotFound()
        body = {
            "demo": DEMO_API in app.extensions,
            # Which preset reads the upstream, so the page can say which API it shows.
            "profile": settings.profile,
            "maxRuns": settings.multi_max_runs,
            # The bridge follows the upstream's list: no run ids needed (/v1/events).
            "fleet": settings.upstream_list_path is not None,
            "pollInterval": settings.poll_interval,
            # The stream's vocabulary (BRIDGE_EVENTS_FILE): what to listen to.
            "events": dashboard_events(settings.vocabulary),
        }
        return Response(_json(body), content_type="application/json", headers=PAGE_HEADERS)

    # --- demo mode: the simulated API's run list, start and cancel -------------------

    def demo_api() -> str:
        url = app.extensions.get(DEMO_API)
        if not settings.dashboard or not isinstance(url, str):
            raise NotFound()
        return url

    @app.get("/demo/api/runs")
    async def demo_runs() -> Response:
        return await _forward(settings, "GET", demo_api() + "/runs")

    @app.post("/demo/api/runs")
    async def demo_start() -> Response:
        base = demo_api()
        payload: dict[str, Any] = {}
        if request.content_length:
            body = await _json_body()
            outcome = body.get("outcome")
            if outcome is not None:
                payload["outcome"] = outcome
        return await _forward(settings, "POST", base + "/runs", payload)

    @app.post("/demo/api/runs/<run_id>/cancel")
    async def demo_cancel(run_id: str) -> Response:
        base = demo_api()
        run_ids.validate(run_id)
        return await _forward(settings, "POST", f"{base}/runs/{run_id}/cancel", {})


async def _json_body() -> dict[str, Any]:
    # application/json only: a cross-site form cannot post it without a CORS preflight.
    if request.mimetype != "application/json":
        raise InvalidRequest("Send a JSON object with Content-Type: application/json.")
    try:
        body = json.loads(await request.get_data(as_text=True))
    except ValueError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return body


async def _forward(
    settings: Settings, method: str, url: str, payload: dict[str, Any] | None = None
) -> Response:
    timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, json=payload, allow_redirects=False) as answer,
        ):
            body = await answer.content.read(_DEMO_BODY_LIMIT + 1)
            status = answer.status
    except TimeoutError:
        raise UpstreamTimeout() from None
    except aiohttp.ClientError:
        raise UpstreamUnavailable("The simulated legacy API is not reachable.") from None
    if len(body) > _DEMO_BODY_LIMIT:
        raise UpstreamUnavailable("The simulated legacy API answered too much.")
    return Response(
        body, status=status, content_type="application/json", headers={"Cache-Control": "no-cache"}
    )
