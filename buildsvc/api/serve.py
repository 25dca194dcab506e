"""Listen on an address: a unix socket (mode 0660) or TCP, which needs TLS with client certificates.

As buildkitd: a TCP listener without mutual TLS would let anyone who reaches the port run builds
as the daemon's user (root), so plaintext TCP is refused unless the host is a loopback address and
``--insecure-loopback`` says so explicitly.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from buildsvc.api.address import Address, TlsFiles, default_address, parse_address
from buildsvc.api.content_server import add_content_service
from buildsvc.api.gateway_server import GatewayServicer
from buildsvc.api.gen import control_pb2_grpc as pb_grpc
from buildsvc.api.gen import gateway_pb2_grpc as gateway_grpc
from buildsvc.api.peercred import PeerCredRelay
from buildsvc.api.server import ControlServicer
from buildsvc.errors import InvalidInput

__all__ = [
    "Address",
    "Serving",
    "TlsFiles",
    "check_listen",
    "default_address",
    "parse_address",
    "start_server",
]

SOCKET_MODE = 0o660


def _unix_listen(server: grpc.Server, address: Address) -> PeerCredRelay:
    path = Path(address.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a daemon that died: nobody listens on it
        else:
            raise InvalidInput(f"another daemon is listening on {path}")
        finally:
            probe.close()

    def bind_public(listener: socket.socket) -> None:
        # Bound in a private directory, made 0660 there and only then renamed into place: nobody can
        # reach it before its mode is right, and the process umask (shared by every thread) is left alone.
        try:
            private = Path(tempfile.mkdtemp(prefix=".buildsvc-bind-", dir=path.parent))
        except OSError as e:
            raise InvalidInput(f"cannot listen on {path}: {e}") from e
        try:
            listener.bind(str(private / "sock"))
            os.chmod(private / "sock", SOCKET_MODE)
            os.rename(private / "sock", path)
        except OSError as e:
            raise InvalidInput(f"cannot listen on {path}: {e}") from e
        finally:
            shutil.rmtree(private, ignore_errors=True)

    # gRPC cannot tell who connected to a unix socket: a relay that reads SO_PEERCRED owns the public
    # socket and gRPC listens on a private one behind it (see ``peercred``).
    relay = PeerCredRelay(str(path), bind_public)
    try:
        _bind(lambda: int(server.add_insecure_port(f"unix:{relay.private_path}")), relay.private_path)
    except BaseException:
        relay.close()
        raise
    relay.start()
    atexit.register(relay.close)  # a backstop: Serving.stop closes it
    return relay


def check_listen(address: Address, tls: TlsFiles | None, insecure_loopback: bool) -> None:
    """Refuse a listener the policy forbids (called before anything is opened, and again to bind)."""
    if address.scheme == "unix":
        if tls is not None:
            raise InvalidInput("TLS is for tcp:// addresses; a unix socket is protected by its mode (0660)")
        return
    if tls is not None or (insecure_loopback and address.loopback):
        return
    hint = (
        "--insecure-loopback allows plaintext only on a loopback host (127.0.0.1, ::1, localhost)"
        if insecure_loopback
        else "plaintext TCP is allowed only on a loopback host with --insecure-loopback"
    )
    raise InvalidInput(
        f"refusing to listen on tcp://{address.host}:{address.port} without TLS: give --tlscacert, "
        f"--tlscert and --tlskey (clients must then present a certificate the CA signed); {hint}"
    )


def _bind(add_port: Callable[[], int], what: str) -> None:
    try:
        bound = add_port()
    except RuntimeError as e:  # grpc raises on a bind failure (older versions returned 0)
        raise InvalidInput(f"cannot listen on {what}: {e}") from e
    if not bound:
        raise InvalidInput(f"cannot listen on {what}")


def _tcp_listen(server: grpc.Server, address: Address, tls: TlsFiles | None) -> None:
    what = f"tcp://{address.host}:{address.port}"
    if tls is not None:
        ca, cert, key = tls.read()
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )
        _bind(lambda: int(server.add_secure_port(address.target, credentials)), what)
    else:
        _bind(lambda: int(server.add_insecure_port(address.target)), what)


class Serving:
    """The gRPC server and, on a unix socket, the peer-credential relay in front of it."""

    def __init__(self, server: grpc.Server, relay: PeerCredRelay | None) -> None:
        self.server = server
        self.relay = relay

    def stop(self, grace: float | None) -> threading.Event:
        """Stop taking connections (the relay's socket goes first, and its file with it), then stop
        the server as ``grpc.Server.stop`` does: calls in flight get ``grace`` seconds.
        """
        if self.relay is not None:
            self.relay.close()
            atexit.unregister(self.relay.close)
            self.relay = None
        stopped: threading.Event = self.server.stop(grace)
        return stopped


def start_server(
    servicer: ControlServicer,
    address: Address,
    *,
    tls: TlsFiles | None = None,
    insecure_loopback: bool = False,
    max_workers: int = 64,
) -> Serving:
    """Listen on ``address`` and start serving (each stream holds a thread: size the pool for them)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"))
    pb_grpc.add_ControlServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # generated
    # Client-side frontends call LLBBridge on the same socket, for the jobs the Control Solve opened.
    gateway = GatewayServicer(servicer.engine, servicer.gateway_jobs)
    gateway_grpc.add_LLBBridgeServicer_to_server(gateway, server)  # type: ignore[no-untyped-call]
    # Local dirs sent before a Solve names them; outputs staged for their clients after it.
    add_content_service(server, servicer.contexts, servicer.outputs, lambda: servicer.peer_nonce)
    relay: PeerCredRelay | None = None
    try:
        check_listen(address, tls, insecure_loopback)
        if address.scheme == "unix":
            relay = _unix_listen(server, address)
            servicer.peer_nonce = relay.nonce
        else:
            _tcp_listen(server, address, tls)
        server.start()
    except BaseException:
        if relay is not None:
            relay.close()
            atexit.unregister(relay.close)
        server.stop(None)
        raise
    return Serving(server, relay)
