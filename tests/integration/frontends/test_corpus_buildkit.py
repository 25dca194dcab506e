"""The Dockerfile corpus built by Docker's BuildKit too, the exported trees compared file by file.

Collected only when ``dockerd`` answers (``docker info`` succeeds): on a machine without it this
module has no tests at all, by design, because the issue asks for the comparison "when dockerd is on
the machine". Start it with ``../shared/tools/buildkit-peer`` (root; installs Debian's docker.io and
imports ``localbusybox:latest``, the corpus's default ``BASE``). Nothing is skipped at run time: once
collected, a peer that fails to build a case fails the test.

Each case that must succeed is built by our daemon (``BASE`` = the test registry's busybox) and by
``DOCKER_BUILDKIT=1 docker build --network=host -o type=local`` (``BASE`` = ``localbusybox:latest``).
The two bases differ (ours has test files of its own), so each side first drops the entries its own
base image exports unchanged; what is left, the build's own work, must be equal: the same paths with
the same type, content, permission bits, owner and symlink target. Times are ignored.

``BUILDKIT_LACKS`` names the cases the peer's built-in Dockerfile frontend cannot read (Debian's
dockerd 20.10 carries BuildKit 0.8, Dockerfile syntax 1.2; a ``# syntax=`` line would fetch a newer
frontend from Docker Hub, which a machine without internet cannot): those are not compared, and a
test checks that they still fail on the peer, so the list cannot go stale silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.executors.rootfs import make_busybox_rootfs
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.integration.api.conftest import Daemon, Daemons
from tests.integration.frontends.corpus import Case, Node, load_cases, tar_export_tree, tree
from tests.support.databases import open_test_database, sqlite_url
from tests.support.images import build_image, make_layer, push_image, tar_tree
from tests.support.registry import TestRegistry

DOCKER = "/usr/bin/docker"  # Debian's client, the one buildkit-peer installs beside its dockerd

BUILDKIT_LACKS: dict[str, str] = {
    "08-copy-link": "COPY --link (Dockerfile 1.4): 'Unknown flag: link'",
    "09-copy-exclude": "COPY --exclude needs '# syntax=docker/dockerfile:1.7-labs', fetched from Docker Hub",
    "13-heredocs": "heredocs (Dockerfile 1.4): 'unknown instruction' on the heredoc body",
}


def _dockerd_answers() -> bool:
    if not os.path.exists(DOCKER):
        return False
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


CASES = [c for c in load_cases() if not c.fails]
COMPARED = [c for c in CASES if c.name not in BUILDKIT_LACKS]
LACKING = [c for c in CASES if c.name in BUILDKIT_LACKS]


def docker_build(case: Case | None, context: Path, dockerfile: Path, dest: Path) -> dict[str, Node]:
    """Build with Docker's BuildKit; its exported tree. A tar export, not ``type=local``: the local
    exporter writes through the client, which leaves every file owned by the user running it, and
    the owners are part of what is compared."""
    args = [DOCKER, "build", "--network=host", "-f", str(dockerfile), "-o", f"type=tar,dest={dest}"]
    for opt in case.build_opts(None) if case else []:
        key, _, value = opt.partition("=")
        if key == "target":
            args += ["--target", value]
        else:
            args += ["--build-arg", f"{key.removeprefix('build-arg:')}={value}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    result = subprocess.run(
        [*args, str(context)], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert result.returncode == 0, f"docker build of {context} failed:\n{result.stdout}{result.stderr}"
    return tar_export_tree(dest)


def our_build(
    daemon: Daemon, case: Case | None, context: Path, dockerfile: Path, base: str, dest: Path
) -> dict[str, Node]:
    """Build on our daemon; its exported tree (``type=local`` keeps owners)."""
    args = ["build", "-f", str(dockerfile), str(context), "--progress", "plain"]
    for opt in case.build_opts(base) if case else [f"build-arg:BASE={base}"]:
        args += ["--opt", opt]
    daemon.cli(*args, "-o", f"type=local,dest={dest}", timeout=300)
    return tree(dest)


def own_work(built: dict[str, Node], base: dict[str, Node]) -> dict[str, Node]:
    """The entries of ``built`` its base image did not already export exactly so."""
    return {path: node for path, node in built.items() if base.get(path) != node}


def differences(ours: dict[str, Node], theirs: dict[str, Node]) -> list[str]:
    out = []
    for path in sorted(ours.keys() | theirs.keys()):
        a, b = ours.get(path), theirs.get(path)
        if a is None:
            out.append(f"{path}: only BuildKit has it ({b})")
        elif b is None:
            out.append(f"{path}: only buildsvc has it ({a})")
        elif a != b:
            out.append(f"{path}: buildsvc {a} != BuildKit {b}")
    return out


if _dockerd_answers():
    pytestmark = pytest.mark.root

    @pytest.fixture(scope="module")
    def peer_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
        """Our daemon (SQLite: the backend does not change a tree) and the base image it builds on."""
        work = tmp_path_factory.mktemp("corpus-peer")
        with TestRegistry(work / "registry") as registry:
            ref = f"{registry.host}/busybox:latest"
            with RegistryClient(RegistryOptions(insecure=True)) as client:
                # Like localbusybox: no /proc, /dev, /sys, so the runtime's mount points show alike.
                rootfs = make_busybox_rootfs(str(work / "base"), with_system_dirs=False)
                layer = make_layer(tar_tree(Path(rootfs)), "gzip")
                push_image(client, parse_reference(ref), build_image([layer]), tag="latest")
            db_url = sqlite_url(work)
            open_test_database(db_url).dispose()
            daemons = Daemons(db_url, work)
            try:
                yield daemons.start("--insecure-registry", registry.host), ref
                daemons.check_all_releasable()
            finally:
                daemons.close()

    @pytest.fixture(scope="module")
    def bases(
        peer_daemon: tuple[Daemon, str], tmp_path_factory: pytest.TempPathFactory
    ) -> tuple[dict[str, Node], dict[str, Node]]:
        """What each side's base image exports by itself: ``FROM ${BASE}`` and nothing else."""
        daemon, ref = peer_daemon
        work = tmp_path_factory.mktemp("corpus-bases")
        (work / "ctx").mkdir()
        dockerfile = work / "Dockerfile"
        dockerfile.write_text("ARG BASE=localbusybox:latest\nFROM ${BASE}\n")
        ours = our_build(daemon, None, work / "ctx", dockerfile, ref, work / "ours")
        theirs = docker_build(None, work / "ctx", dockerfile, work / "theirs.tar")
        assert "bin/busybox" in ours and "bin/busybox" in theirs
        return ours, theirs

    @pytest.mark.parametrize("case", COMPARED, ids=[c.name for c in COMPARED])
    def test_buildkit_exports_the_same_tree(
        peer_daemon: tuple[Daemon, str],
        bases: tuple[dict[str, Node], dict[str, Node]],
        case: Case,
        tmp_path: Path,
    ) -> None:
        daemon, ref = peer_daemon
        context = tmp_path / "ctx"  # a copy: docker build reads the context, and must not share it
        shutil.copytree(case.path, context, symlinks=True)
        ours_all = our_build(daemon, case, context, context / "Dockerfile", ref, tmp_path / "ours")
        theirs_all = docker_build(case, context, context / "Dockerfile", tmp_path / "theirs.tar")
        assert ours_all and theirs_all, "an export is empty"
        # Cases that only set image config add nothing here: equal (empty) own work is still checked.
        ours, theirs = own_work(ours_all, bases[0]), own_work(theirs_all, bases[1])
        problems = differences(ours, theirs)
        assert problems == [], "\n".join(problems)

    @pytest.mark.parametrize("case", LACKING, ids=[c.name for c in LACKING])
    def test_the_peer_still_cannot_build_what_it_lacks(case: Case, tmp_path: Path) -> None:
        with pytest.raises(AssertionError, match="docker build of"):
            docker_build(case, case.path, case.path / "Dockerfile", tmp_path / "theirs.tar")
