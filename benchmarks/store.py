"""The event store and the build-history rebuild against raw drivers, on SQLite and PostgreSQL.

Run: ``.venv/bin/python -m benchmarks.store [--backend sqlite|postgres|all] [--events N]
[--rebuild-events N] [--repeat K] [--profile]``.

Every figure is measured next to its raw baseline in the same run, on the same throwaway database,
with the two sides interleaved (buildsvc, raw, buildsvc, raw, ...) so machine noise hits both; each
side is warmed up first and the median of ``--repeat`` timed runs is printed. See the README for
what each line means.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event, encode_payload
from buildsvc.events.database import Database, open_database
from buildsvc.events.migrations import upgrade
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections import BuildHistoryProjection, ProjectionRunner, attach_projections
from buildsvc.projections.builds import list_builds

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
READ_BATCH = 2000
"""``batch_size`` of ``read_all`` and ``itersize`` of the raw server-side cursor."""
GEN_BATCH = 500
"""Events per ``store.append`` when generating the rebuild log (whole builds, one stream per append)."""
VERTICES_PER_BUILD = 20

_COLUMNS = (
    "position, event_id, stream_id, stream_version, type, schema_version, payload, "
    "recorded_at, actor, trace_id, hash"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The command line."""

    pg_url: str
    events: int
    repeat: int
    profile: bool


# --- results -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Figure:
    """One line of a backend's table."""

    name: str
    events: int
    ours: float
    raw: float | None
    aim: str
    ok: bool | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """buildsvc / raw (None without a baseline)."""
        return self.ours / self.raw if self.raw else None


