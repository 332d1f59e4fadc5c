"""Settings: the README configuration table's defaults, CSV lists, one clear line per bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.settings import ConfigError, Settings, load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No BRIDGE_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    yield


def test_defaults_match_the_design_table() -> None:
    s = load()
    assert s.upstream_url is None
    assert s.upstream_run_path == "/runs/{run_id}"
    assert s.host == "0.0.0.0"
    assert s.port == 8080
    assert s.poll_interval == 2
    assert s.ping_interval == 15
    assert s.stream_timeout == 600
    assert s.upstream_timeout == 10
    assert s.forward_headers == ("authorization", "x-api-key", "cookie")
    assert s.status_field == "status"
    assert s.success_statuses == ("completed",)
    assert s.failure_statuses == ("failed", "cancelled", "canceled")
    assert s.redis_url is None


def test_environment_is_read_with_the_bridge_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_UPSTREAM_URL", "http://legacy.internal:9000/")
    monkeypatch.setenv("BRIDGE_PORT", "9001")
    monkeypatch.setenv("BRIDGE_POLL_INTERVAL", "0.5")
    monkeypatch.setenv("BRIDGE_STATUS_FIELD", "state")
    monkeypatch.setenv("PORT", "1")  # unprefixed: ignored
    s = load()
    assert s.upstream_base() == "http://legacy.internal:9000"
    assert s.port == 9001
    assert s.poll_interval == 0.5
    assert s.status_field == "state"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "9001")
    assert load(port=9002).port == 9002


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a,B", ("a", "b")),
        (" Authorization , X-Api-Key ,, ", ("authorization", "x-api-key")),
        ("cookie", ("cookie",)),
        (",", ()),  # explicitly nothing
    ],
)
def test_forward_headers_is_a_lower_cased_csv_list(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("BRIDGE_FORWARD_HEADERS", raw)
    assert load().forward_headers == expected


def test_status_lists_are_csv_and_keep_their_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SUCCESS_STATUSES", "Done, OK")
    monkeypatch.setenv("BRIDGE_FAILURE_STATUSES", "Failed,timed_out")
    s = load()
    assert s.success_statuses == ("Done", "OK")
    assert s.failure_statuses == ("Failed", "timed_out")


def test_csv_override_may_be_a_tuple_or_a_string() -> None:
    assert load(forward_headers=("X-Token",)).forward_headers == ("x-token",)
    assert load(forward_headers="X-Token,Cookie").forward_headers == ("x-token", "cookie")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BRIDGE_POLL_INTERVAL", "-1"),
        ("BRIDGE_POLL_INTERVAL", "abc"),
        ("BRIDGE_POLL_INTERVAL", "0"),
        ("BRIDGE_POLL_INTERVAL", "nan"),
        ("BRIDGE_PING_INTERVAL", "-5"),
        ("BRIDGE_STREAM_TIMEOUT", "0"),
        ("BRIDGE_UPSTREAM_TIMEOUT", "ten"),
        ("BRIDGE_PORT", "abc"),
        ("BRIDGE_PORT", "70000"),
        ("BRIDGE_PORT", "-1"),
        ("BRIDGE_UPSTREAM_URL", "not a url"),
        ("BRIDGE_UPSTREAM_URL", "ftp://legacy/"),
        ("BRIDGE_UPSTREAM_RUN_PATH", "/runs/"),
        ("BRIDGE_UPSTREAM_RUN_PATH", "runs/{run_id}"),
        ("BRIDGE_UPSTREAM_RUN_PATH", "/runs/{run_id}/{run_id}"),
        ("BRIDGE_LOG_LEVEL", "loud"),
        ("BRIDGE_ACCESS_LOG", "maybe"),
        ("BRIDGE_HISTORY_SIZE", "0"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message and "\r" not in message
    # Only the bad variable is named: the others were fine.
    assert message.count("BRIDGE_") == 1


def test_shared_terminal_state_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SUCCESS_STATUSES", "done")
    monkeypatch.setenv("BRIDGE_FAILURE_STATUSES", "failed,done")
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert "BRIDGE_SUCCESS_STATUSES" in message and "BRIDGE_FAILURE_STATUSES" in message
    assert "\n" not in message


def test_empty_status_field_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load(status_field="")
    assert "BRIDGE_STATUS_FIELD" in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        "UPSTREAM_URL",
        "AUTH_URL",
        "REDIS_URL",
        "TLS_CERTFILE",
        "TLS_KEYFILE",
        "POKE_TOKEN",
        "STATE_EXPR",
        "PROGRESS_EXPR",
        "DETAIL_EXPR",
        "REDIS_SENTINEL_SERVICE",
        "REDIS_SENTINEL_PASSWORD",
        "REDIS_PASSWORD",
        "EVENTS_FILE",
    ],
)
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_optional_value_is_unset(
    monkeypatch: pytest.MonkeyPatch, name: str, blank: str
) -> None:
    # As an env file writes an optional variable it leaves unset: BRIDGE_AUTH_URL=
    monkeypatch.setenv(f"BRIDGE_{name}", blank)
    assert getattr(load(), name.lower()) is None


def test_no_terminal_state_at_all_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SUCCESS_STATUSES", ",")
    monkeypatch.setenv("BRIDGE_FAILURE_STATUSES", " , ")
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert "BRIDGE_SUCCESS_STATUSES" in message and "BRIDGE_FAILURE_STATUSES" in message
    assert "\n" not in message


def test_two_bad_values_still_make_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "abc")
    monkeypatch.setenv("BRIDGE_POLL_INTERVAL", "-1")
    with pytest.raises(ConfigError) as caught:
        load()
    message = str(caught.value)
    assert "BRIDGE_PORT" in message and "BRIDGE_POLL_INTERVAL" in message
    assert "\n" not in message


def test_settings_are_frozen() -> None:
    s = load()
    with pytest.raises(ValidationError):
        s.port = 1
    assert s.port == 8080
    assert isinstance(s, Settings)


# --- the program, as an operator starts it -------------------------------------------


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        cwd=ROOT,
        # Loopback only, should a regression ever get as far as listening.
        env={**clean, "BRIDGE_HOST": "127.0.0.1", **env},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_serve_with_a_bad_port_stops_with_one_line_naming_it() -> None:
    result = _serve({"BRIDGE_UPSTREAM_URL": "http://127.0.0.1:9", "BRIDGE_PORT": "eighty"})
    assert result.returncode != 0
    assert "BRIDGE_PORT" in _one_line(result.stderr)


def test_serve_with_a_bad_poll_interval_stops_with_one_line_naming_it() -> None:
    result = _serve({"BRIDGE_UPSTREAM_URL": "http://127.0.0.1:9", "BRIDGE_POLL_INTERVAL": "-1"})
    assert result.returncode != 0
    assert "BRIDGE_POLL_INTERVAL" in _one_line(result.stderr)


def test_serve_without_upstream_url_stops_with_one_line_naming_it() -> None:
    result = _serve({"BRIDGE_PORT": "1"})
    assert result.returncode != 0
    assert "BRIDGE_UPSTREAM_URL" in _one_line(result.stderr)
