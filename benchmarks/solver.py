"""The build engine against same-run baselines: a 1,000-vertex file-op graph, an exec chain, memory.

Run (as root, PostgreSQL on 127.0.0.1): ``.venv/bin/python -m benchmarks.solver [--repeat K]
[--vertices N] [--parallel P] [--profile] [--pg-url URL]``.

1. A graph of ``N`` file-op vertices (default 1,000: 900 ``mkfile`` vertices on scratch, merged ten
   at a time in a tree) solved cold, then fully cached (a new build of the same definition), on a
   daemon engine (``open_engine``) over PostgreSQL. Engine overhead per vertex: cold = (solve time -
   baseline) / N, where the baseline writes the same files and copies them through the same merge
   tree directly in Python in a temp dir; cached = solve time / N (the baseline does nothing).
2. A chain of 20 exec steps of ``/bin/true`` on a busybox image (pulled beforehand) against a shell
   loop of 20 bare ``runc run`` of a prepared busybox bundle.
3. The process's peak RSS (``getrusage``) after the cold N-vertex solve, beside the RSS before it.

Each cold run uses new file contents / new step arguments, so nothing is cached; the sides are
interleaved and the median of ``--repeat`` runs printed. ``--profile`` runs one cold and one cached
graph solve under cProfile and prints the top costs to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.state import State, open_state
from buildsvc.executors import make_busybox_rootfs
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import DEFAULT_MAX_PARALLEL, SolveRequest
from tests.support.images import build_image, make_layer, tar_tree, write_layout

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FANOUT = 10
EXEC_STEPS = 20


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table."""

    figure: str
    ours: float
    baseline: float | None
    unit: str
    aim: str
    met: bool | None


# --- the database ---------------------------------------------------------------------------------


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A throwaway ``bench_solver_<random>`` database, dropped afterwards."""
    parsed = make_url(admin_url).set(drivername="postgresql")
    admin = parsed.render_as_string(hide_password=False)
    name = f"bench_solver_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield parsed.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- figure 1: the file-op graph ------------------------------------------------------------------


def leaf_count(vertices: int) -> int:
    """Leaves of a FANOUT-ary merge tree whose leaves plus merges make ``vertices`` (900 for 1,000)."""
    leaves = vertices
    while leaves > 1:
        total, level = leaves, leaves
        while level > 1:
            level = -(-level // FANOUT)
            total += level
        if total <= vertices:
            return leaves
        leaves -= 1
    return 1


def file_graph(leaves: int, tag: str) -> Definition:
    """``leaves`` mkfile vertices on scratch merged FANOUT at a time, up to one root."""
    level = [
        llb.scratch().file(llb.mkfile(f"/f{i:05d}", f"{tag} {i}\n"), name=f"mkfile {i}")
        for i in range(leaves)
    ]
    while len(level) > 1:
        level = [llb.merge(level[i : i + FANOUT]) for i in range(0, len(level), FANOUT)]
    return level[0].marshal()


def file_baseline(leaves: int, tag: str, workdir: Path) -> None:
    """The same file writes and merge copies, done directly in Python."""
    level: list[Path] = []
    for i in range(leaves):
        d = workdir / f"leaf{i}"
        d.mkdir()
        (d / f"f{i:05d}").write_text(f"{tag} {i}\n")
        level.append(d)
    n = 0
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), FANOUT):
            n += 1
            dest = workdir / f"merge{n}"
            shutil.copytree(level[i], dest, symlinks=True)
            for src in level[i + 1 : i + FANOUT]:
                shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
            nxt.append(dest)
        level = nxt


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def solve(engine: Engine, definition: Definition) -> None:
    """One solve; the definition's every vertex must be accounted for."""
    engine.solver.solve(SolveRequest(definition=definition))


def solve_on_fresh_engine(state: State, definition: Definition, max_parallel: int) -> None:
    """Open an engine, solve once, close it (its threads end)."""
    engine = open_engine(state, max_parallel=max_parallel)
    try:
        solve(engine, definition)
    finally:
        engine.close()


# --- figure 2: exec chain against bare runc -------------------------------------------------------


def busybox_layout(workdir: Path) -> str:
    """An OCI layout holding a one-layer busybox image; returns its ``llb.oci_layout`` identifier."""
    rootfs = Path(make_busybox_rootfs(str(workdir / "rootfs")))
    image = build_image([make_layer(tar_tree(rootfs), "gzip")])
    write_layout(workdir / "layout", image)
    return image.digest