@dataclass(slots=True)
class Report:
    """Everything measured on one backend."""

    backend: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        """The table as Markdown."""
        out = [
            f"### {self.backend}",
            "",
            "| figure | events | buildsvc ev/s | raw baseline ev/s | ratio | aim | met |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for f in self.figures:
            raw = f"{f.raw:,.0f}" if f.raw is not None else "-"
            ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
            met = "-" if f.ok is None else ("yes" if f.ok else "**NO**")
            out.append(f"| {f.name} | {f.events:,} | {f.ours:,.0f} | {raw} | {ratio} | {f.aim} | {met} |")
        out.append("")
        out.extend(f"- {n}" for n in self.notes)
        return "\n".join(out)


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


Prepared = Callable[[], Callable[[], int]]
"""Prepares one run (untimed: building events and rows) and returns the timed part, which returns
how many events it handled."""


def timed(prepare: Prepared) -> float:
    """Prepare a run, time it, and return events/s."""
    fn = prepare()
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def compare(
    label: str,
    ours: Prepared,
    raw: Prepared | None,
    repeat: int,
    profile: bool,
) -> tuple[float, float | None]:
    """Medians of ``repeat`` interleaved runs of each side (after the caller's warm-up)."""
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(repeat):
        mine.append(timed(ours))
        if raw is not None:
            theirs.append(timed(raw))
        log(
            f"  {label} run {i + 1}/{repeat}: buildsvc {mine[-1]:,.0f} ev/s"
            + (f", raw {theirs[-1]:,.0f} ev/s" if theirs else "")
        )
    if profile:
        run_profiled(label, ours)
    return statistics.median(mine), (statistics.median(theirs) if theirs else None)


def run_profiled(label: str, prepare: Prepared) -> None:
    """One more, untimed, run of buildsvc's side under cProfile; the top costs go to stderr."""
    fn = prepare()
    prof = cProfile.Profile()
    prof.enable()
    n = fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(18)
    stats.sort_stats("cumulative").print_stats(25)
    print(f"\n===== profile: {label} ({n:,} events) =====\n{buf.getvalue()}", file=sys.stderr)


# --- event shapes --------------------------------------------------------------------------------


def _digest(rng: random.Random) -> str:
    return "sha256:" + rng.randbytes(32).hex()


def vertex_completed(rng: random.Random, build_ref: str) -> ev.VertexCompleted:
    """The event of figures 1 and 2 (the shape ``pg_limit.py`` inserts, with buildsvc's fields)."""
    return ev.VertexCompleted(
        build_ref=build_ref,
        vertex=_digest(rng),
        worker="runc-overlay",
        duration_ms=12,
        exit_code=0,
        snapshot_id="s" * 26,
        cache_key=_digest(rng),
    )


def build_events(rng: random.Random, index: int) -> list[Event]:
    """One realistic solve: requested, started, 20 vertices (a quarter cached), then the outcome."""
    ref = f"bench{index:09d}{rng.randbytes(4).hex()}"
    out: list[Event] = [
        ev.SolveRequested(
            build_ref=ref,
            frontend="dockerfile.v0",
            frontend_attrs={"target": "app"},
            definition_digest=_digest(rng),
            local_dirs={"context": _digest(rng)},
            client="buildctl",
        ),
        ev.SolveStarted(build_ref=ref, vertex_count=VERTICES_PER_BUILD, daemon_id="bench-daemon"),
    ]
    vertices = [_digest(rng) for _ in range(VERTICES_PER_BUILD)]
    for i, vertex in enumerate(vertices):
        name = f"[{i + 1}/{VERTICES_PER_BUILD}] RUN make step-{i}"
        if rng.random() < 0.25:
            out.append(
                ev.VertexCached(
                    build_ref=ref, vertex=vertex, name=name, cache_key=_digest(rng), snapshot_id=f"snap-{i}"
                )
            )
            continue
        out.append(
            ev.VertexStarted(
                build_ref=ref, vertex=vertex, name=name, worker="runc-overlay", cache_key=_digest(rng)
            )
        )
        out.append(
            ev.VertexCompleted(
                build_ref=ref,
                vertex=vertex,
                worker="runc-overlay",
                duration_ms=rng.randrange(1, 5000),
                exit_code=0,
                snapshot_id=f"snap-{ref}-{i}",
                cache_key=_digest(rng),
            )
        )
    if rng.random() < 0.05:
        out.append(ev.SolveFailed(build_ref=ref, error="process exited 1", vertex=vertices[-1], exit_code=1))
    else:
        out.append(ev.SolveCompleted(build_ref=ref, result_snapshot=f"snap-{ref}-result"))
    return out


# --- backends ------------------------------------------------------------------------------------


class Backend:
    """A throwaway database of one kind, with a buildsvc handle and a raw-driver handle."""

    name = ""
    url = ""

    def raw_one_per_commit(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert ``rows`` into ``raw_events``, one transaction each."""
        raise NotImplementedError

    def raw_batched(self, rows: Sequence[tuple[Any, ...]], batch: int) -> int:
        """Insert ``rows`` into ``raw_events`` with executemany, ``batch`` rows per transaction."""
        raise NotImplementedError

    def raw_read_all(self, table: str = "events") -> int:
        """Read every row of ``table`` in position order; returns the row count."""
        raise NotImplementedError

    def create_raw_table(self) -> None:
        """``raw_events``: the same columns, keys and indexes as ``events``."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the database."""
        raise NotImplementedError


class PostgresBackend(Backend):
    """``CREATE DATABASE bench_<random>`` on the server, dropped by :meth:`close`."""

    name = "postgres"

    def __init__(self, admin_url: str, suffix: str) -> None:
        parsed = make_url(admin_url).set(drivername="postgresql")
        self.admin_dsn = parsed.render_as_string(hide_password=False)
        self.dbname = f"bench_{secrets.token_hex(4)}{suffix}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.dbname}"')
        target = parsed.set(database=self.dbname)
        self.dsn = target.render_as_string(hide_password=False)
        self.url = self.dsn
        self.conn = psycopg.connect(self.dsn)

    def create_raw_table(self) -> None:
        self.conn.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        self.conn.commit()

    _INSERT = (
        "INSERT INTO raw_events (position, event_id, stream_id, stream_version, type, schema_version, "
        "payload, recorded_at, actor, trace_id, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    )

    def raw_one_per_commit(self, rows: Sequence[tuple[Any, ...]]) -> int:
        c = self.conn
        for row in rows:
            c.execute(self._INSERT, row)
            c.commit()
        return len(rows)

    def raw_batched(self, rows: Sequence[tuple[Any, ...]], batch: int) -> int:
        c = self.conn
        with c.cursor() as cur:
            for i in range(0, len(rows), batch):
                cur.executemany(self._INSERT, rows[i : i + batch])
                c.commit()
        return len(rows)

    def raw_read_all(self, table: str = "events") -> int:
        k = 0
        with self.conn.cursor(name="raw_read") as cur:
            cur.itersize = READ_BATCH
            cur.execute(f"SELECT {_COLUMNS} FROM {table} ORDER BY position")
            for _row in cur:
                k += 1
        self.conn.commit()
        return k

    def close(self) -> None:
        self.conn.close()
        with psycopg.connect(self.admin_dsn, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


class SqliteBackend(Backend):
    """A temp file; the raw side is the stdlib ``sqlite3`` with buildsvc's pragmas."""

    name = "sqlite"

    def __init__(self, suffix: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="buildsvc-bench-")
        self.path = str(Path(self.dir) / f"bench{suffix}.db")
        self.url = f"sqlite:///{self.path}"
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        """The raw connection (opened after the migration created the file)."""
        if self._conn is None:
            c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA busy_timeout=30000")
            c.execute("PRAGMA foreign_keys=ON")
            self._conn = c
        return self._conn

    def create_raw_table(self) -> None:
        c = self.conn
        ddl = c.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='events'").fetchone()[0]
        c.execute(ddl.replace("events", "raw_events", 1).replace("uq_events_", "uq_raw_events_"))
        for (sql,) in c.execute(
            "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='events' AND sql IS NOT NULL"
        ).fetchall():
            c.execute(sql.replace(" events", " raw_events").replace("ix_events", "ix_raw_events"))

    _INSERT = (
        "INSERT INTO raw_events (position, event_id, stream_id, stream_version, type, schema_version, "
        "payload, recorded_at, actor, trace_id, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def raw_one_per_commit(self, rows: Sequence[tuple[Any, ...]]) -> int:
        c = self.conn
        for row in rows:
            c.execute("BEGIN IMMEDIATE")
            c.execute(self._INSERT, row)
            c.execute("COMMIT")
        return len(rows)

    def raw_batched(self, rows: Sequence[tuple[Any, ...]], batch: int) -> int:
        c = self.conn
        for i in range(0, len(rows), batch):
            c.execute("BEGIN IMMEDIATE")
            c.executemany(self._INSERT, rows[i : i + batch])
            c.execute("COMMIT")
        return len(rows)

    def raw_read_all(self, table: str = "events") -> int:
        k = 0
        c = self.conn
        c.execute("BEGIN")
        cur = c.execute(f"SELECT {_COLUMNS} FROM {table} ORDER BY position")
        for _row in cur:
            k += 1
        c.execute("COMMIT")
        return k

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def raw_rows(backend: str, payload: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """Rows for ``raw_events`` as the raw driver takes them, like the ones buildsvc writes."""
    text = json.dumps(payload)
    stream = f"raw-{uuid.uuid4().hex}"
    position = 0
    version = 0
    while True:
        position += 1
        version += 1
        now = datetime.now(UTC)
        if backend == "sqlite":
            yield (
                position,
                uuid.uuid4().hex,
                stream,
                version,
                "VertexCompleted",
                1,
                text,
                now.replace(tzinfo=None).isoformat(" "),
                "",
                "",
                os.urandom(32),
            )
        else:
            yield (
                position,
                uuid.uuid4(),
                stream,
                version,
                "VertexCompleted",
                1,
                text,
                now,
                "",
                "",
                os.urandom(32),
            )


@contextmanager
def opened(backend: Backend) -> Iterator[tuple[Database, SqlEventStore]]:
    """A migrated buildsvc database on ``backend`` with a store that has no hooks."""
    db = open_database(backend.url)
    try:
        upgrade(db)
        yield db, SqlEventStore(db)
    finally:
        db.dispose()


def make_backend(kind: str, pg_url: str, suffix: str) -> Backend:
    """A fresh throwaway database."""
    return PostgresBackend(pg_url, suffix) if kind == "postgres" else SqliteBackend(suffix)


# --- the figures ---------------------------------------------------------------------------------


def bench_appends(kind: str, opts: Options, report: Report) -> None:
    """Figures 1, 1b, 2 and 3 on one throwaway database."""
    pg_url, events, repeat, profile = opts.pg_url, opts.events, opts.repeat, opts.profile
    backend = make_backend(kind, pg_url, "")
    rng = random.Random(1)
    payload = encode_payload(vertex_completed(rng, "bench"))
    raw_source = raw_rows(kind, payload)
    streams = iter(range(1, 1 << 30))

    def raw_one(n: int) -> Prepared:
        def prepare() -> Callable[[], int]:
            rows = [next(raw_source) for _ in range(n)]
            return lambda: backend.raw_one_per_commit(rows)

        return prepare

    def raw_batched(n: int) -> Prepared:
        def prepare() -> Callable[[], int]:
            rows = [next(raw_source) for _ in range(n)]
            return lambda: backend.raw_batched(rows, 100)

        return prepare

    def ours_appends(target: SqlEventStore, n: int, per_commit: int) -> Prepared:
        def prepare() -> Callable[[], int]:
            stream = f"build-bench-{next(streams)}"
            batches = [
                [vertex_completed(rng, stream) for _ in range(per_commit)] for _ in range(n // per_commit)
            ]

            def run() -> int:
                for b in batches:
                    target.append(stream, b)
                return n

            return run

        return prepare

    def warm(*prepared: Prepared) -> None:
        for p in prepared:
            p()()

    try:
        with opened(backend) as (db, store):
            backend.create_raw_table()

            n1 = events
            log(f"{kind}: appends, one event per commit ({n1:,} events x {repeat})")
            warm(ours_appends(store, max(n1 // 10, 50), 1), raw_one(max(n1 // 10, 50)))
            mine, raw = compare("1 event/commit", ours_appends(store, n1, 1), raw_one(n1), repeat, profile)
            report.figures.append(
                Figure("1. append, 1 event/commit", n1, mine, raw, ">= 0.6x", _at_least(mine, raw, 0.6))
            )
            raw_one_rate = raw

            n2 = events * 10
            log(f"{kind}: appends, 100 events per commit ({n2:,} events x {repeat})")
            warm(ours_appends(store, max(n2 // 10, 1000), 100), raw_batched(max(n2 // 10, 1000)))
            mine, raw = compare(
                "100 events/commit", ours_appends(store, n2, 100), raw_batched(n2), repeat, profile
            )
            report.figures.append(
                Figure("2. append, 100 events/commit", n2, mine, raw, ">= 0.5x", _at_least(mine, raw, 0.5))
            )

            log(f"{kind}: appends with the default projections attached ({n1:,} events x {repeat})")
            inline_store = SqlEventStore(db)
            runner = attach_projections(inline_store)
            runner.catch_up("refs")  # inline projections apply only when caught up with the head
            runner.release_all()
            warm(ours_appends(inline_store, max(n1 // 10, 50), 1))
            mine, _ = compare(
                "1 event/commit + inline projections",
                ours_appends(inline_store, n1, 1),
                None,
                repeat,
                profile,
            )
            report.figures.append(
                Figure(
                    "1b. append, 1 event/commit, default projections", n1, mine, raw_one_rate, "(info)", None
                )
            )

            total = store.head()
            log(f"{kind}: read-all ({total:,} events x {repeat})")

            def ours_read() -> Callable[[], int]:
                return lambda: sum(1 for _ in store.read_all(batch_size=READ_BATCH))

            def raw_read() -> Callable[[], int]:
                return backend.raw_read_all

            warm(ours_read, raw_read)
            mine, raw = compare("read-all", ours_read, raw_read, repeat, profile)
            report.figures.append(
                Figure("3. read-all", total, mine, raw, ">= 0.5x", _at_least(mine, raw, 0.5))
            )
    finally:
        backend.close()
    report.notes.append(
        f"1, 1b, 2: VertexCompleted events ({len(json.dumps(payload))} B payload); raw = one INSERT + "
        "commit (2: executemany of 100 + commit) into raw_events, a copy of the events table with its keys"
    )
    report.notes.append("1b: attach_projections (inline refs projection); ratio against the raw of 1.")
    report.notes.append(
        f"3: store.read_all(batch_size={READ_BATCH}) vs a raw "
        + (
            f"server-side (named) cursor, itersize {READ_BATCH}"
            if kind == "postgres"
            else "plain sqlite3 cursor"
        )
        + ", same table, same columns"
    )


def _at_least(mine: float, raw: float | None, ratio: float) -> bool | None:
    return None if raw is None else mine >= ratio * raw


def bench_rebuild(kind: str, opts: Options, events: int, report: Report) -> None:
    """Figure 4 on its own throwaway database: generate a build log, then rebuild ``builds``."""
    pg_url, repeat, profile = opts.pg_url, opts.repeat, opts.profile
    backend = make_backend(kind, pg_url, "_rebuild")
    try:
        with opened(backend) as (db, store):
            rng = random.Random(4)
            log(f"{kind}: generating a log of ~{events:,} build events")
            gen_seconds = 0.0
            written = 0
            builds = 0
            stream_no = 0
            pending: list[Event] = []
            while written < events:
                pending.extend(build_events(rng, builds))
                builds += 1
                if len(pending) >= GEN_BATCH or written + len(pending) >= events:
                    stream_no += 1
                    t = time.perf_counter()
                    store.append(f"build-gen-{stream_no}", pending)
                    gen_seconds += time.perf_counter() - t
                    written += len(pending)
                    pending = []
            log(f"{kind}: generated {written:,} events ({builds:,} builds), appends took {gen_seconds:.1f}s")

            runner = ProjectionRunner(store, [BuildHistoryProjection()])

            def ours() -> Callable[[], int]:
                def run() -> int:
                    runner.rebuild("builds")
                    return written

                return run

            def raw_read() -> Callable[[], int]:
                return backend.raw_read_all

            # Warm-up: the raw read pulls the table into the page cache; then a few buildsvc batches.
            backend.raw_read_all()
            runner.start_rebuild("builds")
            runner.try_lease("builds")
            for _ in range(5):
                runner.apply_batch("builds")
            runner.release_lease("builds")

            log(f"{kind}: rebuild of the builds projection ({written:,} events x {repeat})")
            mine, raw = compare("rebuild builds", ours, raw_read, repeat, profile)
            report.figures.append(
                Figure(
                    "4. rebuild builds projection",
                    written,
                    mine,
                    raw,
                    ">= 50,000 ev/s" if kind == "postgres" else "(info)",
                    mine >= 50_000 if kind == "postgres" else None,
                )
            )
            with db.read() as conn:
                found = len(list_builds(conn, limit=builds + 1))
            if found != builds:
                raise SystemExit(f"the rebuild produced {found} builds, expected {builds}")
            report.figures.append(
                Figure(
                    "4a. generating that log (store.append)",
                    written,
                    written / gen_seconds,
                    None,
                    "(info)",
                    None,
                )
            )
            report.notes.append(
                f"4: {builds:,} builds of {VERTICES_PER_BUILD} vertices (25% cached, 5% failed), "
                f"~{written // builds} events each; runner batch {runner.batch_size}; raw = "
                + ("server-side cursor" if kind == "postgres" else "sqlite3 cursor")
                + " read of the same events, so the ratio is reading's share of the rebuild time"
            )
            report.notes.append(
                f"4a: whole builds, appended ~{GEN_BATCH} events per store.append (one stream per append, "
                "so hash chains stay valid); time spent in append only"
            )
    finally:
        backend.close()


# --- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run every figure on every chosen backend, print the tables."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument(
        "--events", type=int, default=2000, help="events of figure 1 (figure 2 writes 10x) (default 2000)"
    )
    parser.add_argument(
        "--rebuild-events",
        type=int,
        default=None,
        help="events in the rebuild log (default 1,000,000 on postgres, 200,000 on sqlite; 0 skips it)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure; the median is printed")
    parser.add_argument("--profile", action="store_true", help="cProfile one extra run of each buildsvc side")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BUILDSVC_BENCH_PG_URL", DEFAULT_PG_URL),
        help="server to create the throwaway databases on (default $BUILDSVC_BENCH_PG_URL or %(default)s)",
    )
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    opts = Options(pg_url=args.pg_url, events=args.events, repeat=args.repeat, profile=args.profile)
    started = time.perf_counter()
    reports = []
    for kind in kinds:
        report = Report(kind)
        rebuild_events = args.rebuild_events
        if rebuild_events is None:
            rebuild_events = 1_000_000 if kind == "postgres" else 200_000
        bench_appends(kind, opts, report)
        if rebuild_events > 0:
            bench_rebuild(kind, opts, rebuild_events, report)
        reports.append(report)
        print(report.render(), flush=True)
        print(flush=True)
    elapsed = time.perf_counter() - started
    print(
        f"median of {args.repeat} interleaved runs per figure; "
        f"whole run {elapsed:.0f}s on {os.cpu_count()} CPUs",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
