"""``sse-bridge inspect``: fetch one run and show how the bridge reads it.

The point is onboarding: someone pointing the bridge at their own API should learn in
a minute whether the state expression and the two state lists fit it, and if not, which
variable to change. So the run is fetched through the real ``UpstreamClient`` with the
headers a viewer (or, in forward-auth mode, the bridge itself) would send, and read by
the same ``StatusReader`` the pollers use; nothing here has its own idea of a status.

Exit codes: 0 the state is read and known; 1 the configuration does not fit this status
(with a one-line hint naming the variable), which includes a state in neither list that
is not a documented in-progress word (``bridge/polling/status.py``'s USUAL_IN_PROGRESS, or the
profile's); 2 the configuration is wrong or the upstream
refused or failed (the bridge's own one-line message).

The run is fetched twice, a poll interval apart (``--once``: once), and the fields that
changed between the two answers are named with the BRIDGE_IGNORE_FIELDS value that would
leave them out: a field that changes on every answer (the time of the answer) makes the
bridge send an event on every poll. A field holding a time within a minute of now is
named even from one answer.

Header values are never printed (they are credentials); neither is a URL's password.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jq
from rich.console import Console
from rich.highlighter import JSONHighlighter
from rich.text import Text

from bridge.errors import BridgeError
from bridge.events import derive, sse
from bridge.expressions import field_expr
from bridge.polling.poller import Cadence
from bridge.polling.status import Reading, ignore_filter, status_reader
from bridge.polling.upstream import UpstreamClient, forwardable
from bridge.profiles import PROFILES
from bridge.settings import Settings

EXIT_OK = 0
EXIT_MISREAD = 1
EXIT_FAILED = 2

#: The pretty status is cut here: enough to see its shape, not a page of scrolling.
MAX_STATUS_LINES = 60
MAX_LINE_CHARS = 160
#: How far the searches below look into the status (it may be a megabyte of JSON).
MAX_DEPTH = 5
MAX_NODES = 5000

#: Keys that usually hold a run's state, normalized (lower case, no ``_`` or ``-``).
STATE_KEYS = ("state", "status", "phase", "conclusion", "result", "resultstate", "runstate")
#: Keys that say a run ended when set (normalized); ``done`` only counts when true.
FINISHED_KEYS = frozenset(
    {
        "finishedat",
        "completedat",
        "endedat",
        "endtime",
        "finishtime",
        "finishedon",
        "completedon",
        "completiontime",
        "completiondate",
        "enddate",
        "stoppedat",
        "done",
    }
)
#: A time this close to now, in seconds, is likely the time of the answer itself.
RECENT_SECONDS = 60.0
#: The longest wait between the two fetches (a per-state interval may be minutes).
MAX_APART = 30.0
#: Numbers read as Unix times: seconds, or milliseconds, from 2001 to 2286.
_EPOCH_SECONDS = (1e9, 1e10)
_EPOCH_MILLIS = (1e12, 1e13)

#: Words that make an unknown final state more likely a failure than a success.
FAILURE_WORDS = ("fail", "error", "cancel", "abort", "kill", "reject", "timed", "timeout", "crash")

_PLAIN_STATE = re.compile(r"[A-Za-z0-9_.:+-]+")
_SECRET_PARAM = re.compile(r"key|token|secret|pass|auth|sig|credential|session", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SentHeader:
    name: str
    #: Where it comes from: BRIDGE_UPSTREAM_HEADERS or the -H arguments.
    origin: str


@dataclass(frozen=True, slots=True)
class Examination:
    """What the bridge makes of one status, and what to change if that is wrong."""

    state_expr: str
    #: Which variable the state expression comes from, for the operator to change.
    state_source: str
    reading: Reading
    #: success, failure, in progress (a usual state), or unknown (in no list).
    verdict: str
    #: Each ignored path and the values it selects in this status.
    ignored: tuple[tuple[str, tuple[Any, ...]], ...]
    #: The jq path of a field saying the run ended (finished_at, done: true, ...), if any.
    finished_by: str | None
    #: Likely state fields as (jq path, value), shallowest first.
    candidates: tuple[tuple[str, str], ...]
    hint: str | None
    exit_code: int
    #: How many answers were compared: 2, or 1 with --once.
    fetches: int = 1
    #: Seconds between the two fetches (None: one fetch).
    apart: float | None = None
    #: jq paths (arrays as []) that changed between the two answers, or, from one
    #: answer, that hold a time within RECENT_SECONDS of now; ignored fields left out.
    changing: tuple[str, ...] = ()
    #: The whole BRIDGE_IGNORE_FIELDS value that would leave ``changing`` out.
    ignore_value: str | None = None
    #: With BRIDGE_EVENTS_FILE: the events its stream starts with, from this status as
    #: first seen (name, data, sent: False for a built-in event turned off).
    events: tuple[tuple[str, str, bool], ...] = ()


@dataclass(frozen=True, slots=True)
class Inspection:
    url: str
    sent: tuple[SentHeader, ...]
    #: -H names not sent (not in BRIDGE_FORWARD_HEADERS, or forward-auth mode).
    dropped: tuple[str, ...]
    mode: str
    status: dict[str, Any]
    examination: Examination


def masked_url(url: str) -> str:
    """``url`` without its password and with secret-looking query values starred."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}" if ":" in user else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*{}"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def jq_path(keys: Sequence[str]) -> str:
    """The jq path of nested object keys: ``.job.state``, ``.meta."run-state"``."""
    return "".join(field_expr(key) for key in keys)


