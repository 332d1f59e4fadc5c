"""Which run ids the bridge accepts, and the upstream path one becomes."""

from __future__ import annotations

import re
import uuid
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import run_id as run_ids
from bridge.errors import InvalidRunId

ACCEPTED = [
    "a",
    "0",
    "run-0001",
    "R_1.2-x",
    "a..b",
    "abc.",
    str(uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF)),
    uuid.UUID(int=0xFEDCBA9876543210FEDCBA9876543210).hex,
    "x" * 128,
    # Airflow's ids, and the other characters the contract admits.
    "manual__2026-11-30T12:00:00+00:00",
    "a:b",
    "a+b~c",
]

REJECTED = [
    "",
    "x" * 129,
    "x" * 300,
    ".",
    "..",
    ".hidden",
    "-a",
    "_a",
    "/",
    "a/b",
    "../etc",
    "%2F",
    "a%2Fb",
    "%2e%2e",
    "a?b",
    "a#b",
    "a@b",
    "a!b",
    "a;b",
    "a\\b",
    "a\x00",
    "\x00",
    "a\rb",
    "a\nb",
    "a\r\n",
    "a\n",
    "a b",
    " a",
    "a\t",
    "é",
    "run-é",
    "\uff52\uff55\uff4e",  # fullwidth "run"
    "a\u2028",
    "a\u0085",
    "a\ud800",
    "١٢٣",
    "{run_id}",
]


@pytest.mark.parametrize("value", ACCEPTED)
def test_normal_ids_are_accepted_unchanged(value: str) -> None:
    assert run_ids.validate(value) == value


@pytest.mark.parametrize("value", REJECTED)
def test_unacceptable_ids_are_refused(value: str) -> None:
    with pytest.raises(InvalidRunId) as caught:
        run_ids.validate(value)
    error = caught.value
    assert error.status == 400
    assert error.body()["error"] == "invalid_run_id"
    # The answer is the bridge's own sentence; the id itself is never echoed.
    if len(value) > 2:
        assert value not in error.message


@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=140))
def test_any_accepted_id_is_plain_ascii_of_the_allowed_set(value: str) -> None:
    try:
        run_ids.validate(value)
    except InvalidRunId:
        return
    assert 1 <= len(value) <= run_ids.MAX_LENGTH
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:+~-]*", value, flags=re.ASCII)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True))
def test_every_id_of_the_allowed_set_is_accepted(value: str) -> None:
    assert run_ids.validate(value) == value


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ("/runs/{run_id}", "r1", "/runs/r1"),
        ("/api/v2/runs/{run_id}/status", "a.b_c-9", "/api/v2/runs/a.b_c-9/status"),
        ("/runs/{run_id}?view=full", "R", "/runs/R?view=full"),
    ],
)
def test_upstream_path_fills_the_template(template: str, value: str, expected: str) -> None:
    assert run_ids.upstream_path(template, value) == expected


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True))
def test_upstream_path_is_one_path_segment_that_decodes_to_the_id(value: str) -> None:
    path = run_ids.upstream_path("/runs/{run_id}/status", value)
    parts = path.split("/")
    assert len(parts) == 4
    assert parts[:2] == ["", "runs"] and parts[-1] == "status"
    segment = parts[2]
    assert segment not in {".", ".."}
    assert re.fullmatch(r"[A-Za-z0-9._~%-]+", segment)
    assert unquote(segment) == value


@pytest.mark.parametrize("value", ["..", "a/b", "%2F", "a?b", "a#b", "", "a\r\n"])
def test_upstream_path_refuses_what_validate_refuses(value: str) -> None:
    with pytest.raises(InvalidRunId):
        run_ids.upstream_path("/runs/{run_id}", value)
