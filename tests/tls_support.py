"""Certificates for the TLS tests, made with the `openssl` CLI (the `cryptography` package
is not installed here): CAs `ca` and `rogue`, a server certificate `server` for localhost /
127.0.0.1 and a client certificate `client` signed by ca, and `intruder` signed by rogue,
which a server trusting ca must refuse. Used by tests/serving/test_security.py and the Go
front's TLS tests (tests/front), through tests/conftest.py's session fixture `tls_certs`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc


def _ssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def _leaf(d: Path, name: str, ca: str, san: str | None) -> None:
    _ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _ssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem",
         cwd=d)  # fmt: skip


def make_certs(d: Path) -> Path:
    """Writes the PEM files (`NAME.pem`, `NAME.key`) into `d`; returns `d`."""
    _ca(d, "ca")
    _ca(d, "rogue")
    _leaf(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    _leaf(d, "client", "ca", None)
    _leaf(d, "intruder", "rogue", None)
    return d


def channel_creds(d: Path, client: str | None = None, ca: str = "ca") -> grpc.ChannelCredentials:
    """A client's credentials: trusting `ca`, with `client`'s certificate when given."""
    key = (d / f"{client}.key").read_bytes() if client else None
    chain = (d / f"{client}.pem").read_bytes() if client else None
    return grpc.ssl_channel_credentials((d / f"{ca}.pem").read_bytes(), key, chain)
