"""``buildsvc build`` as a user runs it: the console script in a subprocess, the embedded engine, both
databases (run as root: the build runs real containers on overlayfs).

The root filesystem is a busybox tree sent as ``--local rootfs=DIR``, so no registry is needed; after
every build, successful or not, ``buildsvc leaks`` must report nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.executors.mounts import mounts_under, unmount
from buildsvc.executors.rootfs import make_busybox_rootfs
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from tests.support.releasable import check_state_releasable

pytestmark = pytest.mark.root


def _find_buildsvc() -> str:
    beside = Path(sys.executable).parent / "buildsvc"
    if beside.is_file():
        return str(beside)
    found = shutil.which("buildsvc")
    assert found is not None, "the buildsvc console script is not installed (pip install -e .)"
    return found


BUILDSVC = _find_buildsvc()


class Cli:
    """``buildsvc --root DIR --db URL ...`` with no BUILDSVC_* variables from the caller's env."""

    def __init__(self, db_url: str, root: Path) -> None:
        self.db_url = db_url
        self.root = root

    def run(self, *args: str, expect: int = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDSVC_")}
        result = subprocess.run(
            [BUILDSVC, "--root", str(self.root), "--db", self.db_url, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        assert result.returncode == expect, (
            f"buildsvc {' '.join(args)} exited {result.returncode}, expected {expect}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
        return result

    def assert_no_leaks(self) -> None:
        report = json.loads(self.run("leaks", "--format", "json").stdout)
        assert report == {"refs": [], "snapshots": [], "untracked": [], "missing": [], "mounts": []}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_busybox_rootfs(str(tmp_path_factory.mktemp("busybox") / "rootfs")))


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Iterator[Cli]:
    made = Cli(db_url, tmp_path / "root")
    yield made
    check_state_releasable(made.root, made.db_url)  # what the embedded builds made can all be let go
    leaked = mounts_under(str(tmp_path))
    for point in sorted(leaked, key=len, reverse=True):
        unmount(point)
    assert leaked == [], f"mounts left behind: {leaked}"


def write_definition(definition: Definition, path: Path) -> Path:
    path.write_text(definition.to_json())
    return path


def hello_definition() -> Definition:
    """Run a step on the local busybox tree and collect its one output file on scratch."""
    made = llb.local("rootfs").run("echo hi from busybox > /hello.txt", name="write hello").root()
    return llb.scratch().file(llb.copy(made, "/hello.txt", "/"), name="collect").marshal()


def test_build_exports_to_a_directory_and_a_tar(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    out_dir, out_tar = tmp_path / "out", tmp_path / "out.tar"
    done = cli.run(
        "build",
        "--llb",
        str(llb_file),
        "--local",
        f"rootfs={rootfs}",
        "--output",
        f"type=local,dest={out_dir}",
        "--output",
        f"type=tar,dest={out_tar}",
        "--progress",
        "quiet",
    )
    assert re.search(r"^build \w+ completed$", done.stderr, re.MULTILINE)
    assert sorted(p.name for p in out_dir.iterdir()) == ["hello.txt"]
    assert (out_dir / "hello.txt").read_text() == "hi from busybox\n"
    with tarfile.open(out_tar) as tar:
        assert tar.getnames() == ["hello.txt"]
        member = tar.extractfile("hello.txt")
        assert member is not None and member.read() == b"hi from busybox\n"
    cli.assert_no_leaks()


def test_plain_progress_shows_done_then_cached(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    args = ("build", "--llb", str(llb_file), "--local", f"rootfs={rootfs}", "--progress", "plain")

    first = cli.run(*args).stderr
    step = re.search(r"^#(\d+) write hello$", first, re.MULTILINE)
    assert step is not None, first
    n = step.group(1)
    assert re.search(rf"^#{n} DONE \d+\.\ds$", first, re.MULTILINE), first
    assert "CACHED" not in first
    assert len(re.findall(r"^#\d+ DONE ", first, re.MULTILINE)) == 3  # local source, step, collect
    cli.assert_no_leaks()

    again = cli.run(*args).stderr
    step = re.search(r"^#(\d+) write hello$", again, re.MULTILINE)
    assert step is not None, again
    assert re.search(rf"^#{step.group(1)} CACHED$", again, re.MULTILINE), again
    assert " DONE " not in again
    cli.assert_no_leaks()


def test_rawjson_progress_prints_json_lines(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    out = cli.run(
        "build", "--llb", str(llb_file), "--local", f"rootfs={rootfs}", "--progress", "rawjson"
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines, "no progress printed"
    for line in lines:
        assert set(line) == {"position", "time", "type", "payload"}
    positions = [line["position"] for line in lines]
    assert positions == sorted(positions)
    types = [line["type"] for line in lines]
    assert types.count("VertexCompleted") == 3
    assert types[-1] == "SolveCompleted"
    cli.assert_no_leaks()


def test_a_failing_step_exits_1_naming_step_code_and_output(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    failing = llb.local("rootfs").run(["sh", "-c", "echo boom; exit 3"], name="explode").root()
    llb_file = write_definition(failing.marshal(), tmp_path / "def.json")
    err = cli.run("build", "--llb", str(llb_file), "--local", f"rootfs={rootfs}", expect=1).stderr
    assert "explode" in err
    assert "exit code 3" in err
    assert "boom" in err
    cli.assert_no_leaks()


def test_a_malformed_definition_exits_2_naming_the_problem(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    text = hello_definition().to_json()
    (source,) = re.findall(r'"(sha256:[0-9a-f]{64})",\s*"op": \{\s*"source"', text)
    dangling = "sha256:" + "0" * 64
    # The exec step's input now names a vertex the file does not have.
    broken = text.replace(f'"vertex": "{source}"', f'"vertex": "{dangling}"')
    assert broken != text
    llb_file = tmp_path / "broken.json"
    llb_file.write_text(broken)
    err = cli.run("build", "--llb", str(llb_file), "--local", f"rootfs={rootfs}", expect=2).stderr
    assert "invalid definition" in err
    assert dangling in err

    not_json = tmp_path / "not.json"
    not_json.write_text('{"version": 1, "vertices": [')
    err = cli.run("build", "--llb", str(not_json), expect=2).stderr
    assert "invalid definition" in err
    cli.assert_no_leaks()


def test_bad_options_exit_2(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    err = cli.run(
        "build",
        "--llb",
        str(llb_file),
        "--local",
        f"rootfs={rootfs}",
        "--output",
        f"type=docker-archive,dest={tmp_path / 'x'}",
        expect=2,
    ).stderr
    assert "--output" in err and "docker-archive" in err

    missing = tmp_path / "no-such-dir"
    err = cli.run("build", "--llb", str(llb_file), "--local", f"rootfs={missing}", expect=2).stderr
    assert "--local rootfs" in err and str(missing) in err
    assert not (tmp_path / "x").exists()
    cli.assert_no_leaks()