def _normal(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _objects(status: Mapping[str, Any]) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """(path, key, value) of every object member, shallowest first, bounded.

    Lists are not entered: a state inside ``conditions[]`` or ``nodes[]`` is a part's
    state, not the run's, and suggesting it would mislead.
    """
    queue: deque[tuple[tuple[str, ...], Mapping[str, Any]]] = deque([((), status)])
    seen = 0
    while queue:
        path, obj = queue.popleft()
        for key, value in obj.items():
            seen += 1
            if seen > MAX_NODES:
                return
            yield (*path, key), key, value
            if isinstance(value, dict) and len(path) + 1 < MAX_DEPTH:
                queue.append(((*path, key), value))


def state_candidates(status: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Fields that look like the run's state, as (jq path, value)."""
    found: list[tuple[int, int, str, str]] = []
    for path, key, value in _objects(status):
        rank = _normal(key)
        if rank in STATE_KEYS and isinstance(value, str) and value:
            found.append((len(path), STATE_KEYS.index(rank), jq_path(path), value))
    found.sort(key=lambda item: (item[0], item[1]))
    return tuple((path, value) for _, _, path, value in found)


def finished_field(status: Mapping[str, Any]) -> str | None:
    """The jq path of a field that says the run ended, if the status has one."""
    for path, key, value in _objects(status):
        name = _normal(key)
        if name not in FINISHED_KEYS:
            continue
        if name == "done":
            if value is True:
                return jq_path(path)
        # 0 and "" are how some APIs (Databricks' end_time) say "not yet".
        elif value not in (None, "", 0, False) and not isinstance(value, dict | list):
            return jq_path(path)
    return None


def _step(path: str, key: str | int) -> str:
    # Every element of a list: BRIDGE_IGNORE_FIELDS then covers the list however long.
    return f"{path}[]" if isinstance(key, int) else path + jq_path([key])


def changed_fields(before: Any, after: Any) -> tuple[str, ...]:
    """jq paths where ``after`` differs from ``before`` (the deepest that differ), bounded."""
    found: dict[str, None] = {}
    stack: list[tuple[str, Any, Any, int]] = [("", before, after, 0)]
    seen = 0
    while stack and seen < MAX_NODES:
        path, old, new, depth = stack.pop()
        seen += 1
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and depth < MAX_DEPTH + 2:
            for key in reversed([*old, *(k for k in new if k not in old)]):
                stack.append((_step(path, key), old.get(key), new.get(key), depth + 1))
        elif (
            isinstance(old, list)
            and isinstance(new, list)
            and len(old) == len(new)
            and depth < MAX_DEPTH + 2
        ):
            for index in reversed(range(len(old))):
                stack.append((_step(path, index), old[index], new[index], depth + 1))
        else:
            found[path or "."] = None
    return tuple(found)


def as_time(value: Any) -> float | None:
    """``value`` as a Unix time if it is one: an ISO 8601 string, or seconds/ms."""
    if isinstance(value, str) and 10 <= len(value) <= 40 and value[:4].isdigit():
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None  # a local time says nothing sure about "now"
        return moment.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if _EPOCH_SECONDS[0] <= value < _EPOCH_SECONDS[1]:
        return float(value)
    if _EPOCH_MILLIS[0] <= value < _EPOCH_MILLIS[1]:
        return value / 1000
    return None


def recent_times(status: Any, now: float) -> tuple[str, ...]:
    """jq paths (arrays as []) of fields holding a time within RECENT_SECONDS of ``now``."""
    found: dict[str, None] = {}
    queue: deque[tuple[str, Any, int]] = deque([("", status, 0)])
    seen = 0
    while queue and seen < MAX_NODES:
        path, value, depth = queue.popleft()
        seen += 1
        if isinstance(value, dict | list) and depth < MAX_DEPTH + 2:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, inner in items:
                queue.append((_step(path, key), inner, depth + 1))
            continue
        moment = as_time(value)
        if moment is not None and abs(moment - now) <= RECENT_SECONDS:
            found[path or "."] = None
    return tuple(found)


def _without_ignored(settings: Settings, status: dict[str, Any]) -> Any:
    expr = ignore_filter(settings.ignore_fields)
    if expr is None:
        return status
    try:
        return jq.compile(expr).input_value(status).first()
    except (ValueError, StopIteration):
        return status  # shown as a problem by the reading already


def _shown(state: str) -> str:
    # A state is upstream text: quote anything unusual so it cannot pass for something else.
    return state if _PLAIN_STATE.fullmatch(state) else json.dumps(state)


def _state_source(settings: Settings) -> str:
    profile = PROFILES.get(settings.profile or "")
    if settings.state_expr is not None:
        if profile is not None and settings.state_expr == profile.state_expr:
            return f"from BRIDGE_PROFILE={profile.name}"
        return "BRIDGE_STATE_EXPR"
    return f"BRIDGE_STATUS_FIELD={settings.status_field}"


def _ignored(settings: Settings, status: dict[str, Any]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    out: list[tuple[str, tuple[Any, ...]]] = []
    for path in settings.ignore_fields:
        try:
            values = tuple(jq.compile(path).input_value(status).all())
        except ValueError:
            values = ()  # the path does not apply to this status (e.g. .a[] on a string)
        out.append((path, values))
    return tuple(out)


def _verdict(settings: Settings, reading: Reading) -> str:
    if reading.event == sse.COMPLETE:
        return "success"
    if reading.event == sse.ERROR:
        return "failure"
    if reading.state is None:
        return "none"
    return "in progress" if reading.known else "unknown"


def _missing_hint(
    settings: Settings, reading: Reading, candidates: tuple[tuple[str, str], ...]
) -> str:
    expr = settings.state_filter
    others = [c for c in candidates if c[0] != expr]
    failed = [p for p in (reading.problem or "").split("; ") if "state expression" in p]
    what = (
        f"the state expression {expr} {failed[0].removeprefix('the state expression ')}"
        if failed
        else f"the state expression {expr} gives no state"
    )
    if not others:
        return (
            f"{what}; set BRIDGE_STATE_EXPR to the jq path of the run's state "
            "(this status has no field named state, status or phase)"
        )
    path, value = others[0]
    key = path.rsplit(".", 1)[-1].strip('"')
    also = f" (also: {', '.join(p for p, _ in others[1:4])})" if len(others) > 1 else ""
    return (
        f"set BRIDGE_STATE_EXPR={path} - the status has a field `{key}` at {path} "
        f"({json.dumps(value)}); {what}{also}"
    )


def _unknown_hint(settings: Settings, state: str, finished_by: str | None) -> str:
    folded = state.casefold()
    failure_first = any(word in folded for word in FAILURE_WORDS)
    first, second = (
        ("BRIDGE_FAILURE_STATUSES", "BRIDGE_SUCCESS_STATUSES")
        if failure_first
        else ("BRIDGE_SUCCESS_STATUSES", "BRIDGE_FAILURE_STATUSES")
    )
    current = settings.failure_statuses if failure_first else settings.success_statuses
    # The whole value, because setting the variable replaces the list (a profile's too).
    value = ",".join((*current, state))
    means = "failed" if failure_first else "succeeded"
    if finished_by is not None:
        why = f"the status looks finished ({finished_by} is set) but {_shown(state)} is in no list"
    else:
        why = (
            f"{_shown(state)} is in neither list nor a usual in-progress state, so the bridge "
            "treats it as still going"
        )
    return (
        f"add {_shown(state)} to {first} ({first}={value}) if it means the run {means}, "
        f"or to {second}; {why}"
    )


def _changing_hint(changing: tuple[str, ...], value: str, fetches: int, apart: float | None) -> str:
    fields = ", ".join(changing)
    if fetches == 2:
        seen = f"{fields} changed between two answers {apart or 0:g} s apart"
    else:
        seen = f"{fields} holds a time within a minute of now (one fetch: --once)"
    return (
        f"every poll may send an event: {seen}; set BRIDGE_IGNORE_FIELDS={value} "
        "if that changes without the run changing"
    )


def examine(
    settings: Settings,
    status: dict[str, Any],
    earlier: dict[str, Any] | None = None,
    *,
    apart: float | None = None,
    now: float | None = None,
    run_id: str = "RUN_ID",
) -> Examination:
    """Read ``status`` as the pollers would and decide the exit code and hint.

    ``earlier``: the answer fetched ``apart`` seconds before ``status``, to tell the
    fields that change by themselves; without it, fields holding a time near ``now``.
    ``run_id`` is what ``$run_id`` is in BRIDGE_EVENTS_FILE's filters.
    """
    reading = status_reader(settings).read(status)
    candidates = state_candidates(status)
    finished_by = finished_field(status)
    hint: str | None = None
    code = EXIT_OK
    state_problem = reading.problem is not None and "state expression" in reading.problem
    if reading.state is None or state_problem:
        code, hint = EXIT_MISREAD, _missing_hint(settings, reading, candidates)
    elif not reading.known:
        # A state in neither list that is no documented in-progress word may be final
        # (SUCCESS, CANCELED): a stream would never end on it, so a script gating on the
        # exit code must not pass it, whether or not the status looks finished.
        code, hint = EXIT_MISREAD, _unknown_hint(settings, reading.state, finished_by)
    elif reading.problem is not None:
        code, hint = EXIT_MISREAD, f"check BRIDGE_IGNORE_FIELDS: {reading.problem}"
    fetches = 1 if earlier is None else 2
    latest = _without_ignored(settings, status)
    moment = time.time() if now is None else now
    recent = recent_times(latest, moment)
    if earlier is None:
        changing = recent
    else:
        changing = changed_fields(_without_ignored(settings, earlier), latest)
    ignore_value = ",".join((*settings.ignore_fields, *changing)) if changing else None
    if changing and ignore_value is not None:
        if hint is None:
            hint = _changing_hint(changing, ignore_value, fetches, apart)
        # A time of the answer, or any change once the run ended, is noise for sure; a
        # running run's other fields may have moved on with it (named, not an error).
        if reading.event != sse.PROGRESS or set(changing) & set(recent):
            code = EXIT_MISREAD
    if hint is None and reading.progress_problem is not None:
        # A run without progress yet (queued) is common: said, not an error.
        hint = (
            f"check BRIDGE_PROGRESS_EXPR: {reading.progress_problem} (fine while the run has "
            "no progress yet; `(.x // 0)` gives 0 instead)"
        )
    events: tuple[tuple[str, str, bool], ...] = ()
    if settings.vocabulary.customised:
        events = tuple(
            derive.first_seen(settings.vocabulary, run_id, sse.encode_json(status), reading)
        )
    return Examination(
        events=events,
        state_expr=settings.state_filter,
        state_source=_state_source(settings),
        reading=reading,
        verdict=_verdict(settings, reading),
        ignored=_ignored(settings, status),
        finished_by=finished_by,
        candidates=candidates,
        hint=hint,
        exit_code=code,
        fetches=fetches,
        apart=apart,
        changing=changing,
        ignore_value=ignore_value,
    )


def request_headers(
    settings: Settings, given: Mapping[str, str]
) -> tuple[dict[str, str], tuple[SentHeader, ...], tuple[str, ...], str]:
    """The headers sent, their origins, the -H names dropped, and the auth mode."""
    sent = [SentHeader(name, "BRIDGE_UPSTREAM_HEADERS") for name in settings.upstream_headers]
    if settings.auth_url is not None:
        # Forward-auth mode polls with the bridge's own headers only, whoever watches.
        return {}, tuple(sent), tuple(given), "forward-auth"
    chosen = forwardable(settings.forward_headers, given)
    sent += [SentHeader(name, "-H, in BRIDGE_FORWARD_HEADERS") for name in chosen]
    dropped = tuple(name for name in given if name.lower() not in chosen)
    return chosen, tuple(sent), dropped, "viewer"


def apart_for(settings: Settings, status: dict[str, Any]) -> float:
    """Seconds between the two fetches: the run's poll interval, at most MAX_APART."""
    state = status_reader(settings).read(status).state
    return min(Cadence.of(settings).for_state(state), MAX_APART)


async def inspect_run(
    settings: Settings, run_id: str, given: Mapping[str, str], *, once: bool = False
) -> Inspection:
    """Fetch ``run_id`` (twice, an interval apart, unless ``once``) and examine it;
    raises BridgeError (UpstreamError, InvalidRunId)."""
    headers, sent, dropped, mode = request_headers(settings, given)
    client = UpstreamClient(settings)
    await client.start()
    earlier: dict[str, Any] | None = None
    apart: float | None = None
    try:
        url = masked_url(client.url_for(run_id))
        status = await client.fetch_status(run_id, headers)
        if not once:
            earlier, apart = status, apart_for(settings, status)
            await asyncio.sleep(apart)
            status = await client.fetch_status(run_id, headers)
    finally:
        await client.close()
    found = examine(settings, status, earlier, apart=apart, run_id=run_id)
    return Inspection(url, sent, dropped, mode, status, found)


def failure_line(settings: Settings, run_id: str, error: BridgeError) -> str:
    """The one line printed for a refusal or failure, with where to look."""
    where = ""
    if error.status == 404:
        where = " (check BRIDGE_UPSTREAM_URL and BRIDGE_UPSTREAM_RUN_PATH, and the run id)"
    elif error.status in (401, 403):
        where = (
            " (pass credentials with -H; only names in BRIDGE_FORWARD_HEADERS are sent)"
            if settings.auth_url is None
            else " (forward-auth mode sends BRIDGE_UPSTREAM_HEADERS)"
        )
    elif error.code in ("upstream_unavailable", "upstream_timeout"):
        where = " (check BRIDGE_UPSTREAM_URL; BRIDGE_UPSTREAM_TIMEOUT bounds the wait)"
    try:
        url = masked_url(UpstreamClient(settings).url_for(run_id))
    except BridgeError:
        return f"sse-bridge: inspect: {error.message}"
    return f"sse-bridge: inspect: GET {url}: {error.message}{where}"


# --- output --------------------------------------------------------------------------


def as_json(inspection: Inspection) -> dict[str, Any]:
    e = inspection.examination
    r = e.reading
    return {
        "url": inspection.url,
        "mode": inspection.mode,
        "headers_sent": [h.name for h in inspection.sent],
        "headers_dropped": list(inspection.dropped),
        "status": inspection.status,
        "state_expr": e.state_expr,
        "state_source": e.state_source,
        "state": r.state,
        "verdict": e.verdict,
        "known": r.known,
        "progress": r.progress,
        "detail": r.detail,
        "ignored": {path: list(values) for path, values in e.ignored},
        "finished_by": e.finished_by,
        "fetches": e.fetches,
        "changing_fields": list(e.changing),
        "ignore_fields_value": e.ignore_value,
        "event": r.event,
        "problem": r.problem,
        "hint": e.hint,
        "exit_code": e.exit_code,
        "events": [
            {"event": name, "data": json.loads(data), "sent": sent} for name, data, sent in e.events
        ],
    }


def _pretty_status(status: dict[str, Any]) -> str:
    # json.dumps escapes control characters: no upstream value can drive the terminal.
    lines = json.dumps(status, indent=2).splitlines()
    cut = [
        line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"
        for line in lines[:MAX_STATUS_LINES]
    ]
    if len(lines) > MAX_STATUS_LINES:
        cut.append(f"… {len(lines) - MAX_STATUS_LINES} more lines (--json prints it whole)")
    return "\n".join(cut)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(inspection: Inspection, settings: Settings, out: TextIO) -> None:
    console = Console(file=out, highlight=False, soft_wrap=True)
    e = inspection.examination
    r = e.reading

    def row(label: str, value: str | Text, style: str = "") -> None:
        line = Text(f"{label:<18}", style="bold")
        line.append(value if isinstance(value, Text) else Text(value, style=style))
        console.print(line)

    row("upstream", f"GET {inspection.url}")
    sent = ", ".join(f"{h.name}: *** ({h.origin})" for h in inspection.sent)
    row("headers", sent or "none besides Accept and User-Agent")
    if inspection.dropped:
        why = (
            "forward-auth mode sends no viewer header"
            if inspection.mode == "forward-auth"
            else "not in BRIDGE_FORWARD_HEADERS"
        )
        row("not sent", f"{', '.join(inspection.dropped)} ({why})", "yellow")
    console.print(Text("status", style="bold"))
    console.print(JSONHighlighter()(Text(_pretty_status(inspection.status))))
    if settings.profile:
        row("profile", settings.profile)
    row("state expression", f"{e.state_expr}  ({e.state_source})")
    if r.state is None:
        row("state", "none (no output, or null: the bridge reads it as still going)", "red")
    else:
        row("state", json.dumps(r.state))
    verdicts = {
        "success": (
            f"success (in BRIDGE_SUCCESS_STATUSES: {','.join(settings.success_statuses)})",
            "green",
        ),
        "failure": (
            f"failure (in BRIDGE_FAILURE_STATUSES: {','.join(settings.failure_statuses)})",
            "green",
        ),
        "in progress": ("in progress (a known in-progress state)", "green"),
        "unknown": ("in no list and not a usual in-progress state: counts as still going", "red"),
        "none": ("still going, for want of a state", "red"),
    }
    text, style = verdicts[e.verdict]
    row("verdict", text, style)
    if settings.progress_expr is None:
        row("progress", "(BRIDGE_PROGRESS_EXPR unset)", "dim")
    elif r.progress is None:
        row("progress", f"none in this status  ({settings.progress_expr})")
    else:
        row("progress", f"{r.progress:.0%}  ({settings.progress_expr})")
    if settings.detail_expr is None:
        row("detail", "(BRIDGE_DETAIL_EXPR unset)", "dim")
    elif r.detail is None:
        row("detail", f"none in this status  ({r.detail_problem or settings.detail_expr})")
    else:
        row("detail", f"{json.dumps(r.detail)}  ({settings.detail_expr})")
    if not e.ignored:
        row("ignored fields", "(BRIDGE_IGNORE_FIELDS unset)", "dim")
    for index, (path, values) in enumerate(e.ignored):
        shown = ", ".join(_short(v) for v in values[:3]) if values else "(no value)"
        if values and all(v is None for v in values):
            shown = "null (absent from this status?)"
        row("ignored fields" if index == 0 else "", f"{path} = {shown}")
    if e.fetches == 2:
        when = f"between two answers {e.apart or 0:g} s apart"
        if e.changing:
            fix = f"; BRIDGE_IGNORE_FIELDS={e.ignore_value} leaves them out"
            row("changing fields", f"{', '.join(e.changing)}  ({when}{fix})", "red")
        else:
            row("changing fields", f"none {when}")
    elif e.changing:
        fix = f"; BRIDGE_IGNORE_FIELDS={e.ignore_value} leaves them out"
        row(
            "changing fields",
            f"{', '.join(e.changing)}  (a time within a minute of now{fix})",
            "red",
        )
    else:
        row("changing fields", "none holds a time near now (one fetch: --once)", "dim")
    if e.finished_by is not None:
        row("looks finished", f"{e.finished_by} is set")
    row(
        "event", f"{r.event}" + ("  (the stream would end here)" if r.event != sse.PROGRESS else "")
    )
    if settings.events_file is not None:
        row("events file", str(settings.events_file))
        if e.events:
            # Longer than the label column: on a line of its own, the events below it.
            console.print(Text("events (first seen)", style="bold"))
        for name, data, is_sent in e.events:
            shown = f"{name}  {_short(json.loads(data), 100)}"
            if not is_sent:
                shown = f"{name}  (turned off: not sent)"
            row("", shown, "" if is_sent else "dim")
    if r.problem is not None:
        row("problem", r.problem, "red")
    if e.hint is not None:
        console.print(Text("hint: ", style="bold red") + Text(e.hint))
    else:
        console.print(Text("ok: the bridge reads this run as configured", style="bold green"))
