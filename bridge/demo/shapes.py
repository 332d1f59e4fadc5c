"""What the simulated legacy API answers for one run: seed 004's ExecutionStatus (the
default), or the run object of a well-known API, at that API's path.

Every simulated run lives once, in seed 004's words (bridge/demo/runs.py: queued,
running node by node, then completed, failed or cancelled). A ``Shape`` renders that
status as the chosen API would answer it, with the field names and values its
``bridge/profiles.py`` preset reads, so ``sse-bridge demo --profile NAME`` shows the
bridge reading a GitHub, Argo or Databricks run by configuration alone. The path comes
from the profile's ``example_run_path`` (its upper-case placeholders filled with
``demo``), so the demo cannot drift from what the profile documents.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bridge.profiles import PROFILES

Status = dict[str, Any]
#: (the run's status in seed 004's words, its id, when it was created, the time of the
#: answer) -> the answer.
Render = Callable[[Status, str, float, float], Status]

DEFAULT = "execution-status"


@dataclass(frozen=True, slots=True)
class Shape:
    #: The profile this shape is read with (None: the bridge's defaults, seed 004).
    profile: str | None
    #: BRIDGE_UPSTREAM_RUN_PATH for the bridge, and the route the simulated API serves.
    run_path: str
    render: Render
    #: The run's state in this API's words, as the profile's state filter reads it (the
    #: demo's run list shows it before the first event arrives).
    state: Callable[[Status], str | None]
    #: BRIDGE_PROGRESS_EXPR the demo sets where the profile has none of its own.
    progress_expr: str | None = None

    @property
    def name(self) -> str:
        return self.profile or DEFAULT

    @property
    def route(self) -> str:
        """The aiohttp route of one run's status (the path, without a query string)."""
        return urlsplit(self.run_path).path

    @property
    def query_param(self) -> str | None:
        """The query parameter that carries the run id, when the path does not."""
        for name, value in parse_qsl(urlsplit(self.run_path).query):
            if value == "{run_id}":
                return name
        return None


