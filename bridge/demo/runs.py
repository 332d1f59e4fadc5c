"""Simulated runs of a legacy workflow API: what ``GET /runs/<id>`` answers over time.

A ``TimedRun`` moves by the clock: queued, then running node by node with a progress
fraction and per-node states, then completed with outputs, failed with an error
message, or cancelled. A ``ScriptedRun`` answers a fixed list of statuses and moves
only when told (tests use it to know the exact sequence the bridge must emit).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Outcome = Literal["completed", "failed", "cancelled"]

NODE_SETS = (
    ("fetch-inputs", "validate", "transform", "render", "publish"),
    ("checkout", "build", "unit-tests", "package"),
    ("load-dataset", "embed", "cluster", "summarise"),
    ("plan", "research", "draft", "review", "finalise"),
)

FAILURES = (
    "Node {node} exited with code 137 (out of memory)",
    "Node {node} timed out after 300 s",
    "Node {node}: upstream service returned 503",
)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class TimedRun:
    id: str
    outcome: Outcome
    nodes: tuple[str, ...]
    #: Seconds each step (queued, and each half of a node) lasts.
    step: float
    created: float = field(default_factory=time.time)
    #: For failed/cancelled runs: the index of the node where it stops.
    stop_at: int = 0
    cancelled_at: float | None = None

    @classmethod
    def random(cls, run_id: str, step: float, rng: random.Random) -> TimedRun:
        nodes = rng.choice(NODE_SETS)
        choices: list[Outcome] = ["completed", "failed", "cancelled"]
        outcome = rng.choices(choices, [6, 2, 1])[0]
        return cls(run_id, outcome, nodes, step, stop_at=rng.randrange(len(nodes)))

    def cancel(self, now: float | None = None) -> None:
        if self.status(now)["status"] in ("queued", "running"):
            self.cancelled_at = now if now is not None else time.time()

    def status(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        if self.cancelled_at is not None:
            now = min(now, self.cancelled_at)
        steps = int((now - self.created) / self.step)
        total = len(self.nodes)
        # steps: 0 = queued; node i runs during steps 1+2i and 2+2i.
        last = 2 * total if self.outcome == "completed" else 1 + 2 * self.stop_at
        done_steps = min(steps, last + 1)
        node_states = []
        for i, name in enumerate(self.nodes):
            begin = 1 + 2 * i
            if done_steps >= begin + 2:
                state = "completed"
            elif done_steps >= begin:
                state = "running"
            else:
                state = "pending"
            node_states.append({"id": name, "status": state})
        finished = steps > last or self.cancelled_at is not None
        base: dict[str, Any] = {
            "id": self.id,
            "createdAt": _iso(self.created),
            "startedAt": _iso(self.created + self.step) if steps >= 1 else None,
        }
        if steps < 1 and self.cancelled_at is None:
            return {
                **base,
                "status": "queued",
                "progress": 0.0,
                "currentNode": None,
                "nodes": node_states,
                "outputs": None,
                "errorMessage": None,
            }
        running = [n["id"] for n in node_states if n["status"] == "running"]
        completed = sum(1 for n in node_states if n["status"] == "completed")
        progress = round(min(done_steps - 1, 2 * total) / (2 * total), 3)
        if not finished:
            return {
                **base,
                "status": "running",
                "progress": max(progress, 0.0),
                "currentNode": running[0] if running else None,
                "nodes": node_states,
                "outputs": None,
                "errorMessage": None,
            }
        if self.cancelled_at is not None:
            for n in node_states:
                if n["status"] == "running":
                    n["status"] = "cancelled"
            return {
                **base,
                "status": "cancelled",
                "progress": max(progress, 0.0),
                "currentNode": None,
                "nodes": node_states,
                "outputs": None,
                "errorMessage": "Run was cancelled",
                "finishedAt": _iso(now),
            }
        if self.outcome == "completed":
            return {
                **base,
                "status": "completed",
                "progress": 1.0,
                "currentNode": None,
                "nodes": node_states,
                "outputs": {
                    "summary": f"{total} nodes completed",
                    "artifacts": [f"s3://demo-bucket/{self.id}/result.json"],
                },
                "errorMessage": None,
                "finishedAt": _iso(self.created + (last + 1) * self.step),
            }
        failed_node = self.nodes[self.stop_at]
        for n in node_states:
            if n["id"] == failed_node:
                n["status"] = "failed"
        if self.outcome == "cancelled":
            for n in node_states:
                if n["status"] == "failed":
                    n["status"] = "cancelled"
            return {
                **base,
                "status": "cancelled",
                "progress": progress,
                "currentNode": None,
                "nodes": node_states,
                "outputs": None,
                "errorMessage": "Run was cancelled",
                "finishedAt": _iso(self.created + (last + 1) * self.step),
            }
        message = FAILURES[hash(self.id) % len(FAILURES)].format(node=failed_node)
        return {
            **base,
            "status": "failed",
            "progress": round(completed / total, 3),
            "currentNode": None,
            "nodes": node_states,
            "outputs": None,
            "errorMessage": message,
            "finishedAt": _iso(self.created + (last + 1) * self.step),
        }


@dataclass
class ScriptedRun:
    id: str
    statuses: list[dict[str, Any]]
    index: int = 0
    #: When it was made (an API shape that shows a creation time needs one that holds).
    created: float = field(default_factory=time.time)

    def status(self, now: float | None = None) -> dict[str, Any]:
        return self.statuses[self.index]

    def advance(self, steps: int = 1) -> dict[str, Any]:
        self.index = min(self.index + steps, len(self.statuses) - 1)
        return self.statuses[self.index]

    def cancel(self, now: float | None = None) -> None:
        self.statuses.append({**self.statuses[self.index], "status": "cancelled"})
        self.index = len(self.statuses) - 1


def scripted_statuses(
    run_id: str, nodes: tuple[str, ...], outcome: Outcome
) -> list[dict[str, Any]]:
    """queued, then each node running and done, then the outcome: 2 + 2n statuses."""
    out: list[dict[str, Any]] = []
    states = ["pending"] * len(nodes)

    def snap(status: str, progress: float, current: str | None, **extra: Any) -> dict[str, Any]:
        node_list = [{"id": n, "status": s} for n, s in zip(nodes, states, strict=True)]
        return {
            "id": run_id,
            "status": status,
            "progress": progress,
            "currentNode": current,
            "nodes": node_list,
            "outputs": None,
            "errorMessage": None,
            **extra,
        }

    out.append(snap("queued", 0.0, None))
    for i, node in enumerate(nodes):
        states[i] = "running"
        out.append(snap("running", round(i / len(nodes), 3), node))
        if outcome != "completed" and i == len(nodes) - 1:
            states[i] = "failed" if outcome == "failed" else "cancelled"
            break
        states[i] = "completed"
    if outcome == "completed":
        out.append(snap("completed", 1.0, None, outputs={"result": f"{run_id} done"}))
    elif outcome == "failed":
        out.append(
            snap("failed", out[-1]["progress"], None, errorMessage=f"Node {nodes[-1]} failed")
        )
    else:
        out.append(snap("cancelled", out[-1]["progress"], None, errorMessage="Run was cancelled"))
    return out
