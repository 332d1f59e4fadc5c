"""``GET /openapi.json``: the OpenAPI 3.1 description of the bridge's API, in one place.

The document is built here as a Python dict, not kept as a JSON file, because parts of it
are this bridge's configuration, not constants: the longest ``wait``
(BRIDGE_LONGPOLL_MAX), the most runs of one multi stream (BRIDGE_MULTI_MAX_RUNS), the
forwarded credential headers (BRIDGE_FORWARD_HEADERS) and whether poke is on. A client
generated from it, or a fuzzer, then meets the limits the bridge really enforces. The
fragments every operation shares (the error body, the refusals, the run id) are written
once and referenced, and ruff and mypy read the whole of it.

Documented: every API and health route of bridge/web/app.py. Left out on purpose: the
dashboard page and its files (``/``, ``/static/*``, ``/dashboard/config.json``) and the
demo's run list (``/demo/api/...``): they are the page's own plumbing, answer 404 unless
BRIDGE_DASHBOARD is on (the demo API only in ``sse-bridge demo``), and are no interface
that clients should build on. HEAD and OPTIONS, which Quart answers for every GET route,
are left out too. tests/test_openapi.py checks that the document names exactly the app's
other routes, and fuzzes the served bridge against it.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response

from bridge import __version__
from bridge import run_id as run_ids
from bridge.events.sse import encode_json
from bridge.polling.status import MAX_DETAIL_LENGTH
from bridge.settings import Settings
from bridge.web.events_doc import add_vocabulary

OPENAPI_PATH = "/openapi.json"

Json = dict[str, Any]


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Json, description: str, headers: Json | None = None) -> Json:
    response: Json = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


# --- the shapes ------------------------------------------------------------------------

_STATUS = {
    "type": "object",
    "description": (
        "The run's status object exactly as the upstream sent it (for the legacy API, an "
        "ExecutionStatus); its shape is the upstream's, so it is free-form here."
    ),
}

_ERROR = {
    "type": "object",
    "description": "Every refusal: a fixed code and a human sentence (bridge/errors.py).",
    "required": ["error", "message"],
    "properties": {
        "error": {
            "type": "string",
            "description": "A fixed code.",
            "examples": [
                "invalid_run_id",
                "invalid_request",
                "unauthorized",
                "forbidden",
                "not_found",
                "poke_disabled",
                "too_many_streams",
                "over_capacity",
                "draining",
                "cluster_unavailable",
                "upstream_unavailable",
                "upstream_busy",
                "upstream_timeout",
            ],
        },
        "message": {"type": "string"},
        "run_id": {
            "type": "string",
            "description": "The run that was refused (only on GET /v1/streams).",
        },
    },
}

_RUN_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": run_ids.MAX_LENGTH,
    # bridge/run_id.py's rule, anchored as JSON Schema patterns are not.
    "pattern": f"^{run_ids._ACCEPTABLE.pattern}$",
    "description": (
        "1 to 128 characters of letters, digits and `. _ - : + ~`, starting with a letter "
        "or digit; anything else is refused with 400 before the upstream is called."
    ),
}

_DETAIL = {
    "type": ["string", "null"],
    "maxLength": MAX_DETAIL_LENGTH,
    "description": (
        "One line from BRIDGE_DETAIL_EXPR (the current stage, an error message), or null."
    ),
}

#: What the bridge read of the status, beside a body that is the status itself.
_RUN_HEADERS = {
    "X-Run-State": _ref("headers", "XRunState"),
    "X-Run-Detail": _ref("headers", "XRunDetail"),
}

_MULTI_ENVELOPE = {
    "type": "object",
    "description": "The data of a run event on GET /v1/streams.",
    "required": ["run_id", "id", "state", "progress", "detail", "data"],
    "properties": {
        "run_id": {"type": "string"},
        "id": {"type": "string", "description": "The run's own event id (as on its stream)."},
        "state": {
            "type": ["string", "null"],
            "description": "The run's state as BRIDGE_STATE_EXPR reads it, or null.",
        },
        "progress": {
            "type": ["number", "null"],
            "description": "0 to 1 from BRIDGE_PROGRESS_EXPR, or null.",
        },
        "detail": _DETAIL,
        "data": {"type": "object", "description": "The single-run event's data."},
    },
}

_EVENT_ITEM = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "description": "The SSE stream's id of this event."},
        "event": {"type": "string", "enum": ["progress", "complete", "error"]},
        "data": {"type": "object", "description": "As the stream's `data`."},
    },
}

_EVENTS = {
    "type": "object",
    "required": ["run_id", "events", "cursor", "state", "progress", "detail", "terminal"],
    "properties": {
        "run_id": {"type": "string"},
        "events": {"type": "array", "items": _ref("schemas", "EventItem")},
        "cursor": {
            "type": ["string", "null"],
            "description": "The id to pass as `since` next.",
        },
        "state": {"type": ["string", "null"]},
        "progress": {"type": ["number", "null"]},
        "detail": _DETAIL,
        "terminal": {"type": "boolean", "description": "The run has ended."},
    },
}

_POKED = {
    "type": "object",
    "required": ["run_id", "outcome", "pollers"],
    "properties": {
        "run_id": {"type": "string"},
        "outcome": {
            "type": "string",
            "enum": ["polled", "coalesced", "unwatched", "relayed"],
            "description": (
                "polled: a poller polls now; coalesced: a poke was already pending; "
                "unwatched: nobody follows the run here (nothing to do); relayed: sent "
                "through Redis to the replica that polls (cluster mode)."
            ),
        },
        "pollers": {
            "type": ["integer", "null"],
            "description": "Pollers of the run in this process (null when relayed).",
        },
    },
}

_HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string", "const": "ok"}},
}

_TIMEOUT_DATA = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "examples": ["Stream timeout after 10 minutes"]}},
}

_READINESS = {
    "type": "object",
    "description": (
        "The readiness report (bridge/web/readiness.py). Parts the bridge needs besides the "
        "upstream add their own field (`redis` in cluster mode), so more fields may appear."
    ),
    "required": ["ready", "upstream"],
    "properties": {
        "ready": {"type": "boolean"},
        "upstream": {
            "type": "string",
            "examples": ["reachable", "unreachable", "failing", "circuit_open"],
        },
        "circuit": {"type": "string", "description": "The circuit breaker's state."},
        "reason": {"type": "string", "description": "What the verdict rests on."},
        "since_s": {"type": "number", "description": "Seconds since that evidence."},
    },
}


# --- the stream ------------------------------------------------------------------------


def _json_data(schema: Json) -> Json:
    """An SSE ``data`` field that holds one line of JSON matching ``schema``."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _stream_event(run_data: Json, description: str) -> Json:
    """The schema of one event of a stream (as EventSource hands it over: event, data, id).

    OpenAPI 3.1 has no ``itemSchema`` (3.2 does), so, as tools such as schemathesis read a
    3.1 document, the ``schema`` of ``text/event-stream`` describes each event. ``data`` is
    a string whose JSON content is described by ``contentSchema``.
    """
    return {
        "type": "object",
        "description": description,
        "required": ["event", "data"],
        "properties": {
            "event": {
                "type": "string",
                "enum": ["progress", "complete", "error", "timeout", "ping"],
            },
            "data": {"type": "string"},
            # ping and timeout carry no id; a parser still reports the last id it saw.
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
        "oneOf": [
            {
                "description": (
                    "progress: first the current status, then each change; complete: a "
                    "success state, the run ends; error: a failure state, or the bridge "
                    "gave up on the upstream (data then `{status, errorMessage}`), the run "
                    "ends. Each with an id to resume from."
                ),
                "required": ["id"],
                "properties": {
                    "event": {"enum": ["progress", "complete", "error"]},
                    "data": _json_data(run_data),
                },
            },
            {
                "description": "The stream lasted BRIDGE_STREAM_TIMEOUT; then it closes.",
                "properties": {
                    "event": {"const": "timeout"},
                    "data": _json_data(_ref("schemas", "TimeoutData")),
                },
            },
            {
                "description": "Every BRIDGE_PING_INTERVAL: the Unix time.",
                "properties": {
                    "event": {"const": "ping"},
                    "data": _json_data({"type": "integer"}),
                },
            },
        ],
    }


_SSE_TEXT = (
    "Server-Sent Events. The stream starts with a `retry:` line, then events named "
    "`progress`, `complete`, `error` (each with an `id`), `timeout` and `ping` (without); "
    "`data` is one line of JSON. It ends after `complete`/`error`, `timeout`, or when the "
    "bridge drains. The schema describes one event. A request that accepts "
    "text/event-stream and meets a transient refusal (429, 502, 503, 504) gets this 200 "
    "too, with only a `retry:` line (from Retry-After) and a comment naming the error, so "
    "that EventSource retries instead of giving up."
)


def _sse_response(event: Json, extra: str) -> Json:
    return {
        "description": f"{_SSE_TEXT} {extra}",
        "headers": {
            "Cache-Control": _ref("headers", "CacheControl"),
            "X-Accel-Buffering": _ref("headers", "XAccelBuffering"),
        },
        "content": {"text/event-stream": {"schema": event}},
    }


# --- the document ----------------------------------------------------------------------


def _forwarded_schemes(settings: Settings) -> Json:
    """One apiKey scheme per forwarded header: optional, passed on, never checked here."""
    schemes: Json = {}
    for header in settings.forward_headers:
        schemes[f"forwarded-{header}"] = {
            "type": "apiKey",
            "in": "header",
            "name": header,
            "description": (
                "Forwarded verbatim to the upstream (BRIDGE_FORWARD_HEADERS), which decides: "
                "its 401/403/404 are passed on. Viewers presenting the same forwarded "
                "headers share one poller. With BRIDGE_AUTH_URL set, the auth service "
                "judges them instead and the upstream is polled with the bridge's own "
                "headers."
            ),
        }
    return schemes


def _viewer_security(settings: Settings) -> list[Json]:
    # {} first: every forwarded header is optional (the upstream may need none).
    return [{}, *({f"forwarded-{h}": []} for h in settings.forward_headers)]


def build_document(settings: Settings) -> Json:
    """The OpenAPI 3.1 document of a bridge with ``settings``."""
    document = {
        "openapi": "3.1.0",
        "info": _info(settings),
        "tags": [
            {"name": "streams", "description": "Server-Sent Events."},
            {"name": "runs", "description": "JSON views of one run, and poke."},
            {"name": "health", "description": "For orchestrators and operators."},
        ],
        "paths": {
            **_health_paths(),
            **_run_paths(settings),
            **_stream_paths(settings),
            **_catchup_paths(settings),
            **_poke_path(settings),
        },
        "components": {
            "schemas": _schemas(),
            "parameters": _parameters(settings),
            "headers": _headers(),
            "responses": _responses(),
            "securitySchemes": _security_schemes(settings),
        },
    }
    return add_vocabulary(document, settings.vocabulary)


def _info(settings: Settings) -> Json:
    return {
        "title": "sse-bridge",
        "version": __version__,
        "summary": "Live Server-Sent Events in front of a legacy polling run API.",
        "description": (
            "The bridge polls the upstream once per run and interval on behalf of all "
            "viewers and streams the changes. Every error is JSON "
            '`{"error": "<code>", "message": "<sentence>"}`. Request headers named in '
            "BRIDGE_FORWARD_HEADERS (here: "
            + (", ".join(settings.forward_headers) or "none")
            + ") are the viewer's credentials, forwarded upstream (see the security "
            "schemes). Not described here: the dashboard page (`/`, `/static/*`, "
            "`/dashboard/config.json`) and the demo's run list (`/demo/api/*`), which "
            "serve the page only, and HEAD/OPTIONS."
        ),
        "license": {"name": "MIT", "identifier": "MIT"},
    }


# --- the paths ---------------------------------------------------------------------------


def _errors() -> Json:
    """The refusals every run route may answer."""
    return {
        "400": _ref("responses", "BadRequest"),
        "401": _ref("responses", "Unauthorized"),
        "403": _ref("responses", "Forbidden"),
        "404": _ref("responses", "NotFound"),
        "502": _ref("responses", "BadGateway"),
        "503": _ref("responses", "Unavailable"),
        "504": _ref("responses", "GatewayTimeout"),
    }


def _stream_errors() -> Json:
    """The refusals of a route that takes a stream slot: the run's, and the client's cap."""
    return {**_errors(), "429": _ref("responses", "TooManyStreams")}


def _resume() -> list[Json]:
    return [
        _ref("parameters", "LastEventId"),
        _ref("parameters", "Cursor"),
        _ref("parameters", "Since"),
    ]


def _health_paths() -> Json:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["health"],
                "summary": "Liveness: 200 while the process serves.",
                "responses": {"200": _json(_ref("schemas", "Health"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["health"],
                "summary": "Readiness: the upstream is reachable and the bridge not draining.",
                "responses": {
                    "200": _json(_ref("schemas", "Readiness"), "Ready."),
                    "503": _json(
                        {"anyOf": [_ref("schemas", "Readiness"), _ref("schemas", "Error")]},
                        "Not ready (the report), or draining (an error body with Retry-After).",
                        {"Retry-After": _ref("headers", "RetryAfter")},
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["health"],
                "summary": "Prometheus metrics (`bridge_*`).",
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "tags": ["health"],
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 document.")},
            }
        },
    }


def _run_paths(settings: Settings) -> Json:
    run_id = _ref("parameters", "RunId")
    security = _viewer_security(settings)
    errors = _errors()
    return {
        "/v1/runs/{run_id}": {
            "get": {
                "operationId": "getRunStatus",
                "tags": ["runs"],
                "summary": "The latest status, from the shared poller.",
                "parameters": [run_id],
                "security": security,
                "responses": {
                    "200": _json(_ref("schemas", "Status"), "The latest status.", _RUN_HEADERS),
                    **errors,
                },
            }
        },
    }


def _stream_paths(settings: Settings) -> Json:
    run_id = _ref("parameters", "RunId")
    resume = _resume()
    security = _viewer_security(settings)
    stream_errors = _stream_errors()
    return {
        "/v1/runs/{run_id}/stream": {
            "get": {
                "operationId": "streamRun",
                "tags": ["streams"],
                "summary": "The SSE stream of one run.",
                "description": (
                    "Resume with Last-Event-ID (or `cursor`, or `since`): the events after "
                    "that id are replayed, none twice; an id the history no longer holds "
                    "gets the current status as one `progress` event."
                ),
                "parameters": [run_id, *resume],
                "security": security,
                "responses": {
                    "200": _sse_response(
                        _ref("schemas", "RunEvent"),
                        "`data` of progress/complete/error: the run's status object.",
                    ),
                    "204": {
                        "description": "The Last-Event-ID is the run's final event: nothing "
                        "more will come (EventSource stops)."
                    },
                    **stream_errors,
                },
            }
        },
        "/v1/streams": {
            "get": {
                "operationId": "streamRuns",
                "tags": ["streams"],
                "summary": "One SSE stream carrying several runs.",
                "description": (
                    "Each run event's `id` encodes every run's position, so one "
                    "Last-Event-ID resumes all of them. A run's complete/error ends that "
                    "run only; the stream closes once every run has ended. If the upstream "
                    "refuses any run, the request is answered with that error, naming the "
                    "run (`run_id`)."
                ),
                "parameters": [_ref("parameters", "Runs"), _ref("parameters", "Envelope"), *resume],
                "security": security,
                "responses": {
                    "200": _sse_response(
                        _ref("schemas", "MultiEvent"),
                        "`data` of progress/complete/error: the envelope "
                        "{run_id, id, state, progress, detail, data}; their `id` is the multi id "
                        "(every run's position, opaque).",
                    ),
                    "204": {"description": "Every run's final event was already received."},
                    **stream_errors,
                },
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "streamEveryRun",
                "tags": ["streams"],
                "summary": "Every run the upstream lists (BRIDGE_UPSTREAM_LIST_PATH), in one "
                "SSE stream.",
                "description": (
                    "Each listed run's current status when the stream opens (or when the run "
                    "first appears), then its events as they happen, in /v1/streams "
                    "envelopes; with envelope=0 each event's data exactly as the run's own "
                    "stream has it. A run's complete/error ends that run only. One list "
                    "request per interval per credential scope feeds every listed run. 404 "
                    "when no list is configured; the list's 401/403/404 as they are."
                ),
                "parameters": [_ref("parameters", "Envelope"), *resume],
                "security": security,
                "responses": {
                    "200": _sse_response(
                        _ref("schemas", "MultiEvent"),
                        "`data` of progress/complete/error: the envelope "
                        "{run_id, id, state, progress, detail, data} (envelope=0: the run's "
                        "own data); `id` is the stream's own (opaque).",
                    ),
                    **stream_errors,
                },
            }
        },
    }


def _catchup_paths(settings: Settings) -> Json:
    run_id = _ref("parameters", "RunId")
    resume = _resume()
    security = _viewer_security(settings)
    stream_errors = _stream_errors()
    wait = _ref("parameters", "Wait")
    return {
        "/v1/runs/{run_id}/events": {
            "get": {
                "operationId": "getRunEvents",
                "tags": ["runs"],
                "summary": "JSON catch-up and long-poll of the stream's events.",
                "description": (
                    "The events after `since` (the stream's ids; `cursor` or Last-Event-ID "
                    "work too). No `since`, or one the history no longer holds: the current "
                    "status as one `progress` event. With `wait`, the answer waits until "
                    "there is an event after `since` (or the run ended)."
                ),
                "parameters": [run_id, *resume, wait],
                "security": security,
                "responses": {
                    "200": _json(
                        _ref("schemas", "Events"),
                        "The events.",
                        _RUN_HEADERS,
                    ),
                    **stream_errors,
                },
            }
        },
        "/v1/runs/{run_id}/result": {
            "get": {
                "operationId": "getRunResult",
                "tags": ["runs"],
                "summary": "The final status once the run has ended (for agents).",
                "parameters": [run_id, wait],
                "security": security,
                "responses": {
                    "200": _json(
                        _ref("schemas", "Status"),
                        "The run has ended: its final status.",
                        _RUN_HEADERS,
                    ),
                    "202": _json(
                        _ref("schemas", "Status"),
                        "Not ended within `wait`: the latest status.",
                        _RUN_HEADERS,
                    ),
                    **stream_errors,
                },
            }
        },
    }


def _poke_path(settings: Settings) -> Json:
    run_id = _ref("parameters", "RunId")
    return {
        "/v1/runs/{run_id}/poll": {
            "post": {
                "operationId": "pokeRun",
                "tags": ["runs"],
                "summary": "Poke: poll this run now, in every credential scope watched here.",
                "description": (
                    "For the upstream's webhook, so that the poll interval can be long. "
                    "Pokes of one run are coalesced; in cluster mode the poke reaches the "
                    "replica that polls. The token is checked before the run id."
                    + ("" if settings.poke_token else " Poke is off on this bridge (404).")
                ),
                "parameters": [run_id],
                "security": [{"pokeToken": []}],
                "responses": {
                    "202": _json(_ref("schemas", "Poked"), "Accepted."),
                    "400": _ref("responses", "BadRequest"),
                    "401": _json(
                        _ref("schemas", "Error"),
                        "No or the wrong bearer token.",
                        {"WWW-Authenticate": _ref("headers", "WWWAuthenticate")},
                    ),
                    "404": _json(
                        _ref("schemas", "Error"),
                        "Poke is off: BRIDGE_POKE_TOKEN is not set (`poke_disabled`).",
                    ),
                    "503": _ref("responses", "Unavailable"),
                },
            }
        },
    }


# --- the components ----------------------------------------------------------------------


def _schemas() -> Json:
    return {
        "Error": _ERROR,
        "Status": _STATUS,
        "MultiEnvelope": _MULTI_ENVELOPE,
        "EventItem": _EVENT_ITEM,
        "Events": _EVENTS,
        "Poked": _POKED,
        "Health": _HEALTH,
        "Readiness": _READINESS,
        "TimeoutData": _TIMEOUT_DATA,
        "RunEvent": _stream_event(
            _ref("schemas", "Status"), "An event of GET /v1/runs/{run_id}/stream."
        ),
        "MultiEvent": _stream_event(
            _ref("schemas", "MultiEnvelope"), "An event of GET /v1/streams."
        ),
    }


def _parameters(settings: Settings) -> Json:
    return {
        "RunId": {
            "name": "run_id",
            "in": "path",
            "required": True,
            "schema": _RUN_ID,
        },
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Resume after this event id (EventSource sends it itself).",
            "schema": {"type": "string"},
        },
        "Cursor": {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": "Last-Event-ID where headers cannot be set.",
            "schema": {"type": "string"},
        },
        "Since": {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "The same as `cursor` (read when `cursor` is absent).",
            "schema": {"type": "string"},
        },
        "Wait": {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": (
                "Seconds to wait for news, 0 (the default) to BRIDGE_LONGPOLL_MAX; "
                "anything else is refused with 400."
            ),
            "schema": {"type": "number", "minimum": 0, "maximum": settings.longpoll_max},
        },
        "Envelope": {
            "name": "envelope",
            "in": "query",
            "required": False,
            "description": (
                "1 (the default): each event in the envelope {run_id, id, state, progress, "
                "detail, data}; 0: each event's data exactly as the run's own stream has it."
            ),
            "schema": {"type": "string", "enum": ["0", "1"], "default": "1"},
        },
        "Runs": {
            "name": "runs",
            "in": "query",
            "required": True,
            "description": (
                "The runs, comma-separated (the parameter may also be repeated); "
                "duplicates are merged. At most BRIDGE_MULTI_MAX_RUNS."
            ),
            "style": "form",
            "explode": False,
            "schema": {
                "type": "array",
                "items": _RUN_ID,
                "minItems": 1,
                "maxItems": settings.multi_max_runs,
            },
        },
    }


def _headers() -> Json:
    return {
        "RetryAfter": {
            "description": "Seconds after which to try again.",
            "schema": {"type": "integer", "minimum": 1},
        },
        "XRunDetail": {
            "description": (
                "The detail BRIDGE_DETAIL_EXPR reads (empty when none or unset); "
                "percent-encoded if not printable ASCII."
            ),
            "required": True,
            "schema": {"type": "string"},
        },
        "XRunState": {
            "description": (
                "The run's state as the status filters read it (empty when none); "
                "percent-encoded if not printable ASCII."
            ),
            "required": True,
            "schema": {"type": "string"},
        },
        "CacheControl": {"schema": {"type": "string", "const": "no-cache"}},
        "XAccelBuffering": {
            "description": "Tells nginx not to buffer the stream.",
            "schema": {"type": "string", "const": "no"},
        },
        "WWWAuthenticate": {"required": True, "schema": {"type": "string"}},
    }


def _responses() -> Json:
    retry_after = {"Retry-After": _ref("headers", "RetryAfter")}
    return {
        "BadRequest": _json(
            _ref("schemas", "Error"),
            "The run id is not acceptable (`invalid_run_id`), or another part of the "
            "request is unusable (`invalid_request`); the upstream was not called.",
        ),
        "Unauthorized": _json(_ref("schemas", "Error"), "The upstream (or auth service) said 401."),
        "Forbidden": _json(_ref("schemas", "Error"), "The upstream (or auth service) said 403."),
        "NotFound": _json(_ref("schemas", "Error"), "The upstream does not know this run."),
        "TooManyStreams": _json(
            _ref("schemas", "Error"),
            "This client holds BRIDGE_MAX_STREAMS_PER_CLIENT streams already.",
            retry_after,
        ),
        "BadGateway": _json(
            _ref("schemas", "Error"),
            "The upstream is unreachable, answered 5xx or nonsense, or its circuit is open.",
        ),
        "Unavailable": _json(
            _ref("schemas", "Error"),
            "The bridge is at its connection limit (`over_capacity`), draining, cannot "
            "reach its Redis (cluster mode), or the upstream said 429 (`upstream_busy`).",
            retry_after,
        ),
        "GatewayTimeout": _json(
            _ref("schemas", "Error"), "The upstream did not answer within its timeout."
        ),
    }


def _security_schemes(settings: Settings) -> Json:
    return {
        "pokeToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "BRIDGE_POKE_TOKEN.",
        },
        **_forwarded_schemes(settings),
    }


def register_openapi(app: Quart, settings: Settings) -> None:
    """Serve the document at ``/openapi.json``; built once, since settings never change."""
    body = encode_json(build_document(settings))

    @app.get(OPENAPI_PATH)
    async def openapi_document() -> Response:
        return Response(body, content_type="application/json")
