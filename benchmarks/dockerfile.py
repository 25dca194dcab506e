"""A Dockerfile built by ``buildsvc build`` beside Docker's BuildKit, in the same run (issue 4).

Run (as root): ``.venv/bin/python -m benchmarks.dockerfile [--repeat 5] [--files 10000]
[--backend sqlite|postgres|all] [--no-docker]``.

The Dockerfile is ``FROM`` busybox + 20 ``RUN`` steps + one ``COPY``. Every figure is the wall time of
a whole client process (``docker build`` / ``buildsvc build``), the median of ``--repeat`` runs, the
sides interleaved (the machines are shared: a burst of load then lands on both):

1. cold: BuildKit after ``docker builder prune -af``; buildsvc after ``buildsvc prune --all`` (both
   keep the base image's blobs; every step runs again);
2. no-op rebuild: the same build again, everything cached;

each through a real daemon subprocess (``buildsvc daemon``, SQLite and/or PostgreSQL) and with the
embedded engine (no daemon: the engine runs in the ``buildsvc build`` process). Then:

3. the daemon's resident memory (``VmRSS`` from ``/proc``) right after it answers, and after the builds;
4. a context of ``--files`` small files (``COPY . /ctx``): the first build (every file sent over gRPC)
   and the rebuild after touching one file (one file sent; the median of three), with the counts the
   client prints, beside BuildKit doing the same (and the baseline's daemon and embedded engine).

Docker's side comes from ``/work/shared/tools/buildkit-peer`` (``dockerd`` + ``localbusybox:latest``);
ours pulls the test busybox image from Debian's ``docker-registry`` on loopback. The embedded CLI has
no ``--insecure-registry`` option (only the daemon does), so its process is started as
``python -P -c`` with that one setting bound when the engine's module loads; everything else is the
ordinary ``buildsvc`` entry point.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import buildsvc
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.support.databases import PostgresTemplates
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry

DOCKER = "/usr/bin/docker"
PEER = "/work/shared/tools/buildkit-peer"
DOCKER_BASE = "localbusybox:latest"
BUILDSVC = str(Path(sys.executable).with_name("buildsvc"))
# How a Python process of ours starts: ``-P`` keeps the working directory off ``sys.path``. Run from
# the checkout, ``python -c`` would otherwise import the checkout's ``buildsvc`` ahead of
# ``PYTHONPATH``, and the embedded [baseline] side would measure this tree, not the baseline's.
PYTHON = [sys.executable, "-P"]
STEPS = 20

# The embedded engine with plain HTTP to the loopback test registry (the daemon has --insecure-registry).
# Bound when the engine's module loads, inside ``main()`` as with the ``buildsvc`` entry point: the
# command's own start (its imports, what ``main`` sets up for them) is measured as it runs.
_EMBEDDED = """
import functools, sys
from importlib.machinery import PathFinder

host = sys.argv.pop(1)


class PlainHttpRegistry:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "buildsvc.daemon.engine":
            return None
        spec = PathFinder.find_spec(name, path, target)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.open_engine = functools.partial(module.open_engine, insecure_hosts=[host])

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, PlainHttpRegistry)
from buildsvc.cli.main import main

main()
"""
_SENT = re.compile(r"context context: (\d+) files, (\d+) bytes; sent (\d+) \((\d+) bytes\)")


def serve_busybox(stack: ExitStack, work: Path) -> TestRegistry:
    """A loopback registry (closed with ``stack``) holding the test busybox image as ``busybox:latest``."""
    registry = stack.enter_context(TestRegistry(work / "registry"))
    with RegistryClient(RegistryOptions(insecure=True)) as client:
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "base")]
        reference = parse_reference(f"{registry.host}/busybox:latest")
        push_image(client, reference, build_image(layers), tag="latest")
    return registry


def dockerfile(base: str) -> str:
    runs = "".join(f"RUN echo step {n} > /step{n}\n" for n in range(STEPS))
    return f"FROM {base}\n{runs}COPY hello.txt /app/hello.txt\n"


def write_context(path: Path, base: str) -> Path:
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(dockerfile(base))
    (path / "hello.txt").write_text("hello\n")
    return path


def write_big_context(path: Path, base: str, files: int) -> Path:
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(f"FROM {base}\nCOPY . /ctx\n")
    (path / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")
    for n in range(files):
        sub = path / f"d{n // 500:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{n:05d}.txt").write_text(f"file {n}\n")
    return path


def touch_one(path: Path) -> None:
    one = path / "d000" / "f00000.txt"
    one.write_text(one.read_text() + "touched\n")


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time of the whole process, and its stderr (checked: a failure stops the benchmark)."""
    began = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stderr


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


