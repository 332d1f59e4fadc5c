"""CORS for browsers on other origins: an allow-list, and credentials only for named origins."""

from __future__ import annotations

from quart import Quart, Response, request

from bridge.settings import Settings


def install_cors(app: Quart, settings: Settings) -> None:
    origins = frozenset(settings.cors_origins)
    if not origins:
        return
    any_origin = "*" in origins
    allow_headers = ", ".join(sorted({"last-event-id", *settings.forward_headers}))

    @app.after_request
    async def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is None:
            return response
        response.vary.add("Origin")
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            if settings.cors_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        elif any_origin:
            # Never with credentials: the validator refuses '*' with BRIDGE_CORS_CREDENTIALS.
            response.headers["Access-Control-Allow-Origin"] = "*"
        else:
            return response
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = allow_headers
            response.headers["Access-Control-Max-Age"] = "600"
        return response
