"""Every listed run in a real headless Chromium: the dashboard without run ids, and seed
001's browser client, as printed, against ``/v1/events?envelope=0``.

Chromium is driven as in tests/test_dashboard_browser.py (Debian's package through
Playwright, never downloaded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from bridge.demo.legacy_api import ACTIVE_PATH, LegacyApi, serving
from bridge.settings import Settings
from tests.feed_upstream import list_upstream
from tests.support import running_bridge, serving_app, wait_for
from tests.test_dashboard_browser import WAIT_MS, browser, card, open_page

pytestmark = pytest.mark.browser

__all__ = ["browser"]  # the fixture, used by name


@pytest.fixture
async def api() -> AsyncIterator[LegacyApi]:
    async with serving(LegacyApi(step=0.25, seed=7)) as legacy:
        yield legacy


async def test_the_dashboard_without_run_ids_follows_every_listed_run(
    browser: Browser, api: LegacyApi, tmp_path: Path
) -> None:
    first = api.new_run("completed")
    async with running_bridge(api.url, dashboard=True, upstream_list_path=ACTIVE_PATH) as b:
        page = await open_page(browser, b.url + "/")
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/v1/" in r.url else None)
        await expect(card(page, first.id)).to_be_visible(timeout=WAIT_MS)
        # A run started later appears by itself, and both finish live.
        later = api.new_run("failed")
        await expect(card(page, later.id)).to_be_visible(timeout=WAIT_MS)
        await expect(card(page, first.id)).to_have_attribute(
            "data-status", "completed", timeout=WAIT_MS
        )
        await expect(card(page, later.id)).to_have_attribute(
            "data-status", "failed", timeout=WAIT_MS
        )
        await expect(page.locator("#watch")).to_be_hidden()
        await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        assert all("/v1/events" in url for url in streams), streams
        # Over deltas: each run's later statuses came as patches, each applied.
        assert all("delta=json-patch" in url for url in streams), streams
        counts = await page.evaluate("({...window.sseBridgeDeltas})")
        assert counts["patches"] >= 1 and counts["applied"] == counts["patches"], counts
        await page.screenshot(path=tmp_path / "fleet.png", full_page=True)
        assert not page.errors  # type: ignore[attr-defined]


#: Seed 001's browser client, exactly as printed (only its URL is the bridge's).
SEED_001_CLIENT = """
const events = new EventSource('http://localhost:4800/api/events');
events.addEventListener('run.started', (e) => {
const { runId, run } = JSON.parse(e.data);
console.log('Run started', runId);
});
events.addEventListener('step.log', (e) => {
const { runId, jobId, stepNumber, line } = JSON.parse(e.data);
appendToTerminal(runId, jobId, stepNumber, line);
});
events.addEventListener('run.completed', (e) => {
const { run } = JSON.parse(e.data);
console.log('Run', run.id, 'finished:', run.conclusion);
});
"""

#: The page around it: the one function the client expects its page to have.
PAGE = """<!doctype html><meta charset="utf-8"><title>runner</title><pre id="terminal"></pre>
<script>
function appendToTerminal(runId, jobId, stepNumber, line) {
  document.getElementById('terminal').textContent +=
    runId + ' ' + jobId + '#' + stepNumber + ' ' + line + '\\n';
}
</script>
<script>CLIENT</script>
"""

#: Seed 001's runner vocabulary, derived from a runner's run status (BRIDGE_EVENTS_FILE).
RUNNER_EVENTS = """
[builtin.progress]
enabled = false
[builtin.complete]
event = "run.completed"
data = '{runId: $run_id, run: {id: .id, status: .status, conclusion: .conclusion}}'
[builtin.error]
event = "run.completed"
data = '{runId: $run_id, run: {id: .id, status: .status, conclusion: .conclusion}}'

[[rule]]
event = "run.started"
items = '{runId: $run_id, run: {id: .id, status: .status, jobs: []}}'
on = "appear"

[[rule]]
event = "step.log"
items = '''.jobs[] as $j | $j.steps[] | {runId: $run_id, jobId: $j.id, stepNumber: .number,
  text: .log}'''
key = '[.jobId, .stepNumber]'
on = "lines"
"""


def runner_status(run_id: str, status: str, log: str, conclusion: str | None = None) -> Any:
    return {
        "id": run_id,
        "status": status,
        "conclusion": conclusion,
        "jobs": [{"id": "build", "steps": [{"number": 1, "name": "Checkout", "log": log}]}],
    }


@pytest.mark.skipif(
    "events_file" not in Settings.model_fields,
    reason="needs BRIDGE_EVENTS_FILE (the runner vocabulary of seed 001)",
)
async def test_seed_001s_browser_client_as_printed_on_v1_events(
    browser: Browser, tmp_path: Path
) -> None:
    vocabulary = tmp_path / "runner.toml"
    vocabulary.write_text(RUNNER_EVENTS)
    async with list_upstream() as up:
        served: dict[str, str] = {}

        async def page_handler(request: web.Request) -> web.Response:
            return web.Response(text=served["html"], content_type="text/html")

        pages = web.Application()
        pages.router.add_get("/", page_handler)
        async with serving_app(pages) as page_origin:
            settings = {
                "upstream_list_path": "/runs",
                "events_file": str(vocabulary),
                "cors_origins": page_origin,
                "success_statuses": "completed",
            }
            async with running_bridge(up.url, **settings) as b:
                client = SEED_001_CLIENT.replace(
                    "http://localhost:4800/api/events", f"{b.url}/v1/events?envelope=0"
                )
                served["html"] = PAGE.replace("CLIENT", client)
                page = await browser.new_page()
                logged: list[str] = []
                page.on("console", lambda m: logged.append(m.text))
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                await page.goto(page_origin + "/")
                # The run starts after the page opened: its whole life arrives live.
                up.statuses["a1b2c3d4"] = runner_status("a1b2c3d4", "in_progress", "")
                up.listed.append("a1b2c3d4")
                up.statuses["a1b2c3d4"] = runner_status(
                    "a1b2c3d4", "in_progress", "Workspace already available\n"
                )
                terminal = page.locator("#terminal")
                await expect(terminal).to_have_text(
                    "a1b2c3d4 build#1 Workspace already available\n", timeout=WAIT_MS
                )
                up.statuses["a1b2c3d4"] = runner_status(
                    "a1b2c3d4",
                    "completed",
                    "Workspace already available\nDone\n",
                    conclusion="success",
                )
                await wait_for(lambda: "Run a1b2c3d4 finished: success" in logged, WAIT_MS / 1000)
                assert "Run started a1b2c3d4" in logged
                await expect(terminal).to_contain_text("a1b2c3d4 build#1 Done")
                assert not errors, errors
