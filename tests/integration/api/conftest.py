"""The real daemon as a subprocess on a unix socket in a temporary directory, on every backend.

``daemon`` starts ``buildsvc daemon`` (SQLite and PostgreSQL through ``db_url``); the test gets a
typed client, the root and database to read the log, and the busybox root filesystem to build on
as the ``rootfs`` local source. When the test ends, each daemon still running must pass
``check_all_releasable`` (tests/support/releasable.py); then every daemon is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.daemon.state import open_state
from buildsvc.events.codec import Event
from buildsvc.executors import OciRuntimeExecutor, make_busybox_rootfs, runtime_launcher
from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.solver import llb
from tests.support.releasable import check_all_releasable, check_state_releasable


def _find_buildsvc() -> str:
    beside = Path(sys.executable).parent / "buildsvc"
    if beside.is_file():
        return str(beside)
    found = shutil.which("buildsvc")
    assert found is not None, "the buildsvc console script is not installed (pip install -e .)"
    return found


BUILDSVC = _find_buildsvc()


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDSVC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """One ``buildsvc daemon`` process and what the test needs to talk to it and read its log."""

    def __init__(self, db_url: str, root: Path, addr: str, log: Path, extra: list[str]) -> None:
        self.db_url = db_url
        self.root = root
        self.addr = addr
        self.log = log
        self.extra = extra
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [BUILDSVC, "daemon", "--root", str(root), "--db", db_url, "--addr", addr, *extra],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )
        self._clients: list[Client] = []

    def output(self) -> str:
        return self.log.read_text()

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start in {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def client(self) -> Client:
        c = Client(self.addr)
        self._clients.append(c)
        return c

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait_shutting_down(self, timeout: float = 30) -> None:
        """Until the daemon says it takes no new builds (a signal is handled asynchronously)."""
        deadline = time.monotonic() + timeout
        while "shutting down" not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start shutting down in {timeout}s:\n{self.output()}")
            time.sleep(0.02)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s:\n{self.output()}") from None

    def events(self, build_ref: str) -> list[Event]:
        return [s.decode() for s in self.stored(build_ref)]

    def stored(self, stream: str) -> list[Any]:
        state = open_state(self.root, self.db_url, migrate=False)
        try:
            name = stream if stream.startswith(("build-", "daemon-")) else f"build-{stream}"
            return state.store.read_stream(name)
        finally:
            state.close()

    def cli(
        self, *args: str, expect: int | None = 0, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [BUILDSVC, "--addr", self.addr, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_env(),
            check=False,
        )
        if expect is not None:
            assert result.returncode == expect, (
                f"buildsvc {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
            )
        return result

    def close(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._log_file.close()


class Daemons:
    """Starts daemons for a test (each on its own root), and kills them all when it ends."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.tmp_path = tmp_path
        self.started: list[Daemon] = []
        self.check_releasable = True
        """Whether the test's end checks its live daemons with ``check_all_releasable``; only a
        test that leaves a leak in the log on purpose (to see it reported) turns this off."""

    def check_all_releasable(self) -> None:
        """BuildKit's ``checkAllReleasable`` on every daemon still running (one the test killed or
        stopped, or that never came up, has nothing to ask)."""
        if not self.check_releasable:
            return
        for d in self.started:
            if d.proc.poll() is not None or "listening on" not in d.output():
                continue
            if _plainly_reachable(d):
                check_all_releasable(d.client(), root=d.root, db_url=d.db_url)
            else:
                # A TLS daemon (the test holds its client certificate), or one whose socket the test
                # removed: stopped in order, then its root and database get the same check here.
                d.terminate()
                d.wait()
                check_state_releasable(d.root, d.db_url)

    def start(self, *extra: str, addr: str | None = None, wait: bool = True) -> Daemon:
        n = len(self.started)
        work = self.tmp_path / f"daemon{n}"
        work.mkdir()
        d = Daemon(
            self.db_url,
            work / "root",
            addr or f"unix://{work}/buildsvcd.sock",
            work / "daemon.log",
            list(extra),
        )
        self.started.append(d)
        if wait:
            d.wait_listening()
        return d

    def close(self) -> None:
        for d in self.started:
            d.close()
            _sweep_containers(d.root)
        leaked = mounts_under(str(self.tmp_path))
        for point in sorted(leaked, key=len, reverse=True):
            unmount(point)
        assert leaked == [], f"mounts left behind: {leaked}"


def _sweep_containers(root: Path) -> None:
    """Kill and delete what a killed daemon's runtimes still run, as its next start would (a test's
    daemon has none). Only a test that failed mid-step leaves any: a debug shell's crun, its
    terminal gone with the daemon, then spun on two cores for the rest of the run.
    """
    for executor in sorted(root.glob("workers/*/executor")):
        state = executor / "state"
        if not state.is_dir():
            continue
        with os.scandir(state) as containers:
            if not any(containers):
                continue
        runtime = executor.parent.name.partition("-")[0]
        binary = shutil.which(runtime)
        if binary is not None:
            OciRuntimeExecutor(
                runtime=runtime, binary=binary, root=str(executor), launcher=runtime_launcher(runtime)
            ).sweep()


def _plainly_reachable(d: Daemon) -> bool:
    if d.addr.startswith("unix://"):
        return Path(d.addr.removeprefix("unix://")).exists()
    return "--tlscacert" not in d.extra


@pytest.fixture
def daemons(db_url: str, tmp_path: Path) -> Iterator[Daemons]:
    ds = Daemons(db_url, tmp_path)
    try:
        yield ds
        ds.check_all_releasable()  # after the test, everything it built can be let go
    finally:
        ds.close()


@pytest.fixture
def daemon(daemons: Daemons) -> Daemon:
    return daemons.start()


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_busybox_rootfs(str(tmp_path_factory.mktemp("api-rootfs") / "rootfs")))


def run_definition(script: str, name: str) -> bytes:
    """A definition that runs ``script`` on the busybox rootfs; a nonce keeps it out of the cache."""
    nonce = uuid.uuid4().hex
    state = llb.local("rootfs").run(["sh", "-c", f": {nonce}; {script}"], name=name).root()
    return state.marshal().to_json(indent=None).encode()


def solve_options(rootfs: Path, script: str, name: str, **kw: Any) -> SolveOptions:
    return SolveOptions(
        build_ref=kw.pop("build_ref", uuid.uuid4().hex[:25]),
        definition_json=run_definition(script, name),
        local_dirs={"rootfs": rootfs},
        actor="tester",
        **kw,
    )
