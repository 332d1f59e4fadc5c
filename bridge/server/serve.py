"""Serving the app with Hypercorn: binding, TLS, access log without query strings, drain.

The server imports the app, never the other way: what it needs of the app is handed
over as ``Serving`` (bridge/web/app.py), and it gives the app's stream front its
fast-path socket lookup (bridge/server/hypercorn_transport.py) as a plain callable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.logging import Logger
from quart import Quart

from bridge.server import hypercorn_cycles
from bridge.server.hypercorn_transport import fast_path_transport
from bridge.settings import Settings
from bridge.web.app import serving

log = logging.getLogger("bridge.server.serve")


class AccessLogger(Logger):
    """Hypercorn's logger, but access lines carry only what is safe to keep.

    Hypercorn's own access record passes every request header as log arguments, where a
    JSON log handler would write out Authorization and Cookie; and the query string may
    carry tokens (EventSource cannot set headers). This one logs the path without query,
    and its arguments are just the values in the line.
    """

    async def access(self, request: Any, response: Any, request_time: float) -> None:
        if self.access_logger is None:
            return
        client = request.get("client")
        remote = f"{client[0]}:{client[1]}" if client else "-"
        status = response["status"] if response is not None else "-"
        self.access_logger.info(
            '%s "%s %s HTTP/%s" %s %.6fs',
            remote,
            request.get("method", "-"),
            request.get("path", "-"),
            request.get("http_version", "-"),
            status,
            request_time,
        )


class CannotListen(OSError):
    """The listener could not be bound; ``str()`` is one line for the operator.

    An OSError still, so callers that catch OSError keep working; its text names the
    address and the variables instead of an errno and a traceback.
    """

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        reasons = {
            errno.EADDRINUSE: "address already in use",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "no such address on this machine",
        }
        if isinstance(error, socket.gaierror):
            reason = "cannot resolve the host"
        else:
            reason = reasons.get(error.errno or 0, (error.strerror or "failed").lower())
        self.message = f"cannot listen on {host}:{port}: {reason} (BRIDGE_HOST/BRIDGE_PORT)"

    def __str__(self) -> str:
        return self.message


class CannotLoadCertificate(CannotListen):
    """BRIDGE_TLS_CERTFILE / BRIDGE_TLS_KEYFILE cannot be loaded; ``str()`` is one line.

    A CannotListen (a listener that cannot serve HTTPS), so the callers that already turn
    that into one line and exit 2 handle this one too. Its text names the variable at
    fault, the file and why, never the file's content.
    """

    def __init__(self, variable: str, path: Path, reason: str) -> None:
        # Not CannotListen's own __init__: there is no host, port or errno to word here.
        OSError.__init__(self, errno.EINVAL, reason)
        self.variable = variable
        self.message = f"cannot serve HTTPS: {variable}={path} {reason}"


class TlsFiles(Protocol):
    """Where the TLS certificate and key are (``Settings`` is one)."""

    @property
    def tls_certfile(self) -> Path | None: ...

    @property
    def tls_keyfile(self) -> Path | None: ...


def tls_context(tls: TlsFiles) -> ssl.SSLContext | None:
    """The server's TLS context, as Hypercorn will build it; None without TLS files.

    Built through Hypercorn's own ``Config.create_ssl_context`` (TLS 1.2 or later, ALPN
    ``h2`` then ``http/1.1``), so a certificate that passes here is one Hypercorn loads;
    and built before serving, so a bad file is a CannotLoadCertificate at start instead of
    an SSLError from inside Hypercorn once the app has started.
    """
    if tls.tls_certfile is None or tls.tls_keyfile is None:
        return None
    config = Config()
    _use_tls(config, tls.tls_certfile, tls.tls_keyfile)
    try:
        context: ssl.SSLContext | None = config.create_ssl_context()
    except OSError as error:  # ssl.SSLError is an OSError
        raise _unloadable(tls.tls_certfile, tls.tls_keyfile, error) from None
    return context


def _use_tls(config: Config, certfile: Path, keyfile: Path) -> None:
    config.certfile = str(certfile)
    config.keyfile = str(keyfile)
    # Given, not None: with no password OpenSSL would prompt on the terminal for an
    # encrypted key, and a server would hang at start; with "" it fails at once.
    config.keyfile_password = ""
    # Hypercorn's default, set here so the bridge's promise does not rest on a default:
    # browsers get HTTP/2 (many EventSources on one connection), everything else HTTP/1.1.
    config.alpn_protocols = ["h2", "http/1.1"]


#: How much of a key file is read to tell an encrypted key (its PEM header says so).
_KEY_HEAD = 4096


def _unloadable(certfile: Path, keyfile: Path, error: OSError) -> CannotLoadCertificate:
    """Which file is at fault and why: OpenSSL's own message ("PEM lib") names neither."""
    heads: dict[str, bytes] = {}
    for variable, path in (("BRIDGE_TLS_CERTFILE", certfile), ("BRIDGE_TLS_KEYFILE", keyfile)):
        try:
            with path.open("rb") as file:
                heads[variable] = file.read(_KEY_HEAD)
        except OSError as unreadable:
            why = (unreadable.strerror or "failed").lower()
            return CannotLoadCertificate(variable, path, f"cannot be read: {why}")
    try:
        ssl.create_default_context(cafile=str(certfile))
    except ssl.SSLError:
        return CannotLoadCertificate(
            "BRIDGE_TLS_CERTFILE", certfile, "holds no PEM certificate (-----BEGIN CERTIFICATE)"
        )
    if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
        why = "is not the key of the certificate in BRIDGE_TLS_CERTFILE"
    elif b"ENCRYPTED" in heads["BRIDGE_TLS_KEYFILE"]:
        # "-----BEGIN ENCRYPTED PRIVATE KEY" (PKCS#8) or "Proc-Type: 4,ENCRYPTED" (legacy PEM).
        why = "is encrypted: the bridge needs the key without a passphrase"
    else:
        why = "holds no PEM private key (-----BEGIN ... PRIVATE KEY)"
    return CannotLoadCertificate("BRIDGE_TLS_KEYFILE", keyfile, why)


