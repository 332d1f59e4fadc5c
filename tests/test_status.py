"""The StatusReader: which state, event, progress and fingerprint a status object has."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.events import sse
from bridge.events.history import is_terminal
from bridge.expressions import ExpressionError, field_expr
from bridge.polling.status import StatusReader, status_reader
from bridge.settings import ConfigError, load

DEFAULT = StatusReader(state_expr=".status", success=["completed"], failure=["failed", "cancelled"])


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ({"status": "completed"}, sse.COMPLETE),
        ({"status": "failed"}, sse.ERROR),
        ({"status": "cancelled"}, sse.ERROR),
        ({"status": "queued"}, sse.PROGRESS),
        ({"status": "running", "progress": 0.5}, sse.PROGRESS),
        ({}, sse.PROGRESS),
        ({"status": None}, sse.PROGRESS),
        ({"status": 1}, sse.PROGRESS),
        ({"status": ["completed"]}, sse.PROGRESS),
        ({"status": {"completed": True}}, sse.PROGRESS),
        # States are compared case-insensitively (the contract), but never trimmed.
        ({"status": "COMPLETED"}, sse.COMPLETE),
        ({"status": "Failed"}, sse.ERROR),
        ({"status": "completed "}, sse.PROGRESS),
        ({"status": "completed\n"}, sse.PROGRESS),
        ({"status": "completed\x00"}, sse.PROGRESS),
        ({"status": "failed\r\nevent: complete"}, sse.PROGRESS),
        ({"state": "completed"}, sse.PROGRESS),
    ],
)
def test_event_for_default_states(status: dict[str, Any], event: str) -> None:
    assert DEFAULT.read(status).event == event


def test_event_for_reads_the_configured_field_and_states() -> None:
    settings = load(status_field="state", success_statuses="DONE,ok", failure_statuses="boom")
    reader = status_reader(settings)
    assert reader.read({"state": "DONE"}).event == sse.COMPLETE
    assert reader.read({"state": "done"}).event == sse.COMPLETE
    assert reader.read({"state": "ok"}).event == sse.COMPLETE
    assert reader.read({"state": "boom"}).event == sse.ERROR
    assert reader.read({"state": "completed"}).event == sse.PROGRESS
    assert reader.read({"status": "DONE"}).event == sse.PROGRESS
    assert reader.read({"state": 3}).state == "3"
    assert reader.read({"state": True}).state == "true"
    assert reader.read({"state": "x"}).state == "x"


def test_only_complete_and_error_are_terminal() -> None:
    assert is_terminal(sse.COMPLETE) and is_terminal(sse.ERROR)
    for name in (sse.PROGRESS, sse.PING, sse.TIMEOUT, "completed", "failed", ""):
        assert not is_terminal(name)


def test_field_names_that_are_not_identifiers_are_quoted() -> None:
    assert field_expr("status") == ".status"
    assert field_expr("run-state") == '."run-state"'
    reader = StatusReader(state_expr=field_expr("run-state"), success=["ok"], failure=[])
    assert reader.read({"run-state": "ok"}).event == sse.COMPLETE


def test_a_field_name_jq_would_not_take_bare_is_quoted() -> None:
    # Python calls "état" an identifier; jq takes only ASCII after a bare dot.
    assert field_expr("état") == '."\\u00e9tat"'
    assert field_expr("_x1") == "._x1"
    reader = StatusReader(state_expr=field_expr("état"), success=["ok"], failure=[])
    assert reader.read({"état": "ok"}).event == sse.COMPLETE


@pytest.mark.parametrize(
    ("expr", "status", "state"),
    [
        (".job.state", {"job": {"state": "DONE"}}, "DONE"),
        (".job.state", {"job": None}, None),
        (".job.state", {}, None),
        (
            ".state.result_state // .state.life_cycle_state",
            {"state": {"life_cycle_state": "RUNNING"}},
            "RUNNING",
        ),
        (
            'if .status == "completed" then .conclusion else .status end',
            {"status": "completed", "conclusion": "failure"},
            "failure",
        ),
        (
            'if .done then (if .error then "failed" else "succeeded" end) else "running" end',
            {"done": True, "error": {"code": 3}},
            "failed",
        ),
        ("empty", {"status": "x"}, None),
        (".a, .b", {"a": "first", "b": "second"}, "first"),
    ],
)
def test_state_expressions(expr: str, status: dict[str, Any], state: str | None) -> None:
    reader = StatusReader(
        state_expr=expr, success=["done", "succeeded"], failure=["failed", "failure"]
    )
    reading = reader.read(status)
    assert reading.state == state
    assert reading.problem is None


@pytest.mark.parametrize(
    ("expr", "status"),
    [
        (".job", {"job": {"state": "x"}}),  # an object is not a state
        (".list", {"list": ["a"]}),
        ('error("boom")', {}),
        (".a.b", {"a": "text"}),  # cannot index a string: jq raises
        (".s", {"s": "x" * 100_000}),  # a huge string is not a state
    ],
)
def test_odd_outputs_count_as_still_going_and_say_why(expr: str, status: dict[str, Any]) -> None:
    reading = StatusReader(state_expr=expr, success=["x"], failure=[]).read(status)
    assert reading.state is None and reading.event == sse.PROGRESS
    assert reading.problem is not None
    # The status itself never reaches the log line.
    assert "text" not in reading.problem and "xxxx" not in reading.problem


def test_ignored_fields_leave_the_fingerprint_and_not_the_data() -> None:
    reader = StatusReader(
        state_expr=".status",
        success=["completed"],
        failure=[],
        ignore_fields=[".updated_at", ".meta.served_at", ".nodes[].heartbeat"],
    )
    one = {
        "status": "running",
        "updated_at": 1,
        "meta": {"served_at": 1, "v": 1},
        "nodes": [{"id": "a", "heartbeat": 1}],
    }
    two = {
        "status": "running",
        "updated_at": 2,
        "meta": {"served_at": 2, "v": 1},
        "nodes": [{"id": "a", "heartbeat": 2}],
    }
    three = {**two, "meta": {"served_at": 2, "v": 2}}
    assert reader.read(one).fingerprint == reader.read(two).fingerprint
    assert reader.read(two).fingerprint != reader.read(three).fingerprint
    assert json.loads(reader.read(one).fingerprint) == {
        "status": "running",
        "meta": {"v": 1},
        "nodes": [{"id": "a"}],
    }


def test_progress_is_a_number_from_0_to_1() -> None:
    reader = StatusReader(state_expr=".s", success=[], failure=["f"], progress_expr=".p / 100")
    assert reader.read({"p": 50}).progress == 0.5
    assert reader.read({"p": 150}).progress == 1.0
    assert reader.read({"p": -5}).progress == 0.0
    # jq cannot divide null: no progress, said for `inspect`, not a state problem.
    missing = reader.read({})
    assert missing.progress is None and missing.progress_problem is not None
    assert missing.problem is None
    odd = StatusReader(state_expr=".s", success=[], failure=["f"], progress_expr=".p")
    assert odd.read({"p": "half"}).progress is None
    assert odd.read({"p": "half"}).progress_problem is not None
    assert odd.read({"p": True}).progress is None
    assert odd.read({}).progress is None


def test_a_filter_that_does_not_compile_is_one_line() -> None:
    with pytest.raises(ExpressionError) as caught:
        StatusReader(state_expr=".[", success=[], failure=["x"])
    assert "\n" not in str(caught.value) and "state expression" in str(caught.value)
    # A whole sentence: where jq stopped, no "jq: error:", no colon left hanging.
    assert str(caught.value) == (
        "the state expression does not compile: "
        "syntax error, unexpected end of file at line 1, column 2"
    )


def test_a_compile_error_names_where_and_ends_cleanly() -> None:
    with pytest.raises(ConfigError) as caught:
        load(state_expr='.pipeline | {state: .state, "x":}')
    message = str(caught.value)
    assert message.startswith("BRIDGE_STATE_EXPR: does not compile: syntax error, unexpected")
    assert message.endswith("at line 1, column 33"), message
    assert "<top-level>" not in message and "Value error" not in message


@pytest.mark.parametrize(
    ("expr", "status", "reason"),
    [
        (".a.b", {"a": "top-secret-value"}, "Cannot index string with string"),
        (".a | tonumber", {"a": "top-secret-value"}, "string cannot be parsed as a number"),
        # jq cuts long values short, inside a string or a list.
        (
            ".a | tonumber",
            {"a": {"k": "top-secret-value ) (x" * 9}},
            "object cannot be parsed as a number",
        ),
        (".a | tonumber", {"a": ["top-secret-value)" * 9]}, "array cannot be parsed as a number"),
        (
            ".a - .b",
            {"a": "top-secret-value", "b": {"x": 1}},
            "string and object cannot be subtracted",
        ),
        (
            '.a | ltrimstr("top-secret-value")[1]',
            {"a": "top-secret-value!"},
            "Cannot index string with number",
        ),
    ],
)
def test_a_filter_failing_at_run_time_says_jqs_reason_without_the_status(
    expr: str, status: dict[str, Any], reason: str
) -> None:
    reading = StatusReader(state_expr=expr, success=["x"], failure=[]).read(status)
    assert reading.problem == f"the state expression failed on this status: {reason}"
    progress = StatusReader(state_expr=".s", success=["x"], failure=[], progress_expr=expr)
    problem = progress.read(status).progress_problem
    assert problem == f"the progress expression failed on this status: {reason}"
    assert "secret" not in problem


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"state_expr": ".["}, "BRIDGE_STATE_EXPR"),
        ({"progress_expr": "1 +"}, "BRIDGE_PROGRESS_EXPR"),
        ({"ignore_fields": ".a,.b["}, "BRIDGE_IGNORE_FIELDS"),
        ({"state_expr": ".state", "status_field": "state"}, "BRIDGE_STATE_EXPR"),
        ({"profile": "no-such-api"}, "BRIDGE_PROFILE"),
        ({"upstream_headers": {"authorization": "Bearer x"}}, "BRIDGE_UPSTREAM_HEADERS"),
    ],
)
def test_configuration_errors_name_the_variable(overrides: dict[str, Any], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**overrides)
    message = str(caught.value)
    assert variable in message and "\n" not in message
    assert "Bearer x" not in message


def test_upstream_headers_are_fine_in_forward_auth_mode_and_when_not_forwarded() -> None:
    assert load(upstream_headers={"X-Api-Version": "2"}).upstream_headers == {"X-Api-Version": "2"}
    settings = load(auth_url="http://127.0.0.1:9/auth", upstream_headers={"Authorization": "k"})
    assert settings.upstream_headers == {"Authorization": "k"}


def test_unknown_states_are_flagged_once_and_usual_ones_never() -> None:
    reader = StatusReader(state_expr=".s", success=["completed"], failure=["failed"])
    assert reader.read({"s": "running"}).known
    assert reader.read({"s": "Queued"}).known
    assert reader.read({"s": "completed"}).known
    assert not reader.read({"s": "DONE"}).known
    assert reader.first_warning("DONE") and not reader.first_warning("done")


def test_the_detail_is_one_short_line_or_none() -> None:
    reader = StatusReader(state_expr=".s", success=[], failure=["f"], detail_expr=".d")
    assert reader.read({"d": "build\n\tstep 2"}).detail == "build step 2"
    assert reader.read({"d": 3}).detail == "3"
    assert reader.read({}).detail is None and reader.read({}).detail_problem is None
    long = reader.read({"d": "x" * 1000}).detail
    assert long is not None and len(long) == 200 and long.endswith("…")
    odd = reader.read({"d": {"stage": "a"}})
    assert odd.detail is None and odd.detail_problem == "the detail expression gave dict, not text"
    # Without BRIDGE_DETAIL_EXPR there is none.
    assert StatusReader(state_expr=".s", success=[], failure=["f"]).read({"d": "a"}).detail is None


def test_a_detail_expression_that_does_not_compile_names_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load(detail_expr=".stages[")
    assert str(caught.value).startswith("BRIDGE_DETAIL_EXPR: does not compile: syntax error")
