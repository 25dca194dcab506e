"""``buildsvc history debug REF [-- CMD...]``: a command in place of a failed build's failed step.

As ``buildx debug``: the daemon runs CMD in a container made as the failed step's was (its input
snapshots from the record, its env, cwd, user and mounts), as a debug build of its own whose
events say who debugged what (``BuildDebugged``, ``SolveRequested.rerun_of``). What CMD changes
lands in a new snapshot; the recorded ones are never written. CMD's output comes back as it ran
(stdout to stdout, stderr to stderr) and its exit status is this command's.

Without CMD, a script is read from stdin and run with ``sh -c`` (``echo 'ls /' | buildsvc history
debug REF``); an interactive shell on a terminal is not offered yet (the daemon's containers have
no stdin), so on a terminal CMD is required.
"""

from __future__ import annotations

import sys
import threading
import uuid

import click

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions, StatusUpdate
from buildsvc.cli.remote import connect_from
from buildsvc.errors import InvalidInput
from buildsvc.events import catalog as ev

__all__ = ["debug"]


@click.command("debug")
@click.argument("ref")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def debug(ctx: click.Context, ref: str, command: tuple[str, ...]) -> None:
    """Run CMD (or a script from stdin) where build REF failed, on its failed step's inputs."""
    if not command:
        if sys.stdin.isatty():
            raise InvalidInput(
                "history debug: give the command after --, e.g. `buildsvc history debug REF -- cat "
                "/etc/os-release` (an interactive shell is not offered yet), or pipe a script on stdin"
            )
        command = ("sh", "-c", sys.stdin.read())
    client = connect_from(ctx)
    if client is None:
        raise click.UsageError(
            "history debug runs the step on the daemon that recorded it: no daemon answers"
        )
    sys.exit(run_debug(client, ref, command))


def run_debug(client: Client, ref: str, command: tuple[str, ...]) -> int:
    """Run the debug build; its output goes to stdout/stderr; returns the command's exit status."""
    debug_ref = f"debug-{uuid.uuid4().hex[:19]}"
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
