"""Whether a command talks to a daemon, and to which one (and with which TLS files).

``--addr`` (or ``$BUILDSVC_ADDR``) names a daemon, which must answer. Without it, a daemon that
answers at the default socket is used, unless ``--root`` or ``--db`` name a state of their own: the
daemon has its own root and database, and building there would silently ignore the ones given.
Otherwise the command runs the engine in its own process (the embedded default).

A ``tcp://`` daemon serves mutual TLS (see ``buildsvc daemon``): the top-level ``--tlscacert``,
``--tlscert``, ``--tlskey`` and ``--tlsservername`` (env ``BUILDSVC_TLS_*``) say how to reach it, as
buildctl's flags of the same names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from buildsvc.api.address import TlsFiles, default_address, parse_address
from buildsvc.cli.client_import import import_client
from buildsvc.cli.common import Options
from buildsvc.errors import BuildsvcError, InvalidInput

if TYPE_CHECKING:
    # grpc and the generated protobuf modules load only when a daemon is used: every command module
    # imports this one, and the embedded engine never needs them.
    from buildsvc.api.client import Client

__all__ = ["ADDR_KEY", "TLS_KEY", "ClientTls", "TlsOptions", "connect_from"]

ADDR_KEY = "buildsvc.addr"
TLS_KEY = "buildsvc.tls"
# A daemon on a unix socket answers in milliseconds; waiting long only delays the embedded fallback.
_PROBE_SECONDS = 1.0
_CONNECT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """The top-level --tls* options as given."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class ClientTls:
    """The client's TLS files (all three, or None) and the name the daemon's certificate must carry."""

    files: TlsFiles | None
    server_name: str | None = None

    @classmethod
    def from_options(
        cls, ca: Path | None, cert: Path | None, key: Path | None, server_name: str | None
    ) -> ClientTls:
        """Every buildsvc daemon asks clients for a certificate, so a partial set can never connect:
        say so now, naming what is missing, rather than after a failed handshake.
        """
        try:
            files = TlsFiles.from_options(ca, cert, key)
        except InvalidInput as e:
            raise InvalidInput(f"{e} (a buildsvc daemon on tcp:// requires a client certificate)") from None
        if server_name and files is None:
            raise InvalidInput("--tlsservername needs --tlscacert, --tlscert and --tlskey")
        return cls(files=files, server_name=server_name or None)


def connect_from(ctx: click.Context, *, ready_later: bool = False) -> Client | None:
    """A client of the daemon to use, or None for the embedded engine.

    With ``ready_later``, a daemon named by ``--addr`` is asked whether it answers in the background,
    and the client's first call raises ``DaemonUnavailable`` if it did not (see ``api.client.connect``).
    """
    addr: str | None = ctx.meta.get(ADDR_KEY)
    given: TlsOptions = ctx.meta.get(TLS_KEY) or TlsOptions()
    tls = ClientTls.from_options(given.ca, given.cert, given.key, given.server_name)
    if tls.files is not None and (not addr or parse_address(addr).scheme != "tcp"):
        raise InvalidInput(
            "the --tls* options are for a tcp:// daemon (--addr tcp://HOST:PORT); "
            "a unix socket is protected by its mode"
        )
    if addr:
        import_client()  # with what it never uses left unloaded: see buildsvc.cli.client_import
        from buildsvc.api.client import connect

        if tls.files is not None:
            client = _connect_tls(addr, tls)
        else:
            client = connect(addr, timeout=_CONNECT_SECONDS, later=ready_later)
    else:
        opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
        if opts.root is not None or opts.db_url is not None:
            return None
        default = default_address()
        if not _socket_exists(default):
            return None
        import_client()
        from buildsvc.api.client import Client

        client = Client(default)
        if not client.ready(_PROBE_SECONDS):
            client.close()
            return None
    ctx.call_on_close(client.close)
    return client


def _connect_tls(addr: str, tls: ClientTls) -> Client:
    """Connect over TLS, saying why when the handshake fails (a wrong CA, a certificate the daemon's
    CA did not sign, a server name that does not match) instead of only "no daemon answers".
    """
    from buildsvc.api.client import Client
    from buildsvc.api.errors import DaemonUnavailable

    client = Client(addr, tls=tls.files, server_name=tls.server_name)
    try:
        # Not waiting for readiness: the first call fails at once with the handshake's own error.
        client.info()
        return client
    except DaemonUnavailable as e:
        reason = str(e)
    except BuildsvcError:
        return client  # it answered (with an error of its own): the connection works
    if "connection refused" in reason.lower() and client.ready(_CONNECT_SECONDS):
        return client  # the daemon was only starting
    client.close()
    if "connection refused" in reason.lower():
        raise DaemonUnavailable(f"no daemon answers at {addr} ({reason})")
    # The port answered but the connection did not come up: with mutual TLS that is a handshake
    # one side refused (the daemon closes the socket on a client certificate it does not trust).
    raise DaemonUnavailable(
        f"TLS handshake with the daemon at {addr} failed: check that --tlscacert is the CA that "
        f"signed the daemon's certificate, that --tlscert/--tlskey are a client certificate that "
        f"CA signed, and --tlsservername if the certificate names another host ({reason})"
    )


def _socket_exists(addr: str) -> bool:
    return Path(parse_address(addr).path).exists()
