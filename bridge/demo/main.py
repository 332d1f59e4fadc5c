"""``sse-bridge demo``: the simulated legacy API and the bridge, in one process.

``--profile NAME`` makes the simulated API answer like that API (bridge/demo/shapes.py)
and configures the bridge with ``BRIDGE_PROFILE=NAME`` and the matching run path, the
way an operator would configure it for the real one.
"""

from __future__ import annotations

import asyncio
import errno
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from bridge.demo.legacy_api import ACTIVE_PATH, FEED_PATH, LegacyApi, serving, spawning
from bridge.demo.shapes import shape_for
from bridge.ops.logs import configure_logging
from bridge.server.serve import CannotListen, bound_port, listen_socket, serve, signal_trigger
from bridge.settings import Settings
from bridge.web.app import create_app
from bridge.web.dashboard import enable_demo_api


def settings_overrides(profile: str | None) -> dict[str, object]:
    """How the bridge reads the simulated API speaking ``profile`` (None: seed 004).

    ``profile`` is always given, None included, so a BRIDGE_PROFILE left in the
    environment for `serve` cannot make the demo misread its own API.
    """
    shape = shape_for(profile)
    overrides: dict[str, object] = {"profile": profile, "upstream_run_path": shape.run_path}
    if shape.progress_expr is not None:
        overrides["progress_expr"] = shape.progress_expr
    return overrides


def watch_command() -> str:
    """``sse-bridge watch`` as this interpreter runs it, so the printed line works as is."""
    script = Path(sys.executable).parent / "sse-bridge"
    if script.is_file():
        return shlex.quote(str(script)) + " watch"
    return shlex.quote(sys.executable) + " -m bridge watch"


def url_host(host: str) -> str:
    """The host part of a URL that reaches ``host`` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def run_demo(
    settings: Settings,
    *,
    profile: str | None = None,
    sock: socket.socket | None = None,
    api_port: int = 0,
    step: float = 1.5,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    announce: Callable[[str], None] = print,
    events: str | None = None,
) -> None:
    """Serve the demo on ``sock`` (else bind ``settings.host``/``port`` first).

    The URLs are announced only once the bridge's port is bound and the simulated API
    answers, so every printed line works when it is read.
    """
    api = LegacyApi(step=step, profile=profile, events=events)
    for outcome in ("completed", "failed", "completed"):
        api.new_run(outcome)
    own_socket = sock is None
    listener = (
        sock if sock is not None else listen_socket(settings.host, settings.port, tls=settings)
    )
    try:
        async with serving(api, "127.0.0.1", api_port), spawning(api, every=8 * step, keep=4):
            update: dict[str, object] = {"upstream_url": api.url, "dashboard": True}
            fleet = api.shape.name == shape_for(None).name and settings.feed_path is None
            if fleet:
                # The page, `watch` and /v1/events follow every run the API lists.
                update["upstream_list_path"] = ACTIVE_PATH
            demo_settings = settings.model_copy(update=update)
            app = create_app(demo_settings)
            enable_demo_api(app, api.url)  # the page lists, starts and cancels runs
            scheme = "https" if settings.tls_certfile is not None else "http"
            base = f"{scheme}://{url_host(settings.host)}:{bound_port(listener)}"
            first = next(iter(api.runs))
            feed = FEED_PATH.replace("{run_id}", first).replace("{cursor}", "0")
            speaks = api.shape.name
            if api.events is not None:
                speaks = f"seed {api.events.file[:3]}'s {api.events.name} runs, {api.events.file}"
            announce(
                "\n".join(
                    [
                        f"sse-bridge demo is running (the simulated API speaks {speaks}).",
                        f"  dashboard:        {base}/",
                        f"  simulated API:    {api.url}{api.run_path.replace('{run_id}', first)}",
                        f"  follow a run:     curl -N {base}/v1/runs/{first}/stream",
                        f"  state, progress:  curl -N '{base}/v1/streams?runs={first}'",
                        *([f"  every run:        curl -N {base}/v1/events"] if fleet else []),
                        f"  a run's feed:     {api.url}{feed}  (BRIDGE_FEED_PATH={FEED_PATH})",
                        f"  start a new run:  curl -X POST {api.url}/runs",
                        f"  in the terminal:  {watch_command()} {first} --url {base}",
                        "Stop with Ctrl-C.",
                    ]
                )
            )
            await serve(
                app,
                demo_settings,
                shutdown_trigger=shutdown_trigger or signal_trigger(),
                sock=listener,
            )
    finally:
        if own_socket:
            listener.close()


def main(
    settings: Settings, profile: str | None = None, step: float = 1.5, events: str | None = None
) -> int:
    # Bound before anything is printed: a taken port is one line, not a traceback, and
    # the URLs printed later are the ones that answer.
    try:
        sock = listen_socket(settings.host, settings.port, tls=settings)
    except CannotListen as error:
        # The demo is configured by its options, not by BRIDGE_HOST/BRIDGE_PORT.
        reason = str(error).removesuffix(" (BRIDGE_HOST/BRIDGE_PORT)")
        if error.errno == errno.EADDRINUSE:
            other = settings.port + 1 if 0 < settings.port < 65_535 else 8081
            reason += f"; choose another port with --port, e.g. sse-bridge demo --port {other}"
        else:
            reason += " (--host, --port)"
        print(f"sse-bridge: {reason}", file=sys.stderr)
        return 2
    try:
        configure_logging(settings.log_level)
        asyncio.run(run_demo(settings, profile=profile, sock=sock, step=step, events=events))
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close()
    return 0
