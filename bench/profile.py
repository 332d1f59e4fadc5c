"""``bench/run profile``: py-spy on the real bridge while it fans frames out to N viewers.

The bridge and the scripted upstream start as in the suite (bridge on the server core,
everything else on the client core); N viewers connect to one run; ``py-spy record``
samples the bridge (CPU only, not idle) while the run changes ``rounds`` times. The
folded stacks go to ``bench/out/profile-bridge.folded`` (feed them to flamegraph.pl or
speedscope); the summary (share of samples by package, and by function inclusive and
self) to ``bench/out/profile.json``, which RESULTS.md includes.
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

from bench.client import ClientPool
from bench.common import BENCH_DIR, OUT_DIR, ROOT, own_autogroup, pin, raise_nofile
from bench.servers import Bridge, Upstream
from bench.suite import Config, Runner

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
    """A frame's package: 'bridge', 'quart', 'asyncio', 'native', ... from its file."""
    path = where.rsplit(":", 1)[0]
    if "/" not in path:
        return "native" if path.endswith((".so", ".so.6")) or ".so." in path else path
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(ROOT)):
        return path[len(str(ROOT)) + 1 :].split("/", 1)[0].removesuffix(".py")
    match = re.search(r"/python3\.\d+/(.+)$", path)
    if match:
        return "stdlib:" + match.group(1).split("/", 1)[0].removesuffix(".py")
    return path


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
            short = where.rsplit("/", 1)[-1]
            names.append((f"{match.group('func')} ({package_of(where)}/{short})", where))
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


def profile(
    *,
    viewers: int,
    rounds: int,
    native: bool,
    interval: float,
    client_procs: int,
    bridge_env: dict[str, str],
    command: str,
    rate: int = 250,
) -> dict[str, Any]:
    spy = py_spy()
    config = Config(interval=interval, client_procs=client_procs, bridge_env=bridge_env)
    logs = OUT_DIR / "logs-profile"
    raise_nofile()
    own_autogroup()
    pin(config.client_core)
    runner = Runner(config)
    folded = OUT_DIR / "profile-bridge.folded"
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    upstream = Upstream(config.client_core, logs)
    bridge = Bridge(config.server_core, logs, upstream, interval, bridge_env)
    pool: ClientPool | None = None
    spy_proc: subprocess.Popen[bytes] | None = None
    try:
        bridge.start()
        pool = ClientPool(client_procs, config.client_core)
        channel = runner.channel(bridge, 1)
        connect = pool.connect(
            bridge.port, [bridge.sub_path(channel)] * viewers, config.inflight, timeout=180
        )
        print(
            f"profile: {connect['opened']:,} viewers open ({connect['failed']} failed)", flush=True
        )
        time.sleep(1.0)
        argv = [spy, "record", "--pid", str(bridge.pids()[0]), "--rate", str(rate)]
        argv += ["--format", "raw", "--full-filenames", "--output", str(folded)]
        argv += ["--native"] if native else []
        spy_log = (logs / "py-spy.log").open("wb")
        spy_proc = subprocess.Popen(argv, stdout=spy_log, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        rows = runner.rounds(bridge, pool, channel, 1, rounds)
        spy_proc.send_signal(signal.SIGINT)
        spy_proc.wait(timeout=60)
        spy_log.close()
    finally:
        if spy_proc is not None and spy_proc.poll() is None:
            spy_proc.kill()
            spy_proc.wait(10)
        if pool is not None:
            pool.close()
            pool.shutdown()
        bridge.stop()
        upstream.stop()
    frames = sum(r["delivered"] for r in rows)
    cpu_ms = sum(r["cpu_ms"] for r in rows)
    data: dict[str, Any] = {
        "command": command,
        "started": started,
        "viewers": connect["opened"],
        "rounds": rounds,
        "rate": rate,
        "native": native,
        "folded": str(folded.relative_to(ROOT)),
        "cpu_us_per_frame": round(cpu_ms * 1000 / frames, 2) if frames else None,
        "last_ms": [r.get("last_ms") for r in rows],
        "rounds_detail": rows,
    }
    data.update(summarise(folded))
    gc = runner.gc_report(bridge, rows)
    if gc is not None:
        data["gc"] = gc
    print(json.dumps({k: data[k] for k in ("cpu_us_per_frame", "last_ms", "samples")}))
    return data
