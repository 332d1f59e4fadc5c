"""How viewers' credentials are told apart without being kept: a keyed digest.

Pollers are shared per (run, digest of the forwarded headers), forward-auth verdicts are
cached per the same digest, and cluster mode names Redis keys with it. The key is
random per process, or the cluster's own (kept in Redis) so that replicas agree.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def credentials_digest(secret: bytes, headers: Mapping[str, str]) -> str:
    """The keyed digest of ``headers`` (never the credentials themselves)."""
    material = "\n".join(f"{k}:{v}" for k, v in sorted(headers.items()))
    digest = hmac.new(secret, material.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:32]
