"""The ``sse-bridge`` command: serve, demo, watch."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bridge import __version__
from bridge.settings import ConfigError, Settings, load


def _settings(**overrides: object) -> Settings:
    try:
        return load(**overrides)
    except ConfigError as error:
        print(f"sse-bridge: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    from bridge.app import create_app
    from bridge.logs import configure_logging
    from bridge.server import serve

    settings = _settings()
    if settings.upstream_url is None:
        print(
            "sse-bridge: configuration error: BRIDGE_UPSTREAM_URL: required for `serve` "
            "(the base URL of the legacy API, e.g. http://legacy:9000)",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level)
    logging.getLogger("bridge").info(
        "sse-bridge %s listening on %s:%s", __version__, settings.host, settings.port
    )
    asyncio.run(serve(create_app(settings), settings))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo.main import main as demo_main

    overrides: dict[str, object] = {"host": args.host}
    if args.port is not None:
        overrides["port"] = args.port
    return demo_main(_settings(**overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-bridge", description="Turn a legacy polling run API into Server-Sent Events."
    )
    parser.add_argument("--version", action="version", version=f"sse-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the bridge (configured by BRIDGE_* variables)")
    serve.set_defaults(func=_serve)

    demo = commands.add_parser("demo", help="run the bridge in front of a simulated legacy API")
    demo.add_argument("--host", default="127.0.0.1", help="where the bridge listens")
    demo.add_argument("--port", type=int, default=None, help="default BRIDGE_PORT or 8080")
    demo.set_defaults(func=_demo)

    watch = commands.add_parser(
        "watch",
        help="follow one run in the terminal (exit 0 complete, 1 error, 2 timeout/refused)",
    )
    from bridge import watch as watch_command

    watch_command.add_arguments(watch)
    watch.set_defaults(func=watch_command.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
