"""CORS for browsers on other origins: an allow-list, and credentials only for named origins.

One policy (``CorsPolicy``) answers what headers a response gets; the Quart routes apply
it in an ``after_request`` hook, the ASGI stream front (bridge/web/front.py) to its answers.
"""

from __future__ import annotations

from quart import Quart, Response, request

from bridge.settings import Settings
from bridge.web.reply import Headers


class CorsPolicy:
    def __init__(self, settings: Settings) -> None:
        self.origins = frozenset(settings.cors_origins)
        self.any_origin = "*" in self.origins
        self.credentials = settings.cors_credentials
        self.allow_headers = ", ".join(sorted({"last-event-id", *settings.forward_headers}))

    def headers(self, origin: str | None, method: str) -> Headers:
        """The CORS headers for a request from ``origin`` (``Vary`` first), else ()."""
        if origin is None:
            return ()
        out: list[tuple[str, str]] = [("Vary", "Origin")]
        if origin in self.origins:
            out.append(("Access-Control-Allow-Origin", origin))
            if self.credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
        elif self.any_origin:
            # Never with credentials: the validator refuses '*' with BRIDGE_CORS_CREDENTIALS.
            out.append(("Access-Control-Allow-Origin", "*"))
        else:
            return tuple(out)
        if method == "OPTIONS":
            out.append(("Access-Control-Allow-Methods", "GET, OPTIONS"))
            out.append(("Access-Control-Allow-Headers", self.allow_headers))
            out.append(("Access-Control-Max-Age", "600"))
        return tuple(out)


def cors_policy(settings: Settings) -> CorsPolicy | None:
    """The policy, or None when no origin is allowed (then no response gets CORS headers)."""
    return CorsPolicy(settings) if settings.cors_origins else None


def install_cors(app: Quart, policy: CorsPolicy | None) -> None:
    if policy is None:
        return

    @app.after_request
    async def _cors(response: Response) -> Response:
        for name, value in policy.headers(request.headers.get("Origin"), request.method):
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers[name] = value
        return response
