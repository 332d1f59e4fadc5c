"""The README and docs/ name only what the code has, and agree with each other.

A page that names a BRIDGE_* variable or a /v1 endpoint the code no longer has sends an
operator after a setting that is silently ignored, or a route that answers 404.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from bridge.settings import Settings, load
from bridge.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_VARIABLE = re.compile(r"\bBRIDGE_[A-Z0-9_]*[A-Z0-9]\b")
_ENDPOINT = re.compile(r"/v1(?:/[A-Za-z0-9_{}<>.:+~%-]*)+")
#: Named on purpose though no setting: the README's example of a misspelt variable.
NOT_SETTINGS = frozenset({"BRIDGE_POLL_INTERVALL"})
#: Upstream paths the docs quote (an API's own /v1, not the bridge's).
UPSTREAM_PATHS = frozenset(
    {
        "/v1/workflows/demo/{run_id}",
        # Seed 002's feed, quoted in "Feeds and fleets".
        "/v1/agent-runs/{runId}/events",
        "/v1/agent-runs/{run_id}/events",
    }
)


def variables() -> frozenset[str]:
    return frozenset(f"BRIDGE_{name.upper()}" for name in Settings.model_fields)


def routes() -> list[re.Pattern[str]]:
    """Each of the bridge's rules as a pattern: a <converter> matches any one segment."""
    app = create_app(load(upstream_url="http://127.0.0.1:9", dashboard=True))
    return [
        re.compile(re.sub(r"<[^>]+>", "[^/]+", rule.rule.replace(".", r"\.")))
        for rule in app.url_map.iter_rules()
    ]


def unknown_variables(text: str, known: Iterable[str]) -> list[str]:
    names = set(known) | NOT_SETTINGS
    return sorted({name for name in _VARIABLE.findall(text) if name not in names})


def unknown_endpoints(text: str, patterns: list[re.Pattern[str]]) -> list[str]:
    found = []
    for path in sorted(set(_ENDPOINT.findall(text))):
        if path in UPSTREAM_PATHS:
            continue
        if path.endswith("/"):
            # A prefix ("every path under /v1/runs/"): some route must start with it.
            if not any(p.pattern.startswith(re.escape(path).replace("\\/", "/")) for p in patterns):
                found.append(path)
        elif not any(p.fullmatch(path) for p in patterns):
            found.append(path)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_variable_named_is_a_setting(page: Path) -> None:
    assert unknown_variables(page.read_text(), variables()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_endpoint_named_is_served(page: Path) -> None:
    assert unknown_endpoints(page.read_text(), routes()) == []


def test_the_checks_catch_what_the_code_no_longer_has() -> None:
    text = (
        "Set `BRIDGE_POLL_INTERVAL` and `BRIDGE_RETIRED_KNOB`; poll "
        "`GET /v1/runs/{run_id}/events`, `/v1/runs/run-0001/stream` and `/v1/runs/{id}/gone`."
    )
    assert unknown_variables(text, variables()) == ["BRIDGE_RETIRED_KNOB"]
    assert unknown_endpoints(text, routes()) == ["/v1/runs/{id}/gone"]


def _paragraphs(text: str) -> list[str]:
    return [" ".join(part.split()) for part in re.split(r"\n\s*\n|\n(?=- )", text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_says_the_bridge_cannot_serve_https(page: Path) -> None:
    # The bridge serves HTTPS itself with BRIDGE_TLS_CERTFILE/KEYFILE (README, "HTTPS and
    # HTTP/2"); a page that says it speaks plain HTTP must say how it does not.
    for paragraph in _paragraphs(page.read_text()):
        if re.search(r"speaks? plain HTTP|TLS must terminate", paragraph):
            assert "BRIDGE_TLS_CERTFILE" in paragraph, paragraph
