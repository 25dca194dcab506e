"""The daemon's unix socket: 0660 from the moment anyone can reach it, without touching the umask."""

from __future__ import annotations

import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from buildsvc.api.address import parse_address
from buildsvc.api.serve import _unix_listen


def test_the_socket_is_0660_and_the_process_umask_is_never_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The umask is process-wide: a thread creating a file meanwhile would get the daemon's socket mode.
    def no_umask(mask: int) -> int:
        raise AssertionError(f"os.umask({mask:o}) called")

    monkeypatch.setattr(os, "umask", no_umask)
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    path = tmp_path / "run" / "buildsvcd.sock"
    relay = _unix_listen(server, parse_address(f"unix://{path}"))
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o660
        leftovers = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".buildsvcd-"))
        assert leftovers == ["buildsvcd.sock"]  # the bind's private directory is gone
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # the renamed socket still accepts
        client.close()
    finally:
        relay.close()
        server.stop(None)
    assert not path.exists()


def test_a_stopping_daemon_leaves_a_socket_another_daemon_made_at_its_path(tmp_path: Path) -> None:
    # The old daemon's path was removed under it and a new daemon listens there now.
    path = tmp_path / "buildsvcd.sock"
    old_server = grpc.server(ThreadPoolExecutor(max_workers=1))
    old = _unix_listen(old_server, parse_address(f"unix://{path}"))
    path.unlink()
    new_server = grpc.server(ThreadPoolExecutor(max_workers=1))
    new = _unix_listen(new_server, parse_address(f"unix://{path}"))
    try:
        old.close()
        old_server.stop(None)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # still the new daemon's
        client.close()
    finally:
        new.close()
        new_server.stop(None)
    assert not path.exists()
