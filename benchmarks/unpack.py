"""Applying an image layer (``buildsvc.sources.apply_layer``) beside GNU tar unpacking the same blob.

Run (as root): ``.venv/bin/python -m benchmarks.unpack [--repeat 5] [--baseline DIR]``.

Three gzip layers are made once: the test busybox image's base layer (one 2 MB binary and ~270
symlinks, the FROM of ``benchmarks/dockerfile.py``), 10,000 small files with 1,000 symlinks (the
shape of a distribution's or a language runtime's layer) and two 40 MB files. Each round unpacks each
layer into a fresh directory under ``/var/tmp`` with ``tar -xzf`` (whole process: its start is a
millisecond), with this checkout's ``apply_layer`` and, given ``--baseline DIR`` (``git archive REV
buildsvc | tar -x -C DIR``), with that tree's, each in its own Python process timed around the call
alone; the sides rotate each round and the median is printed. Both keep owners, modes and times, as
root. ``apply_layer`` also hashes the uncompressed stream for the diff id, which tar does not.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.dockerfile import baseline_env, compile_trees

_APPLY = """
import sys, time
from buildsvc.sources.unpack import WhiteoutMode, apply_layer

blob, target = sys.argv[1:]
began = time.perf_counter()
apply_layer(blob, target, mode=WhiteoutMode.OVERLAY, layer=blob)
print(time.perf_counter() - began)
"""


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    return info


def small_files_layer(files: int = 10_000, links: int = 1_000) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(files // 500):
            tar.addfile(_member(f"usr/lib/pkg{d:02d}", tarfile.DIRTYPE))
        for n in range(files):
            data = (f"module {n}\n" * (5 + n % 40)).encode()
            tar.addfile(_member(f"usr/lib/pkg{n // 500:02d}/m{n:05d}.py", size=len(data)), io.BytesIO(data))
        for n in range(links):
            tar.addfile(_member(f"usr/lib/pkg00/l{n:04d}", tarfile.SYMTYPE, link=f"m{n:05d}.py"))
    return out.getvalue()


def big_files_layer(count: int = 2, megabytes: int = 40) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(count):
            data = os.urandom(megabytes << 20)
            tar.addfile(_member(f"opt/big{n}.bin", size=len(data)), io.BytesIO(data))
    return out.getvalue()


def busybox_layer(work: Path) -> bytes:
    from tests.support.images import busybox_layer_tars

    return busybox_layer_tars(work)[0]


def _timed_tar(blob: Path, target: Path) -> float:
    began = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(blob), "-C", str(target)], check=True)
    return time.perf_counter() - began


def _timed_apply(tree: Path | None) -> Callable[[Path, Path], float]:
    """Times ``apply_layer`` of ``tree``'s package (None: this checkout's)."""
    env = baseline_env(tree)

    def run(blob: Path, target: Path) -> float:
        done = subprocess.run(
            [sys.executable, "-P", "-c", _APPLY, str(blob), str(target)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        return float(done.stdout.strip())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="A directory holding another buildsvc package.")
    options = parser.parse_args()
    if shutil.which("tar") is None:
        raise SystemExit("GNU tar is needed for the baseline")
    compile_trees(options.baseline)
    sides: list[tuple[str, Callable[[Path, Path], float]]] = [("GNU tar -xzf", _timed_tar)]
    sides.append(("buildsvc apply_layer", _timed_apply(None)))
    if options.baseline:
        sides.append(("baseline apply_layer", _timed_apply(options.baseline)))
    with tempfile.TemporaryDirectory(prefix="bench-unpack-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        layers = {
            "busybox base (289 entries, 2.4 MB)": busybox_layer(work / "busybox"),
            "10,000 small files + 1,000 symlinks": small_files_layer(),
            "two 40 MB files": big_files_layer(),
        }
        rows = []
        for label, tar in layers.items():
            blob = work / "layer.tar.gz"
            blob.write_bytes(gzip.compress(tar, compresslevel=6, mtime=0))
            spent: dict[str, list[float]] = {name: [] for name, _ in sides}
            for round_ in range(options.repeat + 1):  # round 0 warms the page cache, not counted
                for k in range(len(sides)):
                    name, run = sides[(round_ + k) % len(sides)]
                    target = Path(tempfile.mkdtemp(dir=work))
                    seconds = run(blob, target)
                    shutil.rmtree(target)
                    if round_:
                        spent[name].append(seconds)
            rows.append((label, {name: statistics.median(s) for name, s in spent.items()}))
    names = [name for name, _ in sides]
    print(f"Unpacking a gzip layer, median of {options.repeat}")
    ratios = " buildsvc / tar |" + (" buildsvc / baseline |" if options.baseline else "")
    print("| layer | " + " | ".join(names) + " |" + ratios)
    print("| --- |" + " ---: |" * (len(names) + 1 + bool(options.baseline)))
    for label, medians in rows:
        cells = [f"{medians[name]:.3f} s" for name in names]
        cells.append(f"{medians['buildsvc apply_layer'] / medians['GNU tar -xzf']:.2f}x")
        if options.baseline:
            cells.append(f"{medians['buildsvc apply_layer'] / medians['baseline apply_layer']:.2f}x")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
