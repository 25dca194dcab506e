"""A TCP proxy that cuts one answer short: the first one to a request that holds ``trigger``.

It forwards bytes both ways unchanged. Once ``armed`` and a client sends bytes containing
``trigger``, it forwards them, passes ``keep`` more bytes of the server's answer and then closes both
sides of that connection. ``keep=0``: the server did the work (a COMMIT happened) but its answer is
lost; ``keep>0``: a download that dies halfway.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

__all__ = ["CuttingProxy"]


class CuttingProxy:
    """Listens on 127.0.0.1 (``host``, ``port``) and forwards to 127.0.0.1:``upstream_port``."""

    def __init__(self, upstream_port: int, trigger: bytes, *, keep: int = 0, armed: bool = True) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.keep = keep
        self.armed = threading.Event()
        if armed:
            self.armed.set()
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.host = f"127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._spawn(self._accept)

    def close(self) -> None:
        """Stop listening, close every connection and wait for the threads."""
        self._closed.set()
        self._listener.close()
        for s in self._sockets:
            _shutdown(s)
            s.close()
        for t in self._threads:
            t.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, server]
            cut = threading.Event()
            self._spawn(self._requests, client, server, cut)
            self._spawn(self._answers, server, client, cut)

    def _requests(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self.armed.is_set() and self.trigger in data:
                        self.armed.clear()
                        cut.set()  # before forwarding: the answer to this request is cut
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(server)

    def _answers(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        left = self.keep
        try:
            while data := server.recv(65536):
                if cut.is_set():
                    if len(data) >= left:
                        client.sendall(data[:left])
                        self.cuts += 1
                        return
                    left -= len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shutdown(client)
            _shutdown(server)


def _shutdown(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
