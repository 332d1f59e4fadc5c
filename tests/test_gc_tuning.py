"""The collector tuning: freeze, full collections when the heap grew (or at the latest
after the full interval), the pause metrics, and undo."""

from __future__ import annotations

import gc
import sys
import weakref

from prometheus_client import CollectorRegistry

from bridge.demo.legacy_api import LegacyApi
from bridge.ops.gc_tuning import BLOCKS_PER_STREAM, MIN_GROWTH, YOUNG_THRESHOLD, GcTuner
from tests.support import running_bridge, sse, wait_for


class Cycle:
    def __init__(self) -> None:
        self.me = self


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


async def test_start_collects_freezes_and_stop_restores() -> None:
    before = gc.get_threshold()
    registry = CollectorRegistry()
    tuner = GcTuner(freeze_every=3600, full_every=3600, registry=registry)
    tuner.start()
    try:
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
        assert tuner.full_collections == 1
        assert tuner.heap > 0
        assert sample(registry, "bridge_gc_heap_blocks") == tuner.heap
        # The start's full collection was timed like any other.
        assert sample(registry, "bridge_gc_pause_seconds_count", generation="2") >= 1
    finally:
        await tuner.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert tuner._timing not in gc.callbacks


async def test_a_process_that_does_not_grow_is_not_collected_again() -> None:
    tuner = GcTuner(freeze_every=3600, full_every=3600)
    tuner.start()
    try:
        for _ in range(3):
            tuner.tick()
        assert tuner.full_collections == 1
    finally:
        await tuner.stop()


async def test_growth_brings_a_full_collection_that_frees_frozen_cycles() -> None:
    tuner = GcTuner(freeze_every=0.01, full_every=3600, full_growth=0.25, settle=0)
    tuner.start()
    kept: list[list[int]] = []
    try:
        # Garbage only the cyclic collector can free, frozen with everything else.
        ref = weakref.ref(Cycle())
        gc.freeze()
        assert ref() is not None
        tuner.collected.clear()
        # Live objects enough to pass both bounds: the heap grew, a collection is due.
        kept.extend([i] for i in range(max(MIN_GROWTH, tuner.heap // 4) + 10_000))
        await wait_for(tuner.collected.is_set, timeout=10)
        assert tuner.full_collections >= 2
        assert ref() is None
        assert tuner.garbage() < MIN_GROWTH
    finally:
        kept.clear()
        await tuner.stop()


async def test_the_full_interval_is_the_longest_wait() -> None:
    tuner = GcTuner(freeze_every=3600, full_every=1e-9)
    tuner.start()
    try:
        tuner.tick()
        assert tuner.full_collections == 2
    finally:
        await tuner.stop()


async def test_bridge_runs_with_tuning_on(legacy: LegacyApi) -> None:
    run = legacy.scripted("gc")
    async with running_bridge(legacy.url, gc_freeze_interval=0.02, gc_full_interval=0.1) as b:
        async with sse(f"{b.url}/v1/runs/gc/stream") as s:
            await s.next_named("progress")
            tuner = b.bridge.gc
            assert tuner is not None
            await wait_for(lambda: tuner.full_collections >= 2, timeout=5)
            run.advance()
            await s.next_named("progress")
            registry = b.bridge.metrics.registry
            assert sample(registry, "bridge_gc_pause_seconds_count", generation="2") >= 2
    assert gc.get_freeze_count() == 0


async def test_growth_that_is_new_streams_is_not_garbage() -> None:
    streams = [5_000]
    tuner = GcTuner(freeze_every=3600, full_every=3600, streams=lambda: streams[0], settle=0)
    tuner.start()
    kept: list[list[int]] = []
    try:
        # A storm of connects explains the growth: live blocks, nothing to collect.
        before = sys.getallocatedblocks()
        kept.extend([i] for i in range(tuner.threshold()))
        grown = sys.getallocatedblocks() - before
        assert grown > tuner.threshold()
        streams[0] += grown // BLOCKS_PER_STREAM + 1
        assert tuner.garbage() < tuner.threshold()
        tuner.tick()
        assert tuner.full_collections == 1
        # The same growth with as many viewers coming as going may be garbage.
        streams[0] = 5_000
        assert tuner.garbage() >= tuner.threshold()
    finally:
        kept.clear()
        await tuner.stop()


async def test_growth_that_stays_over_the_threshold_is_collected() -> None:
    tuner = GcTuner(freeze_every=3600, full_every=3600, settle=0)
    tuner.start()
    try:
        # Frozen before any young collection can free them (as when they died frozen).
        gc.disable()
        try:
            refs = [weakref.ref(Cycle()) for _ in range(tuner.threshold())]
            gc.freeze()
        finally:
            gc.enable()
        assert all(ref() is not None for ref in refs[:10])
        tuner.tick()
        assert tuner.full_collections == 2
        assert all(ref() is None for ref in refs)
        assert tuner.garbage() < tuner.threshold()
    finally:
        await tuner.stop()


async def test_live_objects_on_their_way_out_are_not_collected() -> None:
    """Connections that are still closing hold blocks that look like growth for a
    moment: the growth must stay over the threshold for ``settle`` seconds."""
    tuner = GcTuner(freeze_every=3600, full_every=3600, settle=3600)
    tuner.start()
    passing: list[list[int]] = []
    try:
        passing.extend([i] for i in range(tuner.threshold()))
        tuner.tick()
        tuner.tick()
        assert tuner.full_collections == 1
        # Gone before the settle time ended: nothing to collect, and the clock restarts.
        passing.clear()
        tuner.tick()
        assert tuner.full_collections == 1
        assert tuner._over_since is None
        # Growth that stays: once the settle time is over, a collection.
        passing.extend([i] for i in range(tuner.threshold()))
        tuner.tick()
        assert tuner._over_since is not None
        tuner._over_since -= 3600
        tuner.tick()
        assert tuner.full_collections == 2
    finally:
        passing.clear()
        await tuner.stop()