def exec_chain(layout: Path, digest: str, tag: str) -> Definition:
    """EXEC_STEPS ``/bin/true`` steps, each on the one before (``tag`` makes them new)."""
    state = llb.oci_layout(str(layout), digest)
    for i in range(EXEC_STEPS):
        state = state.run(["/bin/true", f"{tag}-{i}"], network="none", name=f"true {i}").root()
    return state.marshal()


def runc_bundle(workdir: Path) -> Path:
    """A bundle (busybox rootfs + ``runc spec`` config running ``/bin/true``)."""
    bundle = workdir / "bundle"
    bundle.mkdir()
    make_busybox_rootfs(str(bundle / "rootfs"))
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["/bin/true"]
    config["root"] = {"path": "rootfs", "readonly": False}
    config_path.write_text(json.dumps(config))
    return bundle


def runc_loop(bundle: Path, state_root: Path, tag: str) -> None:
    """A shell loop of EXEC_STEPS bare ``runc run``."""
    script = (
        f"for i in $(seq 1 {EXEC_STEPS}); do "
        f'runc --root "$1" run --bundle "$2" "bench-$3-$i" >/dev/null || exit 1; done'
    )
    subprocess.run(["sh", "-c", script, "loop", str(state_root), str(bundle), tag], check=True)


