"""The collector tuning: freeze at start, periodic freeze, full collections, and undo."""

from __future__ import annotations

import gc
import weakref

from bridge.demo.legacy_api import LegacyApi
from bridge.gc_tuning import YOUNG_THRESHOLD, GcTuner
from tests.support import running_bridge, sse, wait_for


class Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_tuner_freezes_collects_cycles_and_restores() -> None:
    before = gc.get_threshold()
    tuner = GcTuner(freeze_every=0.01, full_every=0.05)
    tuner.start()
    try:
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
        # Garbage only the cyclic collector can free, frozen with everything else.
        ref = weakref.ref(Cycle())
        gc.freeze()
        await wait_for(lambda: tuner.full_collections >= 2, timeout=5)
        assert ref() is None
    finally:
        await tuner.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_bridge_runs_with_tuning_on(legacy: LegacyApi) -> None:
    run = legacy.scripted("gc")
    async with running_bridge(legacy.url, gc_freeze_interval=0.02, gc_full_interval=0.1) as b:
        async with sse(f"{b.url}/v1/runs/gc/stream") as s:
            await s.next_named("progress")
            assert b.bridge.gc is not None
            await wait_for(lambda: b.bridge.gc.full_collections >= 1, timeout=5)  # type: ignore[union-attr]
            run.advance()
            await s.next_named("progress")
    assert gc.get_freeze_count() == 0
