"""Keep Python's cyclic garbage collector from pausing a process full of streams.

Measured (bench/FINDINGS.md): with 10,000 open streams young collections took 70-150 ms
inside the fan-out while freeing nothing. So long-lived objects (connections, their tasks
and buffers) are moved out of the collector's sight with ``gc.freeze()`` once a second
(it splices lists: free at any heap size) and young collections are made rarer.

What freezing costs: an object that dies in a reference cycle while frozen is only freed
by a full collection (``gc.unfreeze()`` + ``gc.collect()``), which scans every object and
pauses the process in proportion to the heap (bench/soak.py --census: 2.3-2.9 s over
the 2.1 million objects of 10,000 streams on the 2-core bench machine). Such cycles are
not rare: every closed connection leaves 35-135 objects (8-20 KB) of them, most inside
Hypercorn's per-connection objects (TCPServer, protocol, HTTPStream, task group and their
bound methods refer to each other), which nothing in the bridge can break
(bench/FINDINGS.md, "What dies while frozen"). CPython 3.11 has no way to collect part
of the frozen objects, so the full collection stays; what this module chooses is *when*:

- when the objects frozen since the last full collection reach BRIDGE_GC_FULL_GROWTH of
  the objects that survived it (default a quarter: CPython's own rule for its oldest
  generation, which freezing turned off). A process whose viewers stay put grows by
  nothing and never pauses; one with churn collects before its garbage outgrows the live
  heap, so the pause stays about the size of the live heap instead of growing with ten
  minutes of garbage (a fixed 600 s period at 100 reconnects/s lets about 2.5 million
  garbage objects pile up, doubling both the pause and the heap), and memory stays
  bounded;
- and at the latest every BRIDGE_GC_FULL_INTERVAL seconds, in case anything escaped the
  count.

Growth is counted from ``gc.get_count()[0]`` (tracked objects allocated minus freed since
the last freeze or young collection), read before each freeze and at the start of each
young collection: free, and an over-estimate (what died before a tick is not subtracted
past zero), so the collection can come early, never late. Growth that is new streams is
live, not garbage: ``OBJECTS_PER_STREAM`` for each stream more than at the last full
collection is taken off, so a reconnect storm of 10,000 viewers does not set off a series
of ever longer collections while they connect (CPython's own rule spent 4.5 s in 15 full
collections there, bench/FINDINGS.md); a stream fewer counts as ``GARBAGE_PER_STREAM``, the
cycles it is likely to have left.

Every collection's pause is exported (``bridge_gc_pause_seconds`` by generation, and the
longest of the last minute), with the objects each one freed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.loop_lag import RecentMax
from bridge.tasks import cancel_and_wait

log = logging.getLogger("bridge.gc")

#: Allocations (minus deallocations) before a young collection; CPython's default is 700.
YOUNG_THRESHOLD = 50_000
#: Growth below this many objects never calls for a full collection (a small process
#: would otherwise collect after every few requests).
MIN_GROWTH = 200_000
#: Objects one open stream keeps: (2.08 million frozen objects at 10,000 streams - 0.36
#: million at 1,000) / 9,000 (bench/soak.py --census).
OBJECTS_PER_STREAM = 190
#: Cyclic garbage one closed stream leaves: 35-135 objects (bench/soak.py --census).
GARBAGE_PER_STREAM = 100
GENERATIONS = ("0", "1", "2")
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GcMetrics:
    """What the collector cost: every pause, by generation, and what it freed."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.pauses = Histogram(
            "bridge_gc_pause_seconds",
            "Garbage collections and how long each paused the process, by generation "
            "(2: a full collection)",
            ["generation"],
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self.collected = Counter(
            "bridge_gc_collected_objects",
            "Objects the garbage collector freed (unreachable cycles), by generation",
            ["generation"],
            registry=registry,
        )
        self.recent = RecentMax()
        Gauge(
            "bridge_gc_pause_max_seconds",
            "The longest garbage-collection pause in the last minute",
            registry=registry,
        ).set_function(lambda: self.recent.value(time.monotonic()))
        self.heap = Gauge(
            "bridge_gc_heap_objects",
            "Objects that survived the last full collection (frozen since)",
            registry=registry,
        )
        self.growth = Gauge(
            "bridge_gc_growth_objects",
            "Objects that may have died in cycles since the last full collection (an upper "
            "estimate); a full collection runs when this reaches BRIDGE_GC_FULL_GROWTH x the heap",
            registry=registry,
        )
        for generation in GENERATIONS:
            self.pauses.labels(generation)
            self.collected.labels(generation)

    def observe(self, generation: int, seconds: float, collected: int) -> None:
        label = GENERATIONS[min(generation, 2)]
        self.pauses.labels(label).observe(seconds)
        self.collected.labels(label).inc(collected)
        self.recent.add(seconds, time.monotonic())


