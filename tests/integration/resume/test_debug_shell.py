"""``buildsvc history debug REF`` on a terminal: an interactive shell on a real daemon.

The CLI runs on the slave of a pty this test drives (as a user's terminal would be): what is typed
reaches a shell on the failed step's inputs, its output and exit status come back, a window resize
reaches the process's own terminal, and the user's terminal is left as it was (raw mode undone).
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import grpc
import pytest

from buildsvc.api.debug_client import DebugCall
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.gen import control_pb2_grpc as pb_grpc
from buildsvc.errors import NotFound
from buildsvc.events import catalog as ev
from tests.integration.api.conftest import BUILDSVC, Daemon, Daemons, cli_env
from tests.integration.resume.test_debug import _debug_ref, _failed_build

pytestmark = [pytest.mark.root, pytest.mark.slow]

# Bounds for a daemon on a loaded machine; reached only when something is broken.
_WAIT = 120.0


class Terminal:
    """A pty whose slave is the CLI's stdin, stdout and stderr; the test types on the master."""

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        # On the master, as a terminal emulator does: the kernel sends SIGWINCH to the CLI.
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def run(self, d: Daemon, *args: str) -> subprocess.Popen[bytes]:
        # setsid --ctty: a session of its own whose controlling terminal is this one, so the kernel
        # tells the CLI of a resize (SIGWINCH) as it tells a program in a terminal emulator.
        return subprocess.Popen(
            ["setsid", "--ctty", BUILDSVC, "--addr", d.addr, *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=cli_env(),
        )

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, needle: bytes) -> bytes:
        """Read the CLI's output until ``needle`` shows up; everything read so far."""
        deadline = time.monotonic() + _WAIT
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never came; the terminal showed {self.seen!r}"
            readable, _, _ = select.select([self.master], [], [], left)
            if readable:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # EIO: the CLI closed the terminal
                    break
        assert needle in self.seen, self.seen
        return self.seen

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize("worker", ["runc-overlay", "crun-overlay"])
def test_debug_opens_a_shell_on_a_terminal(
    daemons: Daemons, rootfs: Path, tmp_path: Path, worker: str
) -> None:
    d = daemons.start("--worker", worker)
    ref, _ = _failed_build(d, rootfs, tmp_path)
    term = Terminal(24, 80)
    before = termios.tcgetattr(term.slave)
    try:
        proc = term.run(d, "history", "debug", ref)
        term.expect(b"/tmp # ")  # the prompt, in the failed step's cwd
        # The shell runs in the failed step's cwd with its env, on the first step's output.
        term.type('cat /one; echo "foo=$FOO"; pwd; stty size\n')
        term.expect(b"24 80")
        assert b"one\r\n" in term.seen and b"foo=bar\r\n" in term.seen and b"/tmp\r\n" in term.seen
        # While the shell runs, the CLI's terminal is raw (every key goes to the daemon's pty).
        assert not termios.tcgetattr(term.slave)[3] & termios.ECHO
        term.resize(33, 101)
        term.type("stty size\n")
        term.expect(b"33 101")
        term.type("echo hi-$((6*7)); exit 3\n")
        term.expect(b"hi-42")
        assert proc.wait(timeout=_WAIT) == 3, term.seen
        assert termios.tcgetattr(term.slave) == before, "the terminal's modes were not restored"
    finally:
        term.close()

    debug_ref = _debug_ref(term.seen.decode(errors="replace").replace("\r", ""))
    events = d.events(debug_ref)
    assert [e.command for e in events if isinstance(e, ev.BuildDebugged)] == [("sh",)]
    failed = next(e for e in events if isinstance(e, ev.SolveFailed))
    assert isinstance(failed, ev.SolveFailed) and failed.exit_code == 3


def test_debug_with_tty_runs_the_command_on_a_terminal(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    ref, _ = _failed_build(d, rootfs, tmp_path)
    term = Terminal(40, 120)
    try:
        proc = term.run(d, "history", "debug", "--tty", ref, "--", "sh", "-c", "test -t 0 && stty size")
        term.expect(b"40 120")
        assert proc.wait(timeout=_WAIT) == 0, term.seen
    finally:
        term.close()


def test_debug_refusals_name_the_problem_on_the_stream(daemons: Daemons) -> None:
    d = daemons.start()
    refused = d.cli("history", "debug", "--tty", "some-build", "--", "true", expect=2)
    assert "stdin is not a terminal" in refused.stderr
    with d.client() as client:
        stub = pb_grpc.ControlStub(client.channel)  # type: ignore[no-untyped-call]  # generated
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Debug(iter([pb.DebugRequest(stdin=b"ls\n")])))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first message must be start" in str(caught.value.details())
        with pytest.raises(NotFound, match="no-such-build"):
            list(DebugCall(client, "no-such-build", rows=24, cols=80))
