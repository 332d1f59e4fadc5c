"""Forward-auth mode: an auth service admits each viewer; the bridge polls with its own headers.

Use it when viewers' credentials are not the upstream's (a session cookie of your app,
say) or when every admitted viewer of a run should share one poller. The auth service
gets ``GET BRIDGE_AUTH_URL?run_id=<id>`` with the viewer's allow-listed headers and
``X-Bridge-Run-Id``; 2xx admits, 401/403 refuse, anything else is a 502/504 for the
viewer. Verdicts are kept for BRIDGE_AUTH_CACHE_TTL seconds, keyed by a digest of the
headers, and concurrent first asks for the same key share one request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping

import aiohttp
from cachetools import TTLCache

from bridge.credentials import credentials_digest
from bridge.errors import UpstreamError, UpstreamRefused, UpstreamTimeout, UpstreamUnavailable
from bridge.settings import Settings

log = logging.getLogger("bridge.web.auth")

#: Header names that carry a credential (case-insensitive search in the name).
_CREDENTIAL_NAME = re.compile(
    r"authorization|cookie|api[-_]?key|key$|token|secret|passw|session|signature|credential",
    re.IGNORECASE,
)


def credential_headers(headers: Mapping[str, str]) -> list[str]:
    """The names in ``headers`` that look like credentials (``X-Api-Key``, ...)."""
    return [name for name in headers if _CREDENTIAL_NAME.search(name)]


def shared_key_warning(settings: Settings) -> str | None:
    """The start-up warning for a bridge that polls with its own credential for anyone.

    In viewer mode the upstream is the only judge of a viewer, and it judges the
    request: with the operator's key in BRIDGE_UPSTREAM_HEADERS it admits every
    request, whatever (or nothing) the viewer sent. Only the name is said, never the
    value.
    """
    if settings.auth_url is not None:
        return None
    names = credential_headers(settings.upstream_headers)
    if not names:
        return None
    return (
        f"BRIDGE_UPSTREAM_HEADERS sends {', '.join(sorted(names))} with every upstream "
        "request and no viewer is admitted by BRIDGE_AUTH_URL: every viewer who can reach "
        "the bridge sees every run with that key; set BRIDGE_AUTH_URL (forward-auth mode, "
        "docs/security.md) so that an auth service decides who may watch"
    )


class ForwardAuth:
    def __init__(self, settings: Settings) -> None:
        assert settings.auth_url is not None
        self._url = str(settings.auth_url)
        self._timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout)
        self._verdicts: TTLCache[tuple[str, str], int] = TTLCache(
            maxsize=100_000, ttl=max(settings.auth_cache_ttl, 1e-9)
        )
        self._cache = settings.auth_cache_ttl > 0
        self._inflight: dict[tuple[str, str], asyncio.Future[int]] = {}
        self._secret = os.urandom(32)
        self._session: aiohttp.ClientSession | None = None
        self.requests_sent = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def admit(self, run_id: str, headers: Mapping[str, str]) -> None:
        """Return when the viewer may watch ``run_id``; raise UpstreamError otherwise."""
        key = (run_id, credentials_digest(self._secret, headers))
        status = self._verdicts.get(key)
        while status is None:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                try:
                    answer = await self._ask(run_id, headers)
                except UpstreamError as error:
                    pending.set_exception(error)
                    pending.exception()  # retrieved here; waiters re-raise it
                except BaseException:
                    pending.cancel()  # the asker was cancelled: its waiters must not hang
                    raise
                else:
                    if self._cache:
                        self._verdicts[key] = answer
                    pending.set_result(answer)
                finally:
                    del self._inflight[key]
            try:
                status = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    continue  # the asker left, this waiter did not: it asks itself
                raise
        if 200 <= status < 300:
            return
        raise UpstreamRefused(status)

    async def _ask(self, run_id: str, headers: Mapping[str, str]) -> int:
        assert self._session is not None
        self.requests_sent += 1
        try:
            async with self._session.get(
                self._url,
                params={"run_id": run_id},
                headers={**headers, "X-Bridge-Run-Id": run_id},
                allow_redirects=False,
            ) as response:
                status = response.status
        except TimeoutError:
            raise UpstreamTimeout("The auth service did not answer in time.") from None
        except (aiohttp.ClientError, OSError) as error:
            log.debug("auth request failed: %s", type(error).__name__)
            raise UpstreamUnavailable("The auth service could not be reached.") from None
        if 200 <= status < 300 or status in (401, 403):
            return status
        raise UpstreamUnavailable(f"The auth service answered with HTTP {status}.")
