"""Following a build that runs on a daemon without being its client: ``buildsvc build --ref REF``.

A build outlives its client (a resumed build after a daemon restart has none): its Status stream is
read from the log, so attaching replays what happened and follows to the end. The result is the
build's final event: completed (exit 0), failed or cancelled (exit 1, with the recorded error).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from buildsvc.api.client import Client
from buildsvc.api.errors import DaemonUnavailable
from buildsvc.api.model import StatusUpdate
from buildsvc.cli.progress import ProgressPrinter, make_printer
from buildsvc.errors import NotFound
from buildsvc.events.store import EventStore
from buildsvc.solver.errors import SolveCancelled, SolveError

__all__ = ["attach_build", "connection_lost", "follow_build", "result_of"]

_RECONNECT_SECONDS = 120.0
"""How long ``follow_build`` waits for a daemon that went away to answer again (it may be restarting)."""


def connection_lost(error: DaemonUnavailable, build_ref: str) -> DaemonUnavailable:
    """The error a client prints when its daemon went away in the middle of its build."""
    return DaemonUnavailable(
        f"{error}\nthe daemon stopped or restarted during build {build_ref}; a restarted daemon resumes "
        f"the build: follow it with `buildsvc build --ref {build_ref}`"
    )


def attach_build(client: Client, build_ref: str, progress: str) -> dict[str, str]:
    """Print the build's progress to its end; its exporter response, or raise its failure."""
    printer = make_printer(progress)
    final = None
    try:
        for update in client.status(build_ref):
            if printer is not None:
                printer.feed(update)
            if update.final:
                final = update
                break
    except DaemonUnavailable as e:
        raise connection_lost(e, build_ref) from e
    finally:
        if printer is not None:
            printer.close()
    if final is None:
        raise DaemonUnavailable(f"the status stream of build {build_ref} ended before the build did")
    return result_of(final, build_ref)


def result_of(final: StatusUpdate, build_ref: str) -> dict[str, str]:
    """A build's exporter response from its final update, or its failure raised."""
    from buildsvc.events import catalog as ev  # loaded only here: every client build imports this module

    payload = final.payload
    if final.type == ev.SolveCompleted.type_name:
        response = payload.get("exporter_response") or {}
        return {str(k): str(v) for k, v in response.items()}
    if final.type == ev.SolveCancelled.type_name:
        raise SolveCancelled(build_ref, str(payload.get("reason") or "cancelled"))
    raise SolveError(
        build_ref,
        str(payload.get("error") or "failed"),
        vertex=payload.get("vertex"),
        exit_code=payload.get("exit_code"),
    )


def follow_build(
    client: Client | None,
    store: Callable[[], EventStore],
    build_ref: str,
    printer: ProgressPrinter,
    *,
    poll: float = 0.2,
) -> StatusUpdate | None:
    """Print a build's updates until its final event (returned; None if it never started).

    Through the daemon's Status stream when one answers; across a daemon restart it connects again
    and goes on after the last update printed. With no daemon, the log itself is polled.
    """
    updates = _from_daemon(client, build_ref) if client is not None else _from_log(store(), build_ref, poll)
    for update in updates:
        printer.feed(update)
        if update.final:
            return update
    return None


def _from_daemon(client: Client, build_ref: str) -> Iterator[StatusUpdate]:
    after = 0
    deadline: float | None = None
    while True:
        try:
            for update in client.status(build_ref, after_position=after):
                after, deadline = update.position, None
                yield update
                if update.final:
                    return
            return
        except DaemonUnavailable as e:
            # The build goes on in the restarted daemon: wait for it to answer, then go on.
            deadline = deadline or time.monotonic() + _RECONNECT_SECONDS
            if time.monotonic() > deadline:
                raise connection_lost(e, build_ref) from e
            time.sleep(0.5)


def _from_log(store: EventStore, build_ref: str, poll: float) -> Iterator[StatusUpdate]:
    from buildsvc.api.updates import status_update

    stream = f"build-{build_ref}"
    version = 0
    while True:
        batch = store.read_stream(stream, after_version=version)
        if not batch and version == 0:
            raise NotFound(f"no build {build_ref!r} in the log")
        for stored in batch:
            version = stored.stream_version
            update = status_update(stored)
            yield update
            if update.final:
                return
        if not batch:
            time.sleep(poll)
