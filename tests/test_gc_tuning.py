"""The collector tuning: freeze, full collections when the heap grew (or at the latest
after the full interval), the pause metrics, and undo."""

from __future__ import annotations

import gc
import weakref

from prometheus_client import CollectorRegistry

from bridge.demo.legacy_api import LegacyApi
from bridge.gc_tuning import MIN_GROWTH, OBJECTS_PER_STREAM, YOUNG_THRESHOLD, GcTuner
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
        assert sample(registry, "bridge_gc_heap_objects") == tuner.heap
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
        assert tuner.grown < MIN_GROWTH
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
    tuner = GcTuner(freeze_every=3600, full_every=3600, streams=lambda: streams[0])
    tuner.start()
    try:
        # A storm of connects explains all of the growth: live objects, nothing to collect.
        streams[0] += 5_000
        tuner.grown = 5_000 * OBJECTS_PER_STREAM
        assert tuner.garbage() == 0
        assert not tuner.due()
        assert tuner.exact_counts == 0
        # The same growth with as many viewers coming as going may be garbage.
        streams[0] = 5_000
        tuner.grown = 5_000 * OBJECTS_PER_STREAM
        assert tuner.garbage() == tuner.grown
        # Viewers who left freed their objects: the growth they explain is not garbage.
        tuner.grown = -3_000 * OBJECTS_PER_STREAM
        streams[0] = 2_000
        assert tuner.garbage() == 0
    finally:
        await tuner.stop()


async def test_an_estimate_that_over_counts_is_corrected_by_the_exact_count() -> None:
    """Frees of frozen objects are not all counted between ticks, so the cheap estimate
    can say due when nothing died in a cycle: the exact count of the frozen objects
    decides, and the estimate resumes from it (the soak's collections that freed 931
    objects in ten minutes, bench/FINDINGS.md)."""
    tuner = GcTuner(freeze_every=3600, full_every=3600, settle=0)
    tuner.start()
    try:
        tuner.grown = tuner.threshold() + 1
        tuner.tick()
        assert tuner.exact_counts == 1
        assert tuner.full_collections == 1
        assert tuner.grown < tuner.threshold()
        # The next tick does not count again: the estimate starts from the exact figure.
        tuner.tick()
        assert tuner.exact_counts == 1
    finally:
        await tuner.stop()


async def test_frozen_cycles_that_stay_over_the_threshold_are_collected() -> None:
    tuner = GcTuner(freeze_every=3600, full_every=3600, settle=0)
    tuner.start()
    try:
        # Frozen before any young collection can free them (as when they died frozen).
        gc.disable()
        try:
            refs = [weakref.ref(Cycle()) for _ in range(tuner.threshold() + 1_000)]
            gc.freeze()
        finally:
            gc.enable()
        assert all(ref() is not None for ref in refs[:10])
        # Whatever the estimate made of them, the exact count of the frozen objects
        # finds more than the threshold, once and again: a collection, which frees them.
        tuner.grown = tuner.threshold()
        tuner.tick()
        assert (tuner.exact_counts, tuner.full_collections) == (1, 1)
        tuner.tick()
        assert (tuner.exact_counts, tuner.full_collections) == (2, 2)
        assert all(ref() is None for ref in refs)
    finally:
        await tuner.stop()


async def test_live_objects_on_their_way_out_are_not_collected() -> None:
    """Connections that are still closing hold objects that look like growth for a
    moment: the count must stay over the threshold for ``settle`` seconds."""
    tuner = GcTuner(freeze_every=3600, full_every=3600, settle=3600)
    tuner.start()
    passing: list[list[int]] = []
    try:
        passing.extend([i] for i in range(tuner.threshold() + 1_000))
        tuner.tick()
        assert (tuner.exact_counts, tuner.full_collections) == (1, 1)
        # Within the settle time nothing is counted again, nor collected.
        tuner.tick()
        assert (tuner.exact_counts, tuner.full_collections) == (1, 1)
        passing.clear()
        # Gone before the settle time ended: the next count finds nothing to collect.
        tuner._over_since = -3600.0
        tuner.tick()
        assert (tuner.exact_counts, tuner.full_collections) == (2, 1)
        assert tuner.grown < tuner.threshold()
    finally:
        passing.clear()
        await tuner.stop()