@dataclass
class Side:
    """How one side builds, rebuilds and empties its cache."""

    name: str
    build: Callable[[Path, str], list[str]]
    prune: list[str]
    env: dict[str, str] | None = None

    def cold(self, context: Path) -> float:
        run(self.prune, self.env)
        return run(self.build(context, "quiet"), self.env)[0]

    def noop(self, context: Path) -> float:
        return run(self.build(context, "quiet"), self.env)[0]


def docker_side() -> Side:
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    return Side(
        "BuildKit (docker build)",
        lambda ctx, _progress: [DOCKER, "build", "--network=host", "-q", "-t", "bench-dockerfile", str(ctx)],
        [DOCKER, "builder", "prune", "-af"],
        env,
    )


def buildsvc_side(name: str, prefix: list[str], env: dict[str, str] | None = None) -> Side:
    return Side(
        name,
        lambda ctx, progress: [*prefix, "build", "--progress", progress, str(ctx)],
        [*prefix, "prune", "--all"],
        env,
    )


def compile_trees(baseline: Path | None) -> None:
    """Compile this checkout's ``buildsvc`` and ``baseline``'s, so both are measured as installed: a
    wheel install compiles the package's bytecode, an editable one does not, and with
    PYTHONDONTWRITEBYTECODE set every buildsvc process would compile it again.
    """
    trees = [Path(buildsvc.__file__).parent] + ([baseline / "buildsvc"] if baseline else [])
    for tree in trees:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(tree)], check=True, stdout=subprocess.DEVNULL
        )


