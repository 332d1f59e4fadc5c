from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.demo.legacy_api import LegacyApi, serving


@pytest.fixture
async def legacy() -> AsyncIterator[LegacyApi]:
    """The simulated legacy API, for real, on a loopback port."""
    async with serving(LegacyApi(step=0.05, seed=7)) as api:
        yield api
