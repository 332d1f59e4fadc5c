"""One exception tree for everything the bridge answers with an error.

    BridgeError                  any refusal; carries the HTTP status, a code and a sentence
    ├── InvalidRunId             400 invalid_run_id: the id is not acceptable; upstream never called
    ├── InvalidRequest           400 invalid_request: some other part of the request is unusable
    ├── OverCapacity             503 over_capacity: the bridge is at its connection limit
    ├── TooManyStreams           429 too_many_streams: this client is at its connection limit
    ├── Draining                 503 draining: the bridge is shutting down
    ├── PokeDisabled             404 poke_disabled: POST .../poll without BRIDGE_POKE_TOKEN
    ├── PokeUnauthorized         401 unauthorized: a poke without the right bearer token
    ├── ClusterUnavailable       503 cluster_unavailable: cluster mode cannot reach its Redis,
    │                            so a run can be neither shared nor started
    └── UpstreamError            anything the upstream said or failed to say
        ├── UpstreamRefused      401 unauthorized / 403 forbidden / 404 not_found, passed through
        ├── UpstreamUnavailable  502 upstream_unavailable: unreachable, 5xx, redirect, bad body,
        │                        or the circuit breaker is open
        ├── UpstreamBusy         503 upstream_busy: the upstream said 429 (Retry-After passed on)
        └── UpstreamTimeout      504 upstream_timeout: no full answer within BRIDGE_UPSTREAM_TIMEOUT

``UpstreamError.outage`` tells the circuit breaker whether the failure says the upstream
as a whole is down (unreachable, 5xx, 429, timeout) rather than something about one run.

Messages are fixed sentences written here. They never contain anything taken from the
request or from an aiohttp exception, whose repr carries request headers (credentials).
"""

from __future__ import annotations


class BridgeError(Exception):
    status: int = 500
    code: str = "internal_error"
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class InvalidRunId(BridgeError):
    status = 400
    code = "invalid_run_id"


class InvalidRequest(BridgeError):
    status = 400
    code = "invalid_request"


class OverCapacity(BridgeError):
    status = 503
    code = "over_capacity"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyStreams(OverCapacity):
    status = 429
    code = "too_many_streams"


class Draining(BridgeError):
    status = 503
    code = "draining"
    retry_after = 1.0


class PokeDisabled(BridgeError):
    status = 404
    code = "poke_disabled"

    def __init__(self) -> None:
        super().__init__("Poke is off on this bridge (BRIDGE_POKE_TOKEN is not set).")


class PokeUnauthorized(BridgeError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("A poke needs Authorization: Bearer <BRIDGE_POKE_TOKEN>.")


class ClusterUnavailable(BridgeError):
    status = 503
    code = "cluster_unavailable"
    retry_after = 2.0

    def __init__(
        self, message: str = "The bridge cannot reach its Redis right now; try again shortly."
    ) -> None:
        super().__init__(message)


class UpstreamError(BridgeError):
    status = 502
    code = "upstream_error"
    #: True where polling again may succeed (a fault, not a verdict on the credentials).
    transient = True
    #: True where the failure says the upstream as a whole is in trouble.
    outage = False
    #: The HTTP status the upstream answered with, where it answered one.
    upstream_status: int | None = None

    def __init__(
        self, message: str, *, retry_after: float | None = None, outage: bool | None = None
    ) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after
        if outage is not None:
            self.outage = outage


_REFUSALS = {
    401: ("unauthorized", "The upstream API refused these credentials."),
    403: ("forbidden", "The upstream API does not allow these credentials to see this run."),
    404: ("not_found", "The upstream API does not know this run."),
}


class UpstreamRefused(UpstreamError):
    transient = False

    def __init__(self, status: int) -> None:
        code, message = _REFUSALS[status]
        super().__init__(message)
        self.status = status
        self.upstream_status = status
        self.code = code

    @staticmethod
    def handles(status: int) -> bool:
        return status in _REFUSALS


class UpstreamUnavailable(UpstreamError):
    status = 502
    code = "upstream_unavailable"


class UpstreamBusy(UpstreamError):
    status = 503
    code = "upstream_busy"
    outage = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    outage = True

    def __init__(self, message: str = "The upstream API did not answer in time.") -> None:
        super().__init__(message)
