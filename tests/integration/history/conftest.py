"""One real daemon per test module (on each backend), checked with ``check_all_releasable`` at the end.

The history tests read what builds left in the log, so a module shares its daemon, root and database
the way a long-lived daemon would, and the module's last act is BuildKit's "everything is
releasable" check on it (tests/support/releasable.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS
from tests.integration.api.conftest import Daemon, Daemons, rootfs
from tests.support.databases import PostgresTemplates, open_test_database, sqlite_url
from tests.support.releasable import check_all_releasable

__all__ = ["rootfs"]


@pytest.fixture(scope="module", params=BACKENDS)
def module_daemons(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemons]:
    work = tmp_path_factory.mktemp("history")
    if request.param == "sqlite":
        url = sqlite_url(work)
        open_test_database(url).dispose()
        ds = Daemons(url, work)
        try:
            yield ds
        finally:
            ds.close()
        return
    templates: PostgresTemplates = request.getfixturevalue("pg_templates")
    with templates.fresh() as url:
        ds = Daemons(url, work)
        try:
            yield ds
        finally:
            ds.close()


@pytest.fixture(scope="module")
def shared_daemon(module_daemons: Daemons) -> Iterator[Daemon]:
    """The module's daemon; after the module's last test everything it made must be releasable."""
    d = module_daemons.start()
    yield d
    if d.proc.poll() is None:
        with d.client() as client:
            check_all_releasable(client, root=d.root, db_url=d.db_url)


@pytest.fixture
def module_root(shared_daemon: Daemon) -> Path:
    return shared_daemon.root