def _iso(ts: float | None, *, ms: bool = False) -> str | None:
    if ts is None:
        return None
    spec = "milliseconds" if ms else "seconds"
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _parse_iso(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _number(run_id: str) -> int:
    """A numeric id, as these APIs use: run-0004 is 4; anything else a stable hash."""
    digits = re.search(r"(\d+)$", run_id)
    return int(digits.group(1)) if digits else zlib.crc32(run_id.encode()) % 10**9


def _nodes(status: Status) -> list[tuple[str, str]]:
    """(name, state) of each node; a node still running in an ended run was cut short."""
    nodes = status.get("nodes")
    if not isinstance(nodes, list):
        return []
    ended = status.get("status") in ("completed", "failed", "cancelled")
    out = []
    for node in nodes:
        if isinstance(node, dict):
            state = str(node.get("status") or "pending")
            out.append(
                (str(node.get("id")), "cancelled" if ended and state == "running" else state)
            )
    return out


def _path_for(profile: str) -> str:
    # OWNER, REPO, NAMESPACE, ...: the operator's to fill; the demo's are all "demo".
    return re.sub(r"\b[A-Z][A-Z_]*[A-Z]\b", "demo", PROFILES[profile].example_run_path)


# --- seed 004: the status as the simulation keeps it ---------------------------------------


def _as_is(status: Status, run_id: str, created: float, now: float) -> Status:
    return status


def _seed_state(status: Status) -> str | None:
    value = status.get("status")
    return value if isinstance(value, str) else None


# --- GitHub Actions: GET /repos/{owner}/{repo}/actions/runs/{run_id} -----------------------

_GITHUB = {
    "queued": ("queued", None),
    "running": ("in_progress", None),
    "completed": ("completed", "success"),
    "failed": ("completed", "failure"),
    "cancelled": ("completed", "cancelled"),
}


def _github(status: Status, run_id: str, created: float, now: float) -> Status:
    gh_status, conclusion = _GITHUB.get(str(status.get("status")), ("in_progress", None))
    number = _number(run_id)
    created_at = status.get("createdAt") or _iso(created)
    return {
        "id": number,
        "name": "Demo workflow",
        "node_id": f"WFR_kwDOdemo{number:08d}",
        "head_branch": "main",
        "head_sha": f"{zlib.crc32(run_id.encode()):08x}" * 5,
        "path": ".github/workflows/demo.yml",
        "display_title": f"Demo run {run_id}",
        "run_number": number,
        "event": "workflow_dispatch",
        "status": gh_status,
        "conclusion": conclusion,
        "workflow_id": 1001,
        "url": f"https://api.github.com/repos/demo/demo/actions/runs/{number}",
        "html_url": f"https://github.com/demo/demo/actions/runs/{number}",
        "created_at": created_at,
        # GitHub moves updated_at whenever a job inside the run moves, which the run
        # object does not show; here it moves on every answer, the worst case the
        # profile's BRIDGE_IGNORE_FIELDS must absorb.
        "updated_at": _iso(now, ms=True),
        "run_attempt": 1,
        "run_started_at": status.get("startedAt") or created_at,
    }


def _github_state(status: Status) -> str | None:
    gh_status, conclusion = _GITHUB.get(str(status.get("status")), ("in_progress", None))
    return conclusion or gh_status


# --- Argo Workflows: GET /api/v1/workflows/{namespace}/{name} ------------------------------

_ARGO_PHASE = {
    "queued": "Pending",
    "running": "Running",
    "completed": "Succeeded",
    "failed": "Failed",
    # `argo stop`/`terminate` end a workflow Failed, with a message saying so.
    "cancelled": "Failed",
}
_ARGO_NODE_PHASE = {
    "running": "Running",
    "completed": "Succeeded",
    "failed": "Failed",
    "cancelled": "Failed",
}


def _argo(status: Status, run_id: str, created: float, now: float) -> Status:
    state = str(status.get("status"))
    created_at = status.get("createdAt") or _iso(created)
    phase = _ARGO_PHASE.get(state, "Running")
    nodes = _nodes(status)
    done = sum(1 for _, s in nodes if s == "completed")
    body: Status = {"phase": phase}
    if status.get("startedAt") or state != "queued":
        body["startedAt"] = status.get("startedAt") or created_at
    body["finishedAt"] = status.get("finishedAt")
    # Argo counts progress once pods are scheduled: a Pending workflow has none yet.
    if state != "queued" and nodes:
        body["progress"] = f"{done}/{len(nodes)}"
    if state == "cancelled":
        body["message"] = "Stopped with strategy 'Terminate'"
    elif isinstance(status.get("errorMessage"), str):
        body["message"] = status["errorMessage"]
    finished = phase in ("Succeeded", "Failed")
    # Steps a finished workflow never reached are Omitted, not left Pending.
    left = "Omitted" if finished else "Pending"
    body["nodes"] = {
        f"{run_id}-{zlib.crc32(name.encode()):010d}": {
            "name": f"{run_id}.{name}",
            "displayName": name,
            "type": "Pod",
            "phase": _ARGO_NODE_PHASE.get(node_state, left),
        }
        for name, node_state in nodes
    }
    # The resource version moves with every write of the object, so with every change.
    version = 1000 + zlib.crc32(repr(sorted(body.items(), key=str)).encode()) % 10**6
    return {
        "metadata": {
            "name": run_id,
            "namespace": "demo",
            "uid": f"{zlib.crc32(run_id.encode()):08x}-demo-4000-8000-000000000000",
            "resourceVersion": str(version),
            "creationTimestamp": created_at,
            "labels": {
                "workflows.argoproj.io/phase": phase,
                "workflows.argoproj.io/completed": "true" if finished else "false",
            },
        },
        "spec": {"entrypoint": "main", "arguments": {}},
        "status": body,
    }


def _argo_state(status: Status) -> str | None:
    return _ARGO_PHASE.get(str(status.get("status")), "Running")


# --- Databricks Jobs 2.1: GET /api/2.1/jobs/runs/get?run_id={run_id} -----------------------

_DATABRICKS = {
    "queued": ("PENDING", None),
    "running": ("RUNNING", None),
    "completed": ("TERMINATED", "SUCCESS"),
    "failed": ("TERMINATED", "FAILED"),
    "cancelled": ("TERMINATED", "CANCELED"),
}
_DATABRICKS_TASK = {
    "pending": ("BLOCKED", None),
    "running": ("RUNNING", None),
    "completed": ("TERMINATED", "SUCCESS"),
    "failed": ("TERMINATED", "FAILED"),
    "cancelled": ("TERMINATED", "CANCELED"),
}


def _databricks_state_object(life: str, result: str | None, message: str) -> Status:
    state: Status = {"life_cycle_state": life, "state_message": message}
    if result is not None:
        # "only available for terminal lifecycle states": absent before, as the API does.
        state["result_state"] = result
    return state


def _ms(ts: float | None) -> int:
    return round(ts * 1000) if ts is not None else 0


def _databricks(status: Status, run_id: str, created: float, now: float) -> Status:
    state = str(status.get("status"))
    life, result = _DATABRICKS.get(state, ("RUNNING", None))
    number = _number(run_id)
    if state == "cancelled":
        message = "Run cancelled."
    elif isinstance(status.get("errorMessage"), str):
        message = status["errorMessage"]
    else:
        message = "In run" if life == "RUNNING" else ""
    started = _parse_iso(status.get("startedAt"))
    start_time = _ms(_parse_iso(status.get("createdAt")) or created)
    # Tasks a terminated run never started end with their upstream's fate.
    never_ran = ("TERMINATED", "UPSTREAM_CANCELED" if state == "cancelled" else "UPSTREAM_FAILED")
    tasks = []
    for i, (name, node_state) in enumerate(_nodes(status)):
        task_life, task_result = _DATABRICKS_TASK.get(node_state, ("BLOCKED", None))
        if life == "TERMINATED" and task_result is None:
            task_life, task_result = never_ran
        tasks.append(
            {
                "task_key": name,
                "run_id": number * 100 + i,
                "state": _databricks_state_object(task_life, task_result, ""),
            }
        )
    return {
        "job_id": 1001,
        "run_id": number,
        "number_in_job": number,
        "run_name": f"demo-job {run_id}",
        "creator_user_name": "demo@example.com",
        "state": _databricks_state_object(life, result, message),
        "start_time": start_time,
        # Queued time, once the run started (0 before, as the API reports it).
        "setup_duration": max(0, _ms(started) - start_time) if started else 0,
        # 0 until the run ends, as the API reports it.
        "end_time": _ms(_parse_iso(status.get("finishedAt"))),
        "run_page_url": f"https://demo.cloud.databricks.com/#job/1001/run/{number}",
        "run_type": "JOB_RUN",
        "tasks": tasks,
    }


def _databricks_state(status: Status) -> str | None:
    life, result = _DATABRICKS.get(str(status.get("status")), ("RUNNING", None))
    return result or life


SHAPES: Mapping[str, Shape] = MappingProxyType(
    {
        DEFAULT: Shape(
            None,
            "/runs/{run_id}",
            _as_is,
            _seed_state,
            # The simulated ExecutionStatus carries `progress` as a fraction, 0 to 1.
            progress_expr=".progress",
        ),
        "github-actions": Shape(
            "github-actions", _path_for("github-actions"), _github, _github_state
        ),
        "argo-workflows": Shape("argo-workflows", _path_for("argo-workflows"), _argo, _argo_state),
        "databricks-runs": Shape(
            "databricks-runs", _path_for("databricks-runs"), _databricks, _databricks_state
        ),
    }
)

#: The profiles `sse-bridge demo --profile` can simulate.
DEMO_PROFILES = tuple(name for name in SHAPES if name != DEFAULT)


def shape_for(profile: str | None) -> Shape:
    """The shape of ``profile`` (None: seed 004's); KeyError for one the demo lacks."""
    return SHAPES[profile or DEFAULT]
