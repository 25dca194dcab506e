"""One database handle for every store and projection: engine, transactions, bounded retries.

PostgreSQL (through psycopg 3) is the production backend and SQLite the embedded default; the same
SQLAlchemy Core code runs on both. What differs is kept here:

- SQLite runs in WAL mode with ``synchronous=FULL`` (an audit log must survive a power cut), and a
  write transaction starts with ``BEGIN IMMEDIATE`` so two writers queue on the database lock
  instead of failing halfway through.
- On PostgreSQL a write transaction that appends takes a transaction-scoped advisory lock (see
  ``sql_store``); that lock is the reason readers never skip an event. Statements are planned
  with their values each time (``plan_cache_mode=force_custom_plan``, see ``open_database``).

Transient failures (connection refused or dropped, a server restart, a serialization failure or
deadlock, SQLite's "database is locked") are retried with tenacity for at most
``RetryPolicy.max_delay`` seconds; then :class:`~buildsvc.errors.StoreUnavailable` names the database
and the last error. Errors that no retry can fix (authentication, a missing database, bad SQL) are
not retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
import tenacity
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL

from buildsvc.errors import InvalidInput, StoreUnavailable
from buildsvc.events.codec import canonical_json

__all__ = ["Database", "InvalidDatabaseURL", "RetryPolicy", "is_transient", "open_database"]

T = TypeVar("T")

# SQLSTATE classes no retry can fix: authentication (28), no such database (3D), bad SQL (42).
_PERMANENT_SQLSTATE_CLASSES = ("28", "3D", "42")


class InvalidDatabaseURL(InvalidInput):
    """A database URL that does not parse or names an unsupported backend."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"invalid database URL {url!r}: {problem}")
        self.url = url
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long to keep retrying transient database failures."""

    max_delay: float = 30.0
    """Seconds after which a failing operation gives up with StoreUnavailable."""
    initial_wait: float = 0.05
    max_wait: float = 2.0


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same operation may succeed."""
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate and str(sqlstate).startswith(_PERMANENT_SQLSTATE_CLASSES):
            return False
        return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
    return False


def normalize_url(url: str) -> URL:
    """Parse ``url``, choosing psycopg 3 for plain ``postgresql://`` URLs."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError) as e:
        raise InvalidDatabaseURL(url, "expected postgresql://USER@HOST:PORT/DB or sqlite:///PATH") from e
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise InvalidDatabaseURL(url, f"unsupported backend {backend!r} (use postgresql or sqlite)")


class Database:
    """An engine plus the transaction and retry rules of the event store."""

    def __init__(self, engine: Engine, retry: RetryPolicy) -> None:
        self.engine = engine
        self.retry = retry
        self.is_postgres = engine.dialect.name == "postgresql"
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_delay(retry.max_delay),
            wait=tenacity.wait_exponential(multiplier=retry.initial_wait, max=retry.max_wait)
            + tenacity.wait_random(0, retry.initial_wait),
            reraise=False,
        )

    @property
    def url(self) -> URL:
        """The URL (print it with ``safe_url``; it may hold a password)."""
        return self.engine.url

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; commits on success, rolls back on error."""
        with self.engine.connect().execution_options(buildsvc_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot on both backends)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read_statement(self) -> Iterator[Connection]:
        """A connection for one read-only statement, outside any transaction on PostgreSQL.

        A single statement sees one snapshot by itself; wrapping it in BEGIN ... COMMIT costs two
        more round trips, which a lookup made per vertex (the cache index) pays a thousand times a
        solve. Use :meth:`read` for anything that runs two statements or more.
        """
        if not self.is_postgres:
            with self.read() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            # The driver's own switch, not ``execution_options(isolation_level=...)``: SQLAlchemy's
            # isolation bookkeeping on check-out and check-in cost more than the statement's
            # round trip. Switched back before the connection returns to the pool.
            pg = conn.connection.driver_connection
            pg.autocommit = True  # type: ignore[union-attr]
            try:
                yield conn
            finally:
                pg.autocommit = False  # type: ignore[union-attr]

    def run(self, fn: Callable[[], T], *, what: str) -> T:
        """Run ``fn`` (which opens its own transactions), retrying transient failures."""
        try:
            return fn()
        except sa.exc.DBAPIError as e:
            if not is_transient(e):
                raise
        # Only now pay for tenacity: most calls succeed at the first try.
        try:
            return self._retrying.copy()(fn)
        except tenacity.RetryError as e:
            last = e.last_attempt.exception()
            raise StoreUnavailable(
                f"{what}: database {self.safe_url} did not answer within {self.retry.max_delay:g}s: "
                f"{_short(last)}"
            ) from last
        except sa.exc.OperationalError as e:
            raise StoreUnavailable(f"{what}: database {self.safe_url}: {_short(e)}") from e

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def open_database(url: str, *, retry: RetryPolicy | None = None, pool_size: int = 32) -> Database:
    """Create the engine for ``url`` (no connection is made yet).

    ``pool_size`` connections are kept open once made (and made only when that many are in use at
    once): a daemon's vertex threads (32 by default) each look the cache up, with the API and the
    projection runner beside them. Past it, a connection is made for one use and closed after (a
    new PostgreSQL backend each time).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed)
    else:
        engine = sa.create_engine(
            parsed,
            json_serializer=canonical_json,
            pool_size=pool_size,
            max_overflow=10,
            connect_args={
                "connect_timeout": 5,
                "application_name": "buildsvc",
                # psycopg prepares a statement run five times; PostgreSQL may then keep a generic
                # plan made from the statistics of the moment. Made while a table is young (a
                # fresh daemon's refs, snapshots), that plan is a sequential scan that compares
                # each row with every element of an ``= ANY(array)`` parameter, and it stays long
                # after the table has grown: a projection's row load then costs O(rows x keys)
                # (300 ms for a 1,000-key load over 6,000 refs). Planning each execution with
                # its values costs ~0.1 ms and picks the index (or a hashed array) every time.
                "options": "-c plan_cache_mode=force_custom_plan",
            },
        )
    return Database(engine, retry or RetryPolicy())


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, json_serializer=canonical_json, connect_args={"timeout": 30, "check_same_thread": False}
    )

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transactions away from the driver so BEGIN below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front; a deferred BEGIN that upgrades later can deadlock.
        immediate = conn.get_execution_options().get("buildsvc_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
