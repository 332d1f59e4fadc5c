"""``bench/run``: the suite, the studies, the report, before-and-after tables.

    bench/run [--quick] [--rt] [--targets nchan,floor,bridge,naive] [--interval S] [--out DIR]
    bench/run report [--results bench/out/results.json]
    bench/run compare RECORD.json [LABEL=RUN ...]
    bench/run <study> [options]     (bench/run <study> --help for its options)

Studies: profile, soak, cycles, lifecycle, h2_fanout, cluster_scale,
sentinel_partition, derived_events, fleet (bench/studies/).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from bench.harness import cli
from bench.harness.common import BENCH_DIR, OUT_DIR
from bench.harness.suite import ALL_TARGETS, PROBES, Config, Runner

#: Commands with a module of their own: each has ``main(argv)`` and its own parser.
COMMANDS = {
    "compare": "bench.harness.compare",
    "profile": "bench.studies.profile",
    "soak": "bench.studies.soak",
    "cycles": "bench.studies.cycles",
    "lifecycle": "bench.studies.lifecycle",
    "h2_fanout": "bench.studies.h2_fanout",
    "cluster_scale": "bench.studies.cluster_scale",
    "sentinel_partition": "bench.studies.sentinel_partition",
    "derived_events": "bench.studies.derived_events",
    "fleet": "bench.studies.fleet",
}


def _run(argv: list[str]) -> int:
    from bench.harness.report import render

    parser = cli.parser("", __doc__)
    parser.add_argument("--quick", action="store_true", help="up to 1,000 viewers, ~75 s")
    parser.add_argument(
        "--targets",
        type=cli.comma_list(str),
        help=f"a subset of {','.join(ALL_TARGETS)} (or the design probes {','.join(PROBES)})",
    )
    parser.add_argument("--out", type=Path, help="write results.json and RESULTS.md here")
    cli.add_interval(parser, None)
    cli.add_client_procs(parser, None)
    cli.add_bridge_env(parser)
    cli.add_rt(parser)
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.targets:
        unknown = set(args.targets) - set(ALL_TARGETS) - set(PROBES)
        if unknown:
            parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
        overrides["targets"] = tuple(args.targets)
    if args.interval is not None:
        overrides["interval"] = args.interval
    if args.client_procs is not None:
        overrides["client_procs"] = args.client_procs
    if args.bridge_env:
        overrides["bridge_env"] = dict(args.bridge_env)
    if args.rt:
        overrides["rt_priority"] = 10
    if args.out:
        overrides["out"] = args.out
    config = Config.quick_config(**overrides) if args.quick else Config(**overrides)  # type: ignore[arg-type]
    results = Runner(config).run(cli.command_line("", argv))
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
    from bench.studies.profile import PHASES

    found = {}
    for phase in PHASES:
        try:
            found[phase] = json.loads((OUT_DIR / f"profile-{phase}.json").read_text())
        except (OSError, ValueError):
            continue
    return found


def _soak() -> dict[str, object] | None:
    """The latest soak (``bench/run soak`` with its default name), if there is one."""
    try:
        data: dict[str, object] = json.loads((OUT_DIR / "soak.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _report(argv: list[str]) -> int:
    from bench.harness.report import render

    parser = cli.parser("report", "Regenerate RESULTS.md from a results.json (and profiles).")
    parser.add_argument("--results", type=Path, default=OUT_DIR / "results.json")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    official = args.results.resolve() == (OUT_DIR / "results.json").resolve()
    out = BENCH_DIR / "RESULTS.md" if official else args.results.parent / "RESULTS.md"
    out.write_text(render(results, _profiles(), _soak()))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else ("", argv)
    if command in ("", "run"):
        return _run(rest)
    if command == "report":
        return _report(rest)
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command]).main(rest)
        return 0
    known = ", ".join(["run", "report", *COMMANDS])
    raise SystemExit(f"bench/run: no command {command!r} (one of: {known}; see bench/README.md)")


if __name__ == "__main__":
    raise SystemExit(main())
