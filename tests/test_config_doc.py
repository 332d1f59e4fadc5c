"""config/example.env and the README list every setting, as the Settings model has it."""

from __future__ import annotations

import pathlib

from bridge.settings import Settings
from bridge.tools import config_doc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_example_env_is_generated_from_settings() -> None:
    assert (ROOT / "config" / "example.env").read_text() == config_doc.env_file()


def test_readme_lists_every_variable_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config_doc.markdown() in readme
    for name in Settings.model_fields:
        assert f"BRIDGE_{name.upper()}" in readme


def test_design_variables_have_design_defaults() -> None:
    rows = {variable: default for variable, default, _ in config_doc.rows()}
    assert rows["BRIDGE_UPSTREAM_RUN_PATH"] == "/runs/{run_id}"
    assert rows["BRIDGE_HOST"] == "0.0.0.0"
    assert rows["BRIDGE_PORT"] == "8080"
    assert rows["BRIDGE_POLL_INTERVAL"] == "2"
    assert rows["BRIDGE_PING_INTERVAL"] == "15"
    assert rows["BRIDGE_STREAM_TIMEOUT"] == "600"
    assert rows["BRIDGE_UPSTREAM_TIMEOUT"] == "10"
    assert rows["BRIDGE_FORWARD_HEADERS"] == "authorization,x-api-key,cookie"
    assert rows["BRIDGE_STATUS_FIELD"] == "status"
    assert rows["BRIDGE_SUCCESS_STATUSES"] == "completed"
    assert rows["BRIDGE_FAILURE_STATUSES"] == "failed,cancelled,canceled"
