"""All configuration, read once from ``BRIDGE_*`` environment variables.

Every field documents its unit next to it. ``config/example.env`` and the README list
the same variables; ``tests/test_settings.py`` keeps the three in step.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AnyHttpUrl, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[tuple[str, ...], NoDecode]


def _split_csv(value: object) -> object:
    # Operators write "a,b,c"; pydantic-settings would want JSON for a list.
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        extra="ignore",
        frozen=True,
        validate_default=True,
        # The docstring under each field is its documentation (config/example.env, README).
        use_attribute_docstrings=True,
    )

    # --- the contract (DESIGN.md) ---
    upstream_url: AnyHttpUrl | None = None
    """Base URL of the legacy API; required for `serve`."""
    upstream_run_path: str = "/runs/{run_id}"
    """Path template of one run's status; must contain `{run_id}` once."""
    host: str = "0.0.0.0"
    """Address the bridge listens on."""
    port: int = Field(8080, ge=0, le=65535)
    """Port the bridge listens on."""
    poll_interval: float = Field(2.0, gt=0, le=3600)
    """Seconds between upstream polls of one run."""
    ping_interval: float = Field(15.0, gt=0, le=3600)
    """Seconds between `ping` events."""
    stream_timeout: float = Field(600.0, gt=0)
    """Seconds before a stream ends with `timeout`."""
    upstream_timeout: float = Field(10.0, gt=0, le=600)
    """Seconds for one upstream request, connect to last byte."""
    forward_headers: CsvList = ("authorization", "x-api-key", "cookie")
    """Viewer request headers forwarded upstream (an allow-list, case-insensitive)."""
    status_field: str = Field("status", min_length=1)
    """Field of the status object that holds the state."""
    success_statuses: CsvList = ("completed",)
    """States that end a stream with `complete` (comma-separated)."""
    failure_statuses: CsvList = ("failed", "cancelled")
    """States that end a stream with `error` (comma-separated)."""
    redis_url: str | None = None
    """Cluster mode (replicas sharing pollers and history); not in this release: unset means
    one process, in memory."""

    # --- the developers' additions ---
    retry_ms: int = Field(3000, ge=0, le=600_000)
    """`retry:` sent at stream start, in milliseconds (jittered by up to +20%)."""
    linger: float = Field(5.0, ge=0, le=3600)
    """Seconds a poller keeps running after its last viewer left."""
    history_size: int = Field(256, ge=1, le=100_000)
    """Events kept per run for resume."""
    history_ttl: float = Field(600.0, ge=0)
    """Seconds a run's history is kept after its poller stopped."""
    history_runs: int = Field(10_000, ge=1)
    """Stopped runs whose history is kept at most (least recently used goes first)."""
    viewer_buffer: int = Field(32, ge=1, le=10_000)
    """Events a live viewer may fall behind before it is coalesced to the latest status."""
    upstream_max_bytes: int = Field(1_048_576, ge=1024)
    """Largest upstream status body accepted (after decompression), in bytes."""
    upstream_give_up: float = Field(60.0, gt=0)
    """Seconds of continuous upstream failure before viewers get an `error` event."""
    upstream_concurrency: int = Field(64, ge=1, le=10_000)
    """Upstream requests in flight at most, over all runs."""
    backoff_max: float = Field(30.0, gt=0)
    """Longest wait between polls of a failing run, in seconds (backoff starts at the poll interval)."""
    breaker_threshold: int = Field(5, ge=1)
    """Consecutive upstream outages (unreachable, 5xx, 429, timeout) that open the circuit."""
    breaker_cooldown: float = Field(10.0, gt=0)
    """Seconds the open circuit refuses requests before one trial is let through."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    access_log: bool = True
    """Access log lines carry the path only, never the query string."""
    dashboard: bool = False
    """Serve the live dashboard page at `/` (always on in `sse-bridge demo`)."""
    multi_max_runs: int = Field(50, ge=1, le=500)
    """Most runs one `GET /v1/streams?runs=...` connection may carry."""
    shutdown_grace: float = Field(10.0, ge=0, le=600)
    """Seconds from SIGTERM to exit, at most (drain delay included)."""
    drain_delay: float = Field(1.0, ge=0, le=60)
    """Seconds `/readyz` answers 503 after SIGTERM before the listener closes (load balancers notice)."""

    # --- limits ---
    max_streams: int = Field(20_000, ge=1)
    """Open streams at most, over all viewers; over it: 503 with Retry-After."""
    max_streams_per_client: int = Field(64, ge=1)
    """Open streams at most from one client address; over it: 429 with Retry-After."""
    trust_forwarded_for: bool = False
    """Take the client address for the per-client cap from the last X-Forwarded-For hop
    (only behind a proxy that sets it). X-Forwarded-* is never forwarded upstream."""
    send_timeout: float = Field(30.0, gt=0)
    """Seconds one frame may take to reach a viewer before that viewer is dropped."""

    # --- CORS ---
    cors_origins: CsvList = ()
    """Origins allowed to read the bridge from a browser; `*` for any (then never with credentials)."""
    cors_credentials: bool = False
    """Allow cookies/Authorization on cross-origin requests (explicit origins only)."""

    # --- forward-auth mode ---
    auth_url: AnyHttpUrl | None = None
    """When set, each new viewer is admitted by this URL (2xx admits, 401/403 refuse), and
    the upstream is polled with BRIDGE_UPSTREAM_HEADERS instead of the viewer's headers."""
    auth_cache_ttl: float = Field(30.0, ge=0, le=3600)
    """Seconds an admission (or refusal) by BRIDGE_AUTH_URL is remembered."""
    upstream_headers: dict[str, str] = Field(default_factory=dict)
    """JSON object of headers the bridge itself sends upstream in forward-auth mode."""

    @field_validator(
        "forward_headers", "success_statuses", "failure_statuses", "cors_origins", mode="before"
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("forward_headers")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.lower() for v in value)

    @field_validator("upstream_run_path")
    @classmethod
    def _run_path(cls, value: str) -> str:
        if value.count("{run_id}") != 1 or not value.startswith("/"):
            raise ValueError("must start with '/' and contain {run_id} exactly once")
        return value

    @field_validator("upstream_url", "auth_url", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # BRIDGE_AUTH_URL= in an env file means "not set", not "an invalid URL".
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith("memory://"):
            raise ValueError(
                "cluster mode is not in this release; leave it unset (one process, in memory)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _disjoint(self) -> Settings:
        if set(self.success_statuses) & set(self.failure_statuses):
            raise ValueError(
                "BRIDGE_SUCCESS_STATUSES and BRIDGE_FAILURE_STATUSES must not share a state"
            )
        if not self.success_statuses and not self.failure_statuses:
            raise ValueError(
                "BRIDGE_SUCCESS_STATUSES and BRIDGE_FAILURE_STATUSES must not both be empty"
            )
        return self

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.cors_credentials and "*" in self.cors_origins:
            raise ValueError(
                "BRIDGE_CORS_CREDENTIALS needs explicit BRIDGE_CORS_ORIGINS, never '*'"
            )
        if self.drain_delay > self.shutdown_grace:
            raise ValueError("BRIDGE_DRAIN_DELAY must not exceed BRIDGE_SHUTDOWN_GRACE")
        return self

    def upstream_base(self) -> str:
        return str(self.upstream_url).rstrip("/") if self.upstream_url else ""


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming the variable."""


def describe(error: ValidationError) -> str:
    """One line per problem, naming the BRIDGE_* variable."""
    parts = []
    for item in error.errors():
        loc = item.get("loc") or ()
        name = f"BRIDGE_{str(loc[0]).upper()}" if loc else "configuration"
        parts.append(f"{name}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def load(**overrides: object) -> Settings:
    """Read the environment (overrides win); raise ConfigError with a one-line message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise ConfigError(describe(error)) from None
