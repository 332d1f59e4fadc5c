"""Cluster mode through Redis Sentinel, for real: a primary redis-server, its replica and
three Sentinels (``redis-server --sentinel``, quorum 2, as production runs them), two
bridges that find the primary through the Sentinels, and a failover while a run changes
on every interval; and a Sentinel down, which the bridges pass over.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from bridge.cluster import RedisBackend
from bridge.cluster.link import sentinel_description
from bridge.demo.legacy_api import LegacyApi
from bridge.demo.runs import ScriptedRun
from bridge.settings import ConfigError, load
from bridge.tools.eventstream import ParsedEvent
from tests.redis_server import RedisServer
from tests.support import FAST, RunningBridge, SseStream, running_bridge, sse, wait_for

SERVICE = "bridgeprimary"
#: Sentinels, and how many must agree that the primary is down.
SENTINELS, QUORUM = 3, 2


# --- settings, without servers -------------------------------------------------------------


def test_sentinel_settings_choose_cluster_mode() -> None:
    settings = load(
        redis_sentinels="127.0.0.1:26379, sentinel-2:26380,[::1]:26381",
        redis_sentinel_service=SERVICE,
        redis_sentinel_password="sentinel-pw",
        redis_password="data-pw",
        redis_db=3,
    )
    assert settings.cluster_mode and settings.redis_url is None
    assert settings.sentinel_addresses == [
        ("127.0.0.1", 26379),
        ("sentinel-2", 26380),
        ("::1", 26381),
    ]
    where = sentinel_description(settings)
    assert where == f"sentinel://127.0.0.1:26379,sentinel-2:26380,[::1]:26381/{SERVICE}"
    assert "pw" not in where
    assert not load().cluster_mode


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"redis_sentinels": "sentinel"}, "BRIDGE_REDIS_SENTINELS"),
        ({"redis_sentinels": "sentinel:0"}, "BRIDGE_REDIS_SENTINELS"),
        ({"redis_sentinels": "sentinel:65536"}, "BRIDGE_REDIS_SENTINELS"),
        ({"redis_sentinels": ":26379"}, "BRIDGE_REDIS_SENTINELS"),
        ({"redis_sentinels": "a:1,b:x"}, "BRIDGE_REDIS_SENTINELS"),
        ({"redis_sentinels": "s:26379"}, "BRIDGE_REDIS_SENTINEL_SERVICE"),
        (
            {"redis_sentinels": "s:26379", "redis_sentinel_service": "m", "redis_url": "redis://r"},
            "BRIDGE_REDIS_URL or BRIDGE_REDIS_SENTINELS",
        ),
        ({"redis_password": "hunter2"}, "BRIDGE_REDIS_PASSWORD"),
        ({"redis_url": "redis://r", "redis_db": 2}, "BRIDGE_REDIS_URL"),
    ],
)
def test_sentinel_settings_are_validated_in_one_line(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(**overrides)
    message = str(error.value)
    assert names in message and "\n" not in message
    assert "hunter2" not in message


# --- a primary, a replica, a Sentinel ------------------------------------------------------


class SentinelProcess(RedisServer):
    """``redis-server <config> --sentinel`` (Debian's redis-server has Sentinel built in;
    no redis-sentinel package needed) monitoring one primary: QUORUM Sentinels must
    agree that it is down before one of them, elected by a majority, fails it over."""

    def __init__(self, workdir: Path, primary: RedisServer) -> None:
        super().__init__(workdir)
        self.primary = primary
        #: More lines for its config file (bench/sentinel_partition.py).
        self.extra_config = ""

    def spawn(self) -> None:
        # Sentinel rewrites its config file as it learns: it must be its own and writable.
        config = self.workdir / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f'dir "{self.workdir}"\n'
            "sentinel announce-hostnames no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 2000\n"
            f"{self.extra_config}"
        )
        self.process = subprocess.Popen(
            [self.binary, str(config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def hang(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as with a host that was
        powered off or cut off (no refusal)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def wake(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


@dataclass
class Topology:
    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelProcess]

    @property
    def sentinel(self) -> SentinelProcess:
        """The first Sentinel still running (the one the test asks)."""
        return next(s for s in self.sentinels if s.running)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "redis_sentinels": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "redis_sentinel_service": SERVICE,
            "redis_prefix": f"s{uuid.uuid4().hex[:10]}:",
            "redis_timeout": 0.5,
        }

    async def primary_port(self) -> int:
        async with Redis(port=self.sentinel.port, socket_timeout=2) as s:
            address: Any = await s.sentinel_get_master_addr_by_name(SERVICE)
            return int(address[1])

    async def failover(self, kill: bool) -> None:
        """SENTINEL FAILOVER (deterministic), or the primary killed (Sentinel notices after
        down-after-milliseconds); then wait until the Sentinel names the replica."""
        async with asyncio.timeout(15), Redis(port=self.sentinel.port, socket_timeout=2) as s:
            if kill:
                self.primary.kill()
            while not kill:
                try:
                    await s.sentinel_failover(SERVICE)
                    break
                except Exception:  # NOGOODSLAVE/INPROG while its view is still fresh
                    await asyncio.sleep(0.1)
            while await self.primary_port() != self.replica.port:
                await asyncio.sleep(0.02)


async def _replica_ready(topology: Topology) -> None:
    """The replica is in sync, and every Sentinel knows it as a healthy replica and knows
    the other Sentinels (they find each other through the primary, every 2 s): without
    that, a killed primary could not be agreed down and failed over."""
    async with asyncio.timeout(30):
        async with Redis(port=topology.replica.port, socket_timeout=2) as r:
            while (await r.info("replication")).get("master_link_status") != "up":
                await asyncio.sleep(0.05)
        for sentinel in topology.sentinels:
            async with Redis(port=sentinel.port, socket_timeout=2) as s:
                while True:
                    replicas = await s.sentinel_slaves(SERVICE)
                    peers = await s.sentinel_sentinels(SERVICE)
                    if len(peers) == len(topology.sentinels) - 1 and any(
                        int(x["port"]) == topology.replica.port
                        and not x["is_sdown"]
                        and not x["is_disconnected"]
                        for x in replicas
                    ):
                        break
                    await asyncio.sleep(0.05)


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    names = ("primary", "replica", *(f"sentinel{i}" for i in range(SENTINELS)))
    dirs = [tmp_path / name for name in names]
    for d in dirs:
        d.mkdir()
    primary = RedisServer(dirs[0])
    replica = RedisServer(dirs[1])
    replica.extra_args = ["--replicaof", "127.0.0.1", str(primary.port)]
    sentinels = [SentinelProcess(d, primary) for d in dirs[2:]]
    topology = Topology(primary, replica, sentinels)
    try:
        for server in (primary, replica, *sentinels):
            await server.astart()  # bounded: PING within 10 s
        await _replica_ready(topology)
        yield topology
    finally:
        for sentinel in sentinels:
            sentinel.wake()
        for server in (*sentinels, replica, primary):
            server.kill()


def cluster_of(b: RunningBridge) -> RedisBackend:
    assert isinstance(b.bridge.backend, RedisBackend)
    return b.bridge.backend


def canon(data: Any) -> str:
    return json.dumps(data, sort_keys=True)


def seq(event: ParsedEvent) -> tuple[int, int]:
    epoch, _, number = event.id.partition("-")
    return int(epoch), int(number)


def record_served(legacy: LegacyApi, run_id: str) -> list[tuple[float, str]]:
    """(when, status): every status the upstream serves for ``run_id`` from now on. On a
    loaded machine a step may fall between two polls, and a status nobody fetched is not
    one the bridge lost."""
    served: list[tuple[float, str]] = []
    answer = legacy.answer

    def recording(r: Any, now: float | None = None) -> dict[str, Any]:
        body = answer(r, now)
        if r.id == run_id:
            served.append((time.monotonic(), canon(body)))
        return body

    legacy.answer = recording  # type: ignore[method-assign,assignment]
    return served


def first_served(served: list[tuple[float, str]]) -> dict[str, float]:
    """Each status and when the upstream first served it."""
    first: dict[str, float] = {}
    for at, status in served:
        first.setdefault(status, at)
    return first


@asynccontextmanager
async def advancing(run: ScriptedRun, step: float) -> AsyncIterator[None]:
    """``run`` moves on a status every ``step`` s within the block (never to its last)."""

    async def advance() -> None:
        while run.index < len(run.statuses) - 2:
            await asyncio.sleep(step)
            run.advance()

    advancer = asyncio.create_task(advance())
    try:
        yield
    finally:
        advancer.cancel()
        with suppress(asyncio.CancelledError):
            await advancer


@dataclass
class Viewer:
    stream: SseStream
    #: (arrival, event), every event the stream delivered.
    seen: list[tuple[float, ParsedEvent]] = field(default_factory=list)
    ended: bool = False

    async def collect(self) -> None:
        try:
            while True:
                event = await self.stream.next_event(timeout=60)
                self.seen.append((time.monotonic(), event))
        except EOFError:
            self.ended = True

    def progress(self) -> list[tuple[float, ParsedEvent]]:
        return [(t, e) for t, e in self.seen if e.event == "progress"]

    def statuses(self) -> set[str]:
        return {canon(json.loads(e.data)) for _, e in self.progress()}


@asynccontextmanager
async def collecting(viewers: list[Viewer]) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(v.collect()) for v in viewers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task


# --- the failover ----------------------------------------------------------------------------

#: The run changes this often (seconds); the bridges poll every 0.05 s.
STEP = 0.2
RUN = "failover"


@pytest.mark.redis
@pytest.mark.parametrize("kill", [False, True], ids=["sentinel-failover", "primary-killed"])
async def test_two_bridges_follow_a_sentinel_failover_without_losing_a_status(
    legacy: LegacyApi, topology: Topology, caplog: pytest.LogCaptureFixture, kill: bool
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    run = legacy.scripted(RUN, nodes=tuple(f"n{i}" for i in range(40)))
    served = record_served(legacy, RUN)
    cluster = topology.settings
    async with (
        running_bridge(legacy.url, **cluster, ping_interval=0.2) as a,
        running_bridge(legacy.url, **cluster, ping_interval=0.2) as b,
        sse(f"{a.url}/v1/runs/{RUN}/stream") as on_a,
        sse(f"{b.url}/v1/runs/{RUN}/stream") as on_b,
    ):
        viewers = [Viewer(on_a), Viewer(on_b)]
        async with collecting(viewers):
            await wait_for(lambda: all(v.progress() for v in viewers), timeout=5)
            old_id = viewers[1].progress()[0][1].id
            async with advancing(run, STEP):
                await asyncio.sleep(1.0)  # steady state under the first primary
                polls_before = legacy.requests[RUN]
                failover_at = time.monotonic()
                await topology.failover(kill)
                promoted_after = time.monotonic() - failover_at
                # Both links follow: up again, on the new primary.
                await wait_for(
                    lambda: (
                        all(cluster_of(x).link.up for x in (a, b))
                        and all(
                            cluster_of(x).link.client.connection_pool.master_address  # type: ignore[attr-defined]
                            == ("127.0.0.1", topology.replica.port)
                            for x in (a, b)
                        )
                    ),
                    timeout=10,
                )
                await asyncio.sleep(3.0)  # the run keeps changing under the new primary
            ended_at = time.monotonic()
            # Everything the upstream served reaches both viewers (bounded wait).
            last = canon(run.statuses[run.index])
            await wait_for(lambda: all(last in v.statuses() for v in viewers), timeout=10)
            await asyncio.sleep(0.3)

        # Polling resumed under the new primary.
        assert legacy.requests[RUN] > polls_before + 10
        assert await topology.primary_port() == topology.replica.port

        # The streams stayed open, without an error event.
        for v in viewers:
            assert not v.ended and not v.stream.eof
            assert not [e for _, e in v.seen if e.event in ("error", "complete")]

        # Ids: increasing within an epoch (a new epoch is a clean restart), and one id
        # means one status on both replicas.
        by_id: dict[str, str] = {}
        for v in viewers:
            ids = [seq(e) for _, e in v.progress()]
            for before, after in itertools.pairwise(ids):
                assert after[0] != before[0] or after[1] > before[1], (before, after)
            for _, e in v.progress():
                assert by_id.setdefault(e.id, canon(json.loads(e.data))) == canon(
                    json.loads(e.data)
                ), f"id {e.id} carried two statuses"

        # The blip: the longest time without a progress event around the failover, while
        # the run changed every STEP; and every status served since is delivered.
        # Also: how late a status reached a viewer after the upstream first served it, and
        # how long each link counted Redis as down (its "lost" to its "connected" line).
        blips = []
        late = 0.0
        lost = 0
        first = first_served(served)
        after_failover = {status for status, at in first.items() if at >= failover_at}
        for v in viewers:
            times = [t for t, _ in v.progress()]
            gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times) if t2 >= failover_at]
            blips.append(max(gaps))
            lost += len(after_failover - v.statuses())
            arrived: dict[str, float] = {}
            for t, e in v.progress():
                arrived.setdefault(canon(json.loads(e.data)), t)
            late = max([late] + [arrived[x] - first[x] for x in after_failover if x in arrived])
        down = []
        pending: list[float] = []
        for r in caplog.records:
            if "cluster: lost Redis" in r.getMessage():
                pending.append(r.created)
            elif "cluster: connected" in r.getMessage() and pending:
                down.append(r.created - pending.pop(0))
        blip = max(blips)
        epochs = sorted({seq(e)[0] for v in viewers for _, e in v.progress()})
        polls = sum(1 for at, _ in served if failover_at <= at <= ended_at)
        per_interval = polls / ((ended_at - failover_at) / FAST["poll_interval"])
        report = (
            f"{'primary killed' if kill else 'SENTINEL FAILOVER'}: the Sentinel named the new "
            f"primary after {promoted_after:.2f} s; links down "
            f"{', '.join(f'{d:.2f}' for d in down)} s; longest gap between events (run "
            f"changing every {STEP} s) {blips[0]:.2f} s on a, {blips[1]:.2f} s on b; latest "
            f"delivery {late:.2f} s after the upstream served it; events lost: {lost} of "
            f"{len(after_failover)} statuses served after the failover (both viewers); "
            f"{len(epochs)} epoch(s); polls per interval {per_interval:.2f}"
        )
        print(report)
        assert lost == 0, report
        # The promoted replica had the history: it continues (same epoch, next seq).
        assert len(epochs) == 1, report
        assert blip < 5.0, report

        # A resume with an id from before the failover: the replay ends at the current
        # status, never an older one.
        async with sse(f"{b.url}/v1/runs/{RUN}/stream", {"Last-Event-ID": old_id}) as resumed:
            replay: list[ParsedEvent] = []
            while not replay or canon(json.loads(replay[-1].data)) != last:
                event = await resumed.next_named("progress", timeout=5)
                replay.append(event)
            assert all(seq(e) > seq(replay[0]) for e in replay[1:])
            assert replay[-1].id == viewers[1].progress()[-1][1].id
            old = seq(viewers[1].progress()[0][1])[1]
            whole = [seq(e)[1] for e in replay] == list(range(old + 1, seq(replay[-1])[1] + 1))
            print(f"resume from {old_id}: {len(replay)} events, whole: {whole}")
            assert whole

    records = caplog.records
    assert not [r for r in records if r.levelno >= logging.ERROR]
    # A failover says so; a dead primary is an outage until the Sentinel promotes.
    why = "unreachable" if kill else "the Sentinels named a new primary"
    assert [r for r in records if why in r.getMessage()]
    assert not [r for r in records if "sentinel://" in r.getMessage() and "@" in r.getMessage()]


async def test_a_sentinel_down_is_passed_over(legacy: LegacyApi, topology: Topology) -> None:
    """The first Sentinel listed is down from the start: the bridges ask the next ones
    (each failed one costs at most BRIDGE_REDIS_TIMEOUT), serve, and follow a failover
    the two remaining Sentinels (still a majority) carry out."""
    topology.sentinels[0].kill()
    run = legacy.scripted("quorum", nodes=("a", "b", "c", "d"))
    cluster = topology.settings  # one prefix: one cluster
    async with (
        running_bridge(legacy.url, **cluster) as a,
        running_bridge(legacy.url, **cluster) as b,
        sse(f"{a.url}/v1/runs/quorum/stream") as on_a,
        sse(f"{b.url}/v1/runs/quorum/stream") as on_b,
    ):
        firsts = [await s.next_named("progress") for s in (on_a, on_b)]
        assert firsts[0].id == firsts[1].id
        await topology.failover(kill=True)
        await wait_for(
            lambda: all(
                cluster_of(x).link.up
                and cluster_of(x).link.client.connection_pool.master_address  # type: ignore[attr-defined]
                == ("127.0.0.1", topology.replica.port)
                for x in (a, b)
            ),
            timeout=10,
        )
        for expected in run.statuses[1:3]:
            run.advance()
            got = [await s.next_named("progress", timeout=10) for s in (on_a, on_b)]
            assert got[0].id == got[1].id and json.loads(got[0].data) == expected


# --- whichever replica moves first ------------------------------------------------------------

#: The poll interval of the ordered failovers and the hung Sentinels.
INTERVAL = 0.1


def _addresses(sentinels: list[SentinelProcess]) -> str:
    return ",".join(f"127.0.0.1:{s.port}" for s in sentinels)


async def readiness(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
        return response.status


def moved(b: RunningBridge, topology: Topology) -> bool:
    link = cluster_of(b).link
    pool: Any = link.client.connection_pool
    return link.up and pool.master_address == ("127.0.0.1", topology.replica.port)


@pytest.mark.redis
@pytest.mark.parametrize("leader_first", [True, False], ids=["leader-first", "follower-first"])
async def test_a_planned_failover_loses_nothing_whichever_replica_moves_first(
    legacy: LegacyApi, topology: Topology, caplog: pytest.LogCaptureFixture, leader_first: bool
) -> None:
    """The order is forced: the bridge that moves late asks only the third Sentinel,
    hung (SIGSTOP) from just before ``SENTINEL FAILOVER`` (which the first Sentinel runs)
    until a second after the other bridge moved; it can learn of the failover only from
    the other bridge. Every status the upstream served reaches both viewers, once, under
    one id each; a resume from an id before the failover replays every event since; and
    the new primary holds that whole history."""
    caplog.set_level(logging.INFO, logger="bridge")
    run = legacy.scripted(RUN, nodes=tuple(f"n{i}" for i in range(60)))
    served = record_served(legacy, RUN)
    late_sentinel = topology.sentinels[2]
    base = topology.settings | {"poll_interval": INTERVAL, "ping_interval": 0.2}
    early = base | {"redis_sentinels": _addresses(topology.sentinels[:2])}
    late = base | {"redis_sentinels": _addresses([late_sentinel])}
    first, second = (early, late) if leader_first else (late, early)
    async with (
        running_bridge(legacy.url, **first) as leader,
        sse(f"{leader.url}/v1/runs/{RUN}/stream") as on_leader,
    ):
        await on_leader.next_named("progress")
        async with (
            running_bridge(legacy.url, **second) as follower,
            sse(f"{follower.url}/v1/runs/{RUN}/stream") as on_follower,
        ):
            assert cluster_of(leader).leading == 1 and cluster_of(follower).leading == 0
            early_bridge, late_bridge = (leader, follower) if leader_first else (follower, leader)
            viewers = [Viewer(on_leader), Viewer(on_follower)]
            async with collecting(viewers):
                async with advancing(run, STEP):
                    await wait_for(lambda: all(v.progress() for v in viewers), timeout=5)
                    await asyncio.sleep(1.0)  # steady state under the first primary
                    old_id = viewers[1].progress()[-1][1].id
                    late_sentinel.hang()
                    failover_at = time.monotonic()
                    await topology.failover(kill=False)
                    await wait_for(lambda: moved(early_bridge, topology), timeout=10)
                    assert not moved(late_bridge, topology) or not leader_first
                    await asyncio.sleep(1.0)  # the late one is on its own meanwhile
                    late_sentinel.wake()
                    await wait_for(lambda: moved(late_bridge, topology), timeout=15)
                    await asyncio.sleep(1.5)  # the run keeps changing under the new primary
                ended_at = time.monotonic()
                last = canon(run.statuses[run.index])
                await wait_for(lambda: all(last in v.statuses() for v in viewers), timeout=10)
                await asyncio.sleep(0.3)

            # Resume from before the failover, on both replicas: every event since.
            replays: list[list[ParsedEvent]] = []
            for b in (leader, follower):
                async with sse(
                    f"{b.url}/v1/runs/{RUN}/stream", {"Last-Event-ID": old_id}
                ) as resumed:
                    replay: list[ParsedEvent] = []
                    while not replay or canon(json.loads(replay[-1].data)) != last:
                        replay.append(await resumed.next_named("progress", timeout=5))
                    replays.append(replay)

    # What the new primary holds: the whole history, without a hole.
    async with Redis(port=topology.replica.port, socket_timeout=2) as r:
        keys = [k async for k in r.scan_iter(match=f"{base['redis_prefix']}*:events")]
        assert len(keys) == 1
        held = [seq_of(raw) for raw in await r.lrange(keys[0], 0, -1)]

    first = first_served(served)
    after_failover = {status for status, at in first.items() if at >= failover_at}
    lost = [len(after_failover - v.statuses()) for v in viewers]
    gaps = []
    by_id: dict[str, str] = {}
    for v in viewers:
        times = [t for t, _ in v.progress()]
        gaps.append(max(t2 - t1 for t1, t2 in itertools.pairwise(times) if t2 >= failover_at))
        ids = [seq(e) for _, e in v.progress()]
        for before, after in itertools.pairwise(ids):
            assert after[0] == before[0] and after[1] > before[1], (before, after)
        for _, e in v.progress():
            status = canon(json.loads(e.data))
            assert by_id.setdefault(e.id, status) == status, f"id {e.id} carried two statuses"
    old = int(old_id.partition("-")[2])
    newest = max(seq(e)[1] for v in viewers for _, e in v.progress())
    resumed_whole = [
        [seq(e)[1] for e in replay] == list(range(old + 1, newest + 1)) for replay in replays
    ]
    polls = sum(1 for at, _ in served if failover_at <= at <= ended_at)
    per_interval = polls / ((ended_at - failover_at) / INTERVAL)
    report = (
        f"SENTINEL FAILOVER, {'leader' if leader_first else 'follower'} moves first: longest "
        f"gap {gaps[0]:.2f} s at the leader's viewer, {gaps[1]:.2f} s at the follower's; "
        f"statuses lost {lost[0]} + {lost[1]} of {len(after_failover)}; resume from "
        f"{old_id} whole on leader/follower: {resumed_whole}; new primary holds seq "
        f"{held[0]}-{held[-1]} ({len(held)} records); polls per interval {per_interval:.2f}"
    )
    print(report)
    assert lost == [0, 0], report
    assert all(resumed_whole), report
    assert held == list(range(held[0], held[-1] + 1)) and held[0] <= old + 1, report
    assert held[-1] == newest, report
    messages = [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The bridge that moved first fenced the old primary; the late one followed the fence.
    assert [m for m in messages if "fenced the replaced primary" in m]
    assert [m for m in messages if "another replica found this primary replaced" in m]


def seq_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# --- a Sentinel that hangs -----------------------------------------------------------------------


@pytest.mark.redis
async def test_a_hung_first_sentinel_does_not_keep_the_bridge_from_starting(
    legacy: LegacyApi, topology: Topology
) -> None:
    """The first Sentinel listed hangs (SIGSTOP) from the start: the others answer, the
    bridge is ready and serves."""
    legacy.scripted("hung", nodes=("a", "b"))
    topology.sentinels[0].hang()
    settings = topology.settings | {"poll_interval": INTERVAL}
    async with running_bridge(legacy.url, **settings) as b:
        await wait_for(lambda: cluster_of(b).link.up, timeout=5)
        assert await readiness(b.url) == 200
        async with sse(f"{b.url}/v1/runs/hung/stream") as stream:
            assert stream.status == 200
            await stream.next_named("progress")


@pytest.mark.redis
async def test_a_first_sentinel_hanging_mid_run_costs_nothing(
    legacy: LegacyApi, topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    """The first Sentinel hangs for 3 s while two bridges serve a changing run: Redis
    never counts as lost, /readyz stays 200, every status reaches both viewers, and the
    run is still polled once per interval."""
    caplog.set_level(logging.INFO, logger="bridge")
    run = legacy.scripted("hangs", nodes=tuple(f"n{i}" for i in range(40)))
    served = record_served(legacy, "hangs")
    settings = topology.settings | {"poll_interval": INTERVAL, "ping_interval": 0.2}
    async with (
        running_bridge(legacy.url, **settings) as a,
        running_bridge(legacy.url, **settings) as b,
        sse(f"{a.url}/v1/runs/hangs/stream") as on_a,
        sse(f"{b.url}/v1/runs/hangs/stream") as on_b,
    ):
        viewers = [Viewer(on_a), Viewer(on_b)]
        async with collecting(viewers):
            await wait_for(lambda: all(v.progress() for v in viewers), timeout=5)
            topology.sentinels[0].hang()
            hung_at = time.monotonic()
            polls_before = legacy.requests["hangs"]
            probes: list[int] = []
            try:
                for _ in range(12):  # 3 s: a status every STEP, a probe every 0.25 s
                    run.advance()
                    probes += [await readiness(x.url) for x in (a, b)]
                    await asyncio.sleep(0.25)
            finally:
                topology.sentinels[0].wake()
            hung_for = time.monotonic() - hung_at
            polls = legacy.requests["hangs"] - polls_before
            last = canon(run.statuses[run.index])
            await wait_for(lambda: all(last in v.statuses() for v in viewers), timeout=5)
        lost = [len(first_served(served).keys() - v.statuses()) for v in viewers]
        per_interval = polls / (hung_for / INTERVAL)
        report = (
            f"first Sentinel hung {hung_for:.1f} s: /readyz 200 on "
            f"{probes.count(200)} of {len(probes)} probes; statuses lost {lost}; polls per "
            f"interval {per_interval:.2f}"
        )
        print(report)
        assert probes.count(200) == len(probes), report
        assert lost == [0, 0], report
        assert not [r for r in caplog.records if "lost Redis" in r.getMessage()], report
