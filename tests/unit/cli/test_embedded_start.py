"""An embedded build detects its workers while it opens the state and its contexts (issue 4: the
overlay probe and runtime look-ups are system calls on the start's critical path).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import buildsvc.daemon.engine as engine_module
from buildsvc.daemon.engine import detect_workers_soon


def test_detection_runs_in_a_thread_of_its_own_on_the_roots_workers_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, bool]] = []
    workers = [object()]

    def detect(root: str) -> list[object]:
        current = threading.current_thread()
        seen.append((root, current.ident or 0, current.daemon))
        return workers

    monkeypatch.setattr(engine_module, "detect_workers", detect)
    found = detect_workers_soon(tmp_path)
    assert found.result(timeout=10) is workers
    [(root, ident, daemon)] = seen
    assert root == str(tmp_path / "workers")
    assert ident != threading.get_ident()
    # Not a daemon thread: the process waits for the overlay probe to clean up after itself.
    assert not daemon


def test_a_failed_detection_is_raised_to_whoever_takes_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def detect(root: str) -> list[object]:
        raise OSError("no overlay here")

    monkeypatch.setattr(engine_module, "detect_workers", detect)
    with pytest.raises(OSError, match="no overlay here"):
        detect_workers_soon(tmp_path).result(timeout=10)
