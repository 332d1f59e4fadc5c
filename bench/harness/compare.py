"""Before and after: the bridge's key figures from several quick runs, side by side.

    bench/run compare RECORD.json [LABEL=RUN ...] [--save]

RECORD.json holds runs already compared (their figures, each with a label such as
"before 1"); each RUN is a results.json of ``bench/run --quick`` (or the directory that
holds one) added under LABEL, whose first word is its side ("before" or "after"). The
table gives each run's figures, the mean of each side and after / before; fan-out and
connect rate are also given against nchan in the same run, which takes out most of what
the machine's other work does to one run. ``--save`` writes the added runs into RECORD.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.harness import cli

#: (key, label, lower is better)
FIGURES = (
    ("last_ms", "fan-out: last of 1,000 viewers, median round (ms)", True),
    ("last_vs_nchan", "fan-out: the same / nchan's in the same run", True),
    ("cpu_us_per_frame", "server CPU per delivered frame (us)", True),
    ("new_streams_per_s", "connect rate: new streams/s, 900 at once", False),
    ("connect_vs_nchan", "connect rate / nchan's in the same run", False),
    ("connect_cpu_us", "server CPU per new stream (us)", True),
    ("rss_kib", "RSS per open stream at 1,000 (KiB)", True),
    ("mixed_last_ms", "mixed 10 x 100: last event after the change reached it (ms)", True),
    ("polls", "upstream polls per run per interval, 1 / 100 / 1,000 viewers", True),
    ("foreign_cpu_ms", "other processes' CPU in a fan-out round, mean (ms; the noise)", True),
)
#: Context, not a result: no ratio.
CONTEXT = ("polls", "foreign_cpu_ms")
LEVEL = "1000"


def load(path: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / "results.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """The bridge's figures at 1,000 viewers of one quick run, and nchan's for ratios."""
    summary = results["summary"]
    bridge, nchan = summary["bridge"][LEVEL], summary.get("nchan", {}).get(LEVEL, {})
    step = next(
        s for s in results["targets"]["bridge"]["ladder"]["steps"] if str(s["level"]) == LEVEL
    )
    found: dict[str, Any] = {
        "command": results["meta"]["command"],
        "started": results["meta"]["started"],
        "last_ms": bridge["last_ms_median"],
        "cpu_us_per_frame": bridge["cpu_us_per_frame"],
        "new_streams_per_s": bridge["new_streams_per_s"],
        "connect_cpu_us": step["connect_cpu_us_per_stream"],
        "rss_kib": bridge["rss_per_stream_kib"],
        "mixed_last_ms": results["targets"]["bridge"]["mixed"]["fanout"]["last_ms"],
        "foreign_cpu_ms": round(statistics.fmean(r["foreign_cpu_ms"] for r in step["rounds"]), 1),
        "polls": " / ".join(
            f"{summary['bridge'][level]['upstream_per_interval']:.2f}"
            for level in sorted(summary["bridge"], key=int)
        ),
    }
    if nchan:
        found["last_vs_nchan"] = round(bridge["last_ms_median"] / nchan["last_ms_median"], 3)
        found["connect_vs_nchan"] = round(
            bridge["new_streams_per_s"] / nchan["new_streams_per_s"], 4
        )
    return found


def side(label: str) -> str:
    return label.split()[0].lower()


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value) if value is not None else "-"


def mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["figures"][key] for r in runs if isinstance(r["figures"].get(key), int | float)]
    return statistics.fmean(values) if values else None


def table(runs: list[dict[str, Any]]) -> str:
    before = [r for r in runs if side(r["label"]) == "before"]
    after = [r for r in runs if side(r["label"]) == "after"]
    head = ["figure", *(r["label"] for r in runs), "before, mean", "after, mean", "after / before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, _ in FIGURES:
        b, a = mean(before, key), mean(after, key)
        ratio = f"{a / b:.2f}x" if a is not None and b else "-"
        row = [label, *(cell(r["figures"].get(key)) for r in runs), cell(b), cell(a), ratio]
        if key in CONTEXT:
            row[-1] = ""
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.parser("compare", __doc__)
    parser.add_argument("record", type=Path, help="the runs compared so far (JSON)")
    parser.add_argument("runs", nargs="*", metavar="LABEL=RUN", help="e.g. after=bench/out/quick")
    parser.add_argument("--save", action="store_true", help="add the runs to RECORD")
    args = parser.parse_args(argv)
    record = json.loads(args.record.read_text()) if args.record.exists() else {"runs": []}
    for pair in args.runs:
        label, sep, path = pair.partition("=")
        if not sep or side(label) not in ("before", "after"):
            parser.error(f"wants before...=RUN or after...=RUN, not {pair!r}")
        record["runs"].append({"label": label, "figures": figures(load(Path(path)))})
    if args.save:
        args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(table(record["runs"]))


if __name__ == "__main__":
    main()
