"""What /openapi.json says of the stream's vocabulary (BRIDGE_EVENTS_FILE) and of deltas.

The document names the events this bridge sends: the built-in ones under their configured
names (those turned off left out) and every rule's, in ``x-events`` and in the event
schemas of the two stream routes; and the ``delta`` parameter with its ``patch`` event.
"""

from __future__ import annotations

from typing import Any

from bridge.events.delta import JSON_PATCH, PATCH
from bridge.events.vocabulary import Vocabulary, describe

Json = dict[str, Any]

_DELTA = {
    "name": "delta",
    "in": "query",
    "required": False,
    "description": (
        "`json-patch`: after the first whole status, each later `progress` comes as an "
        "event `patch` whose data is the RFC 6902 JSON Patch from the previous status."
    ),
    "schema": {"type": "string", "enum": [JSON_PATCH]},
}

_PATCH_DATA = {
    "type": "array",
    "description": "RFC 6902 operations from the previous status to this one.",
    "items": {"type": "object", "required": ["op", "path"]},
}


def add_vocabulary(document: Json, vocabulary: Vocabulary) -> Json:
    """``document`` (built by bridge/web/openapi.py) with the vocabulary and deltas."""
    components = document["components"]
    components["parameters"]["Delta"] = _DELTA
    for path in ("/v1/runs/{run_id}/stream", "/v1/streams", "/v1/events"):
        if path not in document["paths"]:
            continue
        operation = document["paths"][path]["get"]
        operation["parameters"].append({"$ref": "#/components/parameters/Delta"})
    names = vocabulary.event_names()
    document["info"]["x-events"] = {
        "names": names,
        **({"vocabulary": describe(vocabulary)} if vocabulary.customised else {}),
    }
    schemas = components["schemas"]
    for key, patch_data in (
        ("RunEvent", _json_data(_PATCH_DATA)),
        ("MultiEvent", {"type": "string", "contentMediaType": "application/json"}),
    ):
        schema = schemas[key]
        if vocabulary.customised:
            # The names are the operator's and the data the file's filters': named, not
            # described field by field.
            schema.pop("oneOf", None)
            schema["properties"]["event"] = {"type": "string", "enum": [*names, PATCH]}
            schema["description"] += (
                " The events of BRIDGE_EVENTS_FILE (see info.x-events); an unnamed one "
                "(`message`) has no `event:` line."
            )
            continue
        schema["properties"]["event"]["enum"].append(PATCH)
        schema["oneOf"].append(
            {
                "description": "With delta=json-patch: a later status as a JSON Patch.",
                "required": ["id"],
                "properties": {"event": {"const": PATCH}, "data": patch_data},
            }
        )
    return document


def _json_data(schema: Json) -> Json:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def dashboard_events(vocabulary: Vocabulary) -> Json:
    """What the dashboard listens to: the built-in events' names (None: off), the
    derived events' names, and those whose events are log lines (``on = "lines"``)."""
    builtin = {
        kind: (vocabulary.name_of(kind) if vocabulary.enabled(kind) else None)
        for kind in ("progress", "complete", "error")
    }
    taken = {name for name in builtin.values() if name is not None}
    derived = [r.event for r in vocabulary.rules if r.event not in taken]
    return {
        "builtin": builtin,
        "derived": list(dict.fromkeys(derived)),
        "lines": list(dict.fromkeys(r.event for r in vocabulary.rules if r.on == "lines")),
    }
