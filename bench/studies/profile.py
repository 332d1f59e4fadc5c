"""``bench/run profile``: py-spy on the real bridge while it fans frames out to N viewers.

The bridge and the scripted upstream start as in the suite (bridge on the server core,
everything else on the client core) and N viewers connect to one run. Phases:

- ``fanout``: ``py-spy record`` samples the bridge (CPU only, not idle) while the run
  changes ``rounds`` times;
- ``connect``: the same while the N viewers connect;
- ``memory``: the bridge runs with tracemalloc (gcprobe's ``BENCH_TRACEMALLOC``) and
  reports what its Python allocations grew by, by file and line, from one open stream
  to N.

The folded stacks go to ``bench/out/profile-<phase>.folded`` (input for flamegraph.pl or
speedscope), the summary to ``bench/out/profile-<phase>.json``; RESULTS.md includes it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.harness import cli, servers
from bench.harness.client import ClientPool
from bench.harness.common import BENCH_DIR, OUT_DIR, ROOT, own_autogroup, pin, raise_nofile
from bench.harness.servers import Bridge, Upstream
from bench.harness.suite import Config, Runner

_FRAME = re.compile(r"^(?P<func>.*) \((?P<where>[^()]*)\)$")


def py_spy() -> str:
    """The py-spy binary, installed from bench/requirements.txt into the venv if missing."""
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found:
        return found
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-r", str(BENCH_DIR / "requirements.txt")],
        check=True,
        timeout=600,
    )
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("py-spy could not be installed")
    return found


def package_of(where: str) -> str:
    """A frame's package: 'bridge', 'quart', 'stdlib:asyncio', 'native:libc.so.6', ..."""
    path = where.rsplit(":", 1)[0]
    if ".so" in path.rsplit("/", 1)[-1]:
        return "native:" + path.rsplit("/", 1)[-1]
    if path.endswith((".c", ".h")):
        return "cpython:" + path.rsplit("/", 1)[-1]
    if "/" not in path:
        return path
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(ROOT)):
        return path[len(str(ROOT)) + 1 :].split("/", 1)[0].removesuffix(".py")
    match = re.search(r"/python3\.\d+/(.+)$", path)
    if match:
        return "stdlib:" + match.group(1).split("/", 1)[0].removesuffix(".py")
    return path


def _display(func: str, where: str) -> str:
    package = package_of(where)
    if package.startswith(("native:", "cpython:")):
        return f"{func} ({package})"
    return f"{func} ({package}/{where.rsplit('/', 1)[-1]})"


def summarise(folded: Path, top: int = 40) -> dict[str, Any]:
    """Share of samples by package (self) and by function (inclusive and self)."""
    total = 0
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        names = []
        for frame in frames:
            match = _FRAME.match(frame)
            if match is None:
                names.append((frame, "?"))
                continue
            where = match.group("where")
            names.append((_display(match.group("func"), where), where))
        leaf_name, leaf_where = names[-1]
        self_time[leaf_name] += count
        by_package[package_of(leaf_where)] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count
    if not total:
        return {"samples": 0, "by_package": [], "functions": []}
    return {
        "samples": total,
        "by_package": [
            {"name": name, "share": round(n / total, 4)} for name, n in by_package.most_common(15)
        ],
        "functions": [
            {
                "name": name,
                "inclusive": round(n / total, 4),
                "self": round(self_time.get(name, 0) / total, 4),
            }
            for name, n in inclusive.most_common(top)
        ],
        "self_top": [
            {"name": name, "self": round(n / total, 4)} for name, n in self_time.most_common(top)
        ],
    }


PHASES = ("fanout", "connect", "memory")


