"""Keep Python's cyclic garbage collector from pausing a process full of streams.

Measured (bench/FINDINGS.md): with 10,000 open streams young collections took 70-150 ms
inside the fan-out while freeing nothing. So long-lived objects (connections, their tasks
and buffers) are moved out of the collector's sight with ``gc.freeze()`` once a second
(it splices lists: free at any heap size) and young collections are made rarer.

What freezing costs: an object that dies in a reference cycle while frozen is only freed
by a full collection (``gc.unfreeze()`` + ``gc.collect()``), which scans every object and
pauses the process in proportion to the heap (1.5-2.5 s over the 1.7 million objects of
10,000 streams on the 2-core bench machine). CPython 3.11 cannot collect part of the
frozen objects. A closed connection leaves no such cycle: ``bridge/server/hypercorn_cycles.py``
and the bridge's own code cut them (0 objects per connection, bench/studies/cycles.py),
and the soak agrees: ten minutes of 100 reconnects/s among 10,000 streams left 931
objects in all (bench/FINDINGS.md, "What dies while frozen"). So the full collection is
a safety net, run only when the frozen objects hold real garbage:

- when the heap has grown by BRIDGE_GC_FULL_GROWTH (default a quarter: CPython's own
  rule for its oldest generation, which freezing turned off) since the last full
  collection, less what the streams opened since keep alive, and stayed so for
  ``SETTLE`` seconds. A reconnect storm is live growth and sets nothing off; what
  connections that are closing still hold for a moment is live too; a leak of cycles is
  collected before it outgrows the live heap, so memory stays bounded;
- and, if BRIDGE_GC_FULL_INTERVAL is set, at the latest after that many seconds.

The heap is counted in pymalloc's allocated blocks (``sys.getallocatedblocks()``, under
a millisecond at 10,000 streams: it sums pools, it does not walk objects), exactly, each
tick: every object up to 512 bytes is one block, so a cycle's objects are counted; a
stream holds ``BLOCKS_PER_STREAM``. Not ``gc.get_count()``: it ticks up on every
allocation but misses frees of frozen objects, so under churn it reaches the threshold
every two minutes (seven 1.6-2.2 s collections in 15 minutes that freed 931 objects in
all); nor ``gc.get_freeze_count()``: exact, but it walks the frozen list, 225-270 ms over
the 1.6 million objects of 10,000 streams (py-spy in the soak), itself a stall
(bench/FINDINGS.md).

Every collection's pause is exported (``bridge_gc_pause_seconds`` by generation, and the
longest of the last minute), with the objects each one freed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.ops.metrics import GcMetrics
from bridge.tasks import OwnedTask

log = logging.getLogger("bridge.gc")

#: Allocations (minus deallocations) before a young collection; CPython's default is 700.
YOUNG_THRESHOLD = 50_000
#: Growth below this many allocated blocks never calls for a full collection (a small
#: process would otherwise collect after every few requests).
MIN_GROWTH = 400_000
#: Seconds the growth must stay over the threshold before a full collection: what
#: connections that are closing still hold is live, not garbage, and soon gone
#: (bench/run: 250,000 objects after 10,000 viewers left at once, gone within 15 s).
SETTLE = 30.0
#: Allocated blocks one open stream keeps: 223 on the fast path, 247 on the ASGI path
#: (2,000 streams opened on a bridge in one process, the difference of
#: ``sys.getallocatedblocks()`` after a collection, divided; HTTP/1.1, plain).
BLOCKS_PER_STREAM = 250


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
        self.full_every = full_every
        self.full_growth = full_growth
        self.settle = settle
        #: Streams open now (their own blocks are live growth, not garbage).
        self._streams = streams
        self._streams_at_full = 0
        self.metrics = GcMetrics(registry)
        self._task = OwnedTask(self._run, "bridge:gc")
        self._saved: tuple[int, int, int] | None = None
        self._started_at = 0.0
        self._last_full = 0.0
        #: When the growth was first seen over the threshold (None: it is not over).
        self._over_since: float | None = None
        #: Allocated blocks right after the last full collection: the live heap.
        self.heap = 0
        self.full_collections = 0
        #: Set after each full collection (for tests: wait on it instead of sleeping).
        self.collected = asyncio.Event()

    def start(self) -> None:
        self._saved = gc.get_threshold()
        gc.callbacks.append(self._timing)
        self.full()
        # Older generations are left to the full collections scheduled here.
        gc.set_threshold(YOUNG_THRESHOLD, 1000, 1000)
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
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
        if self.due():
            self.full()
        else:
            # gc.freeze() splices lists: it costs nothing at any heap size, where a
            # collection of 10,000 new streams took over a second.
            gc.freeze()

    def due(self) -> bool:
        now = time.monotonic()
        if self.full_every and now - self._last_full >= self.full_every:
            return True
        garbage = self.garbage()
        self.metrics.growth.set(max(0, garbage))
        if garbage < self.threshold():
            self._over_since = None
            return False
        if self._over_since is None:
            # Over once: it may be live objects on their way out; look again later.
            self._over_since = now
        return now - self._over_since >= self.settle

    def threshold(self) -> int:
        return max(MIN_GROWTH, int(self.full_growth * self.heap))

    def garbage(self) -> int:
        """Allocated blocks since the last full collection that the streams opened since
        do not explain (or, for streams closed since, plus what they freed): an upper
        bound on what died in cycles, counted exactly, at any time, in well under a
        millisecond (``sys.getallocatedblocks()`` sums pymalloc's pools)."""
        grown = sys.getallocatedblocks() - self.heap
        if self._streams is None:
            return grown
        return grown - (self._streams() - self._streams_at_full) * BLOCKS_PER_STREAM

    def full(self) -> None:
        started = time.monotonic()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.heap = sys.getallocatedblocks()
        self._over_since = None
        self._streams_at_full = self._streams() if self._streams is not None else 0
        self._last_full = time.monotonic()
        self.full_collections += 1
        self.metrics.heap.set(self.heap)
        self.metrics.growth.set(0)
        self.collected.set()
        log.debug(
            "full collection: %d unreachable, %d blocks kept, %.0f ms",
            found,
            self.heap,
            (self._last_full - started) * 1e3,
        )

    def _timing(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks: time every collection."""
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        self.metrics.observe(
            int(info["generation"]),
            time.perf_counter() - self._started_at,
            int(info.get("collected", 0)),
        )
