"""``python -m bench``: run the suite, profile the bridge, or regenerate the report.

python -m bench [run] [--quick] [--targets nchan,floor,bridge,naive] [--interval S]
python -m bench profile [--viewers N] [--rounds N] [--native]
python -m bench report [--results bench/out/results.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from bench.harness.common import BENCH_DIR, OUT_DIR
from bench.harness.suite import ALL_TARGETS, PROBES, Config, Runner
from bench.studies.profile import PHASES


def _env_pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.startswith(("BRIDGE_", "BENCH_GC_")):
            raise SystemExit(f"--bridge-env wants BRIDGE_NAME=value, not {value!r}")
        pairs[key] = val
    return pairs


def _run(args: argparse.Namespace, command: str) -> int:
    from bench.harness.report import render

    overrides: dict[str, object] = {}
    if args.targets:
        names = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        unknown = set(names) - set(ALL_TARGETS) - set(PROBES)
        if unknown:
            raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
        overrides["targets"] = names
    if args.interval is not None:
        overrides["interval"] = args.interval
    if args.client_procs is not None:
        overrides["client_procs"] = args.client_procs
    if args.bridge_env:
        overrides["bridge_env"] = _env_pairs(args.bridge_env)
    if args.rt:
        overrides["rt_priority"] = 10
    if args.out:
        overrides["out"] = Path(args.out)
    config = Config.quick_config(**overrides) if args.quick else Config(**overrides)  # type: ignore[arg-type]
    results = Runner(config).run(command)
    config.out.mkdir(parents=True, exist_ok=True)
    results_path = config.out / "results.json"
    results_path.write_text(json.dumps(results, indent=1))
    # bench/RESULTS.md is the full suite's; quick runs and experiments report beside their json.
    official = not args.quick and not args.out
    report_path = BENCH_DIR / "RESULTS.md" if official else config.out / "RESULTS.md"
    report_path.write_text(render(results, _profiles(), _soak()))
    print(f"wrote {results_path} and {report_path}")
    return 0


def _profiles() -> dict[str, dict[str, object]]:
    """The latest profile of each phase that has one (bench/out/profile-<phase>.json)."""
    found = {}
    for phase in PHASES:
        try:
            found[phase] = json.loads((OUT_DIR / f"profile-{phase}.json").read_text())
        except (OSError, ValueError):
            continue
    return found


def _soak() -> dict[str, object] | None:
    """The latest soak (``python -m bench.soak`` with its default name), if there is one."""
    try:
        data: dict[str, object] = json.loads((OUT_DIR / "soak.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _profile_cmd(args: argparse.Namespace, command: str) -> int:
    from bench.studies.profile import profile

    data = profile(
        phase=args.phase,
        viewers=args.viewers,
        rounds=args.rounds,
        native=args.native,
        interval=args.interval or 2.0,
        client_procs=args.client_procs or 4,
        bridge_env=_env_pairs(args.bridge_env or []),
        command=command,
        rt_priority=10 if args.rt else 0,
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"profile-{args.phase}.json"
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace, command: str) -> int:
    from bench.harness.report import render

    source = Path(args.results)
    results = json.loads(source.read_text())
    official = source.resolve() == (OUT_DIR / "results.json").resolve()
    out = BENCH_DIR / "RESULTS.md" if official else source.parent / "RESULTS.md"
    out.write_text(render(results, _profiles(), _soak()))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = "bench/run " + shlex.join(argv) if argv else "bench/run"
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interval", type=float, default=None, help="poll interval, seconds")
        p.add_argument("--client-procs", type=int, default=None, help="load client processes")
        p.add_argument(
            "--bridge-env",
            action="append",
            metavar="BRIDGE_X=V",
            help="extra bridge setting (also BENCH_GC_THRESHOLDS / BENCH_GC_DISABLE)",
        )
        p.add_argument(
            "--rt", action="store_true", help="servers and client under SCHED_FIFO (busy box)"
        )

    run = sub.add_parser("run", help="the whole suite (the default)")
    for p in (parser, run):
        p.add_argument("--quick", action="store_true", help="1,000 viewers, 2 rounds, ~1 min")
        p.add_argument(
            "--targets",
            help=f"comma-separated subset of {','.join(ALL_TARGETS)} "
            f"(or the design probes {','.join(PROBES)})",
        )
        p.add_argument("--out", help="write results.json and RESULTS.md here (an experiment)")
        common(p)
    prof = sub.add_parser("profile", help="py-spy the bridge at N viewers during rounds")
    prof.add_argument("--viewers", type=int, default=10_000)
    prof.add_argument("--rounds", type=int, default=12)
    prof.add_argument("--native", action="store_true", help="py-spy --native")
    prof.add_argument("phase", nargs="?", default="fanout", choices=PHASES, help="what to look at")
    common(prof)
    rep = sub.add_parser("report", help="regenerate RESULTS.md from a results.json")
    rep.add_argument("--results", default=str(OUT_DIR / "results.json"))
    args = parser.parse_args(argv)
    if args.command == "profile":
        return _profile_cmd(args, command)
    if args.command == "report":
        return _report(args, command)
    return _run(args, command)


if __name__ == "__main__":
    raise SystemExit(main())
