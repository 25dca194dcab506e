"""A local cache import's next layers, verified and unpacked ahead of the unpack that takes them.

An imported record is unpacked when something reads its result (hits are lazy), layer by layer up
its chain: the top of a cached chain at an export unpacks every layer of it. While one layer is
unpacked, :class:`UnpackAhead` unpacks the next ones of the chain (at most ``depth`` ahead, two at
a time) into private directories under
``<root>/cache/unpack-ahead``: each checked against its digest as it is unpacked (a plain tar whose
digest is its diff id, ``compression=uncompressed``: the unpacker's hash is the digest check), the
blob file the same one before and after. Nothing is recorded and no snapshot is made: a staged
layer is only files in a directory nobody else reads. The hit that needs one takes it
(:meth:`UnpackAhead.take`) and moves its entries into the new snapshot's upper directory (a rename
each, same filesystem), then commits as any unpack. One that failed or is not there yet when the
hit has to go on is simply unpacked the usual way (its error, if any, is that unpack's).

Staged layers nobody took are removed when they are older than :data:`STALE_AFTER` seconds (looked
at whenever more are staged), when the imports are dropped, and at the next start (a directory
of a process that is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from buildsvc.cache.imports import ImportLayer
from buildsvc.cache.layout import stat_identity
from buildsvc.cache.local import is_compressed
from buildsvc.sources import apply_layer
from buildsvc.sources.unpack import OVERLAY_OPAQUE_XATTR, WhiteoutMode

__all__ = ["STALE_AFTER", "UnpackAhead", "move_staged"]

STALE_AFTER = 60.0
"""Seconds a staged layer nobody took is kept."""


@dataclass(slots=True)
class _Staged:
    future: Future[Path]
    started: float


class UnpackAhead:
    """Layers unpacked ahead into ``<root>/cache/unpack-ahead/<pid>-<id>`` (see the module doc)."""

    def __init__(self, root: Path, *, depth: int = 4, threads: int = 2) -> None:
        base = root / "cache" / "unpack-ahead"
        _remove_dead(base)
        self.dir = base / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.depth = depth
        self._staged: dict[str, _Staged] = {}
        self.taken = 0
        """Staged layers handed to a hit so far."""
        self.failed = 0
        """Layers whose unpack ahead failed (a corrupt or changed blob...): each left to its hit."""
        self.usable = True
        """False once a staged layer could not be moved into a snapshot (another filesystem)."""
        self._sweep: threading.Timer | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cache-unpack-ahead")
        self._closer = weakref.finalize(self, _close, self._pool, self.dir, self._staged, self._lock)

    def close(self) -> None:
        """Stop staging and remove what was staged (waits for the unpacks under way)."""
        self._closer()

    def stage(self, layers: Sequence[ImportLayer], blob_path: Callable[[ImportLayer], Path | None]) -> None:
        """Start unpacking ``layers`` (each once); ``blob_path``: a layer's plain-tar blob, or None
        when it cannot be staged (its unpack then happens at its hit, as usual).
        """
        self._drop_stale()
        if not self.usable:
            return
        for layer in layers[: self.depth]:
            path = blob_path(layer)
            if path is None:
                continue
            with self._lock:
                if layer.key in self._staged:
                    continue
                future: Future[Path] = Future()
                self._staged[layer.key] = _Staged(future, time.monotonic())
            self._pool.submit(self._unpack, layer, path, future)
            self._arm_sweep()

    def staging(self, key: str) -> bool:
        """Whether layer ``key`` is staged or being staged."""
        with self._lock:
            return key in self._staged

    def drop(self, keys: Sequence[str]) -> None:
        """Forget (and remove, once its unpack is done) what was staged for layers ``keys``."""
        with self._lock:
            dropped = [s for key in keys if (s := self._staged.pop(key, None)) is not None]
        for s in dropped:
            s.future.add_done_callback(_remove_result)

    def take(self, layer: ImportLayer) -> Path | None:
        """The directory layer ``layer`` was unpacked into (waiting for an unpack under way), now the
        caller's to move from and remove; None when it was not staged or its unpack failed.
        """
        with self._lock:
            staged = self._staged.pop(layer.key, None)
        if staged is None:
            return None
        try:
            path = staged.future.result()
        except Exception:  # the usual unpack at the hit reports it
            return None
        with self._lock:
            self.taken += 1
        return path

    def _unpack(self, layer: ImportLayer, blob: Path, future: Future[Path]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        dest = self.dir / uuid.uuid4().hex
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            os.mkdir(dest, 0o755)
            with blob.open("rb") as f:
                before = stat_identity(os.fstat(f.fileno()))
                if is_compressed(f.read(4)) or layer.blob != layer.diff_id:
                    # Its diff id is not its digest: the blob must be hashed on its own (at the hit).
                    raise ValueError(f"layer blob {layer.blob} is not a plain tar named by its diff id")
            if layer.size and before[2] != layer.size:
                raise ValueError(f"layer blob {layer.blob}: {before[2]} bytes, not {layer.size}")
            apply_layer(
                str(blob),
                str(dest),
                # As the hit would unpack into the upper directory: overlay whiteouts over a
                # parent; a bottom layer's whiteouts carried out (nothing below to hide).
                mode=WhiteoutMode.OVERLAY if layer.parent else WhiteoutMode.DELETE,
                layer=layer.blob,
                expected_diff_id=layer.diff_id,  # == the digest: the unpack's hash is the check
            )
            if stat_identity(os.stat(blob)) != before:
                raise ValueError(f"layer blob {layer.blob} changed while it was unpacked")
        except BaseException as e:
            shutil.rmtree(dest, ignore_errors=True)
            with self._lock:
                self.failed += 1
            future.set_exception(e)
            return
        future.set_result(dest)

    def _drop_stale(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [
                key for key, s in self._staged.items() if s.future.done() and now - s.started > STALE_AFTER
            ]
            dropped = [self._staged.pop(key) for key in stale]
        for s in dropped:
            _remove_result(s.future)

    def _arm_sweep(self) -> None:
        """Look for stale layers once they can be (a solve that stopped hitting stages no more)."""
        with self._lock:
            if self._sweep is not None or not self._staged:
                return
            self._sweep = threading.Timer(STALE_AFTER + 1, self._swept)
            self._sweep.daemon = True
            self._sweep.start()

    def _swept(self) -> None:
        with self._lock:
            self._sweep = None
        self._drop_stale()
        self._arm_sweep()


def _remove_result(future: Future[Path]) -> None:
    if future.exception() is None:
        shutil.rmtree(future.result(), ignore_errors=True)


def move_staged(staged: Path) -> Callable[[str, WhiteoutMode], None]:
    """A snapshot fill (see ``_unpack_layer``) that moves a staged layer's entries into the upper
    directory (renames: the staging directory is on the snapshots' filesystem), then removes it.
    """

    def fill(target: str, mode: WhiteoutMode) -> None:
        for name in os.listdir(staged):
            os.rename(staged / name, os.path.join(target, name))
        with contextlib.suppress(OSError):  # an opaque marker at the layer's root
            os.setxattr(target, OVERLAY_OPAQUE_XATTR, os.getxattr(staged, OVERLAY_OPAQUE_XATTR))
        os.rmdir(staged)

    return fill


def _close(
    pool: ThreadPoolExecutor, directory: Path, staged: dict[str, _Staged], lock: threading.Lock
) -> None:
    pool.shutdown(wait=True, cancel_futures=True)
    with lock:
        left = list(staged.values())
        staged.clear()
    for s in left:
        if not s.future.done():  # cancelled before it ran: a take() waiting gets no directory
            s.future.set_exception(RuntimeError("unpack ahead closed"))
    shutil.rmtree(directory, ignore_errors=True)


def _remove_dead(base: Path) -> None:
    """Remove the staging directories of processes that are gone (a crash left them)."""
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        pid = entry.name.partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
