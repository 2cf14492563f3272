"""A throwaway certificate authority for the TLS tests (``rediss://`` and
``rediss+sentinel://``): a CA, a certificate for 127.0.0.1 signed by it, and
a second CA that signed nothing the servers hold."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates", "redis_tls_args"]


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path
    #: a CA that signed nothing the server holds
    other_ca: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign",
    )  # fmt: skip
    return key, cert


def make_certificates(directory: Path) -> Certificates:
    """A CA and a certificate for 127.0.0.1 signed by it, in ``directory``.
    The certificate serves both ends of a connection between the servers (a
    replica or a Sentinel connecting to a primary)."""
    ca_key, ca = _make_ca(directory, "test-ca")
    _, other_ca = _make_ca(directory, "other-ca")
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return Certificates(ca=ca, cert=cert, key=key, other_ca=other_ca)


def redis_tls_args(certificates: Certificates) -> list[str]:
    """A redis-server's (or a Sentinel's) TLS settings, clients unauthenticated."""
    return [
        "--tls-cert-file", str(certificates.cert), "--tls-key-file", str(certificates.key),
        "--tls-ca-cert-file", str(certificates.ca), "--tls-auth-clients", "no",
    ]  # fmt: skip
