"""The read commands through a daemon: ``buildsvc --addr ... workers|du|history ...|prune``, whole
process wall time, beside Docker's nearest commands and (with ``--baseline``) another tree's client,
all in the same run.

Run (as root): ``.venv/bin/python -m benchmarks.commands [--repeat 9] [--baseline DIR] [--no-docker]``.

One ``buildsvc daemon`` subprocess (SQLite) on a temporary root builds the benchmark Dockerfile of
``benchmarks/dockerfile.py`` (FROM + 20 RUN + COPY) once; then each command runs ``--repeat`` times,
this checkout's client and the baseline's (``git archive REV buildsvc migrations | tar -x -C DIR``)
alternating against the same daemon, and the median is printed. The commands only read (``prune``
keeps everything younger than an hour, which is everything here). Docker's side, where it has a
counterpart, runs in the same rounds: ``docker info`` (workers), ``docker system df -v`` (du, which
lists its build cache) and ``docker builder prune -f --filter until=1h``; Docker 20.10 has no build
history commands. Its daemon is ``/work/shared/tools/buildkit-peer``'s.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks.dockerfile import (
    BUILDSVC,
    DOCKER,
    baseline_env,
    compile_trees,
    daemon,
    docker_ready,
    serve_busybox,
    write_context,
)

# (label, buildsvc arguments after --addr, Docker's nearest command or None)
COMMANDS: list[tuple[str, list[str], list[str] | None]] = [
    ("workers", ["workers"], [DOCKER, "info"]),
    ("du", ["du"], [DOCKER, "system", "df", "-v"]),
    (
        "prune (keeps all)",
        ["prune", "--keep-duration", "3600"],
        [DOCKER, "builder", "prune", "-f", "--filter", "until=1h"],
    ),
    ("history ls", ["history", "ls"], None),
    ("history inspect REF", ["history", "inspect", "{ref}"], None),
    ("history logs REF", ["history", "logs", "{ref}"], None),
    ("leaks", ["leaks"], None),
]


def _seconds(cmd: list[str], env: dict[str, str] | None) -> float:
    began = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, env=env)
    spent = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout!r}\n{done.stderr!r}")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--baseline", type=Path, help="A directory holding another buildsvc package.")
    parser.add_argument("--no-docker", action="store_true", help="Measure buildsvc only.")
    options = parser.parse_args()
    compile_trees(options.baseline)
    why_not = "--no-docker" if options.no_docker else docker_ready()
    if why_not:
        print(f"Docker's side not measured: {why_not}", file=sys.stderr)
    docker_env = dict(os.environ, DOCKER_BUILDKIT="1")
    with ExitStack() as stack:
        work = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-commands-", dir="/var/tmp"))
        )
        registry = serve_busybox(stack, work)
        base = f"{registry.host}/busybox:latest"
        context = write_context(work / "ctx", base)
        d = stack.enter_context(daemon(work / "daemon", f"sqlite:///{work / 'd.db'}", registry.host))
        built = subprocess.run(
            [BUILDSVC, "--addr", d.addr, "build", "--progress", "quiet", str(context)],
            check=True,
            capture_output=True,
            text=True,
        )
        ref = re.search(r"build (\w+) completed", built.stdout + built.stderr)[1]  # type: ignore[index]
        sides: list[tuple[str, dict[str, str] | None]] = [("now", None)]
        if options.baseline is not None:
            sides.append(("baseline", baseline_env(options.baseline)))
        rows = []
        for label, args, docker_cmd in COMMANDS:
            cmd = [BUILDSVC, "--addr", d.addr, *(a.format(ref=ref) for a in args)]
            runs: dict[str, list[float]] = {name: [] for name, _ in sides}
            runs["docker"] = []
            for round_ in range(options.repeat + 1):  # the first round warms up
                order = sides if round_ % 2 == 0 else sides[::-1]
                for name, env in order:
                    spent = _seconds(cmd, env)
                    if round_:
                        runs[name].append(spent)
                if docker_cmd is not None and not why_not:
                    spent = _seconds(docker_cmd, docker_env)
                    if round_:
                        runs["docker"].append(spent)
            rows.append((label, {k: statistics.median(v) for k, v in runs.items() if v}))
    print(f"Read commands through a daemon, whole-process wall time, median of {options.repeat}")
    header = ["command", "buildsvc now"] + (["baseline", "now/baseline"] if options.baseline else [])
    header += ["Docker (same run)", "now/Docker"]
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for label, medians in rows:
        now = medians["now"]
        cells = [label, f"{now:.3f} s"]
        if options.baseline:
            cells += [f"{medians['baseline']:.3f} s", f"{now / medians['baseline']:.2f}x"]
        docker_s = medians.get("docker")
        cells += [f"{docker_s:.3f} s", f"{now / docker_s:.2f}x"] if docker_s else ["-", "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
