"""``buildsvc daemon --max-parallelism N``: at most N build steps run at once (run as root)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from buildsvc.api.model import SolveOptions
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon, Daemons

pytestmark = pytest.mark.root


def _two_independent_steps(rootfs: Path) -> tuple[SolveOptions, list[str]]:
    nonce = uuid.uuid4().hex
    base = llb.local("rootfs")
    steps = [
        base.run(["sh", "-c", f": {nonce} {i}; sleep 0.3"], name=f"RUN step {i}").root() for i in range(2)
    ]
    definition = llb.merge(steps).marshal()
    options = SolveOptions(
        build_ref=uuid.uuid4().hex[:25],
        definition_json=definition.to_json(indent=None).encode(),
        local_dirs={"rootfs": rootfs},
        actor="tester",
    )
    return options, [f"RUN step {i}" for i in range(2)]


def _overlapped(events: Sequence[object], names: list[str]) -> bool:
    """Whether a step started before the other one's end was recorded."""
    started = {e.name: i for i, e in enumerate(events) if isinstance(e, ev.VertexStarted) and e.name in names}
    vertex_of = {e.vertex: e.name for e in events if isinstance(e, ev.VertexStarted) and e.name in names}
    ended = {
        vertex_of[e.vertex]: i
        for i, e in enumerate(events)
        if isinstance(e, ev.VertexCompleted) and e.vertex in vertex_of
    }
    first, second = sorted(names, key=started.__getitem__)
    return started[second] < ended[first]


def test_one_step_at_a_time_with_max_parallelism_1(daemons: Daemons, rootfs: Path) -> None:
    serial = daemons.start("--max-parallelism", "1")
    options, names = _two_independent_steps(rootfs)
    serial.client().solve(options)
    assert not _overlapped(serial.events(options.build_ref), names)


def test_independent_steps_run_at_once_by_default(daemon: Daemon, rootfs: Path) -> None:
    options, names = _two_independent_steps(rootfs)
    daemon.client().solve(options)
    assert _overlapped(daemon.events(options.build_ref), names)


def test_max_parallelism_must_be_at_least_1(daemons: Daemons) -> None:
    refused = daemons.start("--max-parallelism", "0", wait=False)
    assert refused.wait() == 2
    assert "--max-parallelism" in refused.output()
