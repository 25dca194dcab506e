"""The api suite's real daemon fixtures, and ``check_all_releasable`` after every gateway test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.api.conftest import Daemons, daemon, daemons, rootfs
from tests.support.releasable import check_all_releasable

__all__ = ["daemon", "daemons", "rootfs"]


@pytest.fixture(autouse=True)
def all_releasable(daemons: Daemons) -> Iterator[None]:
    """After the test, whatever its daemons built can all be released and pruned (TestNoSnapshotLeak)."""
    yield
    for d in daemons.started:
        if d.proc.poll() is None and "listening on" in d.output():  # not one that failed to start
            check_all_releasable(d.client(), root=d.root, db_url=d.db_url)