def baseline_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that runs the ``buildsvc`` package of ``tree`` (None: this checkout's)."""
    if tree is None:
        return None
    return dict(os.environ, PYTHONPATH=str(tree.resolve()))


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    addr: str
    log: Path
    rss: dict[str, float] = field(default_factory=dict)


@contextmanager
def daemon(
    work: Path, db_url: str, registry_host: str, env: dict[str, str] | None = None
) -> Iterator[Daemon]:
    sock = work / "buildsvcd.sock"
    log = work / "daemon.log"
    work.mkdir(parents=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *(BUILDSVC, "daemon", "--root", str(work / "root"), "--db", db_url),
                *("--addr", f"unix://{sock}", "--insecure-registry", registry_host),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    d = Daemon(process, f"unix://{sock}", log)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            [BUILDSVC, "--addr", d.addr, "workers"], check=False, capture_output=True
        ).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start:\n{log.read_text()}")
            time.sleep(0.2)
        d.rss["idle after start"] = rss_mb(process.pid)
        yield d
    finally:
        process.terminate()
        process.wait(60)


def interleaved(sides: list[Side], measure: Callable[[Side], float], repeat: int) -> list[float]:
    """Each side measured ``repeat`` times, alternating; the medians in ``sides`` order.

    Each round starts one side further on: a side always measured right after the same other one
    would always run while that one's daemon finishes its build's work (projections, the WAL), a
    bias of up to ~0.15 s on whichever side comes next.
    """
    for side in sides:
        measure(side)  # warm-up: first-run costs (page cache, image unpack) are not the figure
    spent: list[list[float]] = [[] for _ in sides]
    for round_ in range(repeat):
        for k in range(len(sides)):
            n = (round_ + k) % len(sides)
            spent[n].append(measure(sides[n]))
    return [statistics.median(s) for s in spent]


def context_figures(side: Side, context: Path, prune_first: bool, touches: int = 3) -> dict[str, float | int]:
    """The big context's first build, then the rebuild after touching one file, the median of
    ``touches`` (counts: --progress plain, of the first build and the last rebuild).
    """
    if prune_first:
        run(side.prune, side.env)
    first, err = run(side.build(context, "plain"), side.env)
    rebuilds = []
    for _ in range(max(1, touches)):
        touch_one(context)
        again, err2 = run(side.build(context, "plain"), side.env)
        rebuilds.append(again)
    out: dict[str, float | int] = {"first": first, "touched": statistics.median(rebuilds)}
    for key, text in (("first", err), ("touched", err2)):
        if m := _SENT.search(text):
            out[f"{key} files sent"], out[f"{key} bytes sent"] = int(m[3]), int(m[4])
    return out


def docker_ready() -> str | None:
    """None when dockerd answers (starting it with the peer script), else the reason it cannot."""
    if not Path(PEER).exists():
        return f"{PEER} is missing"
    done = subprocess.run(["sh", PEER], check=False, capture_output=True, text=True)
    if done.returncode:
        return f"{PEER} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--no-docker", action="store_true", help="Measure buildsvc only.")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="A directory holding another buildsvc package and its migrations (e.g. `git archive HEAD "
        "buildsvc migrations | tar -x -C DIR`): its daemon and embedded sides are measured too, "
        "interleaved with this checkout's.",
    )
    options = parser.parse_args()
    compile_trees(options.baseline)
    repeat = max(1, options.repeat)
    backends = ["sqlite", "postgres"] if options.backend == "all" else [options.backend]
    why_not = "--no-docker" if options.no_docker else docker_ready()
    if why_not:
        print(f"BuildKit side not measured: {why_not}", file=sys.stderr)
    rows: list[tuple[str, str, float, float | None]] = []
    memory: list[tuple[str, str, float]] = []
    contexts: list[tuple[str, dict[str, float | int]]] = []
    with ExitStack() as stack:
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dockerfile-", dir="/var/tmp"))
        )
        registry = serve_busybox(stack, work)
        base = f"{registry.host}/busybox:latest"
        ours_ctx = write_context(work / "ctx-buildsvc", base)
        docker_ctx = write_context(work / "ctx-docker", DOCKER_BASE)
        docker = None if why_not else docker_side()
        variants: list[tuple[str, Path | None]] = [("", None)]
        if options.baseline is not None:
            variants.append((" [baseline]", options.baseline))
        embeddeds: list[Side] = []
        for suffix, tree in variants:
            tag = "-baseline" if tree else ""
            embeddeds.append(
                buildsvc_side(
                    f"buildsvc embedded (SQLite){suffix}",
                    [*PYTHON, "-c", _EMBEDDED, registry.host, "--root", str(work / f"embedded{tag}")],
                    baseline_env(tree),
                )
            )
        pg = PostgresTemplates() if "postgres" in backends else None
        if pg is not None:
            stack.callback(pg.close)
        served: list[tuple[str, Side, Daemon]] = []
        for backend in backends:
            for suffix, tree in variants:
                tag = "-baseline" if tree else ""
                if backend == "sqlite":
                    db_url = f"sqlite:///{work / f'daemon-sqlite{tag}.db'}"
                else:
                    assert pg is not None
                    db_url = stack.enter_context(pg.fresh())
                env = baseline_env(tree)
                d = stack.enter_context(daemon(work / f"daemon-{backend}{tag}", db_url, registry.host, env))
                name = f"buildsvc daemon ({backend}){suffix}"
                served.append((backend + suffix, buildsvc_side(name, [BUILDSVC, "--addr", d.addr], env), d))
        ours = [side for _, side, _ in served] + embeddeds

        def per_side(side: Side, kind: str) -> float:
            ctx = docker_ctx if side is docker else ours_ctx
            return side.cold(ctx) if kind == "cold" else side.noop(ctx)

        for kind in ("cold", "noop"):
            sides = ([docker] if docker else []) + ours
            print(f"measuring {kind} ({len(sides)} sides x {repeat})...", file=sys.stderr)
            medians = interleaved(sides, functools.partial(per_side, kind=kind), repeat)
            baseline = medians[0] if docker else None
            start = 1 if docker else 0
            for side, seconds in zip(sides[start:], medians[start:], strict=True):
                rows.append((kind, side.name, seconds, baseline))
        for backend, _, d in served:
            d.rss["after the builds"] = rss_mb(d.process.pid)
            memory.extend((backend, when, mb) for when, mb in d.rss.items())

        print(f"measuring a {options.files}-file context...", file=sys.stderr)
        if docker:
            big = write_big_context(work / "big-docker", DOCKER_BASE, options.files)
            contexts.append((docker.name, context_figures(docker, big, prune_first=True)))
        # The first backend's daemon and the embedded engine, each also as the baseline when given.
        daemons = [side for _, side, _ in served][: len(variants)]
        for n, side in enumerate(daemons + embeddeds):
            big = write_big_context(work / f"big-buildsvc-{n}", base, options.files)
            contexts.append((side.name, context_figures(side, big, prune_first=True)))
        for point in sorted(_mounts_under(work), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
    report(rows, memory, contexts, repeat, docker is not None, options.files)


def interpreter() -> str:
    """The CPython the buildsvc sides run on: how it was built moves every command's start by 15-25%
    (pyenv's default build against Debian's, benchmarks/README.md).
    """
    config = sysconfig.get_config_var("CONFIG_ARGS") or ""
    flags = [flag for flag in ("--enable-optimizations", "--with-lto") if flag in config]
    how = ", ".join(flags) if flags else "neither --enable-optimizations nor --with-lto"
    return f"Python {platform.python_version()}, {os.path.realpath(sys.executable)} (configure args: {how})"


def _mounts_under(work: Path) -> list[str]:
    return [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(work))
    ]


