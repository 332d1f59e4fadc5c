"""A real EventSource in headless Chromium meets a transient refusal at connect (the
upstream blipped: the bridge would have said 502) and keeps going to ``complete``.

Browsers fail an EventSource for good on any non-200 answer; the bridge answers such a
stream request with 200, ``retry:`` and a comment, so the browser retries by itself.
"""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import async_playwright

from bridge.demo.legacy_api import Fault, LegacyApi
from tests.support import running_bridge, wait_for
from tests.test_dashboard_browser import CHROMIUM_ARGS, chromium_path

pytestmark = pytest.mark.browser

FOLLOW = """
(url) => new Promise((resolve) => {
  const seen = [];
  const source = new EventSource(url);
  source.addEventListener("error", () => seen.push("error:" + source.readyState));
  for (const name of ["progress", "complete"]) {
    source.addEventListener(name, (e) => {
      seen.push(name);
      if (name === "complete") { source.close(); resolve(seen); }
    });
  }
  setTimeout(() => { source.close(); resolve(seen.concat(["gave up"])); }, 15000);
})
"""


async def test_event_source_retries_after_a_502_at_connect_and_completes(
    legacy: LegacyApi,
) -> None:
    run = legacy.scripted("blip", nodes=("a",))
    # The first request of the run fails upstream: the bridge cannot open the stream.
    legacy.inject("blip", Fault(kind="status", status=500, times=1))
    async with (
        running_bridge(legacy.url, retry_ms=200) as b,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{b.url}/healthz")  # same origin as the stream
            following = page.evaluate(FOLLOW, f"{b.url}/v1/runs/blip/stream")
            task = asyncio.ensure_future(following)
            # Once the browser follows (the refused request, then the retry), the run ends.
            await wait_for(lambda: legacy.requests["blip"] >= 2, timeout=10)
            run.advance(len(run.statuses))
            seen: list[str] = await asyncio.wait_for(task, timeout=20)
        finally:
            await browser.close()
    # It was refused first (an error while CONNECTING, readyState 0: it will retry; a
    # 502 would have shown readyState 2, CLOSED for good), then followed the run.
    assert seen[0] == "error:0", seen
    assert "progress" in seen and seen[-1] == "complete", seen
    assert "error:2" not in seen, seen
