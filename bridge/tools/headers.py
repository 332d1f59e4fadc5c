"""``Name: value`` request headers given on a tool's command line or in its environment."""

from __future__ import annotations

import re
from collections.abc import Sequence

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HeaderError(ValueError):
    """A header that is not ``Name: value``; the message never holds the value."""


def parse_headers(lines: Sequence[str], where: str = "-H") -> dict[str, str]:
    """``lines`` (each ``Name: value``) as a dict (last one of a name wins); ``where``
    names them in a refusal."""
    headers: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _HEADER_NAME.fullmatch(name):
            # Not quoted back: `-H 'Bearer abc'` (no name) would print the token.
            raise HeaderError(f"{where} number {number} must look like 'Name: value'")
        if any(c in value for c in "\r\n\0"):
            raise HeaderError(f"{where} {name}: the value must not contain a line break")
        headers[name] = value.strip()
    return headers
