"""A self-signed certificate for 127.0.0.1, made with the `openssl` command (the venv has
no `cryptography`), for the tests that serve or proxy HTTPS."""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Seconds one openssl command may take.
OPENSSL_TIMEOUT = 30


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path
    #: base64 of the SHA-256 of the public key (SPKI), as Chromium's flag wants it.
    spki: str

    def client_context(self, alpn: list[str]) -> ssl.SSLContext:
        """A client context that trusts this certificate only, offering ``alpn``."""
        context = ssl.create_default_context(cafile=str(self.certfile))
        context.set_alpn_protocols(alpn)
        return context


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        ["openssl", *args], input=stdin, capture_output=True, timeout=OPENSSL_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def make_certificate(directory: Path, name: str = "bridge") -> Certificate:
    certfile, keyfile = directory / f"{name}.crt", directory / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", str(keyfile), "-out", str(certfile),
    )  # fmt: skip
    public_der = openssl("pkey", "-in", str(keyfile), "-pubout", "-outform", "DER")
    spki = base64.b64encode(hashlib.sha256(public_der).digest()).decode()
    return Certificate(certfile, keyfile, spki)
