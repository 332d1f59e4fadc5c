"""RESULTS.md from results.json (and, when present, the profile and the latest soak).

Ratios are to nchan (issue 4's targets) and, for what a viewer costs to arrive and to
hold, to the raw-ASGI-on-Hypercorn probe measured in the same run (issue 14's targets).
"""

from __future__ import annotations

from typing import Any

REFERENCE = "nchan"
#: The raw ASGI app on Hypercorn that writes through the transport (bench/harness/asgi_fanout.py):
#: what Hypercorn itself costs per connection, the bar for the bridge's connect path.
PROBE = "asgi-transport"
ORDER = ("bridge", "nchan", "floor", "naive", "asgi-send", "asgi-transport")


def _f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return text + unit


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _targets(results: dict[str, Any]) -> list[str]:
    present = results["targets"]
    return [name for name in ORDER if name in present]


def _steps(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    # A run without the reference target (e.g. --targets bridge,asgi-transport) has none.
    target = results["targets"].get(name, {})
    steps: list[dict[str, Any]] = target.get("ladder", {}).get("steps", [])
    return steps


def _step(results: dict[str, Any], name: str, level: int) -> dict[str, Any] | None:
    for step in _steps(results, name):
        if step["level"] == level:
            return step
    return None


def _summary(results: dict[str, Any], name: str, level: int) -> dict[str, Any]:
    entry: dict[str, Any] = results["summary"].get(name, {}).get(str(level), {})
    return entry


def _largest_timed(results: dict[str, Any]) -> int | None:
    levels = results["meta"]["config"]["timed_levels"]
    return max(levels) if levels else None


def _connect_step(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The step that added the most streams at once: its rate is the least noisy."""
    steps = [s for s in _steps(results, name) if s.get("new_streams_per_s")]
    return max(steps, key=lambda s: s["added"]) if steps else None


def targets_table(results: dict[str, Any]) -> list[str]:
    cfg = results["meta"]["config"]
    top = _largest_timed(results)
    lines = [
        "| target (issue 4) | measured | required | met |",
        "|---|---|---|---|",
    ]
    if top is None or "bridge" not in results["targets"]:
        return [*lines, "| (the bridge was not measured) | | | |"]
    bridge = _summary(results, "bridge", top)
    ref = _summary(results, REFERENCE, top)

    def met(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    median = _ratio(bridge.get("last_ms_median"), ref.get("last_ms_median"))
    worst = _ratio(bridge.get("last_ms_worst"), ref.get("last_ms_median"))
    worst_own = _ratio(bridge.get("last_ms_worst"), ref.get("last_ms_worst"))
    lines.append(
        f"| last of {top:,} viewers reached, median round, vs nchan | {_x(median)} "
        f"({_f(bridge.get('last_ms_median'))} ms vs {_f(ref.get('last_ms_median'))} ms) "
        f"| <= 1.5x | {met(None if median is None else median <= 1.5)} |"
    )
    lines.append(
        f"| worst round, vs nchan's median round | {_x(worst)} "
        f"({_f(bridge.get('last_ms_worst'))} ms; nchan's worst {_f(ref.get('last_ms_worst'))} ms, "
        f"{_x(worst_own)}) | <= 2x | {met(None if worst is None else worst <= 2)} |"
    )
    rss = bridge.get("rss_per_stream_kib")
    lines.append(
        f"| RSS per open stream at {top:,} | {_f(rss, 1, ' KiB')} "
        f"(nchan {_f(ref.get('rss_per_stream_kib'), 1, ' KiB')}) "
        f"| <= 16 KiB | {met(None if rss is None else rss <= 16)} |"
    )
    step = _connect_step(results, "bridge")
    ref_step = _connect_step(results, REFERENCE)
    rate = step["new_streams_per_s"] if step else None
    lines.append(
        f"| new streams per second ({_f(step['added'] if step else None)} opened at once) "
        f"| {_f(rate, 0)} (nchan {_f(ref_step['new_streams_per_s'] if ref_step else None, 0)}) "
        f"| >= 4,000 | {met(None if rate is None else rate >= 4000)} |"
    )
    polls = [
        (s["level"], s["upstream"]["per_interval"], s["upstream"].get("min_gap_intervals"))
        for s in _steps(results, "bridge")
        if "upstream" in s
    ]
    # One per interval at every step, and no two polls close together (a poll that came
    # late, the next one on its cadence, shows as a gap somewhat under one interval).
    exact = all(p == 1.0 for _, p, _ in polls) and all(g is None or g >= 0.5 for _, _, g in polls)
    gaps = [g for _, _, g in polls if g is not None]
    lines.append(
        f"| upstream polls per run per interval, {polls[0][0]:,} to {polls[-1][0]:,} viewers "
        f"| {', '.join(_f(p, 2) for _, p, _ in polls)}; "
        f"shortest gap between two polls {_f(min(gaps) if gaps else None, 3)} intervals "
        f"| exactly 1 | {met(exact if polls else None)} |"
        if polls
        else "| upstream polls per run per interval | n/a | exactly 1 | n/a |"
    )
    mixed = results["targets"]["bridge"].get("mixed")
    if mixed:
        last = mixed["fanout"]["last_ms"]
        interval_ms = cfg["interval"] * 1000
        ok = last is not None and last <= interval_ms and mixed["missing"] == 0
        lines.append(
            f"| mixed {mixed['runs']} runs x {mixed['viewers_per_run']} viewers: "
            "latest event after "
            f"the bridge received the change | {_f(last)} ms, {mixed['missing']} missed "
            f"(from the change at the upstream: {_f(mixed['from_change']['last_ms'])} ms) "
            f"| <= 1 interval ({interval_ms:,.0f} ms) | {met(ok)} |"
        )
    return lines


def probe_targets_table(results: dict[str, Any]) -> list[str]:
    """Issue 14: new streams and memory against the raw-ASGI probe of the same run."""
    lines = [
        f"| target (issue 14) | bridge | {PROBE} probe | ratio | required | met |",
        "|---|---|---|---|---|---|",
    ]
    step, probe = _connect_step(results, "bridge"), _connect_step(results, PROBE)
    if step is None or probe is None:
        return [*lines, f"| (run with --targets including bridge and {PROBE}) | | | | | |"]

    def row(
        what: str, ours: float | None, theirs: float | None, unit: str, op: str, bar: float
    ) -> str:
        ratio = _ratio(ours, theirs)
        ok = None if ratio is None else (ratio >= bar if op == ">=" else ratio <= bar)
        met = "n/a" if ok is None else ("yes" if ok else "**no**")
        return (
            f"| {what} | {_f(ours, 0 if unit == '/s' else 1)}{unit} "
            f"| {_f(theirs, 0 if unit == '/s' else 1)}{unit} | {_x(ratio)} | {op} {bar}x | {met} |"
        )

    top, probe_top = _steps(results, "bridge")[-1], _steps(results, PROBE)[-1]
    return [
        *lines,
        row(
            f"new streams/s, {step['added']:,} concurrent connects",
            step["new_streams_per_s"],
            probe["new_streams_per_s"],
            "/s",
            ">=",
            0.75,
        ),
        row(
            "server CPU per new stream",
            step.get("connect_cpu_us_per_stream"),
            probe.get("connect_cpu_us_per_stream"),
            " us",
            "<=",
            1.35,
        ),
        row(
            f"RSS per open stream at {top['viewers']:,}",
            top.get("rss_per_stream_kib"),
            probe_top.get("rss_per_stream_kib"),
            " KiB",
            "<=",
            1.25,
        ),
    ]


def fanout_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| viewers | target | p50 ms | p99 ms | last ms (median round) | last ms (worst round) "
        "| last vs nchan | CPU us/frame | rounds | missed | client / foreign CPU ms (max round) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    levels = sorted(
        set(results["meta"]["config"]["timed_levels"])
        | set(results["meta"]["config"]["naive_timed_levels"])
    )
    for level in levels:
        ref = _summary(results, REFERENCE, level)
        for name in _targets(results):
            entry = _summary(results, name, level)
            if "rounds" not in entry:
                continue
            step = _step(results, name, level) or {}
            rounds = step.get("rounds", [])
            foreign = max((r.get("foreign_cpu_ms") or 0 for r in rounds), default=None)
            client = max((r.get("client_cpu_ms") or 0 for r in rounds), default=None)
            label = name + (" (from the change)" if name == "naive" else "")
            lines.append(
                f"| {level:,} | {label} | {_f(entry.get('p50_ms'))} | {_f(entry.get('p99_ms'))} "
                f"| {_f(entry.get('last_ms_median'))} | {_f(entry.get('last_ms_worst'))} "
                f"| {_x(_ratio(entry.get('last_ms_median'), ref.get('last_ms_median')))} "
                f"| {_f(entry.get('cpu_us_per_frame'))} | {entry['rounds']} "
                f"| {entry.get('missing')} "
                f"| {_f(client, 0)} / {_f(foreign, 0)} |"
            )
    return lines


def upstream_table(results: dict[str, Any]) -> list[str]:
    names = [n for n in ("bridge", "naive") if n in results["targets"]]
    if not names:
        return []
    levels = sorted({s["level"] for n in names for s in _steps(results, n) if "upstream" in s})
    lines = [
        "| viewers | " + " | ".join(f"{n}: requests / interval (window)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for level in levels:
        cells = []
        for name in names:
            step = _step(results, name, level)
            up = step.get("upstream") if step else None
            if up is None:
                cells.append("not run")
            else:
                gap = up.get("min_gap_intervals")
                cells.append(
                    f"{_f(up['per_interval'], 2)} "
                    f"({up['requests']:,} in {up['intervals']} intervals"
                    + (f", shortest gap {gap:.3f}" if gap is not None and name == "bridge" else "")
                    + ")"
                )
        lines.append(f"| {level:,} | " + " | ".join(cells) + " |")
    return lines


def memory_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| target | viewers | RSS MiB | RSS per stream KiB | vs nchan | vs probe "
        "| new streams/s (step) | vs probe | server CPU us per new stream | vs probe "
        "| connect p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    probe_steps = _steps(results, PROBE)
    probe_rss = probe_steps[-1].get("rss_per_stream_kib") if probe_steps else None
    probe_connect = _connect_step(results, PROBE) or {}
    for name in _targets(results):
        steps = _steps(results, name)
        if not steps:
            continue
        top = steps[-1]
        ref = _steps(results, REFERENCE)
        ref_top = next((s for s in ref if s["level"] == top["level"]), None)
        ref_rss = ref_top.get("rss_per_stream_kib") if ref_top else None
        connect = _connect_step(results, name) or {}
        rate, cpu = connect.get("new_streams_per_s"), connect.get("connect_cpu_us_per_stream")
        lines.append(
            f"| {name} | {top['viewers']:,} | {_f(top['rss_kib'] / 1024)} "
            f"| {_f(top.get('rss_per_stream_kib'))} "
            f"| {_x(_ratio(top.get('rss_per_stream_kib'), ref_rss))} "
            f"| {_x(_ratio(top.get('rss_per_stream_kib'), probe_rss))} "
            f"| {_f(rate, 0)} ({_f(connect.get('added'))} added) "
            f"| {_x(_ratio(rate, probe_connect.get('new_streams_per_s')))} "
            f"| {_f(cpu)} | {_x(_ratio(cpu, probe_connect.get('connect_cpu_us_per_stream')))} "
            f"| {_f(connect.get('connect', {}).get('latency_p99_ms_max_worker'))} |"
        )
    return lines


def mixed_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| target | events expected | missed (changes never polled) | fan-out p50 / p99 / last ms "
        "| last per round ms | from the change p99 / last ms | CPU us/frame | foreign CPU ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in _targets(results):
        mixed = results["targets"][name].get("mixed")
        if not mixed:
            continue
        fan = mixed["fanout"]
        change = mixed["from_change"]
        per_round = ", ".join(_f(v) for v in mixed["fanout_last_per_round_ms"])
        lines.append(
            f"| {name} | {mixed['expected']:,} "
            f"| {mixed['missing']:,} ({mixed.get('changes_never_polled', 0)}) "
            f"| {_f(fan['p50_ms'])} / {_f(fan['p99_ms'])} / {_f(fan['last_ms'])} | {per_round} "
            f"| {_f(change['p99_ms'])} / {_f(change['last_ms'])} | {_f(mixed['cpu_us_per_frame'])} "
            f"| {_f(mixed.get('foreign_cpu_ms'), 0)} |"
        )
    return lines


def health_table(results: dict[str, Any]) -> list[str]:
    """What could make a figure less than it seems, per target."""
    lines = [
        "| target | streams the server closed | timed arrivals without a kernel stamp "
        "| rounds with over 100 ms of foreign CPU |",
        "|---|---|---|---|",
    ]
    for name in _targets(results):
        result = results["targets"][name]
        client = result.get("client", {})
        rounds = [r for s in _steps(results, name) for r in s.get("rounds", [])]
        mixed = result.get("mixed")
        unstamped = sum(r.get("unstamped", 0) for r in rounds) + (
            mixed.get("unstamped", 0) if mixed else 0
        )
        noisy = sum(1 for r in rounds if (r.get("foreign_cpu_ms") or 0) > 100)
        lines.append(
            f"| {name} | {client.get('closed_by_server', 'n/a')} | {unstamped:,} "
            f"| {noisy} of {len(rounds)} |"
        )
    return lines


def gc_lines(results: dict[str, Any]) -> list[str]:
    bridge = results["targets"].get("bridge", {})
    gc = bridge.get("gc")
    if not gc:
        return ["(no GC log: the bridge did not exit cleanly, or was not measured)"]
    lines = [
        f"Thresholds {gc['thresholds']}, frozen objects {gc['frozen']:,}. "
        f"Longest pause {gc['longest_ms']} ms; pauses of 10 ms or more: {gc['pauses_over_10ms']}.",
        "",
        "| generation | collections | total ms | longest ms |",
        "|---|---|---|---|",
    ]
    for gen, row in sorted(gc["generations"].items()):
        lines.append(f"| {gen} | {row['count']:,} | {_f(row['total_ms'])} | {_f(row['max_ms'])} |")
    rounds = [
        (step["level"], r)
        for step in _steps(results, "bridge")
        for r in step.get("rounds", [])
        if "gc_longest_ms" in r
    ]
    if rounds:
        lines += [
            "",
            "Longest GC pause inside each fan-out round (t0 to last viewer):",
            "",
            "| viewers | round last ms | longest GC pause in it ms |",
            "|---|---|---|",
        ]
        lines += [
            f"| {level:,} | {_f(r.get('last_ms'))} | {_f(r['gc_longest_ms'], 2)} |"
            for level, r in rounds
        ]
    return lines


def _spy_lines(profile: dict[str, Any]) -> list[str]:
    lines = [
        "Where the samples fall, by package (self time):",
        "",
        "| package | share of samples |",
        "|---|---|",
    ]
    lines += [f"| {row['name']} | {row['share']:.1%} |" for row in profile["by_package"][:12]]
    lines += [
        "",
        "Functions by self time (top 15):",
        "",
        "| function | self |",
        "|---|---|",
    ]
    lines += [f"| `{row['name']}` | {row['self']:.1%} |" for row in profile["self_top"][:15]]
    lines += [
        "",
        "Functions by inclusive time (top 25, below the event loop):",
        "",
        "| function | inclusive | self |",
        "|---|---|---|",
    ]
    rows = [r for r in profile["functions"] if r["inclusive"] < 0.95][:25]
    lines += [f"| `{r['name']}` | {r['inclusive']:.1%} | {r['self']:.1%} |" for r in rows]
    return lines


def _grown_row(row: dict[str, Any], streams: int) -> str:
    where = row["where"].split("site-packages/")[-1].split("/lib/python3.11/")[-1]
    kib = row["bytes"] / streams / 1024
    return f"| `{where}` | {kib:.2f} | {row['count'] / streams:.1f} |"


def profile_lines(profiles: dict[str, dict[str, Any]]) -> list[str]:
    if not profiles:
        return ["(none yet: `bench/run profile [fanout|connect|memory]`)"]
    lines: list[str] = []
    for phase in ("fanout", "connect", "memory"):
        data = profiles.get(phase)
        if not data:
            continue
        head = (
            f"### {phase}: `{data['command']}` ({data['started']}), "
            f"{data.get('viewers', 0):,} viewers"
        )
        lines += [head, ""]
        facts = []
        if data.get("cpu_us_per_frame") is not None:
            facts.append(f"CPU per delivered frame {_f(data['cpu_us_per_frame'])} us")
        if data.get("last_ms"):
            facts.append(
                "last viewer per round " + ", ".join(_f(v) for v in data["last_ms"]) + " ms"
            )
        if data.get("cpu_us_per_new_stream") is not None:
            facts.append(
                f"{_f(data.get('new_streams_per_s'), 0)} new streams/s, "
                f"{_f(data['cpu_us_per_new_stream'])} us CPU per new stream"
            )
        if data.get("rss_per_stream_kib") is not None:
            facts.append(f"RSS {_f(data['rss_per_stream_kib'])} KiB per stream")
        if data.get("samples"):
            kind = "native and Python" if data.get("native") else "Python"
            facts.append(f"{data['samples']:,} samples at {data['rate']} Hz ({kind} frames)")
        lines += ["; ".join(facts) + ".", ""]
        if phase == "memory" and "tracemalloc" in data:
            trace = data["tracemalloc"]
            added = max(1, data.get("viewers", 1) - 1)

            lines += [
                "What Python allocations grew by from 1 open stream to "
                f"{data.get('viewers', 0):,} (tracemalloc): "
                f"{trace['grown_bytes'] / added / 1024:.1f} KiB per stream "
                "(RSS per stream in this run is higher: tracemalloc's own records).",
                "",
                "| file | KiB per stream | blocks per stream |",
                "|---|---|---|",
                *[_grown_row(row, added) for row in trace["by_file"][:15]],
                "",
                "| line | KiB per stream | blocks per stream |",
                "|---|---|---|",
                *[_grown_row(row, added) for row in trace["by_line"][:20]],
            ]
        elif "by_package" in data:
            lines += _spy_lines(data)
        lines.append("")
    return lines


def soak_lines(soak: dict[str, Any] | None) -> list[str]:
    """The latest ``bench/run soak`` run, under its own heading: a separate run, not this one."""
    if not soak:
        return ["No soak recorded (`bench/run soak` writes bench/out/soak.json)."]
    from bench.studies.soak import render as render_soak

    title, *body = render_soak(soak).splitlines()
    return [
        f"Its own run, not the one above: {title.removeprefix('# Soak: ')}.",
        *body,
    ]


def render(
    results: dict[str, Any],
    profiles: dict[str, dict[str, Any]] | None = None,
    soak: dict[str, Any] | None = None,
) -> str:
    meta = results["meta"]
    cfg = meta["config"]
    host = meta["host"]
    sched = (
        f"SCHED_FIFO {cfg['rt_priority']}"
        if cfg.get("rt_priority")
        else f"autogroup {meta.get('autogroup')}"
    )
    out = [
        "# Benchmark results",
        "",
        "Generated by `bench/harness/report.py` from the run's `results.json`; see "
        "`bench/README.md` "
        "for what each figure means and how it is measured, and `bench/FINDINGS.md` for "
        "where the time and memory go and what each unmet target would need.",
        "",
        f"- command: `{meta['command']}` (started {meta['started']}, took {meta['seconds']} s)",
        f"- host: {host['cpu']}, {host['cores']} cores, Linux {host['kernel']}, "
        f"Python {host['python']}, "
        f"nginx {host.get('nginx', '?')}, nchan {host.get('nchan', '?')}",
        f"- servers on core {cfg['server_core']}; load client ({cfg['client_procs']} processes), "
        f"scripted upstream and orchestrator on core {cfg['client_core']}; scheduling: {sched}",
        f"- poll interval {cfg['interval']:g} s; "
        f"viewer steps {', '.join(f'{v:,}' for v in cfg['levels'])}; "
        f"{cfg['rounds']} rounds at {', '.join(f'{v:,}' for v in cfg['timed_levels'])}; "
        f"mixed {cfg['mixed_runs']} x {cfg['mixed_viewers']} for {cfg['mixed_rounds']} intervals",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        *probe_targets_table(results),
        "",
        "## Fan-out delay: t0 to each viewer's kernel receive time",
        "",
        "t0: bridge, when the upstream first served the changed status; nchan and floor, just "
        "before the publish requests were written (a round's all at once, pipelined on one "
        "connection); naive, the change at the upstream (each viewer polls on its own). "
        "Client CPU: what the load client used during the round (it only has to keep up: "
        "arrival times are the kernel's); foreign CPU: what other processes on the machine used.",
        "",
        *fanout_table(results),
        "",
        "## Upstream requests per run per poll interval",
        "",
        *upstream_table(results),
        "",
        "## Memory and new streams",
        "",
        *memory_table(results),
        "",
        "## Mixed load: every run changes once per interval",
        "",
        *mixed_table(results),
        "",
        "## Run health",
        "",
        *health_table(results),
        "",
        "## The bridge's garbage collector",
        "",
        *gc_lines(results),
        "",
        "## Soak: steady churn for many minutes",
        "",
        *soak_lines(soak),
        "",
        "## Profile of the bridge (py-spy)",
        "",
        *profile_lines(profiles or {}),
        "",
    ]
    notes = meta.get("notes") or []
    if notes:
        out += ["## Notes from the run", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)
