"""Simulated runs for the seed vocabularies of config/events/ (``sse-bridge demo --events``).

Each vocabulary's simulated API answers a run's status in the shape its file reads:
improve runs with phases, candidates and proposals (seed 000), runner runs with jobs and
steps whose logs grow line by line (seed 001), agent runs with a growing list of events
(seed 002), tasks with steps and a current node (seed 003). A run is a list of statuses,
one after the other, ``step`` seconds apart (``SteppedRun``); tests go through the same
lists one status at a time (``ScriptedRun``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Status = dict[str, Any]

#: Where the vocabulary files are (the source tree's config/events/).
EVENTS_DIR = Path(__file__).resolve().parents[2] / "config" / "events"


def _iso(base: float, seconds: float) -> str:
    return datetime.fromtimestamp(base + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def improve_statuses(run_id: str, outcome: str = "succeeded", base: float = 0.0) -> list[Status]:
    """Seed 000: queued, running through phases, candidates, a proposal, the outcome."""
    out: list[Status] = []
    current: Status = {
        "id": run_id,
        "org_id": "org-demo",
        "status": "queued",
        "phase": None,
        "candidates": [],
        "proposals": [],
        "error": None,
    }

    def snap(**changes: Any) -> None:
        current.update(changes)
        current["updated_at"] = _iso(base, len(out))
        out.append(
            {
                **current,
                "candidates": list(current["candidates"]),
                "proposals": list(current["proposals"]),
            }
        )

    snap()
    snap(status="running", phase="analyze")
    snap(phase="generate")
    snap(candidates=[{"id": "cand-1", "created_at": _iso(base, len(out))}])
    snap(candidates=[*current["candidates"], {"id": "cand-2", "created_at": _iso(base, len(out))}])
    snap(phase="evaluate")
    if outcome == "failed":
        snap(status="failed", error="evaluation crashed")
        return out
    snap(proposals=[{"id": "prop-1", "candidate_id": "cand-2", "created_at": _iso(base, len(out))}])
    snap(status=outcome)
    return out


def runner_statuses(
    run_id: str,
    jobs: tuple[str, ...] = ("build", "test"),
    steps: tuple[str, ...] = ("Checkout", "Run"),
    lines: int = 2,
    conclusion: str = "success",
) -> list[Status]:
    """Seed 001: each job, each step started, its log growing a line at a time, done."""
    state: Status = {
        "id": run_id,
        "status": "queued",
        "conclusion": None,
        "jobs": [
            {
                "id": job,
                "name": job,
                "status": "queued",
                "conclusion": None,
                "steps": [
                    {
                        "number": n + 1,
                        "name": name,
                        "status": "queued",
                        "conclusion": None,
                        "log": "",
                    }
                    for n, name in enumerate(steps)
                ],
            }
            for job in jobs
        ],
    }
    out: list[Status] = []

    def snap() -> None:
        out.append(
            {
                **state,
                "jobs": [{**j, "steps": [dict(s) for s in j["steps"]]} for j in state["jobs"]],
            }
        )

    snap()
    state["status"] = "in_progress"
    for job in state["jobs"]:
        job["status"] = "in_progress"
        for step in job["steps"]:
            step["status"] = "in_progress"
            snap()
            for i in range(lines):
                step["log"] += f"{job['id']} {step['name']}: line {i + 1}\n"
                snap()
            step["status"], step["conclusion"] = "completed", "success"
            if step is not job["steps"][-1]:
                snap()
        job["status"], job["conclusion"] = "completed", conclusion
        snap()
    state["status"], state["conclusion"] = "completed", conclusion
    snap()
    return out


def agent_statuses(run_id: str, outcome: str = "completed", base: float = 0.0) -> list[Status]:
    """Seed 002: the polling answer, its events growing, its phase moving on."""
    events: list[Status] = []
    out: list[Status] = []

    def snap(status: str, phase: str | None, *new: tuple[str, Status]) -> None:
        for kind, payload in new:
            sequence = len(events) + 1
            events.append(
                {
                    "sequence": sequence,
                    "eventType": kind,
                    "payload": payload,
                    "createdAt": _iso(base, sequence),
                }
            )
        out.append({"runStatus": status, "currentPhase": phase, "events": list(events)})

    snap("queued", None)
    snap("running", "plan", ("PHASE_STARTED", {"phase": "plan"}))
    snap("running", "plan", ("TOOL_CALLED", {"tool": "search"}))
    snap("running", "compose", ("PHASE_STARTED", {"phase": "compose"}))
    snap("running", "compose", ("ARTIFACT_CREATED", {"artifactType": "proposals"}))
    snap(outcome, "compose")
    return out


def task_statuses(task_id: str, outcome: str = "completed", base: float = 0.0) -> list[Status]:
    """Seed 003: pending, waiting, queued, running through steps and nodes, the outcome."""
    out: list[Status] = []
    current: Status = {
        "task_id": task_id,
        "status": "pending",
        "progress": None,
        "current_node": None,
        "step_current": None,
        "step_total": None,
        "output": None,
        "error": None,
    }

    def snap(**changes: Any) -> None:
        current.update(changes)
        current["updated_at"] = _iso(base, len(out))
        out.append(dict(current))

    snap()
    snap(status="waiting")
    snap(status="queued")
    snap(status="running", progress=0.0, current_node="1", step_current=0, step_total=20)
    snap(progress=0.35, current_node="3", step_current=7)
    if outcome == "failed":
        snap(status="failed", error="node 3 failed")
        return out
    snap(progress=1.0, step_current=20)
    snap(status=outcome, output={"images": ["out.png"]} if outcome == "completed" else None)
    return out


@dataclass(frozen=True, slots=True)
class Demo:
    """One vocabulary's simulated runs and how the bridge is configured for them."""

    name: str
    file: str
    statuses: Callable[[str, str], list[Status]]
    outcomes: tuple[str, ...]
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return EVENTS_DIR / self.file


