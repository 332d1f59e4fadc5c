"""Keep Python's cyclic garbage collector from pausing a process full of streams.

Measured (bench/FINDINGS.md): with 10,000 open streams young collections took 70-150 ms
inside the fan-out while freeing nothing. So long-lived objects (connections, their tasks
and buffers) are moved out of the collector's sight with ``gc.freeze()`` once a second
(it splices lists: free at any heap size) and young collections are made rarer.

What freezing costs: an object that dies in a reference cycle while frozen is only freed
by a full collection (``gc.unfreeze()`` + ``gc.collect()``), which scans every object and
pauses the process in proportion to the heap (1.5-2.5 s over the 1.7 million objects of
10,000 streams on the 2-core bench machine). CPython 3.11 cannot collect part of the
frozen objects. Closed connections used to leave 35-135 objects of such cycles each,
40-51 MB a minute at 1 % churn of 10,000 viewers; ``bridge/hypercorn_cycles.py`` and the
bridge's own fixes took them to 0 (bench/cycles.py), and the soak agrees: ten minutes of
100 reconnects/s among 10,000 streams left 931 objects in all (bench/FINDINGS.md, "What
dies while frozen"). So the full collection is a safety net, run only when the frozen
objects hold real garbage:

- when the objects frozen since the last full collection, less what the streams opened
  since keep alive (``OBJECTS_PER_STREAM`` each, or plus what the streams closed since
  freed), reach BRIDGE_GC_FULL_GROWTH of the objects it kept (default a quarter:
  CPython's own rule for its oldest generation, which freezing turned off). A reconnect
  storm is live growth and sets nothing off; a leak of cycles is collected before it
  outgrows the live heap, so memory stays bounded;
- and, if BRIDGE_GC_FULL_INTERVAL is set, at the latest after that many seconds.

The growth is counted in two steps. Every tick adds ``gc.get_count()[0]`` (tracked
objects allocated minus freed since the last freeze or young collection): free, but an
over-estimate, as a free is not counted once that count is at zero; in the soak it
reached the threshold every two minutes and set off four 2-second pauses that freed 931
objects. So when the estimate says due, the frozen objects are counted exactly
(``gc.get_freeze_count()``, a walk of the frozen list) and that figure decides, and the
estimate resumes from it. A collection needs the exact count over the threshold twice,
``SETTLE`` seconds apart: what connections that are closing still hold is live for a
moment, and a collection then would pause the process to free nothing.

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
#: Seconds the exact count must stay over the threshold before a full collection: the
#: objects of connections that are still closing are live, not garbage, and soon gone
#: (bench/run: 250,000 of them after 10,000 viewers left at once, gone within 15 s).
SETTLE = 30.0
#: Objects one open stream keeps: (2.08 million frozen objects at 10,000 streams - 0.36
#: million at 1,000) / 9,000 (bench/soak.py --census).
OBJECTS_PER_STREAM = 190
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
        settle: float = SETTLE,
    ) -> None:
        self.freeze_every = freeze_every
        self.settle = settle
        #: When the exact count was first found over the threshold (None: it was not).
        self._over_since: float | None = None
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
        #: Walks of the frozen list (``confirmed()``): each a pause of some milliseconds.
        self.exact_counts = 0
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
        self.metrics.growth.set(max(0, self.garbage()))

    def due(self) -> bool:
        now = time.monotonic()
        if self.full_every and now - self._last_full >= self.full_every:
            return True
        # The estimate (never under the truth) is free; the exact count is not, so it
        # is only asked when the estimate says a collection is due.
        if self.garbage() < self.threshold():
            return False
        if self._over_since is not None and now - self._over_since < self.settle:
            return False
        if not self.confirmed():
            self._over_since = None
            return False
        if self._over_since is None:
            # Over once: it may be live objects on their way out; ask again later.
            self._over_since = now
            return False
        return True

    def threshold(self) -> int:
        return max(MIN_GROWTH, int(self.full_growth * self.heap))

    def confirmed(self) -> bool:
        """Count the frozen objects: is the growth since the last full collection real?

        ``gc.get_freeze_count()`` walks the frozen list (about 10 ms per million objects
        here), so it runs only when the estimate says due; the estimate then resumes from
        the exact figure, which takes back what it over-counted.
        """
        gc.freeze()
        self.grown = gc.get_freeze_count() - self.heap
        self.exact_counts += 1
        return self.garbage() >= self.threshold()

    def garbage(self) -> int:
        """Objects that may have died in cycles since the last full collection: the
        growth less what the streams opened since then keep alive (or plus what the
        streams closed since then freed). Exact after ``confirmed()``; between two exact
        counts an upper estimate, as frees of frozen objects are not all counted."""
        if self._streams is None:
            return self.grown
        return self.grown - (self._streams() - self._streams_at_full) * OBJECTS_PER_STREAM

    def full(self) -> None:
        started = time.monotonic()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        # Walks the frozen list once (tens of ms at 10,000 streams), inside a pause of
        # about a second anyway: the base the next trigger is measured against.
        self.heap = gc.get_freeze_count()
        self.grown = 0
        self._over_since = None
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
