"""``buildsvc history debug REF [-- CMD...]``: a shell or command in place of a failed build's failed step.

As ``buildx debug``: the daemon runs the process in a container made as the failed step's was (its
input snapshots from the record, its env, cwd, user and mounts), as a debug build of its own whose
events say who debugged what (``BuildDebugged``, ``SolveRequested.rerun_of``). What it changes
lands in a new snapshot; the recorded ones are never written.

On a terminal with no CMD (or with ``--tty``), it is interactive: a shell (or CMD) on a pty the
daemon makes, over the ``Debug`` stream (see ``buildsvc.api.debug_session``); this terminal is in
raw mode meanwhile (restored after) and its window size follows along. Otherwise CMD's output comes
back as it ran (stdout to stdout, stderr to stderr), and without CMD a script is read from stdin
and run with ``sh -c`` (``echo 'ls /' | buildsvc history debug REF``). Either way the process's
exit status is this command's.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import threading
import tty
import uuid
from types import FrameType
from typing import TYPE_CHECKING

import click

from buildsvc.api.model import SolveOptions, StatusUpdate
from buildsvc.cli.remote import connect_from
from buildsvc.errors import InvalidInput

if TYPE_CHECKING:
    # grpc loads where a debug session starts, through the client the command connected
    # (registering `history debug` happens in every `history` command).
    from buildsvc.api.client import Client
    from buildsvc.api.debug_client import DebugCall

__all__ = ["debug"]


@click.command("debug")
@click.argument("ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--tty", "-t", "on_tty", is_flag=True, help="Run CMD on a terminal (the default with no CMD on one)."
)
@click.pass_context
def debug(ctx: click.Context, ref: str, command: tuple[str, ...], on_tty: bool) -> None:
    """Open a shell (or run CMD, or a script from stdin) where build REF failed, on its inputs."""
    interactive = on_tty or (not command and sys.stdin.isatty())
    if interactive and not sys.stdin.isatty():
        raise InvalidInput("history debug --tty: stdin is not a terminal")
    if not command and not interactive:
        command = ("sh", "-c", sys.stdin.read())
    client = connect_from(ctx)
    if client is None:
        raise click.UsageError(
            "history debug runs the step on the daemon that recorded it: no daemon answers"
        )
    sys.exit(run_interactive(client, ref, command) if interactive else run_debug(client, ref, command))


def _debug_ref() -> str:
    return f"debug-{uuid.uuid4().hex[:19]}"


def run_interactive(client: Client, ref: str, command: tuple[str, ...]) -> int:
    """A shell (or ``command``) on a pty on the daemon, typed into from this terminal."""
    from buildsvc.api.debug_client import DebugCall

    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    debug_ref = _debug_ref()
    what = " ".join(command) or "a shell"
    click.echo(f"debug build {debug_ref}: {what} in place of the failed step of {ref}", err=True)
    size = os.get_terminal_size(fd_in)
    call = DebugCall(client, ref, command, debug_ref=debug_ref, rows=size.lines, cols=size.columns)

    def resized(signum: int, frame: FrameType | None) -> None:
        now = os.get_terminal_size(fd_in)
        call.resize(now.lines, now.columns)

    saved = termios.tcgetattr(fd_in)
    previous = signal.signal(signal.SIGWINCH, resized)
    stop_r, stop_w = os.pipe()
    reader = threading.Thread(target=_forward_input, args=(fd_in, stop_r, call), daemon=True)
    # Raw: every key (Ctrl-C, Ctrl-D too) goes to the pty on the daemon, which does the editing;
    # now, not after a flush, so what was typed ahead is kept.
    tty.setraw(fd_in, termios.TCSANOW)
    try:
        reader.start()
        for chunk in call:
            _write_all(fd_out, chunk)
    finally:
        os.write(stop_w, b"x")
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        reader.join()
        os.close(stop_r)
        os.close(stop_w)
    return call.exit_code if call.exit_code is not None else 1


def _forward_input(fd: int, stop: int, call: DebugCall) -> None:
    while True:
        readable, _, _ = select.select([fd, stop], [], [])
        if stop in readable:
            return
        data = os.read(fd, 4096)
        if not data:
            call.close_input()
            return
        call.send(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_debug(client: Client, ref: str, command: tuple[str, ...]) -> int:
    """Run the debug build; its output goes to stdout/stderr; returns the command's exit status."""
    from buildsvc.events import catalog as ev

    debug_ref = _debug_ref()
    what = " ".join(command)
    click.echo(f"debug build {debug_ref}: {what!r} in place of the failed step of {ref}", err=True)
    stream = client.status(debug_ref)
    final: list[StatusUpdate] = []

    def show() -> None:
        for update in stream:
            if update.log is not None:
                out = sys.stdout if update.log.stream == 1 else sys.stderr
                out.buffer.write(update.log.data)
                out.flush()
            if update.final:
                final.append(update)
                return

    watcher = threading.Thread(target=show, name="debug-output", daemon=True)
    watcher.start()
    error: BaseException | None = None
    try:
        client.solve(
            SolveOptions(build_ref=debug_ref, definition_json=b"", rerun_of=ref, debug_command=command)
        )
    except InvalidInput:
        stream.cancel()
        raise
    except Exception as e:  # the command failed: its exit status is in the final event
        error = e
    watcher.join(60)
    stream.cancel()
    end = final[0] if final else None
    if end is None:
        if error is not None:
            raise error
        return 0
    if end.type == ev.SolveFailed.type_name:
        code = end.payload.get("exit_code")
        if not isinstance(code, int):
            click.echo(f"error: {end.payload.get('error')}", err=True)
            return 1
        return code
    return 0
