"""jq filters as the settings and the status reader use them: compiled once, with jq's
errors made one line that never quotes a status's values.

Settings validates the operator's filters with the same compilation the status reader
runs at start (bridge/polling/status.py), so both say the same sentence.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jq


class ExpressionError(ValueError):
    """A filter that does not compile; the message names what was wrong, one line."""


#: Longest jq reason kept in a message.
MAX_REASON = 160
_JQ_PREFIX = re.compile(r"^jq: error(?: \(at [^)]*\))?: ")
_JQ_WHERE = re.compile(r" at <top-level>, line (\d+)(?:, column (\d+))?:?$")
#: Where jq quotes a value in a run-time error: "string (", "object (", ...
_JQ_VALUE = re.compile(r"\b(?:null|boolean|number|string|array|object) \(")
#: The end of a value jq cut short: "...", then what closes it, then ")".
_JQ_CUT = re.compile(r"\.\.\.[\"\]}]*\)")


def compile_reason(error: BaseException) -> str:
    """jq's compile error as one clause: ``syntax error, unexpected end of file at line 1,
    column 4`` (its first line, without the ``jq: error:`` prefix and the dangling colon
    before the filter it repeats)."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    first = _JQ_PREFIX.sub("", first)
    first = _JQ_WHERE.sub(
        lambda m: f" at line {m[1]}" + (f", column {m[2]}" if m[2] else ""), first
    )
    first = first.rstrip(" :")
    return first[:MAX_REASON] or "invalid"


def _value_end(text: str, start: int) -> int:
    """Where the value jq quoted from ``start`` (after its "(") ends: the index of ")".

    The value is JSON, whole or cut short with "..."; -1 if no end is found.
    """
    depth = 0
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == ")" and depth <= 0:
            return index
    return -1


def runtime_reason(error: BaseException) -> str:
    """jq's run-time error with every value it quotes left out: ``Cannot index string
    with string``, ``string cannot be parsed as a number``. The values may be the
    status's own (a secret, a personal name), and logs get the fact, not the data."""
    text = " ".join(str(error).split())
    text = _JQ_PREFIX.sub("", text)
    out: list[str] = []
    position = 0
    while (found := _JQ_VALUE.search(text, position)) is not None:
        out.append(text[position : found.end() - 2])
        # A value cut short inside a string never closes: it ends where jq cut it. (A
        # whole or cut JSON value has no ")" outside a string, so an end found by the
        # scan is never early; a late one only leaves out more.)
        end = _value_end(text, found.end())
        if end < 0:
            cut = _JQ_CUT.search(text, found.end())
            end = cut.end() - 1 if cut is not None else len(text)
        position = end + 1
    out.append(text[position:])
    reason = "".join(out).strip()
    return reason[:MAX_REASON] or "no reason given"


#: What jq accepts after a bare dot: ASCII only (``.état`` does not compile).
_JQ_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_expr(name: str) -> str:
    """An object key as the jq filter that reads it: ``.status``, ``."run-state"``."""
    return "." + name if _JQ_IDENTIFIER.fullmatch(name) else "." + json.dumps(name)


def compile_expr(expr: str, what: str = "") -> Any:
    """``expr`` compiled by jq; if it does not compile, ExpressionError saying ``<what>
    does not compile: <jq's reason>`` (a ValueError, so a settings validator may let it
    through as it is)."""
    try:
        return jq.compile(expr)
    except ValueError as error:
        subject = f"{what} " if what else ""
        raise ExpressionError(f"{subject}does not compile: {compile_reason(error)}") from None
