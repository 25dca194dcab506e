"""Who is calling: the unix peer's uid and gid (SO_PEERCRED), or the TLS client certificate's subject.

gRPC Python does not say who is on the other end of a unix socket: ``context.peer()`` is just
``unix:`` and ``auth_context()`` holds only the security level. So the daemon owns the public socket
itself. :class:`PeerCredRelay` accepts each connection, reads the kernel's ``SO_PEERCRED`` of it
(the credentials of the process that connected, which the client cannot forge), and relays its
bytes to the gRPC server's own socket from a client socket bound to an abstract address that
encodes them: ``buildsvc-peer/<nonce>/<uid>/<gid>/<pid>/<n>``. gRPC reports that address as the
call's peer (``unix-abstract:buildsvc-peer/...``), and :func:`actor_of` reads it back.

Forging that address would need a connection to the gRPC socket itself, which lives in a private
directory (mode 0700) only the daemon's user can enter; the nonce, random per daemon, must match
too. For TLS, gRPC puts the verified client certificate's subject in ``auth_context()``
(``x509_subject``, or the common name on older versions).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PeerCredRelay", "actor_of", "local_actor"]

_PEER_PREFIX = "unix-abstract:buildsvc-peer/"
_CRED = struct.Struct("3i")
_BUFFER = 256 * 1024


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _uid_gid(uid: int, gid: int) -> str:
    name = _user(uid)
    return f"uid={uid} gid={gid}" + (f" ({name})" if name else "")


def local_actor() -> str:
    """This process's own identity, in the form :func:`actor_of` gives a unix peer (for what an
    embedded command records: the kernel vouches for it as much as for a peer).
    """
    return _uid_gid(os.getuid(), os.getgid())


def actor_of(context: Any, nonce: str | None) -> str:
    """The verified identity of a call's client ("" when the transport says nothing).

    ``uid=U gid=G (name)`` for a unix socket through the relay with ``nonce``; ``x509:SUBJECT`` for
    a TLS client certificate.
    """
    peer = context.peer() or ""
    if nonce is not None and peer.startswith(_PEER_PREFIX):
        parts = peer[len(_PEER_PREFIX) :].split("/")
        if len(parts) == 5 and parts[0] == nonce:
            return _uid_gid(int(parts[1]), int(parts[2]))
    auth = context.auth_context() or {}
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            text = values[0].decode("utf-8", "replace")
            return f"x509:{text}" if key == "x509_subject" else f"x509:CN={text}"
    return ""


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class PeerCredRelay:
    """Listens on the public unix socket and relays each connection to gRPC's private socket."""

    def __init__(self, public_path: str, bind_public: Callable[[socket.socket], None]) -> None:
        """``bind_public`` binds (with the right mode) the listening socket to ``public_path``."""
        # The daemon's side only: every client imports this module for local_actor().
        import secrets
        import tempfile

        self.nonce = secrets.token_hex(8)
        self._private_dir = tempfile.mkdtemp(prefix=".buildsvcd-", dir=os.path.dirname(public_path))
        os.chmod(self._private_dir, 0o700)
        self.private_path = os.path.join(self._private_dir, "grpc.sock")
        self.public_path = public_path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind_public(self._listener)
        self._public_id = _identity(public_path)
        self._listener.listen(128)
        self._counter = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="peercred-relay", daemon=True)

    def start(self) -> None:
        """Start accepting (gRPC must already listen on :attr:`private_path`)."""
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, remove both sockets and the private directory."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.private_path)
        # Only our own socket: if its path was removed and another daemon listens there now (a root
        # wiped under a running daemon), this daemon's stop must not unlink the other's socket.
        if _identity(self.public_path) == self._public_id:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.public_path)
        with contextlib.suppress(OSError):
            os.rmdir(self._private_dir)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                self._relay(client)
            except OSError:
                client.close()

    def _relay(self, client: socket.socket) -> None:
        pid, uid, gid = _CRED.unpack(client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
        self._counter += 1
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.bind(f"\0buildsvc-peer/{self.nonce}/{uid}/{gid}/{pid}/{self._counter}")
            upstream.connect(self.private_path)
        except OSError:
            upstream.close()
            raise
        both = [2]
        lock = threading.Lock()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            buffer = bytearray(_BUFFER)
            view = memoryview(buffer)
            try:
                while True:
                    n = src.recv_into(buffer)
                    if not n:
                        break
                    dst.sendall(view[:n])
            except OSError:
                pass
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with lock:
                both[0] -= 1
                last = both[0] == 0
            if last:
                client.close()
                upstream.close()

        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(src, dst), name="peercred-pump", daemon=True).start()
