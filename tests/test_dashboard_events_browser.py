"""The dashboard shows events that say what happened, in real headless Chromium: a live
log pane for the events made of log lines, and the typed events as a timeline."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.vocabularies import DEMOS, runner_statuses
from tests.support import running_bridge
from tests.test_dashboard_browser import WAIT_MS, browser, card, open_page  # noqa: F401
from tests.test_derived_events import step_through

pytestmark = pytest.mark.browser


async def test_the_page_shows_a_live_log_and_a_timeline(
    browser: Browser,  # noqa: F811
    legacy: LegacyApi,
) -> None:
    run = legacy.scripted("r1", runner_statuses("r1", lines=2))
    runner = DEMOS["runner"]
    async with running_bridge(
        legacy.url, dashboard=True, events_file=str(runner.path), **runner.settings
    ) as b:
        page = await open_page(browser, f"{b.url}/?runs=r1")
        await expect(card(page, "r1")).to_be_visible(timeout=WAIT_MS)
        await step_through(b, run, until=3)
        log = card(page, "r1").locator(".log")
        await expect(log).to_have_text(
            "build Checkout: line 1\nbuild Checkout: line 2", timeout=WAIT_MS
        )
        timeline = card(page, "r1").locator(".timeline li")
        await expect(timeline.first).to_have_attribute("data-event", "run.started")
        names = await timeline.evaluate_all("items => items.map((li) => li.dataset.event)")
        assert names == [
            "run.started",
            "job.started",
            "step.started",
            "step.log",
            "step.log",
        ]
        await step_through(b, run)
        # The end event is renamed: the card still ends, as completed.
        await expect(card(page, "r1")).to_have_attribute(
            "data-status", "completed", timeout=WAIT_MS
        )
        await expect(log).to_contain_text("test Run: line 2", timeout=WAIT_MS)
        assert page.errors == []  # type: ignore[attr-defined]
