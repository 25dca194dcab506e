"""The whole engine on real parts: runc and crun, overlayfs, the test registry, SQLite and Postgres.

``engine`` is a daemon's engine (``open_engine``) on a fresh root and database per test; images come
from Debian's ``docker-registry`` on a loopback port: ``busybox`` (the two-layer test image) and
``bare`` (busybox without ``/proc``, ``/dev`` and ``/sys``, for the read-only-root test).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.state import State, open_state
from buildsvc.events.codec import Event
from buildsvc.executors import make_busybox_rootfs
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.projections import LeakReport, find_leaks
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import SolveRequest, SolveResult
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image, tar_tree
from tests.support.registry import TestRegistry
from tests.support.releasable import check_engine_releasable

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Images:
    busybox: str
    """``127.0.0.1:PORT/busybox:latest``: the two-layer busybox test image."""
    bare: str
    """``127.0.0.1:PORT/bare:latest``: busybox with no /proc, /dev or /sys."""


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    work = tmp_path_factory.mktemp("solver-images")
    with (
        TestRegistry(work / "registry") as registry,
        RegistryClient(RegistryOptions(insecure=True)) as client,
    ):
        busybox = f"{registry.host}/busybox:latest"
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "busybox")]
        push_image(client, parse_reference(busybox), build_image(layers), tag="latest")
        bare = f"{registry.host}/bare:latest"
        rootfs = Path(make_busybox_rootfs(str(work / "bare"), with_system_dirs=False))
        push_image(
            client, parse_reference(bare), build_image([make_layer(tar_tree(rootfs), "gzip")]), tag="latest"
        )
        yield Images(busybox=busybox, bare=bare)


class Harness:
    """An engine plus the reads the tests make of its log."""

    def __init__(self, state: State, engine: Engine) -> None:
        self.state = state
        self.engine = engine
        self.root = state.root

    def solve(
        self,
        definition: Definition,
        *,
        build_ref: str | None = None,
        local_dirs: dict[str, Path] | None = None,
    ) -> SolveResult:
        request = SolveRequest(definition=definition, local_dirs=local_dirs or {})
        if build_ref is not None:
            request = SolveRequest(definition=definition, local_dirs=local_dirs or {}, build_ref=build_ref)
        return self.engine.solver.solve(request)

    def export(self, result: SolveResult, dest: Path) -> Path:
        self.engine.export_local(result.output, dest, build_ref=result.build_ref)
        return dest

    def events(self, build_ref: str) -> list[Event]:
        return [e.decode() for e in self.state.store.read_stream(f"build-{build_ref}")]

    def of_type(self, build_ref: str, kind: type[E]) -> list[E]:
        return [e for e in self.events(build_ref) if isinstance(e, kind)]

    def leaks(self) -> LeakReport:
        with self.state.db.read() as conn:
            return find_leaks(conn)


@contextmanager
def open_harness(tmp_path: Path, db_url: str, worker_names: list[str] | None = None) -> Iterator[Harness]:
    """An engine on a fresh root under ``tmp_path``; on the way out, what its solves made can all be
    let go and no mount is left behind.
    """
    state = open_state(tmp_path / "root", db_url)
    engine = open_engine(state, worker_names=worker_names, insecure_registries=True)
    try:
        yield Harness(state, engine)
        check_engine_releasable(engine)  # what the test's solves made can all be let go
    finally:
        engine.close()
        state.close()
        leaked = mounts_under(str(tmp_path))
        for point in sorted(leaked, key=len, reverse=True):
            unmount(point)
        assert leaked == [], f"mounts left behind: {leaked}"


@pytest.fixture
def h(db_url: str, tmp_path: Path) -> Iterator[Harness]:
    with open_harness(tmp_path, db_url) as harness:
        yield harness
