"""The benchmark run: every target through the same ladder of viewers, rounds and mixes.

For each target in turn (same cores, same client, same payload):

1. ladder: viewers of one channel are added in steps (1, 10, 100, 1,000, 5,000, 10,000);
   each step's connects give the new-streams rate, RSS is read after each step, and
   at the timed steps each round changes the channel once and times the frame's
   arrival at every viewer (kernel receive stamps) from the target's t0;
   for targets that poll, the upstream's requests per interval are counted per step;
2. mixed: R runs x V viewers, every run changing once per poll interval, for a few
   intervals; every event's delay from t0, and from the change at the upstream.

The orchestrator and the load client run on the client core, each server on the
server core. Every wait has a deadline; every count is bounded by the configuration.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import servers
from bench.harness.client import ClientPool
from bench.harness.common import (
    OUT_DIR,
    Machine,
    marker,
    own_autogroup,
    percentile,
    pin,
    raise_nofile,
)
from bench.harness.servers import (
    AsgiProbe,
    Bridge,
    Floor,
    Naive,
    Nchan,
    Target,
    Upstream,
    ensure_nchan,
    nginx_version,
)

ALL_TARGETS = ("nchan", "floor", "bridge", "naive")
#: Design probes (bench/harness/asgi_fanout.py): only when named with --targets.
PROBES = ("asgi-send", "asgi-transport")
CHANNEL_PREFIX = {
    "nchan": "n",
    "floor": "f",
    "bridge": "b",
    "naive": "p",
    "asgi-send": "s",
    "asgi-transport": "t",
}


@dataclass
class Config:
    quick: bool = False
    targets: tuple[str, ...] = ALL_TARGETS
    levels: tuple[int, ...] = (1, 10, 100, 1_000, 5_000, 10_000)
    timed_levels: tuple[int, ...] = (1_000, 5_000, 10_000)
    rounds: int = 5
    naive_levels: tuple[int, ...] = (1, 10, 100, 1_000, 10_000)
    naive_timed_levels: tuple[int, ...] = (1_000, 10_000)
    #: BRIDGE_POLL_INTERVAL and the naive server's interval (seconds).
    interval: float = 2.0
    #: Poll intervals each ladder step is held for, to count upstream requests.
    hold_intervals: int = 4
    mixed_runs: int = 100
    mixed_viewers: int = 100
    mixed_rounds: int = 4
    client_procs: int = 4
    #: Streams connecting at once, over all client processes (below every backlog).
    inflight: int = 64
    server_core: int | None = 0
    client_core: int | None = 1
    bridge_env: dict[str, str] = field(default_factory=dict)
    #: SCHED_FIFO priority for servers and client workers (0: autogroup + nice only).
    rt_priority: int = 0
    #: Seconds at most to wait, before each timed phase, for other processes to go quiet.
    quiet_wait: float = 20.0
    out: Path = OUT_DIR

    @classmethod
    def quick_config(cls, **overrides: Any) -> Config:
        base: dict[str, Any] = {
            "quick": True,
            "levels": (1, 100, 1_000),
            "timed_levels": (1_000,),
            "rounds": 2,
            "naive_levels": (1, 100, 1_000),
            "naive_timed_levels": (1_000,),
            "interval": 1.0,
            "hold_intervals": 3,
            "quiet_wait": 2.0,
            "mixed_runs": 10,
            "mixed_viewers": 100,
            "mixed_rounds": 2,
            "client_procs": 2,
            "out": OUT_DIR / "quick",
        }
        base.update(overrides)
        return cls(**base)


def ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def delay_stats(delays_ns: list[int]) -> dict[str, Any]:
    ordered = sorted(delays_ns)
    if not ordered:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "last_ms": None}
    return {
        "n": len(ordered),
        "p50_ms": ms(percentile(ordered, 50)),
        "p99_ms": ms(percentile(ordered, 99)),
        "last_ms": ms(ordered[-1]),
        "first_ms": ms(ordered[0]),
    }


class Runner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.logs = config.out / "logs"
        self.notes: list[str] = []
        self.seq = 0
        self.machine = Machine()

    # --- one target -----------------------------------------------------------------

    def channel(self, target: Target, index: int) -> str:
        return f"{CHANNEL_PREFIX[target.name]}{index:06d}"

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def rounds(
        self, target: Target, pool: ClientPool, channel: str, index: int, count: int
    ) -> list[dict[str, Any]]:
        """Change ``channel`` ``count`` times; per round, every viewer's delay from t0."""
        cfg = self.config
        path = target.sub_path(channel)
        out = []
        for _ in range(count):
            seq = self.next_seq()
            mark = marker(index, seq)
            expected = pool.arm({mark: path})[mark]
            # A random phase against the poller's cadence.
            time.sleep(random.uniform(0.05, 0.25))
            cpu0 = target.cpu_ns()
            client0 = pool.cpu_ns()
            machine0 = self.machine.snapshot()
            changed_at = target.change({channel: (seq, mark)})
            wait = (cfg.interval * 2 if target.polls else 0) + 30
            arrivals, missing, fallbacks = pool.wait(wait)
            time.sleep(0.1)
            cpu1 = target.cpu_ns()
            client_ms = round((pool.cpu_ns() - client0) / 1e6, 1)
            foreign = self.machine.foreign_ms(machine0, self.machine.snapshot())
            t0 = target.fanout_start({channel: mark}, changed_at)[channel]
            stamps = arrivals.get(mark, [])
            row: dict[str, Any] = {
                "seq": seq,
                "expected": expected,
                "delivered": len(stamps),
                "missing": missing.get(mark, 0),
                "t_change_ns": changed_at[channel],
                "t0_ns": t0,
                "t_last_ns": max(stamps) if stamps else None,
                "cpu_ms": round((cpu1 - cpu0) / 1e6, 3),
                "cpu_us_per_frame": round((cpu1 - cpu0) / 1e3 / len(stamps), 2) if stamps else None,
                "foreign_cpu_ms": foreign,
                "client_cpu_ms": client_ms,
                "unstamped": fallbacks,
            }
            if t0 is not None:
                row.update(delay_stats([s - t0 for s in stamps]))
            if target.polls:
                row["from_change"] = delay_stats([s - changed_at[channel] for s in stamps])
            out.append(row)
        return out

    def ladder(
        self,
        target: Target,
        pool: ClientPool,
        upstream: Upstream | None,
        levels: tuple[int, ...],
        timed: tuple[int, ...],
        rounds: int,
    ) -> dict[str, Any]:
        cfg = self.config
        index = 1
        channel = self.channel(target, index)
        path = target.sub_path(channel)
        time.sleep(0.5)
        base_rss = target.rss_kib()
        steps = []
        viewers = 0
        for level in levels:
            add = level - viewers
            cpu0 = target.cpu_ns()
            t_before = time.time_ns()
            connect = pool.connect(target.port, [path] * add, cfg.inflight, timeout=120)
            cpu1 = target.cpu_ns()
            t_connected = time.time_ns()
            viewers += connect["opened"]
            span = connect["t_last"] - connect["t_first"]
            step: dict[str, Any] = {
                "level": level,
                "viewers": viewers,
                "added": add,
                "connect": connect,
                "new_streams_per_s": round(connect["opened"] / (span / 1e9), 1)
                if span > 0
                else None,
                "connect_cpu_us_per_stream": round((cpu1 - cpu0) / 1e3 / connect["opened"], 1)
                if connect["opened"]
                else None,
            }
            time.sleep(0.5)
            rss = target.rss_kib()
            step["rss_kib"] = rss
            step["rss_per_stream_kib"] = round((rss - base_rss) / viewers, 2) if viewers else None
            if level in timed:
                step["quiet_waited_s"] = self.machine.wait_quiet(cfg.quiet_wait)
                step["rounds"] = self.rounds(target, pool, channel, index, rounds)
            if target.polls and upstream is not None:
                step["upstream"] = self.count_upstream(
                    upstream, channel, t_before, t_connected, detailed=target.name == "bridge"
                )
            steps.append(step)
            status = pool.status()
            step["client_open"] = status["open"]
            print(
                f"  {target.name}: {viewers} viewers, "
                f"{step['new_streams_per_s']} streams/s, "
                f"{step['rss_per_stream_kib']} KiB/stream"
                + (
                    f", last viewer {[r.get('last_ms') for r in step['rounds']]} ms"
                    if "rounds" in step
                    else ""
                )
                + (
                    f", upstream {step['upstream']['per_interval']}/interval"
                    if "upstream" in step
                    else ""
                ),
                flush=True,
            )
        closed = pool.close()
        return {"base_rss_kib": base_rss, "steps": steps, "closed": closed}

    def count_upstream(
        self, upstream: Upstream, channel: str, t_before: int, t_connected: int, detailed: bool
    ) -> dict[str, Any]:
        """Upstream GETs of ``channel`` in whole poll intervals after the step connected.

        ``detailed`` (one poller expected): the window starts half an interval before the
        first poll after the connects, so a steady cadence counts exactly one per interval
        whatever its phase; it also lists when each request came (from before the
        connects) and the shortest gap between two, in intervals (below 1: a double poll).
        Otherwise (a poller per viewer, each first polling as it connects) the window
        starts half an interval after the step connected.
        """
        cfg = self.config
        interval_ns = int(cfg.interval * 1e9)
        time.sleep(
            max(0.0, (t_connected + cfg.hold_intervals * interval_ns - time.time_ns()) / 1e9)
        )
        now = time.time_ns()
        out: dict[str, Any] = {}
        if detailed:
            _, times = upstream.requests([channel], t_before, now, times=True)
            stamps = times.get(channel, [])
            after = [t for t in stamps if t >= t_connected]
            start = (after[0] if after else t_connected) - interval_ns // 2
            k = max(1, (now - start) // interval_ns)
            requests = sum(1 for t in stamps if start <= t < start + k * interval_ns)
            if len(stamps) <= 32:
                out["at_ms"] = [round((t - t_connected) / 1e6, 1) for t in stamps]
            if len(stamps) > 1:
                gaps = [b - a for a, b in itertools.pairwise(stamps)]
                out["min_gap_intervals"] = round(min(gaps) / interval_ns, 3)
        else:
            start = t_connected + interval_ns // 2
            k = max(1, (now - start) // interval_ns)
            counts, _ = upstream.requests([channel], start, start + k * interval_ns)
            requests = counts[channel]
        out.update(
            {"intervals": int(k), "requests": requests, "per_interval": round(requests / k, 3)}
        )
        return out

    def mixed(self, target: Target, pool: ClientPool) -> dict[str, Any]:
        """R runs x V viewers; every run changes once per interval for a few intervals."""
        cfg = self.config
        runs = [(i, self.channel(target, i)) for i in range(100, 100 + cfg.mixed_runs)]
        paths = [target.sub_path(ch) for _ in range(cfg.mixed_viewers) for _, ch in runs]
        connect = pool.connect(target.port, paths, cfg.inflight, timeout=120)
        time.sleep(max(0.5, cfg.interval))
        plan: list[dict[str, tuple[int, str]]] = []
        armed: dict[str, str] = {}
        for _ in range(cfg.mixed_rounds):
            seq = self.next_seq()
            changes = {ch: (seq, marker(i, seq)) for i, ch in runs}
            plan.append(changes)
            for ch, (_, mark) in changes.items():
                armed[mark] = target.sub_path(ch)
        expected = pool.arm(armed)
        quiet_waited = self.machine.wait_quiet(cfg.quiet_wait)
        cpu0 = target.cpu_ns()
        machine0 = self.machine.snapshot()
        start = time.monotonic() + 0.2
        changed: list[dict[str, int]] = []
        for r, changes in enumerate(plan):
            time.sleep(max(0.0, start + r * cfg.interval - time.monotonic()))
            changed.append(target.change(changes))
        arrivals, missing, fallbacks = pool.wait(cfg.interval * 2 + 30)
        time.sleep(0.1)
        cpu1 = target.cpu_ns()
        foreign = self.machine.foreign_ms(machine0, self.machine.snapshot())
        fanout: list[int] = []
        end_to_end: list[int] = []
        per_round_last: list[float | None] = []
        never_polled = 0
        delivered = 0
        for changes, changed_at in zip(plan, changed, strict=True):
            t0s = target.fanout_start({ch: m for ch, (_, m) in changes.items()}, changed_at)
            round_fanout: list[int] = []
            for ch, (_, mark) in changes.items():
                stamps = arrivals.get(mark, [])
                delivered += len(stamps)
                t0 = t0s.get(ch)
                if t0 is None:
                    never_polled += 1
                    continue
                round_fanout.extend(s - t0 for s in stamps)
                end_to_end.extend(s - changed_at[ch] for s in stamps)
            fanout.extend(round_fanout)
            per_round_last.append(ms(max(round_fanout)) if round_fanout else None)
        result: dict[str, Any] = {
            "runs": cfg.mixed_runs,
            "viewers_per_run": cfg.mixed_viewers,
            "rounds": cfg.mixed_rounds,
            "connect": connect,
            "expected": sum(expected.values()),
            "delivered": delivered,
            "missing": sum(missing.values()),
            "changes_never_polled": never_polled,
            "fanout": delay_stats(fanout),
            "fanout_last_per_round_ms": per_round_last,
            "from_change": delay_stats(end_to_end),
            "cpu_ms": round((cpu1 - cpu0) / 1e6, 1),
            "cpu_us_per_frame": round((cpu1 - cpu0) / 1e3 / delivered, 2) if delivered else None,
            "interval_ms": cfg.interval * 1000,
            "quiet_waited_s": quiet_waited,
            "foreign_cpu_ms": foreign,
            "unstamped": fallbacks,
        }
        pool.close()
        print(
            f"  {target.name} mixed {cfg.mixed_runs}x{cfg.mixed_viewers}: "
            f"fan-out p99 {result['fanout']['p99_ms']} ms, last {result['fanout']['last_ms']} ms, "
            f"missing {result['missing']}",
            flush=True,
        )
        return result

    def gc_report(self, target: Bridge, rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The bridge's GC pauses; each round gets the longest pause inside its fan-out."""
        try:
            data = json.loads(target.gc_log.read_text())
        except (OSError, ValueError):
            self.notes.append("the bridge's GC log was not written (did it exit cleanly?)")
            return None
        pauses = data.get("pauses", [])
        for row in rounds:
            a, b = row.get("t0_ns"), row.get("t_last_ns")
            if a and b:
                inside = [p["ms"] for p in pauses if a <= p["end_ns"] - p["ms"] * 1e6 <= b]
                row["gc_longest_ms"] = round(max(inside), 2) if inside else 0.0
        return {
            "thresholds": data.get("thresholds"),
            "frozen": data.get("frozen"),
            "generations": data.get("generations"),
            "pauses_over_10ms": sum(1 for p in pauses if p["ms"] >= 10),
            "longest_ms": round(max((p["ms"] for p in pauses), default=0.0), 2),
        }

    def run_target(self, target: Target, pool: ClientPool, upstream: Upstream) -> dict[str, Any]:
        cfg = self.config
        naive = target.name == "naive"
        target.start()
        self.machine.ours.update(target.pids())
        result: dict[str, Any] = {"pids": target.pids()}
        before = pool.status()
        try:
            result["ladder"] = self.ladder(
                target,
                pool,
                upstream,
                cfg.naive_levels if naive else cfg.levels,
                cfg.naive_timed_levels if naive else cfg.timed_levels,
                1 if naive else cfg.rounds,
            )
            if not naive and cfg.mixed_runs:
                result["mixed"] = self.mixed(target, pool)
            after = pool.status()
            result["client"] = {k: after[k] - before[k] for k in after if k != "open"}
        finally:
            try:
                pool.close()
            finally:
                target.stop()
        if isinstance(target, Bridge):
            rounds = [r for step in result["ladder"]["steps"] for r in step.get("rounds", [])]
            gc = self.gc_report(target, rounds)
            if gc is not None:
                result["gc"] = gc
        return result

    # --- the whole run --------------------------------------------------------------

    def make(self, name: str, upstream: Upstream) -> Target:
        cfg = self.config
        core = cfg.server_core
        if name == "nchan":
            return Nchan(core, self.logs)
        if name == "floor":
            return Floor(core, self.logs)
        if name == "bridge":
            return Bridge(core, self.logs, upstream, cfg.interval, cfg.bridge_env)
        if name == "naive":
            return Naive(core, self.logs, upstream, cfg.interval)
        if name in PROBES:
            return AsgiProbe(core, self.logs, name.removeprefix("asgi-"))
        raise ValueError(name)

    def run(self, command: str) -> dict[str, Any]:
        cfg = self.config
        cfg.out.mkdir(parents=True, exist_ok=True)
        nofile = raise_nofile()
        autogroup = own_autogroup()
        servers.RT_PRIORITY = cfg.rt_priority
        pin(cfg.client_core)
        targets = list(cfg.targets)
        if "nchan" in targets and not ensure_nchan(self.notes):
            targets.remove("nchan")
        started = time.time()
        results: dict[str, Any] = {
            "meta": {
                "command": command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
                "host": host_info(),
                "config": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                },
                "nofile": nofile,
                "autogroup": autogroup,
            },
            "targets": {},
        }
        upstream = Upstream(cfg.client_core, self.logs)
        try:
            pool = ClientPool(cfg.client_procs, cfg.client_core, cfg.rt_priority)
        except BaseException:
            upstream.stop()
            raise
        self.machine.ours.update([upstream.proc.pid, *pool.pids])
        try:
            for name in targets:
                print(f"{name}:", flush=True)
                target = self.make(name, upstream)
                results["targets"][name] = self.run_target(target, pool, upstream)
                time.sleep(1.0)
            results["meta"]["client"] = pool.status()
        finally:
            pool.shutdown()
            upstream.stop()
        results["meta"]["seconds"] = round(time.time() - started, 1)
        results["meta"]["notes"] = self.notes
        results["summary"] = summarise(results)
        return results


def host_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
    }
    try:
        info["nginx"] = nginx_version()
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        info["nchan"] = result.stdout.decode().strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# --- the summary the report is made of --------------------------------------------


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per target and viewer count: median and worst round, RSS, rates, CPU."""
    summary: dict[str, Any] = {}
    for name, result in results["targets"].items():
        per: dict[str, Any] = {}
        for step in result.get("ladder", {}).get("steps", []):
            entry: dict[str, Any] = {
                "new_streams_per_s": step.get("new_streams_per_s"),
                "rss_per_stream_kib": step.get("rss_per_stream_kib"),
            }
            rounds = step.get("rounds", [])
            if rounds:
                key = "from_change" if name == "naive" else None
                stats = [r[key] if key else r for r in rounds]
                lasts = [s["last_ms"] for s in stats if s.get("last_ms") is not None]
                entry.update(
                    {
                        "rounds": len(rounds),
                        "p50_ms": _median(
                            [s["p50_ms"] for s in stats if s.get("p50_ms") is not None]
                        ),
                        "p99_ms": _median(
                            [s["p99_ms"] for s in stats if s.get("p99_ms") is not None]
                        ),
                        "last_ms_median": _median(lasts),
                        "last_ms_worst": max(lasts) if lasts else None,
                        "missing": sum(r["missing"] for r in rounds),
                        "cpu_us_per_frame": _median(
                            [r["cpu_us_per_frame"] for r in rounds if r.get("cpu_us_per_frame")]
                        ),
                    }
                )
            if "upstream" in step:
                entry["upstream_per_interval"] = step["upstream"]["per_interval"]
                entry["upstream_min_gap_intervals"] = step["upstream"].get("min_gap_intervals")
            entry["viewers"] = step["viewers"]
            per[str(step["level"])] = entry
        summary[name] = per
    return summary
