"""Pulling a multi-layer image over a slow link: ``ImageStore.pull`` (fetch and unpack) beside the
same blobs downloaded one after another with no unpacking, and (with ``--baseline``) another tree's
pull, in the same run.

Run (as root): ``.venv/bin/python -m benchmarks.pull [--repeat 5] [--mbps 40] [--baseline DIR]``.

An image of four gzip layers (each 160 files of 48 KiB: 7.5 MiB of blob, incompressible) is pushed
to a loopback registry (Debian's ``docker-registry``) and served through a proxy that holds each
connection to ``--mbps`` megabytes a second and adds 20 ms before each response, as a registry
over a network would. Each round pulls it into a fresh content store and overlay snapshotter, one
Python process per pull, timed around ``pull`` alone; the sides rotate each round. The download
baseline fetches the config and the layers one after another through the same proxy with the
registry client, into a fresh content store, and unpacks nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path

from benchmarks.dockerfile import baseline_env, compile_trees
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.support.images import build_image, make_layer, push_image
from tests.support.registry import TestRegistry

LAYERS = 4
FILES_PER_LAYER = 160
FILE_BYTES = 48 << 10
LATENCY = 0.020

_PULL = """
import sys, time
from buildsvc.executors import OverlaySnapshotter
from buildsvc.sources import ImageStore, RegistryClient, RegistryOptions

source, work = sys.argv[1:]
with RegistryClient(RegistryOptions(insecure=True)) as client:
    store = ImageStore(f"{work}/content", registry=client)
    began = time.perf_counter()
    store.pull(source, OverlaySnapshotter(f"{work}/snapshots"))
    print(time.perf_counter() - began)
"""

_DOWNLOAD = """
import sys, time
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.content import ContentStore
from buildsvc.sources.manifests import parse_manifest_or_index
from buildsvc.sources.reference import parse_reference

source, work = sys.argv[1:]
ref = parse_reference(source)
with RegistryClient(RegistryOptions(insecure=True)) as client:
    store = ContentStore(f"{work}/content")
    began = time.perf_counter()
    manifest = parse_manifest_or_index(source, *client.get_manifest(ref))
    for desc in (manifest.config, *manifest.layers):
        client.fetch_blob(ref, desc, store)
    print(time.perf_counter() - began)
"""


class SlowLink:
    """A TCP proxy to ``upstream``: each connection's responses at ``rate`` bytes a second, each
    after ``LATENCY`` seconds.
    """

    def __init__(self, upstream: tuple[str, int], rate: float) -> None:
        self.upstream, self.rate = upstream, rate
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        idle_since = time.monotonic()
        try:
            while data := src.recv(64 << 10):
                if slow:
                    if time.monotonic() - idle_since > LATENCY:  # a new response: its latency first
                        time.sleep(LATENCY)
                    time.sleep(len(data) / self.rate)
                dst.sendall(data)
                idle_since = time.monotonic()
        except OSError:
            pass  # the other side closed: so does this one
        finally:
            for end in (src, dst):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def layer_tar(n: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for k in range(FILES_PER_LAYER):
            info = tarfile.TarInfo(f"layer{n}/f{k:03d}.bin")
            info.size, info.mtime, info.mode = FILE_BYTES, 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(os.urandom(FILE_BYTES)))
    return out.getvalue()


def _timed(snippet: str, tree: Path | None, source: str, work: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-P", "-c", snippet, source, str(work)],
        check=True,
        capture_output=True,
        text=True,
        env=baseline_env(tree),  # None: this checkout's package
    )
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--mbps", type=float, default=40.0, help="Megabytes a second per connection.")
    parser.add_argument("--baseline", type=Path, help="A directory holding another buildsvc package.")
    options = parser.parse_args()
    compile_trees(options.baseline)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pull-", dir="/var/tmp")))
        registry = stack.enter_context(TestRegistry(work / "registry"))
        layers = [make_layer(layer_tar(n), "gzip") for n in range(LAYERS)]
        with RegistryClient(RegistryOptions(insecure=True)) as client:
            push_image(client, parse_reference(f"{registry.host}/bench/pull:latest"), build_image(layers))
        host, port = registry.host.split(":")
        link = SlowLink((host, int(port)), options.mbps * 1e6)
        stack.callback(link.close)
        source = f"{link.host}/bench/pull:latest"
        sides: list[tuple[str, Callable[[Path], float]]] = [
            ("download only, one blob after another", lambda w: _timed(_DOWNLOAD, None, source, w)),
            ("buildsvc pull", lambda w: _timed(_PULL, None, source, w)),
        ]
        if options.baseline:
            base = options.baseline
            sides.append(("baseline pull", lambda w: _timed(_PULL, base, source, w)))
        spent: dict[str, list[float]] = {name: [] for name, _ in sides}
        for round_ in range(options.repeat + 1):  # round 0 warms up, not counted
            for k in range(len(sides)):
                name, run = sides[(round_ + k) % len(sides)]
                target = Path(tempfile.mkdtemp(dir=work))
                seconds = run(target)
                subprocess.run(["umount", "-R", str(target)], check=False, capture_output=True)
                shutil.rmtree(target)
                if round_:
                    spent[name].append(seconds)
    blob_mib = sum(layer.descriptor.size for layer in layers) / (1 << 20)
    print(
        f"Pulling {LAYERS} layers ({blob_mib:.1f} MiB of gzip blobs) at {options.mbps:g} MB/s a connection, "
        f"{LATENCY * 1000:.0f} ms a response; median of {options.repeat}"
    )
    print("| side | seconds | / download only |")
    print("| --- | ---: | ---: |")
    reference = statistics.median(spent[sides[0][0]])
    for name, values in spent.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} s | {median / reference:.2f}x |")


if __name__ == "__main__":
    main()
