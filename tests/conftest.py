from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bridge.demo.legacy_api import LegacyApi, serving
from tests.redis_server import RedisServer


@pytest.fixture
async def legacy() -> AsyncIterator[LegacyApi]:
    """The simulated legacy API, for real, on a loopback port."""
    async with serving(LegacyApi(step=0.05, seed=7)) as api:
        yield api


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
