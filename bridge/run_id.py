"""Which run ids the bridge accepts, and how one becomes an upstream path.

An id is 1-128 characters of ``A-Z a-z 0-9 . _ - : + ~`` that starts with a letter or
digit (so an Airflow id such as ``manual__2026-11-30T12:00:00+00:00`` is accepted), so
``.``, ``..``, slashes, ``?``, ``#``, ``@``, ``%``, whitespace, control characters and
non-ASCII never reach the upstream. It is still percent-encoded wherever it stands in the
template (a path segment or a query value: ``+`` becomes ``%2B``, never a space): the
template is the only thing that decides which upstream path is asked.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from bridge.errors import InvalidRunId

MAX_LENGTH = 128
_ACCEPTABLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+~-]{0,127}")


def validate(run_id: str) -> str:
    if not run_id:
        raise InvalidRunId("The run id is empty.")
    if len(run_id) > MAX_LENGTH:
        raise InvalidRunId(f"The run id is longer than {MAX_LENGTH} characters.")
    if not _ACCEPTABLE.fullmatch(run_id):
        raise InvalidRunId(
            "The run id must start with a letter or digit and contain only "
            "letters, digits and '.', '_', '-', ':', '+', '~'."
        )
    return run_id


def upstream_path(template: str, run_id: str) -> str:
    return template.replace("{run_id}", quote(validate(run_id), safe=""))
