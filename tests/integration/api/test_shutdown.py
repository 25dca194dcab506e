"""SIGTERM: no new solves, running ones finish within the grace period, the rest are cancelled."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from buildsvc.api.client import Client
from buildsvc.api.errors import DaemonUnavailable
from buildsvc.api.model import SolveOptions
from buildsvc.events import catalog as ev
from buildsvc.solver.errors import SolveCancelled
from tests.integration.api.conftest import Daemon, Daemons, solve_options

pytestmark = [pytest.mark.root, pytest.mark.slow]


class Running:
    """A Solve in a thread, and the moment its ``sleep`` step starts."""

    def __init__(self, daemon: Daemon, options: SolveOptions) -> None:
        self.options = options
        self.result: dict[str, str] | None = None
        self.error: BaseException | None = None
        self._client = daemon.client()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        for update in daemon.client().status(options.build_ref):
            if (
                update.vertex is not None
                and update.vertex.name == "RUN sleep"
                and update.vertex.state == "started"
            ):
                return
        raise AssertionError("the build ended before its sleep step started")

    def _run(self) -> None:
        try:
            self.result = self._client.solve(self.options)
        except BaseException as e:
            self.error = e

    def join(self) -> None:
        self._thread.join(60)
        assert not self._thread.is_alive()


def _stopped(daemon: Daemon) -> list[ev.DaemonStopped]:
    info_stream = next(
        line.split()[2] for line in daemon.output().splitlines() if line.startswith("buildsvc daemon ")
    )
    return [
        e
        for e in (s.decode() for s in daemon.stored(f"daemon-{info_stream}"))
        if isinstance(e, ev.DaemonStopped)
    ]


def test_a_running_build_finishes_within_the_grace_and_new_ones_are_refused(
    daemons: Daemons, rootfs: Path
) -> None:
    d = daemons.start("--shutdown-grace", "10")
    running = Running(d, solve_options(rootfs, "sleep 2; echo slept", "RUN sleep"))
    d.terminate()
    d.wait_shutting_down()
    with Client(d.addr) as late, pytest.raises(DaemonUnavailable, match="daemon is shutting down"):
        late.solve(solve_options(rootfs, "true", "RUN too late"))
    running.join()
    assert running.error is None, running.error
    assert d.wait() == 0
    events = d.events(running.options.build_ref)
    assert any(isinstance(e, ev.SolveCompleted) for e in events)
    assert not any(isinstance(e, ev.SolveCancelled) for e in events)
    assert [e.reason for e in _stopped(d)] == ["shutdown"]


def test_with_no_grace_the_running_build_is_recorded_cancelled(daemons: Daemons, rootfs: Path) -> None:
    d = daemons.start("--shutdown-grace", "0")
    running = Running(d, solve_options(rootfs, "sleep 30", "RUN sleep"))
    d.terminate()
    running.join()
    assert isinstance(running.error, SolveCancelled), running.error
    assert running.error.build_ref == running.options.build_ref
    assert d.wait() == 0
    events = d.events(running.options.build_ref)
    assert any(isinstance(e, ev.SolveCancelled) for e in events)
    assert not any(isinstance(e, ev.SolveCompleted) for e in events)
    assert [e.reason for e in _stopped(d)] == ["shutdown"]
