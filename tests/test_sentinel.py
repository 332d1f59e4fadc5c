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
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bridge.cluster import RedisBackend
from bridge.cluster.link import sentinel_description
from bridge.demo.legacy_api import LegacyApi
from bridge.settings import ConfigError, load
from bridge.tools.eventstream import ParsedEvent
from tests.redis_server import RedisServer
from tests.support import RunningBridge, SseStream, running_bridge, sse, wait_for

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
        )
        self.process = subprocess.Popen(
            [self.binary, str(config), "--sentinel", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


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
    # Every status the upstream serves for the run, when it served it.
    served: list[tuple[float, str]] = []
    answer = legacy.answer

    def recording(r: Any, now: float | None = None) -> dict[str, Any]:
        body = answer(r, now)
        if r.id == RUN:
            served.append((time.monotonic(), canon(body)))
        return body

    legacy.answer = recording  # type: ignore[method-assign,assignment]

    async def advancing() -> None:
        while run.index < len(run.statuses) - 2:  # never the terminal one
            await asyncio.sleep(STEP)
            run.advance()

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
            advancer = asyncio.create_task(advancing())
            try:
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
            finally:
                advancer.cancel()
                with suppress(asyncio.CancelledError):
                    await advancer
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
        first_served: dict[str, float] = {}
        for at, status in served:
            first_served.setdefault(status, at)
        after_failover = {status for status, at in first_served.items() if at >= failover_at}
        for v in viewers:
            times = [t for t, _ in v.progress()]
            gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times) if t2 >= failover_at]
            blips.append(max(gaps))
            lost += len(after_failover - v.statuses())
            arrived: dict[str, float] = {}
            for t, e in v.progress():
                arrived.setdefault(canon(json.loads(e.data)), t)
            late = max(
                [late] + [arrived[x] - first_served[x] for x in after_failover if x in arrived]
            )
        down = []
        pending: list[float] = []
        for r in caplog.records:
            if "cluster: lost Redis" in r.getMessage():
                pending.append(r.created)
            elif "cluster: connected" in r.getMessage() and pending:
                down.append(r.created - pending.pop(0))
        blip = max(blips)
        epochs = sorted({seq(e)[0] for v in viewers for _, e in v.progress()})
        report = (
            f"{'primary killed' if kill else 'SENTINEL FAILOVER'}: the Sentinel named the new "
            f"primary after {promoted_after:.2f} s; links down "
            f"{', '.join(f'{d:.2f}' for d in down)} s; longest gap between events (run "
            f"changing every {STEP} s) {blips[0]:.2f} s on a, {blips[1]:.2f} s on b; latest "
            f"delivery {late:.2f} s after the upstream served it; events lost: {lost} of "
            f"{len(after_failover)} statuses served after the failover (both viewers); "
            f"{len(epochs)} epoch(s)"
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
