"""What events that say what happened cost, per change (paid once per run, not per viewer).

    bench/run derived_events [--changes 200] [--lines-per-change 10] [--viewers 10000]

Part 1, rule cost: the runner vocabulary (config/events/001-runner.toml) on a status of
100 jobs x 10 steps whose logs grow: at each change ``--lines-per-change`` running steps
get one more line, and a step completes after 12 lines (then the next step of its job
starts). The run is measured from the middle (half the steps done, their logs kept in
the status), CPU time (``time.process_time``) per change of what the leader does with a
changed status: the rules (one jq program over the whole status, key matching, the new
lines) and the status's own event. Beside it, for the same status: what the poll already
pays (decoding the upstream's body and encoding it once; the status filters, which are
jq too) and what jq takes only to parse it (``length``), the floor of any jq program.

Part 3, fan-out: CPU to write one event to 10,000 fast-path viewers of a channel (in
process, sockets that take everything: the bridge's part only), a derived event against
a ``progress`` of the same size, interleaved rounds; the ratio is what matters.

Part 2, deltas: a ~45 KB status of 150 nodes where one node changes per change; bytes of
the ``patch`` event's data against the whole status, and CPU per change to make the
patch (bridge/events/delta.py: decode the new status, ``jsonpatch.make_patch``, encode).

All in one process, one after the other; writes bench/out/derived_events.json and
prints a table (bench/results/issue22-derived-events.md keeps one run).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jq

from bench.harness import cli
from bench.harness.common import OUT_DIR
from bridge.demo.vocabularies import DEMOS
from bridge.events import sse
from bridge.events.channel import Channel, ChannelKey, Subscription
from bridge.events.delta import Deltas
from bridge.events.derive import plan
from bridge.events.history import RunHistory
from bridge.events.vocabulary import load
from bridge.polling.status import StatusReader
from bridge.streams.direct import DirectSink
from bridge.streams.keepalive import Keepalive, StreamLimits

OUT = OUT_DIR

JOBS, STEPS, LINES_PER_STEP = 100, 10, 12


def runner_run(changes: int, per_change: int, seed: int = 22) -> list[dict[str, Any]]:
    """The statuses of a runner run from its middle, one per change."""
    rng = random.Random(seed)
    jobs = [
        {
            "id": f"job-{j:03d}",
            "name": f"job {j}",
            "status": "in_progress",
            "conclusion": None,
            "steps": [
                {
                    "number": s + 1,
                    "name": f"step {s + 1}",
                    "status": "queued",
                    "conclusion": None,
                    "log": "",
                }
                for s in range(STEPS)
            ],
        }
        for j in range(JOBS)
    ]
    # The middle of the run: half of each job's steps done, with their whole logs.
    for job in jobs:
        for step in job["steps"][: STEPS // 2]:
            step["status"], step["conclusion"] = "completed", "success"
            step["log"] = "".join(
                f"{job['id']} {step['name']}: output line {i}\n" for i in range(LINES_PER_STEP)
            )
        job["steps"][STEPS // 2]["status"] = "in_progress"

    def snapshot() -> dict[str, Any]:
        return {
            "id": "bench",
            "status": "in_progress",
            "conclusion": None,
            "jobs": [{**j, "steps": [dict(s) for s in j["steps"]]} for j in jobs],
        }

    out = [snapshot()]
    for _ in range(changes):
        for job in rng.sample(jobs, per_change):
            running = next((s for s in job["steps"] if s["status"] == "in_progress"), None)
            if running is None:
                continue
            lines = running["log"].count("\n")
            running["log"] += f"{job['id']} {running['name']}: output line {lines}\n"
            if lines + 1 >= LINES_PER_STEP:
                running["status"], running["conclusion"] = "completed", "success"
                after = running["number"]
                if after < STEPS:
                    job["steps"][after]["status"] = "in_progress"
        out.append(snapshot())
    return out


def cpu_per_call(calls: list[Callable[[], object]]) -> list[float]:
    """CPU seconds of each call (process time, so other work on the machine is not
    counted)."""
    times = []
    for call in calls:
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p90_ms": ordered[int(len(ordered) * 0.9)] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def rule_cost(changes: int, per_change: int) -> dict[str, Any]:
    demo = DEMOS["runner"]
    vocabulary = load(demo.path)
    reader = StatusReader(state_expr=".status", success=["completed"], failure=["failed"])
    statuses = runner_run(changes, per_change)
    texts = [sse.encode_json(s) for s in statuses]
    bodies = [t.encode() for t in texts]
    channel = Channel(ChannelKey("bench", "-"), RunHistory(256, 64 << 20, vocabulary=vocabulary))
    # The first status (compared with nothing) is the join; not what a change costs.
    first = reader.read(statuses[0], texts[0])
    for out in plan(channel, texts[0], first):
        channel.publish(out.name, out.data, first, kind=out.kind, raw=out.raw, hidden=out.hidden)
    events: list[int] = []

    # The status filters (state, fingerprint) run whether or not there are rules: read
    # before, so that what is timed is what the rules add.
    readings = [reader.read(s, t) for s, t in zip(statuses, texts, strict=True)]

    def change(i: int) -> Callable[[], object]:
        def run() -> object:
            reading = readings[i]
            made = plan(channel, texts[i], reading)
            for out in made:
                channel.publish(
                    out.name, out.data, reading, kind=out.kind, raw=out.raw, hidden=out.hidden
                )
            events.append(len(made) - 1)
            return made

        return run

    derived = cpu_per_call([change(i) for i in range(1, len(statuses))])

    def decode(i: int) -> Callable[[], object]:
        return lambda: sse.encode_json(json.loads(bodies[i]))

    baseline = cpu_per_call([decode(i) for i in range(1, len(statuses))])

    def read(i: int) -> Callable[[], object]:
        return lambda: reader.read(statuses[i], texts[i])

    filters = cpu_per_call([read(i) for i in range(1, len(statuses))])
    parse = jq.compile("length")

    def parse_only(i: int) -> Callable[[], object]:
        return lambda: parse.input_text(texts[i]).first()

    jq_parse = cpu_per_call([parse_only(i) for i in range(1, len(statuses))])
    return {
        "status_bytes": {
            "first": len(texts[1]),
            "last": len(texts[-1]),
        },
        "changes": len(derived),
        "derived_events_per_change": statistics.mean(events),
        "rules_per_change": summary(derived),
        "decode_and_encode_per_change": summary(baseline),
        "status_filters_per_change": summary(filters),
        "jq_parse_only_per_change": summary(jq_parse),
    }


def delta_cost(changes: int) -> dict[str, Any]:
    rng = random.Random(45)
    nodes = [
        {
            "id": f"node-{i:03d}",
            "status": "pending",
            "attempt": 0,
            "detail": "x" * 200,
            "started": None,
        }
        for i in range(150)
    ]
    statuses = []
    for n in range(changes + 1):
        node = rng.choice(nodes)
        node["status"], node["attempt"], node["started"] = "running", node["attempt"] + 1, n
        statuses.append({"id": "bench", "status": "running", "nodes": [dict(x) for x in nodes]})
    history = RunHistory(256, 64 << 20)
    events = [history.append(sse.PROGRESS, sse.encode_json(s)) for s in statuses]
    deltas = Deltas()
    deltas.patch(history, events[1])  # warm: the first status decoded
    sizes: list[tuple[int, int]] = []

    def change(i: int) -> Callable[[], object]:
        def run() -> object:
            made = deltas.patch(history, events[i])
            assert made is not None
            sizes.append((len(made.data), len(events[i].data)))
            return made

        return run

    times = cpu_per_call([change(i) for i in range(2, len(events))])
    share = [patch / whole for patch, whole in sizes]
    return {
        "status_bytes": statistics.mean(whole for _, whole in sizes),
        "patch_bytes": statistics.mean(patch for patch, _ in sizes),
        "patch_share_of_status_pct": {
            "mean": statistics.mean(share) * 100,
            "max": max(share) * 100,
        },
        "patch_per_change": summary(times),
    }


class _Socket(asyncio.WriteTransport):
    """A viewer's socket that takes everything at once (what is measured is the bridge)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def fanout_cost(viewers: int, rounds: int) -> dict[str, Any]:
    """CPU to write one event to every fast-path viewer of a channel (the channel's own
    slices, flushed): a derived event against a ``progress`` of the same size."""

    async def measure() -> dict[str, Any]:
        vocabulary = load(DEMOS["task"].path)
        channel = Channel(ChannelKey("fan", "-"), RunHistory(256, 64 << 20, vocabulary=vocabulary))
        limits = StreamLimits(15, 3600, 32, 1000, vocabulary)
        for _ in range(viewers):
            subscription = Subscription(channel)
            subscription.sink = DirectSink(_Socket(), 0, Keepalive(limits))
            channel.add(subscription)
        payload = sse.encode_json({"task_id": "fan", "log": "x" * 400})
        times: dict[str, list[float]] = {"derived": [], "progress": []}
        for _ in range(rounds):
            # Interleaved, so that drift of the machine hits both alike.
            for kind in ("derived", "progress"):
                started = time.process_time()
                if kind == "derived":
                    channel.publish("status", payload, kind="")
                else:
                    channel.publish(sse.PROGRESS, payload, hidden=False)
                channel.flush()
                times[kind].append(time.process_time() - started)
        d, p = statistics.median(times["derived"]), statistics.median(times["progress"])
        return {
            "viewers": viewers,
            "frame_bytes": len(channel.history.latest.frame) if channel.history.latest else 0,
            "derived_ms": d * 1000,
            "progress_ms": p * 1000,
            "ratio": d / p,
        }

    return asyncio.run(measure())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = cli.parser("derived_events", __doc__)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--lines-per-change", type=int, default=10)
    parser.add_argument("--viewers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    results = {
        "rules": rule_cost(args.changes, args.lines_per_change),
        "deltas": delta_cost(args.changes),
        "fanout": fanout_cost(args.viewers, args.rounds),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "derived_events.json").write_text(json.dumps(results, indent=2))
    rules, deltas = results["rules"], results["deltas"]
    r, b, d = rules["rules_per_change"], rules["decode_and_encode_per_change"], deltas
    print("| measure | median | p90 | max |")
    print("|---|---|---|---|")
    print(
        f"| runner rules + status event, CPU per change "
        f"({rules['status_bytes']['first'] // 1024}-{rules['status_bytes']['last'] // 1024} KB "
        f"status, {rules['derived_events_per_change']:.1f} events) "
        f"| {r['median_ms']:.2f} ms | {r['p90_ms']:.2f} ms | {r['max_ms']:.2f} ms |"
    )
    print(
        f"| decoding + encoding the same status once (what a poll already costs) "
        f"| {b['median_ms']:.2f} ms | {b['p90_ms']:.2f} ms | {b['max_ms']:.2f} ms |"
    )
    f, q = rules["status_filters_per_change"], rules["jq_parse_only_per_change"]
    print(
        f"| the status filters on the same status (state, fingerprint; paid today) "
        f"| {f['median_ms']:.2f} ms | {f['p90_ms']:.2f} ms | {f['max_ms']:.2f} ms |"
    )
    print(
        f"| jq parsing the status alone (`length`), the floor of any jq program "
        f"| {q['median_ms']:.2f} ms | {q['p90_ms']:.2f} ms | {q['max_ms']:.2f} ms |"
    )
    p = d["patch_per_change"]
    print(
        f"| one JSON Patch, CPU per change ({d['status_bytes'] / 1024:.1f} KB status) "
        f"| {p['median_ms']:.2f} ms | {p['p90_ms']:.2f} ms | {p['max_ms']:.2f} ms |"
    )
    fan = results["fanout"]
    print(
        f"| fan-out of one {fan['frame_bytes']} B event to {fan['viewers']:,} fast-path "
        f"viewers: derived {fan['derived_ms']:.1f} ms, progress {fan['progress_ms']:.1f} ms "
        f"(ratio {fan['ratio']:.2f}) | | | |"
    )
    print(
        f"| patch bytes per viewer per change: {d['patch_bytes']:.0f} B = "
        f"{d['patch_share_of_status_pct']['mean']:.2f} % of the status "
        f"(max {d['patch_share_of_status_pct']['max']:.2f} %) | | | |"
    )


if __name__ == "__main__":
    main()
