"""Real runc and crun, real overlayfs: fixtures for the worker-layer tests (run as root)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildsvc.executors import (
    NativeSnapshotter,
    OciRuntimeExecutor,
    OverlaySnapshotter,
    make_busybox_rootfs,
    runtime_launcher,
)
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.solver.worker import (
    ExecResult,
    ExecSpec,
    Mount,
    NetworkMode,
    ProcessSpec,
    Snapshotter,
)

RUNTIMES = ["runc", "crun"]
SNAPSHOTTERS = ["overlay", "native"]
BASE = "busybox"


@pytest.fixture(autouse=True)
def _no_mounts_left(tmp_path: Path) -> Iterator[None]:
    """Every test must leave no mount behind; fail it if it does (then clean up anyway)."""
    yield
    leaked = mounts_under(str(tmp_path))
    for point in sorted(leaked, key=len, reverse=True):
        unmount(point)
    assert leaked == [], f"mounts left behind: {leaked}"


def make_snapshotter(kind: str, root: Path) -> Snapshotter:
    if kind == "overlay":
        return OverlaySnapshotter(str(root))
    return NativeSnapshotter(str(root))


def commit_busybox(snapshotter: Snapshotter, key: str = BASE, *, system_dirs: bool = True) -> str:
    """A committed snapshot holding a busybox root filesystem."""
    snapshotter.prepare(key + "-build")
    target = snapshotter.mount(key + "-build")
    try:
        make_busybox_rootfs(target.path, with_system_dirs=system_dirs)
    finally:
        snapshotter.unmount(key + "-build")
    snapshotter.commit(key, key + "-build")
    return key


@pytest.fixture(params=SNAPSHOTTERS)
def snapshotter(request: pytest.FixtureRequest, tmp_path: Path) -> Snapshotter:
    return make_snapshotter(str(request.param), tmp_path / "snapshots")


@pytest.fixture
def overlay(tmp_path: Path) -> OverlaySnapshotter:
    return OverlaySnapshotter(str(tmp_path / "overlay"))


@pytest.fixture(params=RUNTIMES)
def executor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OciRuntimeExecutor]:
    runtime = str(request.param)
    binary = shutil.which(runtime)
    assert binary is not None, f"{runtime} is not installed (apt-get install {runtime})"
    ex = OciRuntimeExecutor(
        runtime=runtime,
        binary=binary,
        root=str(tmp_path / f"{runtime}-root"),
        launcher=runtime_launcher(runtime),
    )
    yield ex
    assert ex.list_containers() == [], "container state left under our runtime root"


@dataclass
class Captured:
    result: ExecResult
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode()


class Runner:
    """Runs a step the way the solver will: prepare on a base, mount, run, unmount (commit)."""

    def __init__(self, executor: OciRuntimeExecutor, snapshotter: Snapshotter) -> None:
        self.executor = executor
        self.snapshotter = snapshotter
        self._n = 0

    def run(
        self,
        *args: str,
        base: str = BASE,
        commit_as: str | None = None,
        env: tuple[str, ...] = (),
        cwd: str = "/",
        user: str = "",
        mounts: tuple[Mount, ...] = (),
        network: NetworkMode = NetworkMode.NONE,
        readonly_root: bool = False,
        valid_exit_codes: tuple[int, ...] = (0,),
    ) -> Captured:
        self._n += 1
        active = f"step-{self._n}"
        self.snapshotter.prepare(active, base)
        rootfs = self.snapshotter.mount(active)
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            spec = ExecSpec(
                process=ProcessSpec(
                    args=args, env=env, cwd=cwd, user=user, valid_exit_codes=valid_exit_codes
                ),
                rootfs=rootfs,
                mounts=mounts,
                network=network,
                readonly_root=readonly_root,
            )
            result = self.executor.run(spec, stdout=out.append, stderr=err.append)
        finally:
            self.snapshotter.unmount(active)
            if commit_as is None:
                self.snapshotter.remove(active)
        if commit_as is not None:
            self.snapshotter.commit(commit_as, active)
        return Captured(result=result, stdout=b"".join(out), stderr=b"".join(err))


@pytest.fixture
def runner(executor: OciRuntimeExecutor, overlay: OverlaySnapshotter) -> Runner:
    commit_busybox(overlay)
    return Runner(executor, overlay)


def processes_running(*argv: str) -> list[int]:
    """Pids whose command line is exactly ``argv``."""
    wanted = "\0".join(argv).encode() + b"\0"
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() == wanted:
                        pids.append(int(name))
            except OSError:
                continue
    return pids
