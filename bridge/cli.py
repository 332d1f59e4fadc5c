"""The ``sse-bridge`` command: serve, demo, watch, inspect, profiles."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap

from bridge import __version__
from bridge.settings import ConfigError, Settings, load, unknown_variables

#: Commands configured by BRIDGE_* variables, so a misspelt one is worth a warning.
CONFIGURED_COMMANDS = frozenset({"serve", "demo", "inspect"})
#: Width of the variable list in `serve --help` (argparse's own text is about as wide).
HELP_WIDTH = 100


def _settings(**overrides: object) -> Settings:
    try:
        return load(**overrides)
    except ConfigError as error:
        print(f"sse-bridge: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _warn_unknown_variables() -> None:
    # A warning, not an error: a platform may set BRIDGE_* names of its own.
    for name, closest in unknown_variables(os.environ):
        advice = f"did you mean {closest}?" if closest else "`sse-bridge serve --help` lists them"
        print(
            f"sse-bridge: WARNING: {name} is not a setting of the bridge and is ignored; {advice}",
            file=sys.stderr,
        )


def _upstream_required(settings: Settings, command: str) -> bool:
    if settings.upstream_url is None:
        print(
            f"sse-bridge: configuration error: BRIDGE_UPSTREAM_URL: required for `{command}` "
            "(the base URL of the legacy API, e.g. http://legacy:9000)",
            file=sys.stderr,
        )
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    from bridge.ops.logs import configure_logging
    from bridge.server.serve import CannotListen, listen_socket, serve
    from bridge.web.app import create_app

    settings = _settings()
    if not _upstream_required(settings, "serve"):
        return 2
    # Bound before anything is logged, so a taken port is one line, not a log and a trace.
    try:
        sock = listen_socket(settings.host, settings.port, tls=settings)
    except CannotListen as error:
        print(f"sse-bridge: {error}", file=sys.stderr)
        return 2
    try:
        configure_logging(settings.log_level)
        logging.getLogger("bridge").info(
            "sse-bridge %s listening on %s:%s", __version__, settings.host, settings.port
        )
        asyncio.run(serve(create_app(settings), settings, sock=sock))
    finally:
        sock.close()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bridge.demo.main import main as demo_main
    from bridge.demo.main import settings_overrides

    if not 0 < args.step <= 3600:
        print("sse-bridge: demo: --step must be more than 0 and at most 3600", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {"host": args.host, **settings_overrides(args.profile)}
    if args.events is not None:
        from bridge.demo.vocabularies import DEMOS

        if args.profile is not None:
            print("sse-bridge: demo: --events and --profile do not go together", file=sys.stderr)
            return 2
        demo = DEMOS[args.events]
        overrides.update({"events_file": str(demo.path), **demo.settings})
    if args.port is not None:
        overrides["port"] = args.port
    return demo_main(
        _settings(**overrides), profile=args.profile, step=args.step, events=args.events
    )


def _inspect(args: argparse.Namespace) -> int:
    import json

    from bridge.errors import BridgeError
    from bridge.tools import inspection
    from bridge.tools.headers import HeaderError, parse_headers

    try:
        given = parse_headers(args.header)
    except HeaderError as error:
        print(f"sse-bridge: inspect: {error}", file=sys.stderr)
        return inspection.EXIT_FAILED
    settings = _settings()
    if not _upstream_required(settings, "inspect"):
        return inspection.EXIT_FAILED
    try:
        found = asyncio.run(inspection.inspect_run(settings, args.run_id, given, once=args.once))
    except BridgeError as error:
        print(inspection.failure_line(settings, args.run_id, error), file=sys.stderr)
        return inspection.EXIT_FAILED
    if args.json:
        sys.stdout.write(json.dumps(inspection.as_json(found), indent=2) + "\n")
    else:
        inspection.render(found, settings, sys.stdout)
    return found.examination.exit_code


def _profiles(args: argparse.Namespace) -> int:
    from bridge.profiles import PROFILES, describe

    if args.name is None:
        width = max(len(name) for name in PROFILES)
        for profile in PROFILES.values():
            print(f"{profile.name:<{width}}  {profile.summary}")
        print("\n`sse-bridge profiles NAME` shows what one sets; use it with BRIDGE_PROFILE=NAME.")
        return 0
    chosen = PROFILES.get(args.name)
    if chosen is None:
        print(
            f"sse-bridge: no profile {args.name!r}; one of: {', '.join(sorted(PROFILES))}",
            file=sys.stderr,
        )
        return 2
    print(describe(chosen))
    return 0


def variables_epilog() -> str:
    """Every BRIDGE_* variable with its default, for `serve --help`."""
    from bridge.tools.config_doc import rows

    column = 34
    lines = ["environment variables (default after '='; nothing after it: unset):"]
    for name, default, meaning in rows():
        wrapped = textwrap.wrap(meaning, HELP_WIDTH - column, break_on_hyphens=False) or [""]
        entry = f"  {name}={default}"
        if len(entry) + 2 > column:
            lines.append(entry)
            entry = ""
        lines.append(f"{entry:<{column}}{wrapped[0]}")
        lines += [" " * column + more for more in wrapped[1:]]
    lines += [
        "",
        "`python -m bridge.tools.config_doc env` prints them as an env file (config/example.env);",
        "`sse-bridge inspect RUN_ID` shows how the bridge reads one of your runs.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-bridge", description="Turn a legacy polling run API into Server-Sent Events."
    )
    parser.add_argument("--version", action="version", version=f"sse-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the bridge (configured by BRIDGE_* variables)",
        description="Run the bridge in front of BRIDGE_UPSTREAM_URL.",
        epilog=variables_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser("demo", help="run the bridge in front of a simulated legacy API")
    demo.add_argument("--host", default="127.0.0.1", help="where the bridge listens")
    demo.add_argument("--port", type=int, default=None, help="default BRIDGE_PORT or 8080")
    from bridge.demo.shapes import DEMO_PROFILES

    demo.add_argument(
        "--profile",
        choices=DEMO_PROFILES,
        default=None,
        metavar="NAME",
        help="the simulated API answers like this API and the bridge reads it with "
        f"BRIDGE_PROFILE=NAME: {', '.join(DEMO_PROFILES)} (default: seed 004's "
        "ExecutionStatus at /runs/{run_id})",
    )
    from bridge.demo.vocabularies import DEMOS

    demo.add_argument(
        "--events",
        choices=sorted(DEMOS),
        default=None,
        metavar="NAME",
        help="the simulated API's runs speak a seed vocabulary and the bridge derives its "
        f"events with config/events/: {', '.join(sorted(DEMOS))}",
    )
    demo.add_argument(
        "--step",
        type=float,
        default=1.5,
        metavar="SECONDS",
        help="how long each step of a simulated run lasts (default 1.5)",
    )
    demo.set_defaults(func=_demo)

    watch = commands.add_parser(
        "watch",
        help="follow one run in the terminal (exit 0 complete, 1 error, 2 timeout/refused)",
    )
    from bridge.tools import watch as watch_command

    watch_command.add_arguments(watch)
    watch.set_defaults(func=watch_command.main)

    inspect = commands.add_parser(
        "inspect",
        help="fetch one run and show how the bridge reads it (exit 0 ok, 1 misread, 2 failed)",
        description=(
            "Fetch RUN_ID from the upstream, twice a poll interval apart (--once: once), with "
            "the same BRIDGE_* configuration as `serve`, and show the state the bridge reads, "
            "the event it would send, the fields that change by themselves, and what to "
            "change when that is wrong. Exit 0: the state is read and known; 1: the "
            "configuration does not fit this status (a hint names the variable; a state in "
            "neither list that is no usual in-progress word counts); 2: the configuration is "
            "wrong or the upstream refused or failed."
        ),
    )
    inspect.add_argument("run_id", metavar="RUN_ID", help="the run to fetch")
    inspect.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a viewer's header (repeatable), sent as the bridge would forward it "
        "(BRIDGE_FORWARD_HEADERS); values are never printed",
    )
    inspect.add_argument("--json", action="store_true", help="print the findings as JSON")
    inspect.add_argument(
        "--once",
        action="store_true",
        help="fetch once (default: twice, a poll interval apart, to name the fields that "
        "change on every answer and so would make an event on every poll)",
    )
    inspect.set_defaults(func=_inspect)

    profiles = commands.add_parser(
        "profiles", help="list the BRIDGE_PROFILE presets, or show what one sets"
    )
    profiles.add_argument("name", metavar="NAME", nargs="?", help="the profile to show")
    profiles.set_defaults(func=_profiles)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in CONFIGURED_COMMANDS:
        _warn_unknown_variables()
    result: int = args.func(args)
    return result