class Spy:
    """One ``py-spy record`` of a pid, stopped with SIGINT (it then writes its output)."""

    def __init__(self, pid: int, folded: Path, rate: int, native: bool, log: Path) -> None:
        argv = [py_spy(), "record", "--pid", str(pid), "--rate", str(rate)]
        argv += ["--format", "raw", "--full-filenames", "--output", str(folded)]
        argv += ["--native"] if native else []
        self._log = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # attached

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def _tracemalloc(bridge: Bridge, path: Path, baseline: bool, timeout: float = 120.0) -> Any:
    """Ask the bridge (SIGUSR2, see gcprobe) for a snapshot; wait for its answer."""
    path.unlink(missing_ok=True)
    bridge.proc_signal(signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data: dict[str, Any] = json.loads(path.read_text())
            if data.get("baseline") == baseline:
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError("the bridge wrote no tracemalloc snapshot")


def profile(
    *,
    phase: str,
    viewers: int,
    rounds: int,
    native: bool,
    interval: float,
    client_procs: int,
    bridge_env: dict[str, str],
    command: str,
    rt_priority: int = 0,
    rate: int = 250,
) -> dict[str, Any]:
    """py-spy the fan-out rounds or the connects, or take the memory apart (tracemalloc)."""
    if phase not in PHASES:
        raise ValueError(phase)
    config = Config(
        interval=interval, client_procs=client_procs, bridge_env=bridge_env, rt_priority=rt_priority
    )
    servers.RT_PRIORITY = rt_priority
    logs = OUT_DIR / f"logs-profile-{phase}"
    raise_nofile()
    own_autogroup()
    pin(config.client_core)
    runner = Runner(config)
    folded = OUT_DIR / f"profile-{phase}.folded"
    trace = (logs / "tracemalloc.json").resolve()
    env = dict(bridge_env)
    if phase == "memory":
        trace.unlink(missing_ok=True)
        env["BENCH_TRACEMALLOC"] = str(trace)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    upstream = Upstream(config.client_core, logs)
    bridge = Bridge(config.server_core, logs, upstream, interval, env)
    pool: ClientPool | None = None
    spy: Spy | None = None
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {
        "phase": phase,
        "command": command,
        "started": started,
        "rate": rate,
        "native": native,
        "rt_priority": rt_priority,
    }
    try:
        bridge.start()
        pool = ClientPool(client_procs, config.client_core, rt_priority)
        channel = runner.channel(bridge, 1)
        paths = [bridge.sub_path(channel)]
        pool.connect(bridge.port, paths, 1, timeout=30)  # the poller is running first
        time.sleep(0.5)
        if phase == "memory":
            _tracemalloc(bridge, trace, baseline=True)
        rss0 = bridge.rss_kib()
        if phase == "connect":
            spy = Spy(bridge.pids()[0], folded, rate, native, logs / "py-spy.log")
        cpu0 = bridge.cpu_ns()
        connect = pool.connect(bridge.port, paths * (viewers - 1), config.inflight, timeout=180)
        cpu1 = bridge.cpu_ns()
        if spy is not None:
            spy.stop()
        span = (connect["t_last"] - connect["t_first"]) / 1e9
        data.update(
            viewers=connect["opened"] + 1,
            new_streams_per_s=round(connect["opened"] / span, 1) if span > 0 else None,
            cpu_us_per_new_stream=round((cpu1 - cpu0) / 1e3 / max(1, connect["opened"]), 1),
        )
        print(f"profile: {data['viewers']:,} viewers open ({connect['failed']} failed)", flush=True)
        time.sleep(1.0)
        data["rss_per_stream_kib"] = round((bridge.rss_kib() - rss0) / connect["opened"], 2)
        if phase == "memory":
            data["tracemalloc"] = _tracemalloc(bridge, trace, baseline=False)
        if phase == "fanout":
            spy = Spy(bridge.pids()[0], folded, rate, native, logs / "py-spy.log")
            rows = runner.rounds(bridge, pool, channel, 1, rounds)
            spy.stop()
    finally:
        if spy is not None:
            spy.stop()
        if pool is not None:
            pool.close()
            pool.shutdown()
        bridge.stop()
        upstream.stop()
    if rows:
        frames = sum(r["delivered"] for r in rows)
        data.update(
            rounds=rounds,
            cpu_us_per_frame=round(sum(r["cpu_ms"] for r in rows) * 1000 / frames, 2)
            if frames
            else None,
            last_ms=[r.get("last_ms") for r in rows],
            rounds_detail=rows,
        )
    if phase != "memory":
        data["folded"] = str(folded.relative_to(ROOT))
        data.update(summarise(folded))
    gc = runner.gc_report(bridge, rows)
    if gc is not None:
        data["gc"] = gc
    return data


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.parser("profile", __doc__)
    parser.add_argument(
        "phase", nargs="?", default="fanout", choices=PHASES, help="what to look at"
    )
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    cli.add_interval(parser, 2.0)
    cli.add_client_procs(parser, 4)
    cli.add_bridge_env(parser)
    cli.add_rt(parser)
    args = parser.parse_args(argv)
    data = profile(
        phase=args.phase,
        viewers=args.viewers,
        rounds=args.rounds,
        native=args.native,
        interval=args.interval,
        client_procs=args.client_procs,
        bridge_env=dict(args.bridge_env),
        command=cli.command_line("profile", argv),
        rt_priority=10 if args.rt else 0,
    )
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"profile-{args.phase}.json"
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
