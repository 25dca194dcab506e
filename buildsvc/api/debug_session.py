"""``Debug``: ``history debug REF``'s interactive shell, a process on a pty the client types into.

As BuildKit's gateway runs a debug container: one bidirectional stream carries the client's
keystrokes and window sizes in, and the terminal's output and the exit status out. The daemon
makes a pty (``os.openpty``), runs the debug build (``buildsvc.daemon.rerun``) with its slave as
the debug step's terminal (see ``Terminal`` in ``buildsvc.solver.worker``; the runtime gives the
process a pty of its own that follows this one's size) and copies between the master and the
stream. Everything else is a debug build as with ``-- CMD``: its events (``BuildDebugged``,
``SolveRequested.rerun_of``, the step's vertex events) are recorded, the terminal's bytes are not.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import uuid
from collections.abc import Callable, Iterator

import grpc

from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.model import SolveOptions
from buildsvc.errors import InvalidInput
from buildsvc.solver.errors import SolveError
from buildsvc.solver.worker import Terminal

__all__ = ["DEFAULT_SHELL", "debug_session"]

DEFAULT_SHELL = ("sh",)
"""What runs when the client names nothing (as ``buildx debug`` opens /bin/sh)."""

_READ_SIZE = 65536

Solve = Callable[[SolveOptions, grpc.ServicerContext, Terminal], object]
"""The servicer's Solve with a terminal (``ControlServicer._solve``)."""


def debug_session(
    requests: Iterator[pb.DebugRequest],
    context: grpc.ServicerContext,
    *,
    solve: Solve,
    attributed: Callable[[SolveOptions], SolveOptions],
) -> Iterator[pb.DebugResponse]:
    """Run the session the first request asks for; yields the pty's output, then the exit."""
    first = next(requests, None)
    if first is None or first.WhichOneof("request") != "start":
        raise InvalidInput("Debug: the first message must be start (the build to debug and what to run)")
    start = first.start
    if not start.ref:
        raise InvalidInput("Debug: start needs the ref of the build to debug")
    options = attributed(
        SolveOptions(
            build_ref=start.debug_ref or f"debug-{uuid.uuid4().hex[:19]}",
            definition_json=b"",
            rerun_of=start.ref,
            debug_command=tuple(start.command) or DEFAULT_SHELL,
        )
    )
    session = _Session()
    try:
        _set_size(session.master, start.size)
        yield pb.DebugResponse(debug_ref=options.build_ref)
        session.start(lambda: solve(options, context, session.terminal), requests)
        yield from session.output()
        yield pb.DebugResponse(exit=pb.DebugExit(exit_code=session.exit_code()))
    finally:
        session.close()


class _Session:
    """One pty and the copying between its master and the stream, around one debug build."""

    def __init__(self) -> None:
        self.master, slave = os.openpty()
        self.terminal = Terminal(slave)
        self._done_r, self._done_w = os.pipe()
        self._error: BaseException | None = None
        self._build: threading.Thread | None = None
        # The feeder writes only while the fds are open: a closed number may be reused at once.
        self._lock = threading.Lock()
        self._closed = False

    def start(self, run: Callable[[], object], requests: Iterator[pb.DebugRequest]) -> None:
        """Run the build in a thread, and feed the client's messages to the pty in another."""

        def build() -> None:
            try:
                run()
            except BaseException as e:  # the exit status or the error, for exit_code()
                self._error = e
            finally:
                os.write(self._done_w, b"x")

        self._build = threading.Thread(target=build, name="debug-build", daemon=True)
        self._build.start()
        threading.Thread(target=self._feed, args=(requests,), name="debug-input", daemon=True).start()

    def _feed(self, requests: Iterator[pb.DebugRequest]) -> None:
        # Ends when the client half-closes or the call ends (the iterator then stops or raises).
        try:
            for request in requests:
                with self._lock:
                    if self._closed:
                        return
                    kind = request.WhichOneof("request")
                    if kind == "stdin":
                        _write_all(self.master, request.stdin)
                    elif kind == "resize":
                        _set_size(self.master, request.resize)
                        self.terminal.resized()
        except (grpc.RpcError, OSError, ValueError):
            return  # the call or the pty is gone: the build's end is told by the other thread

    def output(self) -> Iterator[pb.DebugResponse]:
        """The pty's output as it comes, until the build ended and what it wrote was read."""
        done = False
        while True:
            readable, _, _ = select.select([self.master, self._done_r], [], [])
            done = done or self._done_r in readable
            chunk = _read_ready(self.master)
            if chunk:
                yield pb.DebugResponse(output=chunk)
            elif done:
                return

    def exit_code(self) -> int:
        """The process's exit status; raises what ended the build when the process did not run."""
        error = self._error
        if error is None:
            return 0
        if isinstance(error, SolveError) and error.exit_code is not None:
            return error.exit_code
        raise error

    def close(self) -> None:
        """Close the pty once the build no longer uses it (a client gone cancelled the build)."""
        if self._build is not None:
            self._build.join()
        with self._lock:
            self._closed = True
            for fd in (self.master, self.terminal.fd, self._done_r, self._done_w):
                os.close(fd)


def _read_ready(fd: int) -> bytes:
    """What the master has now, without waiting (b"" when nothing, or when no slave is open)."""
    readable, _, _ = select.select([fd], [], [], 0)
    if not readable:
        return b""
    try:
        return os.read(fd, _READ_SIZE)
    except OSError:  # EIO: every slave side closed and the buffer empty
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _set_size(fd: int, size: pb.WindowSize) -> None:
    if size.rows and size.cols:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.rows, size.cols, 0, 0))
