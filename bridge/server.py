"""Serving the app with Hypercorn: binding, access log without query strings, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from quart import Quart

from bridge.app import Bridge
from bridge.settings import Settings

#: Path only: query strings may carry tokens (EventSource cannot set headers).
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'


def hypercorn_config(settings: Settings, sock: socket.socket | None = None) -> Config:
    config = Config()
    if sock is not None:
        # Hypercorn takes ownership of (and closes) the fd it is given: give it a dup,
        # so the caller's socket outlives this server (a restart can listen on it again).
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
    else:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        config.bind = [f"{host}:{settings.port}"]
    config.accesslog = logging.getLogger("bridge.access") if settings.access_log else None
    config.access_log_format = ACCESS_LOG_FORMAT
    config.errorlog = logging.getLogger("bridge.server")
    # Seconds open connections get after the shutdown trigger fired.
    config.graceful_timeout = settings.shutdown_grace
    # Headers larger than this are refused by h11 before the app sees them (bytes).
    config.h11_max_incomplete_size = 16 * 1024
    config.keep_alive_timeout = 75
    return config


def signal_trigger() -> Callable[[], Awaitable[None]]:
    """A shutdown trigger that fires on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fired.set)

    async def wait() -> None:
        await fired.wait()

    return wait


async def serve(
    app: Quart,
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until the trigger fires, then drain: streams end cleanly, pollers stop."""
    bridge: Bridge = app.extensions["bridge"]
    trigger = shutdown_trigger or signal_trigger()

    async def drain_then_stop() -> None:
        await trigger()
        bridge.drain()

    await hypercorn_serve(app, hypercorn_config(settings, sock), shutdown_trigger=drain_then_stop)  # type: ignore[arg-type]
