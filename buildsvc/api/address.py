"""Daemon addresses (``unix:///PATH``, ``tcp://HOST:PORT``) and the TLS files for them.

Apart from :mod:`buildsvc.api.serve` so that a client parses an address without importing the
server side (the servicers and the engine behind them: about a second of start-up).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from buildsvc.errors import InvalidInput

__all__ = ["Address", "TlsFiles", "default_address", "parse_address"]


def default_address() -> str:
    """``unix:///run/buildsvc/buildsvcd.sock`` as root, else under ``$XDG_RUNTIME_DIR``."""
    if os.geteuid() == 0:
        return "unix:///run/buildsvc/buildsvcd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return f"unix://{runtime}/buildsvc/buildsvcd.sock"


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """A parsed ``unix:///path`` or ``tcp://host:port``."""

    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def target(self) -> str:
        """The target string gRPC takes."""
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether a TCP host only reaches this machine."""
        if self.host == "localhost":
            return True
        try:
            import ipaddress  # tcp:// only: a unix socket, the usual case, never asks

            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files for mutual TLS: the CA that signs the peers, and this side's certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_options(cls, ca: Path | None, cert: Path | None, key: Path | None) -> TlsFiles | None:
        """All three or none: a partial set is an error that names what is missing."""
        given = {"--tlscacert": ca, "--tlscert": cert, "--tlskey": key}
        if all(v is None for v in given.values()):
            return None
        if ca is None or cert is None or key is None:
            missing = ", ".join(k for k, v in given.items() if v is None)
            raise InvalidInput(f"TLS needs --tlscacert, --tlscert and --tlskey; missing {missing}")
        return cls(ca=ca, cert=cert, key=key)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) bytes."""
        try:
            return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as e:
            raise InvalidInput(f"cannot read a TLS file: {e}") from e


def parse_address(text: str) -> Address:
    """``unix:///abs/path`` or ``tcp://host:port``; anything else is an error naming the forms."""
    parts = urlsplit(text)
    if parts.scheme == "unix":
        path = parts.path if not parts.netloc else f"/{parts.netloc}{parts.path}"
        if not path.startswith("/"):
            raise InvalidInput(f"address {text!r}: a unix socket path must be absolute (unix:///path)")
        return Address(scheme="unix", path=path)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise InvalidInput(f"address {text!r}: expected tcp://HOST:PORT")
        return Address(scheme="tcp", host=parts.hostname, port=port)
    raise InvalidInput(f"address {text!r}: expected unix:///PATH or tcp://HOST:PORT")
