"""One argument style for every bench command: ``bench/run <command> --option value``.

Each command builds its parser here, so that the options it shares with others (the poll
interval, bridge settings, SCHED_FIFO, load client processes, the core to pin to) are
spelt, parsed and checked the same way everywhere, lists are comma-separated, and the
command line it records in its results is the one that reproduces them.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def parser(command: str, doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser for ``bench/run <command>`` (or ``prog``, for the servers the suite starts
    itself); ``doc``'s first paragraph is its description, the rest its epilog."""
    head, _, rest = (doc or "").strip().partition("\n\n")
    return argparse.ArgumentParser(
        prog=prog or f"bench/run {command}".strip(),
        description=head or None,
        epilog=rest or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def command_line(command: str, argv: Sequence[str]) -> str:
    """What to type to run this again (recorded in results and reports)."""
    return shlex.join(["bench/run", *([command] if command else []), *argv])


def comma_list(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse ``type`` for ``1,10,100``."""

    def parse(text: str) -> list[T]:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from exc

    parse.__name__ = f"list of {getattr(kind, '__name__', 'values')}"
    return parse


def bridge_setting(text: str) -> tuple[str, str]:
    """``BRIDGE_X=value`` (or one of the GC probe's ``BENCH_GC_*`` knobs)."""
    key, sep, value = text.partition("=")
    if not sep or not key.startswith(("BRIDGE_", "BENCH_GC_")):
        raise argparse.ArgumentTypeError(f"wants BRIDGE_NAME=value, not {text!r}")
    return key, value


def add_bridge_env(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bridge-env",
        action="append",
        type=bridge_setting,
        default=[],
        metavar="BRIDGE_X=V",
        help="a bridge setting for this run (repeatable; also BENCH_GC_THRESHOLDS / "
        "BENCH_GC_DISABLE, which the GC probe applies inside the bridge)",
    )


def add_interval(p: argparse.ArgumentParser, default: float | None, what: str = "") -> None:
    p.add_argument(
        "--interval",
        type=float,
        default=default,
        metavar="S",
        help=what or "the bridge's poll interval (BRIDGE_POLL_INTERVAL), seconds",
    )


def add_rt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rt",
        action="store_true",
        help="servers, upstream and load client under SCHED_FIFO (a machine others share)",
    )


def add_client_procs(p: argparse.ArgumentParser, default: int | None) -> None:
    p.add_argument("--client-procs", type=int, default=default, help="load client processes")


def add_server(p: argparse.ArgumentParser) -> None:
    """The options of a server the suite starts: its loopback port and its core."""
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--core", type=int, default=None, help="pin to this core")
