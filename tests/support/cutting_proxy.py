"""A TCP proxy that breaks off one response: the first one to a request naming ``victim``.

It forwards bytes both ways unchanged, and once a client has sent a request whose bytes contain
``victim``, it passes ``keep`` more bytes of the server's answer and then closes both sides: what a
registry download that dies halfway looks like to the client.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["CuttingProxy"]


class CuttingProxy:
    """Listens on 127.0.0.1 (``host``) and forwards to ``upstream`` (``host:port``)."""

    def __init__(self, upstream: str, victim: bytes, keep: int) -> None:
        self.upstream = upstream
        self.victim = victim
        self.keep = keep
        self.cuts = 0
        self._armed = True
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            cut = threading.Event()
            threading.Thread(target=self._requests, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client, cut), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._armed and self.victim in data:
                        self._armed = False
                        cut.set()
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

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
            _close(client)
            _close(server)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
