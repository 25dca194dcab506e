"""Fixtures for cache export/import: a second, empty state (root and database) to import into, for
the embedded CLI (``fresh_cli``) and for real daemons (``fresh_daemons``)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buildsvc.executors.mounts import mounts_under, unmount
from tests.integration.api.conftest import Daemon
from tests.integration.test_build_cli import Cli
from tests.support.databases import PostgresTemplates, open_test_database, sqlite_url
from tests.support.registry import TestRegistry
from tests.support.releasable import check_all_releasable, check_state_releasable


@pytest.fixture
def fresh_cli(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[Callable[[], Cli]]:
    """Makes a new, empty state each call (root and database of the same backend as ``db_url``)."""
    backend = request.node.callspec.params["db_url"]
    stack = contextlib.ExitStack()
    made: list[Path] = []

    def make() -> Cli:
        n = len(made)
        root = tmp_path / f"fresh-{n}"
        made.append(root)
        if backend == "sqlite":
            (tmp_path / f"fresh-db-{n}").mkdir()
            url = sqlite_url(tmp_path / f"fresh-db-{n}")
            open_test_database(url).dispose()
        else:
            templates: PostgresTemplates = request.getfixturevalue("pg_templates")
            url = stack.enter_context(templates.fresh())
        clis.append(Cli(url, root / "root"))
        return clis[-1]

    clis: list[Cli] = []
    with stack:
        yield make
        for cli in clis:
            check_state_releasable(cli.root, cli.db_url)
        for root in made:
            for point in sorted(mounts_under(str(root)), key=len, reverse=True):
                unmount(point)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path / "registry") as reg:
        yield reg


def wipe(cli: Cli) -> None:
    """Remove a state's root (the test then uses a fresh database too)."""
    for point in sorted(mounts_under(str(cli.root)), key=len, reverse=True):
        unmount(point)
    shutil.rmtree(cli.root, ignore_errors=True)


class FreshDaemons:
    """Real ``buildsvc daemon`` subprocesses, each on a new root AND a new database of the backend."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path, stack: contextlib.ExitStack) -> None:
        self.request = request
        self.tmp_path = tmp_path
        self.stack = stack
        self.started: list[Daemon] = []

    def start(self, *extra: str) -> Daemon:
        n = len(self.started)
        work = self.tmp_path / f"daemon-{n}"
        work.mkdir()
        if self.request.node.callspec.params["db_url"] == "sqlite":
            url = sqlite_url(work)
            open_test_database(url).dispose()
        else:
            templates: PostgresTemplates = self.request.getfixturevalue("pg_templates")
            url = self.stack.enter_context(templates.fresh())
        d = Daemon(url, work / "root", f"unix://{work}/buildsvcd.sock", work / "daemon.log", list(extra))
        self.started.append(d)
        d.wait_listening()
        return d


@pytest.fixture
def fresh_daemons(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[FreshDaemons]:
    with contextlib.ExitStack() as stack:
        daemons = FreshDaemons(request, tmp_path, stack)
        try:
            yield daemons
            for d in daemons.started:  # after the test, everything each daemon built can be let go
                if d.proc.poll() is None:
                    check_all_releasable(d.client(), root=d.root, db_url=d.db_url)
        finally:
            for d in daemons.started:
                d.close()
            leaked = mounts_under(str(tmp_path))
            for point in sorted(leaked, key=len, reverse=True):
                unmount(point)
            assert leaked == [], f"mounts left behind: {leaked}"
