"""Bench-only: time every garbage collection of the process it is loaded into.

Loaded by putting ``bench/harness/gcprobe`` on ``PYTHONPATH`` (the bench does this for the bridge
and nothing else). Does nothing unless ``BENCH_GC_LOG`` names a file; at exit it writes
there, as JSON, per generation the count, total and longest pause, and every pause of
at least ``BENCH_GC_MIN_MS`` (default 1 ms) with its wall-clock end time, so that
pauses can be matched to the bench's rounds. Memory is bounded (a ring of pauses).

Two experiment knobs, to estimate what GC tuning in the bridge would buy before anyone
writes it: ``BENCH_GC_THRESHOLDS=a,b,c`` (``gc.set_threshold``) and ``BENCH_GC_DISABLE=1``.

``BENCH_GC_CENSUS=<file>`` (bench/studies/soak.py ``--census``): each SIGUSR1 runs one full
collection over everything, frozen objects included, and writes what it found: how much
cyclic garbage had piled up since the last census, of which types, from which code, and
how long the full collection took (it pauses the process: for measurement runs only).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import time
from collections import deque
from typing import Any

_PATH = os.environ.get("BENCH_GC_LOG")


def _install(path: str) -> None:
    min_ns = int(float(os.environ.get("BENCH_GC_MIN_MS", "1")) * 1e6)
    totals = {g: [0, 0, 0, 0] for g in range(3)}  # count, total_ns, max_ns, collected
    pauses: deque[tuple[int, int, int, int]] = deque(maxlen=100_000)
    started = [0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
            return
        took = time.perf_counter_ns() - started[0]
        generation = int(info.get("generation", 0))
        row = totals.setdefault(generation, [0, 0, 0, 0])
        row[0] += 1
        row[1] += took
        row[2] = max(row[2], took)
        row[3] += int(info.get("collected", 0))
        if took >= min_ns:
            pauses.append((time.time_ns(), took, generation, int(info.get("collected", 0))))

    def dump() -> None:
        data = {
            "pid": os.getpid(),
            "thresholds": gc.get_threshold(),
            "frozen": gc.get_freeze_count(),
            "generations": {
                str(g): {
                    "count": r[0],
                    "total_ms": r[1] / 1e6,
                    "max_ms": r[2] / 1e6,
                    "collected": r[3],
                }
                for g, r in totals.items()
            },
            "pauses": [
                {"end_ns": end, "ms": took / 1e6, "generation": gen, "collected": col}
                for end, took, gen, col in pauses
            ],
        }
        with open(path, "w") as f:
            json.dump(data, f)

    thresholds = os.environ.get("BENCH_GC_THRESHOLDS")
    if thresholds:
        gc.set_threshold(*(int(part) for part in thresholds.split(",")))
    if os.environ.get("BENCH_GC_DISABLE") == "1":
        gc.disable()
    gc.callbacks.append(callback)
    atexit.register(dump)


if _PATH:
    _install(_PATH)


def _install_tracemalloc(path: str) -> None:
    """``BENCH_TRACEMALLOC=<file>``: the first SIGUSR2 takes a baseline snapshot, each later
    one writes to the file, as JSON, what grew since the baseline, by file (top 30) and by
    line (top 60). tracemalloc slows the process: for memory runs only."""
    import signal
    import tracemalloc

    tracemalloc.start(1)
    state: dict[str, Any] = {}

    def rows(stats: list[Any]) -> list[dict[str, Any]]:
        return [
            {"where": str(s.traceback), "bytes": s.size_diff, "count": s.count_diff} for s in stats
        ]

    def dump(signum: int, frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot()
        base = state.get("base")
        if base is None:
            state["base"] = snapshot
            data: dict[str, Any] = {"baseline": True}
        else:
            by_file = snapshot.compare_to(base, "filename")
            data = {
                "baseline": False,
                "grown_bytes": sum(s.size_diff for s in by_file),
                "by_file": rows(by_file[:30]),
                "by_line": rows(snapshot.compare_to(base, "lineno")[:60]),
            }
        with open(path, "w") as f:
            json.dump(data, f)

    signal.signal(signal.SIGUSR2, dump)


_TRACE = os.environ.get("BENCH_TRACEMALLOC")
if _TRACE:
    _install_tracemalloc(_TRACE)


def _census(path: str) -> None:
    """``BENCH_GC_CENSUS=<file>``: on SIGUSR1, collect everything and say what was garbage.

    The garbage is kept (``DEBUG_SAVEALL``) only long enough to count it by type, by the
    code of its frames and coroutines, then freed by a second collection. Objects frozen
    before the census are frozen again after it, as ``bridge/ops/gc_tuning.py`` would."""
    import signal
    import sys
    from collections import Counter

    state = {"census": 0}

    def where(obj: Any) -> str | None:
        code = getattr(obj, "f_code", None) or getattr(obj, "cr_code", None)
        code = code or getattr(obj, "ag_code", None) or getattr(obj, "gi_code", None)
        if code is None:
            return None
        return f"{code.co_qualname} ({code.co_filename.rsplit('/', 2)[-1]}:{code.co_firstlineno})"

    def census(signum: int, frame: Any) -> None:
        frozen_before = gc.get_freeze_count()
        gc.unfreeze()
        debug = gc.get_debug()
        gc.set_debug(gc.DEBUG_SAVEALL)
        started = time.perf_counter_ns()
        found = gc.collect()
        scan_ns = time.perf_counter_ns() - started
        gc.set_debug(debug)
        garbage = list(gc.garbage)
        gc.garbage.clear()
        by_type: Counter[str] = Counter()
        by_code: Counter[str] = Counter()
        size = 0
        for obj in garbage:
            kind = type(obj)
            by_type[f"{kind.__module__}.{kind.__qualname__}"] += 1
            size += sys.getsizeof(obj)
            code = where(obj)
            if code is not None:
                by_code[code] += 1
            coro = getattr(obj, "get_coro", None)
            if callable(coro):
                by_code["task of " + (where(coro()) or "?")] += 1
        del garbage
        started = time.perf_counter_ns()
        freed = gc.collect()
        free_ns = time.perf_counter_ns() - started
        gc.freeze()
        state["census"] += 1
        data = {
            "census": state["census"],
            "time_ns": time.time_ns(),
            "frozen_before": frozen_before,
            "frozen_after": gc.get_freeze_count(),
            "garbage_objects": found,
            "garbage_bytes_shallow": size,
            "full_collection_ms": scan_ns / 1e6,
            "freeing_collection_ms": free_ns / 1e6,
            "freed": freed,
            "by_type": by_type.most_common(40),
            "by_code": by_code.most_common(40),
        }
        with open(path, "w") as f:
            json.dump(data, f)

    signal.signal(signal.SIGUSR1, census)


_CENSUS = os.environ.get("BENCH_GC_CENSUS")
if _CENSUS:
    _census(_CENSUS)
