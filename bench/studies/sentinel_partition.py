"""A primary cut off from its replica and the Sentinels, but alive and reachable by the
bridges: what a failover then loses, with and without ``min-replicas-to-write``.

    sudo .venv/bin/python -m bench.sentinel_partition [--rounds 2]

Real processes on loopback: a primary, its replica, three Sentinels (quorum 2,
``down-after-milliseconds 500``), two bridges polling every 0.1 s, a run changing every
0.2 s, a viewer on each bridge. The replica and the Sentinels connect from 127.0.0.2
(``bind-source-addr``); the partition is two iptables rules that drop what goes between
127.0.0.2 and the primary's port (so it needs root; the rules are removed at the end).
The bridges still reach the old primary and every Sentinel. After the Sentinels promote
the replica the partition lasts 3 s more, then heals (Sentinel then demotes the old
primary, which drops what it accepted meanwhile). Prints one line per round and writes
bench/out/sentinel_partition.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import pathlib
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.harness import cli
from bridge.demo.legacy_api import LegacyApi, serving
from tests.redis_server import RedisServer
from tests.support import running_bridge, sse, wait_for
from tests.test_sentinel import (
    SERVICE,
    SentinelProcess,
    Topology,
    Viewer,
    _replica_ready,
    advancing,
    canon,
    cluster_of,
    collecting,
    first_served,
    record_served,
    seq,
)

INTERVAL, STEP = 0.1, 0.2
CUT_OFF = "127.0.0.2"


def _iptables(action: str, port: int) -> None:
    for rule in (
        ["-s", CUT_OFF, "-p", "tcp", "--dport", str(port)],
        ["-d", CUT_OFF, "-p", "tcp", "--sport", str(port)],
    ):
        subprocess.run(["iptables", action, "INPUT", *rule, "-j", "DROP"], check=True)


async def one_round(workdir: Path, min_replicas: bool) -> dict[str, Any]:
    dirs = [workdir / n for n in ("primary", "replica", "s0", "s1", "s2")]
    for d in dirs:
        d.mkdir()
    primary = RedisServer(dirs[0])
    # Protected mode admits 127.0.0.1 only, not 127.0.0.2 (still loopback: bound there).
    primary.extra_args = ["--protected-mode", "no"]
    if min_replicas:
        primary.extra_args += ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "1"]
    replica = RedisServer(dirs[1])
    replica.extra_args = [
        "--replicaof", "127.0.0.1", str(primary.port),
        "--bind-source-addr", CUT_OFF,
        "--replica-announce-ip", "127.0.0.1",
        "--protected-mode", "no",
    ]  # fmt: skip
    if min_replicas:
        # Promoted, it must accept writes without a replica of its own.
        replica.extra_args += ["--min-replicas-to-write", "0"]
    sentinels = [SentinelProcess(d, primary) for d in dirs[2:]]
    for s in sentinels:
        # Seen from 127.0.0.2, a Sentinel would announce that address to the others.
        s.extra_config = (
            f"bind-source-addr {CUT_OFF}\nsentinel announce-ip 127.0.0.1\nprotected-mode no\n"
        )
    topology = Topology(primary, replica, sentinels)
    try:
        for server in (primary, replica, *sentinels):
            await server.astart()
        await _replica_ready(topology)
        async with serving(LegacyApi()) as legacy:
            return await _measure(legacy, topology, min_replicas)
    finally:
        for server in (*sentinels, replica, primary):
            server.kill()


async def _measure(legacy: LegacyApi, topology: Topology, min_replicas: bool) -> dict[str, Any]:
    run_id = "cut"
    run = legacy.scripted(run_id, nodes=tuple(f"n{i}" for i in range(80)))
    served = record_served(legacy, run_id)
    settings = topology.settings | {
        "redis_prefix": f"p{uuid.uuid4().hex[:8]}:",
        "poll_interval": INTERVAL,
        "ping_interval": 0.2,
    }
    old_port = topology.primary.port
    async with (
        running_bridge(legacy.url, **settings) as a,
        sse(f"{a.url}/v1/runs/{run_id}/stream") as on_a,
    ):
        await on_a.next_named("progress")
        async with (
            running_bridge(legacy.url, **settings) as b,
            sse(f"{b.url}/v1/runs/{run_id}/stream") as on_b,
        ):
            viewers = [Viewer(on_a), Viewer(on_b)]
            async with collecting(viewers):
                async with advancing(run, STEP):
                    cut = False
                    try:
                        await wait_for(lambda: all(v.progress() for v in viewers), timeout=5)
                        await asyncio.sleep(1.0)
                        old_id = viewers[1].progress()[-1][1].id
                        cut_at = time.monotonic()
                        _iptables("-I", old_port)
                        cut = True
                        async with Redis(port=topology.sentinels[0].port, socket_timeout=2) as s:
                            async with asyncio.timeout(30):
                                while True:
                                    address: Any = await s.sentinel_get_master_addr_by_name(SERVICE)
                                    if int(address[1]) == topology.replica.port:
                                        break
                                    await asyncio.sleep(0.05)
                        promoted_after = time.monotonic() - cut_at
                        await asyncio.sleep(3.0)
                        # What the old primary took meanwhile (lost when it is demoted).
                        async with Redis(port=old_port, socket_timeout=2) as old:
                            keys = [k async for k in old.scan_iter(match="*:events")]
                            on_old = [
                                int(r.split(b" ", 2)[1]) for r in await old.lrange(keys[0], 0, -1)
                            ]
                        _iptables("-D", old_port)
                        cut = False
                        await asyncio.sleep(2.0)
                    finally:
                        if cut:
                            _iptables("-D", old_port)
                ended_at = time.monotonic()
                last = canon(run.statuses[run.index])
                await wait_for(lambda: all(last in v.statuses() for v in viewers), timeout=10)
            async with sse(
                f"{b.url}/v1/runs/{run_id}/stream", {"Last-Event-ID": old_id}
            ) as resumed:
                replay = []
                while not replay or canon(json.loads(replay[-1].data)) != last:
                    replay.append(await resumed.next_named("progress", timeout=5))
            moved = [
                cluster_of(x).link.client.connection_pool.master_address  # type: ignore[attr-defined]
                for x in (a, b)
            ]
    async with Redis(port=topology.replica.port, socket_timeout=2) as r:
        keys = [k async for k in r.scan_iter(match=f"{settings['redis_prefix']}*:events")]
        held = [int(raw.split(b" ", 2)[1]) for raw in await r.lrange(keys[0], 0, -1)]

    after = {status for status, at in first_served(served).items() if at >= cut_at}
    lost = [len(after - v.statuses()) for v in viewers]
    gaps = [
        max(t2 - t1 for t1, t2 in itertools.pairwise([t for t, _ in v.progress()]) if t2 >= cut_at)
        for v in viewers
    ]
    old = int(old_id.partition("-")[2])
    newest = max(seq(e)[1] for v in viewers for _, e in v.progress())
    whole = [seq(e)[1] for e in replay] == list(range(old + 1, newest + 1))
    polls = sum(1 for at, _ in served if cut_at <= at <= ended_at)
    return {
        "min_replicas_to_write": 1 if min_replicas else 0,
        "promoted_after_s": round(promoted_after, 2),
        "longest_gap_s": [round(g, 2) for g in gaps],
        "statuses_lost": lost,
        "statuses_served_after_cut": len(after),
        "resume_whole": whole,
        "new_primary_whole": held == list(range(held[0], held[-1] + 1)) and held[-1] == newest,
        "old_primary_took_up_to_seq": max(on_old) if on_old else None,
        "old_primary_newest_at_cut": old,
        "polls_per_interval": round(polls / ((ended_at - cut_at) / INTERVAL), 2),
        "bridges_on": [f"{h}:{p}" for h, p in moved],
    }


async def run_rounds(rounds: int) -> list[dict[str, Any]]:
    if shutil.which("iptables") is None:
        raise SystemExit("bench.sentinel_partition needs iptables (and root)")
    results = []
    for min_replicas in (False, True):
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                result = await one_round(Path(tmp), min_replicas)
            print(json.dumps(result))
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sentinel_partition", __doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    results = asyncio.run(run_rounds(args.rounds))
    out = pathlib.Path("bench/out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sentinel_partition.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
