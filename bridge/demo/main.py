"""``sse-bridge demo``: the simulated legacy API and the bridge, in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bridge.app import create_app
from bridge.dashboard import enable_demo_api
from bridge.demo.legacy_api import LegacyApi, serving, spawning
from bridge.logs import configure_logging
from bridge.server import serve, signal_trigger
from bridge.settings import Settings


async def run_demo(
    settings: Settings,
    *,
    api_port: int = 0,
    step: float = 1.5,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    api = LegacyApi(step=step)
    for outcome in ("completed", "failed", "completed"):
        api.new_run(outcome)
    async with serving(api, "127.0.0.1", api_port), spawning(api, every=8 * step, keep=4):
        demo_settings = settings.model_copy(update={"upstream_url": api.url, "dashboard": True})
        app = create_app(demo_settings)
        enable_demo_api(app, api.url)  # the page lists, starts and cancels runs
        base = f"http://{_display_host(settings.host)}:{settings.port}"
        first = next(iter(api.runs))
        announce(
            "\n".join(
                [
                    "sse-bridge demo is running.",
                    f"  dashboard:        {base}/",
                    f"  simulated API:    {api.url}/runs",
                    f"  follow a run:     curl -N {base}/v1/runs/{first}/stream",
                    f"  start a new run:  curl -X POST {api.url}/runs",
                    f"  in the terminal:  sse-bridge watch {first} --url {base}",
                    "Stop with Ctrl-C.",
                ]
            )
        )
        await serve(app, demo_settings, shutdown_trigger=shutdown_trigger or signal_trigger())


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def main(settings: Settings) -> int:
    configure_logging(settings.log_level)
    asyncio.run(run_demo(settings))
    return 0
