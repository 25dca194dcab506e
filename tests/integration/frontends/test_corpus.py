"""The Dockerfile corpus (``corpus/NN-name/``) built by a real daemon subprocess on every backend.

Each case is built with ``buildsvc --addr ... build -f DOCKERFILE CONTEXT -o type=local,dest=...
-o type=oci,dest=...``: the exported tree is checked against the case's ``expect.json`` (contents,
modes, owners, symlink targets, paths that must not exist) and the image config is read from the OCI
output. A case that must fail is checked for the CLI's exit code, the ``Dockerfile:LINE`` it names
and its message. One daemon per backend serves the whole module; its base image comes from a local
``docker-registry`` (``build-arg:BASE``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.conftest import BACKENDS
from tests.integration.api.conftest import Daemon, Daemons
from tests.integration.frontends.corpus import (
    Case,
    check_config,
    check_files,
    image_config_from_oci_tar,
    load_cases,
)
from tests.support.databases import PostgresTemplates, open_test_database, sqlite_url
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root

CASES = load_cases()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    work = tmp_path_factory.mktemp("corpus-registry")
    with TestRegistry(work / "registry") as reg:
        yield reg


@pytest.fixture(scope="module")
def base_image(registry: TestRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox test image (``PATH=/bin:/usr/bin``, ``GREETING=hi``) in the module's registry."""
    work = tmp_path_factory.mktemp("corpus-base")
    ref = f"{registry.host}/busybox:latest"
    with RegistryClient(RegistryOptions(insecure=True)) as client:
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work)]
        push_image(client, parse_reference(ref), build_image(layers), tag="latest")
    return ref


@pytest.fixture(scope="module", params=BACKENDS)
def corpus_daemon(
    request: pytest.FixtureRequest, registry: TestRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon per backend for every case: the corpus shares its cache, as real users do."""
    work = tmp_path_factory.mktemp(f"corpus-{request.param}")
    with ExitStack() as stack:
        if request.param == "sqlite":
            db_url = sqlite_url(work)
            open_test_database(db_url).dispose()
        else:
            templates: PostgresTemplates = request.getfixturevalue("pg_templates")
            db_url = stack.enter_context(templates.fresh())
        daemons = Daemons(db_url, work)
        try:
            yield daemons.start("--insecure-registry", registry.host)
            daemons.check_all_releasable()  # after the corpus, everything it built can be let go
        finally:
            daemons.close()


def build(daemon: Daemon, case: Case, base: str, out: Path) -> tuple[int, str]:
    """Build ``case`` on ``daemon`` into ``out/tree`` and ``out/image.tar``; (exit code, stderr)."""
    args = ["build", "-f", str(case.path / "Dockerfile"), str(case.path), "--progress", "plain"]
    for opt in case.build_opts(base):
        args += ["--opt", opt]
    args += ["-o", f"type=local,dest={out / 'tree'}", "-o", f"type=oci,dest={out / 'image.tar'}"]
    result = daemon.cli(*args, expect=None, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_the_corpus_is_big_enough_and_covers_failures() -> None:
    assert len(CASES) >= 20
    assert sum(case.fails for case in CASES) >= 4


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(corpus_daemon: Daemon, base_image: str, case: Case, tmp_path: Path) -> None:
    code, output = build(corpus_daemon, case, base_image, tmp_path)
    if case.fails:
        want = case.expect["error"]
        assert code == want["exit_code"], f"exit {code}, expected {want['exit_code']}:\n{output}"
        assert want["location"] in output, f"{want['location']!r} not named:\n{output}"
        assert want["message"] in output, f"{want['message']!r} not said:\n{output}"
        assert not (tmp_path / "tree").exists()
        return
    assert code == 0, output
    problems = check_files(case, tmp_path / "tree")
    config = image_config_from_oci_tar(tmp_path / "image.tar")
    problems += check_config(case, config["config"])
    assert problems == [], "\n".join(problems)