def report(
    rows: list[tuple[str, str, float, float | None]],
    memory: list[tuple[str, str, float]],
    contexts: list[tuple[str, dict[str, float | int]]],
    repeat: int,
    with_docker: bool,
    files: int,
) -> None:
    aims = {"cold": 1.0, "noop": 1.5}
    print(f"FROM + {STEPS} RUN + COPY, whole-process wall time, median of {repeat}")
    print(f"buildsvc runs on {interpreter()}")
    print("| build | buildsvc | BuildKit (same run) | ratio | aim |")
    print("| --- | --- | ---: | ---: | ---: |")
    ratios: dict[str, float] = {}
    for kind, name, ours, base in rows:
        label = "cold" if kind == "cold" else "no-op rebuild"
        if base is None:
            print(f"| {label} | {name} {ours:.3f} s | - | - | |")
            continue
        ratio = ours / base
        ratios[f"{kind} {name}"] = round(ratio, 2)
        aim = f"<= {aims[kind]}x" if "daemon" in name or kind == "cold" else "(info)"
        print(f"| {label} | {name} {ours:.3f} s | {base:.3f} s | {ratio:.2f}x | {aim} |")
    print()
    print("| daemon | when | VmRSS | aim |")
    print("| --- | --- | ---: | ---: |")
    for backend, when, mb in memory:
        print(f"| {backend} | {when} | {mb:.1f} MB | < 120 MB |")
    print()
    print(f"{files}-file context (COPY . /ctx): first build, then after touching one file (median of 3)")
    print("| side | first build | files (bytes) sent | after touching one | files (bytes) sent |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, f in contexts:
        sent1 = f"{f.get('first files sent', '-')} ({f.get('first bytes sent', '-')})"
        sent2 = f"{f.get('touched files sent', '-')} ({f.get('touched bytes sent', '-')})"
        print(f"| {name} | {f['first']:.3f} s | {sent1} | {f['touched']:.3f} s | {sent2} |")
    if with_docker:
        print(json.dumps(ratios))


if __name__ == "__main__":
    main()
