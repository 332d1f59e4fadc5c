"""Cluster mode's history in Redis is bounded in bytes too: the commit script trims the
oldest records while the list holds more than BRIDGE_HISTORY_MAX_BYTES, never the newest
(so never the terminal record), against a real redis-server on loopback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bridge.cluster.store import PROGRESS, TERMINAL, WRITTEN, Record, Store
from bridge.events import sse
from bridge.events.channel import ChannelKey
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

MiB = 1 << 20
EPOCH = 1_700_000_000_000


@pytest.fixture
def redis_port(redis_server: RedisServer) -> int:
    """The suite's redis-server (tests/conftest.py); each store here has its own prefix."""
    return redis_server.port


@pytest.fixture
async def client(redis_port: int) -> AsyncIterator[Redis]:
    redis = Redis(host="127.0.0.1", port=redis_port)
    try:
        yield redis
    finally:
        await redis.aclose()


def store_of(client: Redis, *, size: int = 256, max_bytes: int = MiB) -> Store:
    return Store(
        client,
        f"t{uuid.uuid4().hex[:10]}:",
        lease_ms=60_000,
        keep_ms=60_000,
        history_size=size,
        history_max_bytes=max_bytes,
    )


def big(n: int, size: int, state: str = "running") -> str:
    return sse.encode_json({"status": state, "n": n, "blob": f"{n:08d}" * (size // 8)})


class Leader:
    """One lease holder committing on top of what it wrote (as a leading poller does)."""

    def __init__(self, store: Store, key: ChannelKey) -> None:
        self.store, self.key, self.token = store, key, uuid.uuid4().hex
        self.epoch, self.seq = EPOCH, 0

    async def take_lease(self) -> None:
        view = await self.store.tick(self.key, self.token, active=True)
        assert view.holder == self.token

    async def commit(self, data: str, kind: str = PROGRESS) -> None:
        name = sse.COMPLETE if kind == TERMINAL else sse.PROGRESS
        result = await self.store.commit(
            self.key, self.token, self.epoch, self.seq, name, kind, data
        )
        assert result.code == WRITTEN
        self.epoch, self.seq = result.epoch, result.seq


async def held(store: Store, key: ChannelKey) -> tuple[list[bytes], int]:
    """The raw records of the key's list, and the byte total its meta hash keeps."""
    items = await store.client.lrange(store.key(key, "events"), 0, -1)
    raw = [r if isinstance(r, bytes) else r.encode() for r in items]
    total = await store.client.hget(store.key(key, "meta"), "bytes")
    return raw, int(total or -1)


async def test_large_records_stay_within_the_byte_bound_and_the_terminal_is_kept(
    client: Redis,
) -> None:
    limit, size = MiB, 100_000
    store = store_of(client, max_bytes=limit)
    key = ChannelKey("big-run", "d" * 32)
    leader = Leader(store, key)
    await leader.take_lease()
    one_record = size + 200
    counts = []
    for n in range(1, 61):
        await leader.commit(big(n, size))
        raw, total = await held(store, key)
        counts.append(len(raw))
        # What Redis holds, measured by reading it back, and the running total agree.
        assert total == sum(len(r) for r in raw)
        assert total <= limit + one_record
        # And what Redis says the list costs it (records, plus its own bookkeeping).
        usage = await client.memory_usage(store.key(key, "events"), samples=0)
        assert usage is not None and usage <= limit + one_record + 64 * 1024
    # Ten 100 KB records fit in 1 MiB; sixty were committed (the count bound is 256).
    assert max(counts) == 10
    records = await store.records(key, 3)
    assert [r.seq for r in records] == list(range(60 - 9, 61))  # the margin reads more
    assert records[-1].data == big(60, size)

    # A terminal status larger than the whole bound: kept, alone.
    final = big(61, 2 * MiB, "completed")
    await leader.commit(final, TERMINAL)
    raw, total = await held(store, key)
    assert len(raw) == 1 and total == len(raw[0]) > limit
    (record,) = await store.records(key, 5)
    assert (record.seq, record.kind, record.data) == (61, TERMINAL, final)


async def test_the_count_bound_still_applies(client: Redis) -> None:
    store = store_of(client, size=8)
    key = ChannelKey("small-run", "e" * 32)
    leader = Leader(store, key)
    await leader.take_lease()
    for n in range(1, 21):
        await leader.commit(sse.encode_json({"status": "running", "n": n}))
    raw, total = await held(store, key)
    assert len(raw) == 8 and total == sum(len(r) for r in raw)
    assert [r.seq for r in await store.records(key, 8)] == list(range(13, 21))


async def test_restore_resets_the_total(client: Redis) -> None:
    store = store_of(client)
    key = ChannelKey("restored-run", "a" * 32)
    record = Record(EPOCH, 7, sse.PROGRESS, PROGRESS, big(7, 50_000))
    assert await store.restore(key, EPOCH, [record])
    raw, total = await held(store, key)
    assert raw == [record.encode().encode()] and total == len(raw[0])
    # The next commit counts on from there.
    leader = Leader(store, key)
    leader.seq = 7
    await leader.take_lease()
    await leader.commit(big(8, 50_000))
    raw, total = await held(store, key)
    assert len(raw) == 2 and total == sum(len(r) for r in raw)


async def test_records_round_trip_through_the_bound(client: Redis) -> None:
    # Whatever was trimmed, what is read back decodes to exactly what was committed.
    store = store_of(client, max_bytes=300_000)
    key = ChannelKey("exact-run", "b" * 32)
    leader = Leader(store, key)
    await leader.take_lease()
    sent = {}
    for n in range(1, 13):
        sent[n] = big(n, 60_000 + 1000 * n)
        await leader.commit(sent[n])
    records = await asyncio.wait_for(store.records(key, 100), timeout=5)
    assert records and records[-1].seq == 12
    assert [r.seq for r in records] == list(range(records[0].seq, 13))
    for record in records:
        assert record.data == sent[record.seq]