# --- running it -----------------------------------------------------------------------------------


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile(label: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` under cProfile in every thread it starts (the solver's vertex threads and log
    tickers included) and print the summed top costs to stderr.
    """
    profiles: list[cProfile.Profile] = []

    def boot(*_: object) -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()  # replaces this bootstrap hook in the new thread

    main = cProfile.Profile()
    threading.setprofile(boot)
    main.enable()
    try:
        fn()
    finally:
        main.disable()
        threading.setprofile(None)
    for order, count in (("tottime", 25), ("cumulative", 40)):
        out = io.StringIO()
        stats = pstats.Stats(main, stream=out)
        for prof in profiles:
            stats.add(prof)
        stats.sort_stats(order).print_stats(count)
        print(
            f"\n=== profile: {label} ({order}, {len(profiles)} threads) ===\n{out.getvalue()}",
            file=sys.stderr,
        )


def run(options: argparse.Namespace) -> list[Row]:
    """Measure every figure; returns the table."""
    rows: list[Row] = []
    n_vertices = int(options.vertices)
    leaves = leaf_count(n_vertices)
    with tempfile.TemporaryDirectory(prefix="bench-solver-") as tmp, postgres_database(options.pg_url) as url:
        work = Path(tmp)
        state = open_state(work / "root", url)
        engine = open_engine(state, max_parallel=int(options.parallel))
        try:
            # Exec chain against bare runc, first: on a fresh daemon (the snapshot index is small).
            digest = busybox_layout(work)
            layout = work / "layout"
            solve(engine, llb.oci_layout(str(layout), digest).marshal())  # pull once, outside the timing
            if options.only in (None, "exec"):
                rows += exec_figure(engine, work, layout, digest, int(options.repeat))
            if options.only in (None, "graph"):
                rows += graph_figures(engine, n_vertices, int(options.repeat), work)
            if options.profile:
                # A fresh engine each time, so its vertex threads start under the profiler.
                graph = file_graph(leaves, f"profile-{secrets.token_hex(3)}")
                chain = exec_chain(layout, digest, "profile")
                for label, definition, figure in (
                    ("cold file graph", graph, "graph"),
                    ("cached file graph", graph, "graph"),
                    ("exec chain", chain, "exec"),
                ):
                    if options.only in (None, figure):
                        solve_it = partial(solve_on_fresh_engine, state, definition, int(options.parallel))
                        profile(label, solve_it)
        finally:
            engine.close()
            state.close()
    return rows


def exec_figure(engine: Engine, work: Path, layout: Path, digest: str, repeat: int) -> list[Row]:
    """Figure 2: the exec chain against the bare runc loop, interleaved."""
    bundle = runc_bundle(work)
    runc_root = work / "runc-state"
    solve(engine, exec_chain(layout, digest, "warm"))
    runc_loop(bundle, runc_root, "warm")
    ours, raw = [], []
    for r in range(repeat):
        tag = f"e{r}-{secrets.token_hex(3)}"
        chain = exec_chain(layout, digest, tag)
        ours.append(timed(partial(solve, engine, chain)))
        raw.append(timed(partial(runc_loop, bundle, runc_root, tag)))
        print(f"  exec run {r}: engine {ours[-1]:.2f}s runc loop {raw[-1]:.2f}s", file=sys.stderr)
    ours_s, raw_s = statistics.median(ours), statistics.median(raw)
    return [
        Row(
            f"2. {EXEC_STEPS} exec steps of true (s)",
            ours_s,
            raw_s,
            "s",
            "<= 1.5x",
            ours_s / raw_s <= 1.5,
        )
    ]


def graph_figures(engine: Engine, n_vertices: int, repeat: int, work: Path) -> list[Row]:
    """Figures 1 and 3: the file-op graph cold and cached against the Python writes; peak RSS."""
    leaves = leaf_count(n_vertices)
    graph0 = file_graph(leaves, "warm")
    assert len(graph0.vertices) == n_vertices, len(graph0.vertices)
    print(f"graph: {leaves} mkfile + {n_vertices - leaves} merge vertices", file=sys.stderr)

    # Peak memory: the first cold solve of the full graph.
    rss_before = rss_mb()
    t = timed(lambda: solve(engine, graph0))
    rss_after = rss_mb()
    print(f"first cold solve {t:.2f}s, rss {rss_before:.0f} -> {rss_after:.0f} MB", file=sys.stderr)

    cold, cached, base = [], [], []
    for r in range(repeat):
        tag = f"run{r}-{secrets.token_hex(3)}"
        graph = file_graph(leaves, tag)
        cold.append(timed(partial(solve, engine, graph)))
        cached.append(timed(partial(solve, engine, graph)))
        d = work / f"baseline-{r}"
        d.mkdir()
        base.append(timed(partial(file_baseline, leaves, tag, d)))
        # Kept until the end: removing its 2,000-odd inodes here would slow the next cold solve's
        # file creation (ext4 without a journal skips inodes freed in the last ~30 s).
        print(
            f"  graph run {r}: cold {cold[-1]:.2f}s cached {cached[-1]:.2f}s base {base[-1]:.3f}s",
            file=sys.stderr,
        )
    for r in range(repeat):
        shutil.rmtree(work / f"baseline-{r}")
    cold_s, cached_s, base_s = (statistics.median(x) for x in (cold, cached, base))
    per_cold = (cold_s - base_s) / n_vertices * 1000
    per_cached = cached_s / n_vertices * 1000
    return [
        Row(f"1. {n_vertices}-vertex file graph, cold (s)", cold_s, base_s, "s", "-", None),
        Row(
            "   engine overhead per vertex, cold",
            per_cold,
            base_s / n_vertices * 1000,
            "ms",
            "< 2 ms",
            per_cold < 2,
        ),
        Row(f"1. {n_vertices}-vertex file graph, cached (s)", cached_s, 0.0, "s", "-", None),
        Row(
            "   engine overhead per vertex, cached",
            per_cached,
            0.0,
            "ms",
            "< 0.3 ms",
            per_cached < 0.3,
        ),
        Row(
            f"3. peak RSS, {n_vertices}-vertex solve (MB)",
            rss_after,
            rss_before,
            "MB",
            "< 300 MB",
            rss_after < 300,
        ),
    ]


def print_table(rows: list[Row]) -> None:
    """Markdown, to stdout."""
    print("| figure | buildsvc | baseline | ratio | aim | met |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        ratio = f"{r.ours / r.baseline:.2f}x" if r.baseline else "-"
        base = f"{r.baseline:.3f} {r.unit}" if r.baseline is not None else "-"
        met = "-" if r.met is None else ("yes" if r.met else "**NO**")
        print(f"| {r.figure} | {r.ours:.3f} {r.unit} | {base} | {ratio} | {r.aim} | {met} |")


def main() -> None:
    """Parse the command line, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pg-url", default=os.environ.get("BUILDSVC_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--vertices", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_MAX_PARALLEL,
        help="the solver's max_parallel (default: the daemon's)",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", choices=("graph", "exec"), help="measure one figure (default: all)")
    options = parser.parse_args()
    began = time.monotonic()
    rows = run(options)
    print_table(rows)
    print(
        f"\nmedian of {options.repeat} interleaved runs; whole run {time.monotonic() - began:.0f}s "
        f"on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
