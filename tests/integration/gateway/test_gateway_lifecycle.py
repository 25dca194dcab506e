"""Gateway jobs end cleanly however they end: a killed client, and the same build twice
(BuildKit's TestNoSnapshotLeak), and ``buildsvc build --client-side``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from buildsvc.api.gateway_client import Gateway, Ref
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.projections import find_leaks
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon, cli_env

pytestmark = pytest.mark.root

_KILLED_CLIENT = """
import sys, time
from pathlib import Path
from buildsvc.api.client import Client
from buildsvc.solver import llb

addr, rootfs, ref, nonce = sys.argv[1:]

def frontend(gw):
    state = llb.local("rootfs").run(["sh", "-c", f": {nonce}; echo x > /x"], name="RUN x").root()
    given = gw.solve(state.marshal())
    print("solved", given.id, flush=True)
    time.sleep(3600)

Client(addr).build(frontend, local_dirs={"rootfs": Path(rootfs)}, build_ref=ref)
"""


def _wait_for(condition: object, what: str, timeout: float = 60) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_client_leaves_no_leak(daemon: Daemon, rootfs: Path) -> None:
    ref = "gwkill" + uuid.uuid4().hex[:8]
    client = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CLIENT, daemon.addr, str(rootfs), ref, uuid.uuid4().hex],
        stdout=subprocess.PIPE,
        text=True,
        env={**cli_env(), "PYTHONPATH": os.getcwd()},
    )
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line.startswith("solved ref-"), line
        os.kill(client.pid, signal.SIGKILL)
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
    _wait_for(lambda: isinstance(daemon.events(ref)[-1], ev.SolveCancelled), "the job to be cancelled")
    events = daemon.events(ref)
    given = [e for e in events if isinstance(e, ev.RefAcquired) and e.holder_kind == "gateway"]
    released = {e.ref_id: e.reason for e in events if isinstance(e, ev.RefReleased)}
    assert [released.get(g.ref_id) for g in given] == ["gateway job ended"]
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        with state.db.read() as conn:
            assert find_leaks(conn).empty
    finally:
        state.close()


def test_the_same_build_twice_leaks_nothing(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    """TestNoSnapshotLeak's idea: a second identical build adds no snapshot and no leak."""
    nonce = uuid.uuid4().hex
    first = llb.local("rootfs").run(["sh", "-c", f": {nonce}; echo a > /a"], name="RUN a").root()

    def frontend(gw: Gateway) -> Ref:
        ref = gw.solve(first.marshal())
        content = gw.read_file(ref, "/a").decode().strip()
        return gw.solve(first.run(["sh", "-c", f"echo {content}b > /b"], name="RUN b").root().marshal())

    client = daemon.client()
    client.build(
        frontend, local_dirs={"rootfs": rootfs}, outputs=[{"type": "tar", "dest": str(tmp_path / "1")}]
    )
    usage = sorted((r.snapshot_id, r.size_bytes) for r in client.disk_usage())
    client.build(
        frontend, local_dirs={"rootfs": rootfs}, outputs=[{"type": "tar", "dest": str(tmp_path / "2")}]
    )
    assert sorted((r.snapshot_id, r.size_bytes) for r in client.disk_usage()) == usage
    assert not [r for r in client.disk_usage() if r.in_use]
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        with state.db.read() as conn:
            assert find_leaks(conn).empty
    finally:
        state.close()


def test_build_client_side_runs_the_dockerfile_frontend_here(daemon: Daemon, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "hello.txt").write_text("from the context\n")
    (context / "Dockerfile").write_text('FROM scratch\nCOPY hello.txt /greeting\nCMD ["/greeting"]\n')
    out = tmp_path / "out"
    metadata = tmp_path / "metadata.json"
    done = daemon.cli(
        "build",
        "--client-side",
        str(context),
        "-o",
        f"type=local,dest={out}",
        "--metadata-file",
        str(metadata),
        "--progress",
        "rawjson",
    )
    assert (out / "greeting").read_text() == "from the context\n"
    ref = json.loads(metadata.read_text())["buildsvc.build.ref"]
    events = daemon.events(ref)
    assert isinstance(events[0], ev.SolveRequested) and events[0].frontend == "gateway.v0"
    solves = [e for e in events if isinstance(e, ev.GatewaySolveRequested)]
    assert len(solves) == 1
    # Progress showed the job and the solve it asked for.
    assert "GatewaySolveRequested" in done.stdout + done.stderr
    assert solves[0].solve_ref in done.stdout + done.stderr
