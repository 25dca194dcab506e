"""Worker detection and selection on this machine (runc, crun and overlayfs installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsvc.executors import NoMatchingWorker, detect_workers, select_worker
from buildsvc.executors.worker import LABEL_EXECUTOR, LABEL_SNAPSHOTTER, overlay_supported

pytestmark = pytest.mark.root


def test_detects_all_three_workers_default_first(tmp_path: Path) -> None:
    workers = detect_workers(str(tmp_path))
    assert [w.name for w in workers] == ["runc-overlay", "crun-overlay", "runc-native"]
    assert [(w.executor.name, w.snapshotter.name) for w in workers] == [
        ("runc", "overlay"),
        ("crun", "overlay"),
        ("runc", "native"),
    ]
    info = workers[0].info
    assert info.platform.os == "linux"
    assert info.labels[LABEL_SNAPSHOTTER] == "overlay"
    assert overlay_supported(str(tmp_path))


def test_selection_by_name_and_labels(tmp_path: Path) -> None:
    workers = detect_workers(str(tmp_path))
    assert select_worker(workers).name == "runc-overlay"
    assert select_worker(workers, "runc-native").name == "runc-native"
    assert select_worker(workers, labels={LABEL_EXECUTOR: "crun"}).name == "crun-overlay"


def test_no_matching_worker_lists_the_workers_there_are(tmp_path: Path) -> None:
    workers = detect_workers(str(tmp_path))
    with pytest.raises(NoMatchingWorker) as e:
        select_worker(workers, "kata-overlay")
    assert str(e.value) == (
        "no worker matches name=kata-overlay; workers available: runc-overlay, crun-overlay, runc-native"
    )
    with pytest.raises(NoMatchingWorker, match=r"executor=crun, .*snapshotter=native"):
        select_worker(workers, labels={LABEL_EXECUTOR: "crun", LABEL_SNAPSHOTTER: "native"})
    assert e.value.available == ("runc-overlay", "crun-overlay", "runc-native")
