"""Test databases: a fresh, migrated database per test on SQLite and on a real PostgreSQL server.

PostgreSQL comes from ``BUILDSVC_TEST_PG_URL`` (the test command sets it: the machine's server on
127.0.0.1:5432, or a throwaway cluster it starts). Each test gets its own database cloned from a
migrated template, so tests never see each other's events and cloning costs one CREATE DATABASE.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from buildsvc.events import migrations
from buildsvc.events.database import Database, RetryPolicy, open_database

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_counter = itertools.count()


def admin_url() -> str:
    """The maintenance database URL of the test server."""
    return os.environ.get("BUILDSVC_TEST_PG_URL", DEFAULT_PG_URL)


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


class PostgresTemplates:
    """Creates one migrated template database per test session and clones it per test."""

    def __init__(self) -> None:
        self.admin = admin_url()
        self.prefix = f"bsvc_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.prefix}_tmpl"
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        db = open_database(_with_db(self.admin, self.template))
        migrations.upgrade(db)
        db.dispose()

    def url_for(self, name: str) -> str:
        return _with_db(self.admin, name)

    @contextmanager
    def fresh(self) -> Iterator[str]:
        """A new migrated database; dropped afterwards."""
        name = f"{self.prefix}_{next(_counter)}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        try:
            yield self.url_for(name)
        finally:
            drop_database(self.admin, name)

    def close(self) -> None:
        drop_database(self.admin, self.template)


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'buildsvc.db'}"


def open_test_database(url: str, *, max_delay: float = 10.0) -> Database:
    db = open_database(url, retry=RetryPolicy(max_delay=max_delay))
    migrations.ensure_current(db)
    return db
