"""A gateway job's frontend runs in its client: a restart records the job, and the solves it asked
for, cancelled with a reason instead of resuming them, and leaves nothing held."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from buildsvc.daemon.recovery import GATEWAY_JOB_CANCELLED
from buildsvc.events import catalog as ev
from tests.integration.api.conftest import Daemons, cli_env
from tests.integration.resume.test_resume import assert_no_leaks, kill, restart, wait_ended, wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

_CLIENT = """
import sys
from pathlib import Path
from buildsvc.api.client import Client
from buildsvc.solver import llb

addr, rootfs, ref, nonce = sys.argv[1:]

def frontend(gw):
    first = llb.local("rootfs").run(["sh", "-c", f": {nonce}; echo x > /x"], name="RUN x").root()
    gw.solve(first.marshal())
    print("solved", flush=True)
    second = first.run(["sh", "-c", "sleep 30"], name="RUN long").root()
    return gw.solve(second.marshal())

Client(addr).build(frontend, local_dirs={"rootfs": Path(rootfs)}, build_ref=ref)
"""


def test_a_restart_cancels_a_gateway_job_and_its_solves(daemons: Daemons, rootfs: Path) -> None:
    d = daemons.start()
    ref = "gwrestart" + uuid.uuid4().hex[:8]
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, d.addr, str(rootfs), ref, uuid.uuid4().hex],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**cli_env(), "PYTHONPATH": os.getcwd()},
    )
    try:
        long_solve = f"{ref}-2"
        wait_for(
            "the job's second solve to run",
            lambda: any(
                isinstance(e, ev.VertexStarted) and e.name == "RUN long" for e in d.events(long_solve)
            ),
            d,
        )
        kill(d)
        client.communicate(timeout=60)
    finally:
        client.kill()
        client.wait()
    assert client.returncode != 0  # its daemon went away under it

    d2 = restart(daemons, d)
    end = wait_ended(d2, ref)
    assert isinstance(end, ev.SolveCancelled) and end.reason == GATEWAY_JOB_CANCELLED, end
    solve_end = wait_ended(d2, long_solve)
    assert isinstance(solve_end, ev.SolveCancelled) and ref in solve_end.reason, solve_end
    for stream in (ref, long_solve):
        assert not any(isinstance(e, ev.SolveResumed) for e in d2.events(stream))
    job = d2.events(ref)
    given = {e.ref_id for e in job if isinstance(e, ev.RefAcquired) and e.holder_kind == "gateway"}
    assert given and given <= {e.ref_id for e in job if isinstance(e, ev.RefReleased)}
    assert any(isinstance(e, ev.VertexInterrupted) for e in d2.events(long_solve))
    assert "cancelled 2" in d2.output()
    assert_no_leaks(d2)
