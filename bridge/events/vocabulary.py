"""The stream's vocabulary (BRIDGE_EVENTS_FILE): built-in events renamed, reshaped or
turned off, and the rules that derive typed events from each change of a run's status.

The file is TOML, read with the standard library's ``tomllib``; every filter in it is jq
(the same ``jq`` package as the status filters, bridge/polling/status.py), compiled once
here at start. jq binds variables only when a program is compiled, and a run's id, state
and progress change per status, so each filter is compiled inside a wrapper that binds
``$run_id``, ``$state`` and ``$progress`` from the input, an array
``[run_id, state, progress, status]`` built around the status's JSON text (no second
encoding of the status). Every rule of the file is compiled into one program, run once
per status: one parse of the status for all rules, each rule in its own ``try`` so that
a rule failing on one status yields nothing without hiding the others.

A bad file stops the program at start with one line naming the file, the table and the
key (``VocabularyError``); bridge/settings.py reports it as BRIDGE_EVENTS_FILE's error.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.events import sse
from bridge.expressions import ExpressionError, compile_expr

#: The built-in events a file may rename, reshape or turn off.
BUILTINS: Final = (sse.PROGRESS, sse.COMPLETE, sse.ERROR, sse.TIMEOUT, sse.PING)
#: What ``on`` may say (DESIGN.md "Events that say what happened").
ON: Final = ("appear", "change", "lines")
#: Longest event name accepted (an SSE field is one line; names are the operator's).
MAX_NAME_LENGTH = 128

_BUILTIN_KEYS = frozenset({"enabled", "event", "data"})
_RULE_KEYS = frozenset({"event", "items", "key", "on"})
_TOP_KEYS = frozenset({"builtin", "rule"})

#: Binds the three variables from the input array; the user's filter runs on the status.
#: The filter stands on lines of its own, so that a trailing ``# comment`` in it cannot
#: swallow the wrapper's closing parenthesis.
_BIND = ".[0] as $run_id | .[1] as $state | .[2] as $progress | .[3]"


class VocabularyError(ValueError):
    """A file the bridge cannot use: one line naming the file, the table and the key."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "invalid"


def _compile(program: str, where: str) -> Any:
    try:
        return compile_expr(program, f"{where}:")
    except ExpressionError as error:
        raise VocabularyError(str(error)) from None


def _bound(expr: str) -> str:
    return f"{_BIND} | (\n{expr}\n)"


def _check_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise VocabularyError(f"{where}: must be a non-empty string")
    if (
        len(value) > MAX_NAME_LENGTH
        or not value.isprintable()
        or not value.isascii()
        or " " in value
    ):
        raise VocabularyError(
            f"{where}: must be at most {MAX_NAME_LENGTH} printable ASCII characters without spaces"
        )
    return value


def _check_filter(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise VocabularyError(f"{where}: must be a jq filter (a non-empty string)")
    return value


@dataclass(frozen=True, slots=True)
class Builtin:
    """One built-in event as the file sets it (defaults: as in "The stream")."""

    kind: str
    enabled: bool = True
    #: The SSE event name it is sent as.
    event: str = ""
    #: Its ``data`` filter (source), None: the default data.
    data: str | None = None
    program: Any = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.event or self.kind


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]``: at each change, the items of the new status matched by key."""

    index: int
    event: str
    items: str
    key: str | None
    on: str

    @property
    def table(self) -> str:
        return f"[[rule]] #{self.index + 1}"


def _rules_program(rules: tuple[Rule, ...]) -> str:
    """One jq program for every rule:
    ``[{ok: [key, item, key, item, ...]} or {error: text}, ...]``."""
    parts = []
    for rule in rules:
        # The key as its JSON text, made by jq: a str is hashable as it is in Python.
        key = "null" if rule.key is None else f"[(\n{rule.key}\n)][0] | tojson"
        # A rule without a key is about one thing: its first item.
        items = f"(\n{rule.items}\n)" if rule.key is not None else f"first(\n{rule.items}\n)"
        # Keys and items side by side in one flat array, not an array per item: jq builds
        # and Python converts one array per rule instead of one per item (about 13 % of
        # the program on bench/studies/derived_events.py's runner status).
        parts.append(
            f"(try {{ok: [$__status | {items} | (({key}), .)]}} catch {{error: tostring}})"
        )
    return f"{_BIND} as $__status | [{', '.join(parts)}]"


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """What a stream says; ``Vocabulary()`` is the contract's default (no file)."""

    builtins: Mapping[str, Builtin] = field(
        default_factory=lambda: {kind: Builtin(kind) for kind in BUILTINS}
    )
    rules: tuple[Rule, ...] = ()
    #: The source file, for messages (None: the default vocabulary).
    path: str | None = None
    #: Derived events per change at most (BRIDGE_EVENTS_MAX_PER_CHANGE).
    max_per_change: int = 500
    program: Any = field(default=None, compare=False, repr=False)

    @property
    def progress_on(self) -> bool:
        return self.builtins[sse.PROGRESS].enabled

    @property
    def from_start(self) -> bool:
        """A viewer without a resume id gets the run's history from its start (progress off)."""
        return not self.progress_on

    @property
    def lossless(self) -> bool:
        """Events that a later one does not supersede: never coalesced for a slow viewer."""
        return bool(self.rules) or not self.progress_on

    @property
    def customised(self) -> bool:
        return self.path is not None

    def name_of(self, kind: str) -> str:
        return self.builtins[kind].name

    def enabled(self, kind: str) -> bool:
        return self.builtins[kind].enabled

    def event_names(self) -> list[str]:
        """Every event name a stream may carry, built-in (enabled) then derived, in order."""
        names: dict[str, None] = {}
        for kind in BUILTINS:
            builtin = self.builtins[kind]
            if builtin.enabled:
                names[builtin.name] = None
        for rule in self.rules:
            names[rule.event] = None
        return list(names)

    def render(
        self, kind: str, status: str, run_id: str, state: str | None, progress: float | None
    ) -> str | None:
        """The ``data`` of built-in ``kind`` for ``status`` (JSON text), None: unchanged
        (no filter) or the filter failed (the caller sends the status as it is)."""
        builtin = self.builtins[kind]
        if builtin.program is None:
            return None
        try:
            value = builtin.program.input_text(inputs(status, run_id, state, progress)).first()
        except (ValueError, StopIteration):
            return None
        return sse.encode_json(value)

    def run_rules(
        self, status: str, run_id: str, state: str | None, progress: float | None
    ) -> list[dict[str, Any]]:
        """Each rule's outcome on ``status``: ``{"ok": [key, item, key, item, ...]}`` or
        ``{"error": ...}``."""
        if self.program is None:
            return []
        result = self.program.input_text(inputs(status, run_id, state, progress)).first()
        assert isinstance(result, list)
        return result