class GcTuner:
    def __init__(
        self,
        freeze_every: float,
        full_every: float,
        full_growth: float = 0.25,
        registry: CollectorRegistry | None = None,
        streams: Callable[[], int] | None = None,
    ) -> None:
        self.freeze_every = freeze_every
        self.full_every = full_every
        self.full_growth = full_growth
        #: Streams open now (their own objects are live growth, not garbage).
        self._streams = streams
        self._streams_at_full = 0
        self.metrics = GcMetrics(registry)
        self._task: asyncio.Task[None] | None = None
        self._saved: tuple[int, int, int] | None = None
        self._started_at = 0.0
        self._young_count = 0
        self._last_full = 0.0
        #: Objects that survived the last full collection, and objects frozen since.
        self.heap = 0
        self.grown = 0
        self.full_collections = 0
        #: Set after each full collection (for tests: wait on it instead of sleeping).
        self.collected = asyncio.Event()

    def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.callbacks.append(self._timing)
        self.full()
        # Older generations are left to the full collections scheduled here.
        gc.set_threshold(YOUNG_THRESHOLD, 1000, 1000)
        self._task = asyncio.create_task(self._run(), name="bridge:gc")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._saved is not None:
            gc.unfreeze()
            gc.set_threshold(*self._saved)
            self._saved = None
        if self._timing in gc.callbacks:
            gc.callbacks.remove(self._timing)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.freeze_every)
            self.tick()

    def tick(self) -> None:
        """Freeze what survived since the last tick, or collect everything when due."""
        self.grown += gc.get_count()[0]
        if self.due():
            self.full()
        else:
            # gc.freeze() splices lists: it costs nothing at any heap size, where a
            # collection of 10,000 new streams took over a second.
            gc.freeze()
        self.metrics.growth.set(self.garbage())

    def due(self) -> bool:
        if time.monotonic() - self._last_full >= self.full_every:
            return True
        return self.garbage() >= max(MIN_GROWTH, self.full_growth * self.heap)

    def garbage(self) -> int:
        """Objects that may have died in cycles since the last full collection (an upper
        estimate): the growth, less what the streams opened since then keep alive, plus
        what the streams closed since then are likely to have left."""
        if self._streams is None:
            return self.grown
        more = self._streams() - self._streams_at_full
        if more >= 0:
            return max(0, self.grown - more * OBJECTS_PER_STREAM)
        return self.grown - more * GARBAGE_PER_STREAM

    def full(self) -> None:
        started = time.monotonic()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        # Walks the frozen list once (tens of ms at 10,000 streams), inside a pause of
        # about a second anyway: the base the next trigger is measured against.
        self.heap = gc.get_freeze_count()
        self.grown = 0
        self._streams_at_full = self._streams() if self._streams is not None else 0
        self._last_full = time.monotonic()
        self.full_collections += 1
        self.metrics.heap.set(self.heap)
        self.metrics.growth.set(0)
        self.collected.set()
        log.debug(
            "full collection: %d unreachable, %d kept, %.0f ms",
            found,
            self.heap,
            (self._last_full - started) * 1e3,
        )

    def _timing(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks: time every collection; count what a young one moves along."""
        if phase == "start":
            self._started_at = time.perf_counter()
            # A young collection resets the count the next tick would have read.
            self._young_count = gc.get_count()[0] if info["generation"] < 2 else 0
            return
        collected = int(info.get("collected", 0))
        if self._young_count:
            self.grown += max(0, self._young_count - collected)
            self._young_count = 0
        self.metrics.observe(
            int(info["generation"]), time.perf_counter() - self._started_at, collected
        )
