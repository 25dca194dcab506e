"""``buildsvc build --progress``: ``auto`` prints plain lines when not on a terminal; ``tty`` draws."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.executors.rootfs import make_busybox_rootfs
from tests.integration.test_build_cli import Cli, hello_definition, write_definition

pytestmark = pytest.mark.root

_ESCAPE = "\x1b["


@pytest.fixture(scope="module")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_busybox_rootfs(str(tmp_path_factory.mktemp("busybox") / "rootfs")))


@pytest.fixture
def embedded(db_url: str, tmp_path: Path) -> Iterator[Cli]:
    yield Cli(db_url, tmp_path / "root")
    leaked = mounts_under(str(tmp_path))
    for point in sorted(leaked, key=len, reverse=True):
        unmount(point)
    assert leaked == [], f"mounts left behind: {leaked}"


def test_auto_prints_plain_lines_when_not_on_a_terminal(
    embedded: Cli, busybox_rootfs: Path, tmp_path: Path
) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    # No --progress: auto is the default. The test's pipes are not terminals.
    err = embedded.run("build", "--llb", str(llb_file), "--local", f"rootfs={busybox_rootfs}").stderr
    assert re.search(r"^#\d+ write hello$", err, re.MULTILINE), err
    assert re.search(r"^#\d+ DONE \d+\.\ds$", err, re.MULTILINE), err
    assert _ESCAPE not in err
    assert "[+]" not in err


def test_tty_draws_the_live_view_and_keeps_finished_steps(
    embedded: Cli, busybox_rootfs: Path, tmp_path: Path
) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    args = ("build", "--llb", str(llb_file), "--local", f"rootfs={busybox_rootfs}", "--progress", "tty")
    err = embedded.run(*args).stderr
    assert _ESCAPE in err  # drawn for a terminal even into a pipe, as asked
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", err)
    assert re.search(r"#\d+ write hello  DONE \d+\.\ds", plain), plain
    assert re.search(r"\[\+\] Built in \d+\.\ds \(3/3\)", plain), plain
    again = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", embedded.run(*args).stderr)
    assert re.search(r"#\d+ write hello  CACHED", again), again
