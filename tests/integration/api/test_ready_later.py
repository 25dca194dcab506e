"""``connect(..., later=True)``: whether the daemon answers is asked in the background (a build scans
its contexts meanwhile), and the first call waits for the answer, with the same error as before when
there is none.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildsvc.api.client import connect
from buildsvc.api.errors import DaemonUnavailable
from tests.integration.api.conftest import BUILDSVC, Daemons, cli_env

pytestmark = pytest.mark.root


def test_the_client_comes_back_at_once_and_its_first_call_waits_for_a_daemon_still_starting(
    daemons: Daemons, tmp_path: Path
) -> None:
    addr = f"unix://{tmp_path}/later.sock"
    client = connect(addr, timeout=120, later=True)  # nothing listens there yet
    try:
        d = daemons.start(addr=addr, wait=False)
        info = client.info()  # waits for the answer, then asks
        assert info.root == str(d.root)
    finally:
        client.close()


def test_with_no_daemon_the_first_call_says_no_daemon_answers(tmp_path: Path) -> None:
    addr = f"unix://{tmp_path}/nobody.sock"
    client = connect(addr, timeout=0.5, later=True)
    try:
        with pytest.raises(DaemonUnavailable, match=f"no daemon answers at {addr}"):
            client.list_workers()
    finally:
        client.close()


def test_a_build_with_no_daemon_at_its_address_fails_naming_it(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    addr = f"unix://{tmp_path}/nobody.sock"
    # As before: the build waits the client's 10 s for a daemon to come up there, then says so.
    result = subprocess.run(
        [BUILDSVC, "--addr", addr, "build", str(ctx)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"no daemon answers at {addr}" in result.stderr
