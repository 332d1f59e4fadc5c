"""What a status object means: its state, whether the run ended, its progress, and
whether it changed, read by jq filters compiled once at start (BRIDGE_STATE_EXPR,
BRIDGE_PROGRESS_EXPR, BRIDGE_IGNORE_FIELDS; bridge/profiles.py has presets).

jq (the ``jq`` package, bindings to the real jq) is the expression language: operators
already know it from scripts, and it reaches nested fields, arrays and two-field states
(``if .status == "completed" then .conclusion else .status end``) that a dotted path
cannot. A filter that fails on one status object does not stop the bridge: that status
counts as "still going", and ``Reading.problem`` says why (the poller logs it once).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge.events import sse
from bridge.expressions import compile_expr, runtime_reason
from bridge.profiles import PROFILES
from bridge.settings import Settings

#: Longest state kept; a longer first output is a mistake in the filter, not a state.
MAX_STATE_LENGTH = 256
#: Longest detail kept (BRIDGE_DETAIL_EXPR), in characters; longer is cut with "…".
MAX_DETAIL_LENGTH = 200

#: States that plainly mean "still going" in the APIs the bridge meets (case-folded). A
#: state outside these and both lists is worth a warning: it may be a final state that
#: neither BRIDGE_SUCCESS_STATUSES nor BRIDGE_FAILURE_STATUSES names.
USUAL_IN_PROGRESS = frozenset(
    {
        "accepted",
        "active",
        "blocked",
        "building",
        "canceling",
        "cancelling",
        "created",
        "executing",
        "in_progress",
        "initializing",
        "manual",
        "new",
        "paused",
        "pending",
        "preparing",
        "processing",
        "provisioning",
        "queued",
        "requested",
        "retrying",
        "running",
        "scheduled",
        "starting",
        "started",
        "submitted",
        "terminating",
        "up_for_reschedule",
        "up_for_retry",
        "validating",
        "finalizing",
        "waiting",
        "waiting_for_resource",
        "deferred",
        "restarting",
    }
)
#: Unknown states warned about per process, at most (each once).
MAX_WARNED_STATES = 64


def ignore_filter(paths: Iterable[str]) -> str | None:
    """The jq filter that deletes ``paths`` (jq paths such as ``.meta.served_at``)."""
    chosen = [p.strip() for p in paths if p.strip()]
    return f"del({', '.join(chosen)})" if chosen else None


@dataclass(frozen=True, slots=True)
class Reading:
    """One status object, read."""

    #: progress, complete or error.
    event: str
    #: The run's state as the state filter gave it (None: none, so still going).
    state: str | None
    #: 0 to 1 where a progress filter is set and gave a number.
    progress: float | None
    #: What is compared to tell a change: the status without its ignored fields.
    fingerprint: str
    #: Why the state could not be read, if so (one line, for the log).
    problem: str | None = None
    #: The state is in a list, or a usual or documented in-progress state.
    known: bool = True
    #: Why the progress could not be read, if so (shown by `sse-bridge inspect`; a run
    #: without progress yet, e.g. queued, is common and not worth a warning).
    progress_problem: str | None = None
    #: One line from BRIDGE_DETAIL_EXPR (the current stage, the error message), if set.
    detail: str | None = None
    #: Why the detail could not be read, if so (shown by `sse-bridge inspect`).
    detail_problem: str | None = None


class StatusReader:
    def __init__(
        self,
        *,
        state_expr: str,
        success: Iterable[str],
        failure: Iterable[str],
        ignore_fields: Iterable[str] = (),
        progress_expr: str | None = None,
        in_progress: Iterable[str] = (),
        detail_expr: str | None = None,
    ) -> None:
        self.state_expr = state_expr
        self._state = compile_expr(state_expr, "the state expression")
        self._success = frozenset(s.casefold() for s in success)
        self._failure = frozenset(s.casefold() for s in failure)
        self._going = USUAL_IN_PROGRESS | {s.casefold() for s in in_progress}
        self._warned: set[str] = set()
        self.ignore = ignore_filter(ignore_fields)
        self._ignore = compile_expr(self.ignore, "the ignored fields") if self.ignore else None
        self._progress = (
            compile_expr(progress_expr, "the progress expression") if progress_expr else None
        )
        self._detail = compile_expr(detail_expr, "the detail expression") if detail_expr else None

    def read(self, status: dict[str, Any], data: str | None = None) -> Reading:
        """Read ``status`` (``data``: it as ``sse.encode_json`` wrote it, if at hand)."""
        if data is None:
            data = sse.encode_json(status)
        problems: list[str] = []
        state = self._read_state(data, problems)
        progress_problems: list[str] = []
        progress = self._read_progress(data, progress_problems)
        detail_problems: list[str] = []
        detail = self._read_detail(status, detail_problems)
        fingerprint = data
        if self._ignore is not None:
            try:
                fingerprint = sse.encode_json(self._ignore.input_value(status).first())
            except (ValueError, StopIteration):
                problems.append("the ignored fields could not be deleted")
        event = self.event_of(state)
        known = state is None or event != sse.PROGRESS or state.casefold() in self._going
        return Reading(
            event,
            state,
            progress,
            fingerprint,
            "; ".join(problems) or None,
            known,
            "; ".join(progress_problems) or None,
            detail,
            "; ".join(detail_problems) or None,
        )

    def first_warning(self, state: str) -> bool:
        """True the first time an unknown ``state`` is to be warned about in this process."""
        folded = state.casefold()
        if folded in self._warned or len(self._warned) >= MAX_WARNED_STATES:
            return False
        self._warned.add(folded)
        return True

    def event_of(self, state: str | None) -> str:
        """The event a state is sent as (case-insensitive)."""
        if state is None:
            return sse.PROGRESS
        folded = state.casefold()
        if folded in self._success:
            return sse.COMPLETE
        if folded in self._failure:
            return sse.ERROR
        return sse.PROGRESS

    def _read_state(self, data: str, problems: list[str]) -> str | None:
        # From the status's JSON text: jq parses it, where a Python value would be
        # encoded first (about 40 % more per status, bench/studies/fleet.py's list tick).
        try:
            value = self._state.input_text(data).first()
        except StopIteration:
            return None  # no output: still going
        except ValueError as error:
            # jq's reason, without the values it quotes (runtime_reason).
            problems.append(f"the state expression failed on this status: {runtime_reason(error)}")
            return None
        if value is None:
            return None
        if isinstance(value, str):
            state = value
        elif isinstance(value, bool | int | float):
            state = json.dumps(value)
        else:
            problems.append(f"the state expression gave {type(value).__name__}, not a state")
            return None
        if len(state) > MAX_STATE_LENGTH:
            problems.append(f"the state expression gave {len(state)} characters, not a state")
            return None
        return state

    def _read_progress(self, data: str, problems: list[str]) -> float | None:
        if self._progress is None:
            return None
        try:
            value = self._progress.input_text(data).first()
        except StopIteration:
            return None
        except ValueError as error:
            problems.append(
                f"the progress expression failed on this status: {runtime_reason(error)}"
            )
            return None
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            problems.append("the progress expression gave no number")
            return None
        return min(1.0, max(0.0, float(value)))

    def _read_detail(self, status: dict[str, Any], problems: list[str]) -> str | None:
        if self._detail is None:
            return None
        try:
            value = self._detail.input_value(status).first()
        except StopIteration:
            return None
        except ValueError as error:
            problems.append(f"the detail expression failed on this status: {runtime_reason(error)}")
            return None
        return one_line(value, problems)


def status_reader(settings: Settings) -> StatusReader:
    """The status filters in force (a profile's, or the operator's)."""
    profile = PROFILES.get(settings.profile or "")
    return StatusReader(
        state_expr=settings.state_filter,
        success=settings.success_statuses,
        failure=settings.failure_statuses,
        ignore_fields=settings.ignore_fields,
        progress_expr=settings.progress_expr,
        in_progress=profile.in_progress if profile is not None else (),
        detail_expr=settings.detail_expr,
    )


def one_line(value: Any, problems: list[str]) -> str | None:
    """A detail as one short line: a string with its whitespace runs (line breaks
    included) made one space, cut at MAX_DETAIL_LENGTH; a number or boolean as JSON."""
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if not isinstance(value, str):
        problems.append(f"the detail expression gave {type(value).__name__}, not text")
        return None
    # str.split() also splits on control characters such as \x1c..\x1f; the rest of
    # them are escaped wherever the detail is sent (JSON, a header is quoted).
    text = " ".join(value.split())
    if len(text) > MAX_DETAIL_LENGTH:
        text = text[: MAX_DETAIL_LENGTH - 1] + "…"
    return text or None