DEMOS: dict[str, Demo] = {
    "improve-run": Demo(
        "improve-run",
        "000-improve-run.toml",
        lambda run_id, outcome: improve_statuses(run_id, outcome, time.time()),
        ("succeeded", "failed", "no_winner"),
        {"success_statuses": "succeeded,no_winner", "failure_statuses": "failed,cancelled"},
    ),
    "runner": Demo(
        "runner",
        "001-runner.toml",
        lambda run_id, outcome: runner_statuses(run_id, conclusion=outcome),
        ("success", "failure"),
        {"success_statuses": "completed"},
    ),
    "agent-run": Demo(
        "agent-run",
        "002-agent-run-frames.toml",
        lambda run_id, outcome: agent_statuses(run_id, outcome, time.time()),
        ("completed", "failed"),
        {"state_expr": ".runStatus"},
    ),
    "task": Demo(
        "task",
        "003-task.toml",
        lambda run_id, outcome: task_statuses(run_id, outcome, time.time()),
        ("completed", "failed"),
    ),
}


@dataclass
class SteppedRun:
    """A run that moves to its next status every ``step`` seconds."""

    id: str
    statuses: list[Status]
    step: float
    created: float = field(default_factory=time.time)
    cancelled_at: int | None = None

    def _index(self, now: float | None) -> int:
        now = time.time() if now is None else now
        if self.cancelled_at is not None:
            return self.cancelled_at
        return min(int((now - self.created) / self.step), len(self.statuses) - 1)

    def status(self, now: float | None = None) -> Status:
        return self.statuses[self._index(now)]

    def cancel(self, now: float | None = None) -> None:
        index = self._index(now)
        last = self.statuses[index]
        for key in ("status", "runStatus"):
            if key in last:
                self.statuses.insert(index + 1, {**last, key: "cancelled"})
                break
        self.cancelled_at = index + 1