def inputs(status: str, run_id: str, state: str | None, progress: float | None) -> str:
    """The wrapper's input around the status's JSON text (never encoded twice)."""
    return (
        f"[{sse.encode_json(run_id)},{sse.encode_json(state)},{sse.encode_json(progress)},{status}]"
    )


DEFAULT = Vocabulary()


def load(path: str | os.PathLike[str], max_per_change: int = 500) -> Vocabulary:
    """Read and compile ``path``; VocabularyError (one line) for anything wrong in it."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as error:
        raise VocabularyError(f"{name}: cannot be read ({error.strerror or 'error'})") from None
    except tomllib.TOMLDecodeError as error:
        raise VocabularyError(f"{name}: is not valid TOML: {_first_line(error)}") from None
    return parse(document, name, max_per_change)


def parse(document: Mapping[str, Any], name: str, max_per_change: int = 500) -> Vocabulary:
    """A vocabulary from a decoded TOML document (``name`` for the messages)."""
    for top in document:
        if top not in _TOP_KEYS:
            raise VocabularyError(
                f"{name}: unknown table or key {top!r} (the file has [builtin.<event>] "
                "tables and [[rule]] entries)"
            )
    builtins = {kind: Builtin(kind) for kind in BUILTINS}
    section = document.get("builtin", {})
    if not isinstance(section, dict):
        raise VocabularyError(f"{name}: [builtin] must be a table of [builtin.<event>] tables")
    for kind, table in section.items():
        where = f"{name}: [builtin.{kind}]"
        if kind not in BUILTINS:
            raise VocabularyError(f"{where}: unknown built-in event; one of: {', '.join(BUILTINS)}")
        if not isinstance(table, dict):
            raise VocabularyError(f"{where}: must be a table")
        for key in table:
            if key not in _BUILTIN_KEYS:
                raise VocabularyError(
                    f"{where} {key}: unknown key; one of: {', '.join(sorted(_BUILTIN_KEYS))}"
                )
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise VocabularyError(f"{where} enabled: must be true or false")
        event = _check_name(table["event"], f"{where} event") if "event" in table else ""
        data = _check_filter(table["data"], f"{where} data") if "data" in table else None
        program = _compile(_bound(data), f"{where} data") if data is not None else None
        builtins[kind] = Builtin(kind, enabled, event, data, program)
    entries = document.get("rule", [])
    if not isinstance(entries, list):
        raise VocabularyError(f"{name}: rule: must be [[rule]] entries")
    rules = []
    for index, table in enumerate(entries):
        where = f"{name}: [[rule]] #{index + 1}"
        if not isinstance(table, dict):
            raise VocabularyError(f"{where}: must be a table")
        for key in table:
            if key not in _RULE_KEYS:
                raise VocabularyError(
                    f"{where} {key}: unknown key; one of: {', '.join(sorted(_RULE_KEYS))}"
                )
        for key in ("event", "items"):
            if key not in table:
                raise VocabularyError(f"{where} {key}: missing")
        event = _check_name(table["event"], f"{where} event")
        items = _check_filter(table["items"], f"{where} items")
        _compile(_bound(items), f"{where} items")
        key_expr = None
        if "key" in table:
            key_expr = _check_filter(table["key"], f"{where} key")
            _compile(_bound(key_expr), f"{where} key")
        on = table.get("on", "change")
        if on not in ON:
            raise VocabularyError(f"{where} on: must be one of: {', '.join(ON)}")
        rules.append(Rule(index, event, items, key_expr, on))
    ruled = tuple(rules)
    program = _compile(_rules_program(ruled), f"{name}: [[rule]]") if ruled else None
    return Vocabulary(builtins, ruled, name, max_per_change, program)


def describe(vocabulary: Vocabulary) -> dict[str, Any]:
    """The vocabulary as data (``/openapi.json``, ``sse-bridge inspect``)."""
    return {
        "file": vocabulary.path,
        "builtin": {
            kind: {"enabled": b.enabled, "event": b.name, "data": b.data}
            for kind, b in vocabulary.builtins.items()
        },
        "rules": [
            {"event": r.event, "items": r.items, "key": r.key, "on": r.on} for r in vocabulary.rules
        ],
    }
