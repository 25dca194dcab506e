"""Whether a command talks to a daemon, and to which one.

``--addr`` (or ``$BUILDSVC_ADDR``) names a daemon, which must answer. Without it, a daemon that
answers at the default socket is used, unless ``--root`` or ``--db`` name a state of their own: the
daemon has its own root and database, and building there would silently ignore the ones given.
Otherwise the command runs the engine in its own process (the embedded default).
"""

from __future__ import annotations

from pathlib import Path

import click

from buildsvc.api.client import Client, connect
from buildsvc.api.serve import default_address, parse_address
from buildsvc.cli.common import Options

__all__ = ["ADDR_KEY", "connect_from"]

ADDR_KEY = "buildsvc.addr"
# A daemon on a unix socket answers in milliseconds; waiting long only delays the embedded fallback.
_PROBE_SECONDS = 1.0


def connect_from(ctx: click.Context) -> Client | None:
    """A client of the daemon to use, or None for the embedded engine."""
    addr: str | None = ctx.meta.get(ADDR_KEY)
    if addr:
        client = connect(addr, timeout=10.0)
    else:
        opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
        if opts.root is not None or opts.db_url is not None:
            return None
        default = default_address()
        if not _socket_exists(default):
            return None
        client = Client(default)
        if not client.ready(_PROBE_SECONDS):
            client.close()
            return None
    ctx.call_on_close(client.close)
    return client


def _socket_exists(addr: str) -> bool:
    return Path(parse_address(addr).path).exists()
