"""sse-bridge: a sidecar that turns a legacy polling run API into Server-Sent Events."""

__version__ = "0.1.0"
