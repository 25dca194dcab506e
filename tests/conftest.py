"""Fixtures shared by every suite: databases on every backend, and event stores on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.events.database import Database
from buildsvc.events.sql_store import SqlEventStore
from tests.support.databases import PostgresTemplates, open_test_database, sqlite_url

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_templates() -> Iterator[PostgresTemplates]:
    # No skip when the server is missing: the test command guarantees one, and CI must fail without it.
    templates = PostgresTemplates()
    yield templates
    templates.close()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database URL on each backend."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
        open_test_database(url).dispose()
        yield url
    else:
        templates: PostgresTemplates = request.getfixturevalue("pg_templates")
        with templates.fresh() as url:
            yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = open_test_database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def store(db: Database) -> SqlEventStore:
    return SqlEventStore(db)