def listen_socket(host: str, port: int, tls: TlsFiles | None = None) -> socket.socket:
    """The bound, listening socket; with ``tls``, its certificate and key are checked first.

    Everything that would stop ``serve`` at start is a one-line CannotListen here, before
    the caller logs or starts anything.
    """
    if tls is not None:
        tls_context(tls)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
    except OSError as error:
        sock.close()
        raise CannotListen(host, port, error) from None
    sock.setblocking(False)
    return sock


def bound_port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def abort_stalled_sends(sock: socket.socket, send_timeout: float) -> None:
    """Let the kernel drop a connection whose sent data stays unacknowledged.

    Accepted sockets inherit TCP_USER_TIMEOUT from the listener (Linux): a viewer that
    stops reading (zero window) is reset after ``send_timeout`` and its buffers freed.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(send_timeout * 1000))


def hypercorn_config(settings: Settings, sock: socket.socket) -> Config:
    config = Config()
    # Hypercorn takes ownership of (and closes) the fd it is given: give it a dup, so the
    # caller's socket outlives this server (a restart can listen on it again).
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = logging.getLogger("bridge.access") if settings.access_log else None
    config.logger_class = AccessLogger
    config.errorlog = logging.getLogger("bridge.server.serve")
    # Seconds open connections get once the listener closed (after the drain delay).
    config.graceful_timeout = max(settings.shutdown_grace - settings.drain_delay, 0.0)
    # Headers larger than this are refused by h11 before the app sees them (bytes).
    config.h11_max_incomplete_size = 16 * 1024
    config.keep_alive_timeout = 75
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        # Hypercorn's own TLS: the fd:// listener above becomes its secure socket.
        _use_tls(config, settings.tls_certfile, settings.tls_keyfile)
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
    """Serve until the trigger fires, then drain; HTTPS (HTTP/2 and HTTP/1.1) with TLS files.

    Drain: new streams are refused and /readyz answers 503, open streams end cleanly
    (EventSource reconnects, elsewhere, and resumes by Last-Event-ID), the listener
    stays open BRIDGE_DRAIN_DELAY seconds so load balancers see the 503, then Hypercorn
    closes it and waits for the remaining requests; pollers stop as the app shuts down.
    """
    app_serving = serving(app)
    if settings.direct_writes:
        app_serving.front.use_fast_path(
            partial(fast_path_transport, fell_back=app_serving.metrics.fast_path_fell_back)
        )
    # Before the app starts: a bad certificate is one clear error, not Hypercorn's SSLError.
    tls_context(settings)
    trigger = shutdown_trigger or signal_trigger()
    own_socket = sock is None
    listener = sock if sock is not None else listen_socket(settings.host, settings.port)
    abort_stalled_sends(listener, settings.send_timeout)

    async def drain_then_stop() -> None:
        await trigger()
        log.info("draining: refusing new streams, ending open ones")
        app_serving.drain()
        await asyncio.sleep(settings.drain_delay)

    # Each connection's objects are then freed by refcount when it ends, not left as
    # cyclic garbage for a full collection (Hack H2, docs/hacks.md).
    hypercorn_cycles.install()
    try:
        await hypercorn_serve(
            app,
            hypercorn_config(settings, listener),
            shutdown_trigger=drain_then_stop,
        )
    finally:
        if own_socket:
            listener.close()
