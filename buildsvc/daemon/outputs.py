"""Outputs the client writes itself: staged under the daemon root until the client downloads them.

As BuildKit streams a ``local``/``tar``/``oci`` output to buildctl over the session, a client of
this daemon asks for it with the attr ``client-dest`` (the path on the client's machine, or ``-``
for its stdout; recorded, never used here) instead of ``dest`` (a path on the daemon host). The
Solve numbers such an exporter ``client-output=<n>`` (its position in the request), the exporter
writes ``ROOT/outputs/<build-ref>/<n>/payload`` (for ``local`` a tar of the tree, which the client
unpacks) and :func:`seal` writes its digest and size beside it. The client then fetches it with
``Content.Download`` (see ``api/content_server.py``), after which it is removed and
``OutputFetched`` recorded. A client that never comes leaves it until the next prune or daemon
start, which remove every staging whose build is not running (``OutputDiscarded``); a prune that
runs between a Solve's end and its client's Download takes the output too (NotFound for the client).
A client that leaves in the middle of a Download leaves the staging for another try.

The staging is not a snapshot: the leak report's disk scan (snapshots and mounts) never sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.store import EventStore

__all__ = [
    "CLIENT_DEST",
    "CLIENT_OUTPUT",
    "STAGED_TYPES",
    "OutputStaging",
    "StagedOutput",
    "is_client_output",
    "seal",
    "staging_payload",
]

CLIENT_DEST = "client-dest"
"""Exporter attr: the output goes to the client, which writes it here (on its own machine)."""
CLIENT_OUTPUT = "client-output"
"""Exporter attr set by the daemon: the output's number (its position among the Solve's exporters)."""
STAGED_TYPES = ("local", "tar", "oci")
_PAYLOAD = "payload"
_META = "meta.json"
_CHUNK = 1 << 20


def is_client_output(attrs: Mapping[str, str]) -> bool:
    """Whether the exporter ``attrs`` ask for an output the client downloads."""
    return CLIENT_DEST in attrs


@dataclass(frozen=True, slots=True, kw_only=True)
class StagedOutput:
    """One sealed output waiting for its client."""

    build_ref: str
    index: int
    exporter: str
    digest: str
    """sha256 of the payload: exactly the bytes the client receives."""
    size: int
    path: Path

    def response(self) -> dict[str, str]:
        """The exporter response keys that say what was exported and that it went to the client."""
        return {
            f"{self.exporter}.to": "client",
            f"{self.exporter}.digest": self.digest,
            f"{self.exporter}.size": str(self.size),
        }

    def chunks(self) -> Iterator[bytes]:
        """The payload, in pieces well under gRPC's message limit."""
        with self.path.open("rb") as f:
            while data := f.read(_CHUNK):
                yield data


def _check_ref(build_ref: str) -> str:
    # The ref names a directory: nothing that could leave ROOT/outputs.
    if not build_ref or build_ref in (".", "..") or "/" in build_ref or "\0" in build_ref:
        raise InvalidInput(f"not a build ref: {build_ref!r}")
    return build_ref


def _output_dir(root: Path, build_ref: str, index: int) -> Path:
    if index < 0:
        raise InvalidInput(f"output index must be 0 or more, got {index}")
    return root / "outputs" / _check_ref(build_ref) / str(index)


def staging_payload(root: Path, build_ref: str, index: int) -> Path:
    """A fresh, empty place for output ``index`` of ``build_ref`` (what an earlier try left is gone)."""
    where = _output_dir(root, build_ref, index)
    shutil.rmtree(where, ignore_errors=True)  # a resumed build exports again
    where.mkdir(parents=True)
    return where / _PAYLOAD


def seal(root: Path, build_ref: str, index: int, exporter: str) -> StagedOutput:
    """Record the written payload's digest and size beside it: from now on it can be downloaded."""
    where = _output_dir(root, build_ref, index)
    digest = hashlib.sha256()
    size = 0
    with (where / _PAYLOAD).open("rb") as f:
        while data := f.read(_CHUNK):
            digest.update(data)
            size += len(data)
    staged = StagedOutput(
        build_ref=build_ref,
        index=index,
        exporter=exporter,
        digest=f"sha256:{digest.hexdigest()}",
        size=size,
        path=where / _PAYLOAD,
    )
    tmp = where / f".{_META}.tmp"
    tmp.write_text(json.dumps({"exporter": exporter, "digest": staged.digest, "size": size}))
    os.replace(tmp, where / _META)
    return staged


class OutputStaging:
    """The staged outputs of one daemon root: found, downloaded once, discarded when abandoned."""

    def __init__(self, root: Path, store: EventStore) -> None:
        self.root = root
        self.store = store
        self._lock = threading.Lock()
        self._busy: set[tuple[str, int]] = set()

    def find(self, build_ref: str, index: int) -> StagedOutput:
        """The sealed output ``index`` of ``build_ref`` (NotFound naming why it is not there)."""
        where = _output_dir(self.root, build_ref, index)
        try:
            meta = json.loads((where / _META).read_text())
        except FileNotFoundError:
            raise NotFound(
                f"build {build_ref!r} has no output {index} waiting for download (never asked for "
                "with client-dest, already downloaded, or removed by a prune or a daemon restart)"
            ) from None
        return StagedOutput(
            build_ref=build_ref,
            index=index,
            exporter=str(meta["exporter"]),
            digest=str(meta["digest"]),
            size=int(meta["size"]),
            path=where / _PAYLOAD,
        )

    @contextmanager
    def downloading(self, build_ref: str, index: int) -> Iterator[StagedOutput]:
        """The output, kept from prune while a client reads it (one reader at a time)."""
        key = (build_ref, index)
        with self._lock:
            if key in self._busy:
                raise InvalidInput(f"output {index} of build {build_ref!r} is being downloaded already")
            staged = self.find(build_ref, index)
            self._busy.add(key)
        try:
            yield staged
        finally:
            with self._lock:
                self._busy.discard(key)

    def delivered(self, staged: StagedOutput, *, actor: str = "") -> None:
        """The client has every byte: record it, then remove the staging."""
        self.store.append(
            f"outputs-{staged.build_ref}",
            [
                ev.OutputFetched(
                    build_ref=staged.build_ref,
                    index=staged.index,
                    exporter=staged.exporter,
                    digest=staged.digest,
                    size=staged.size,
                )
            ],
            actor=actor,
        )
        self._remove(staged.build_ref, staged.index)

    def discard(self, *, keep: Callable[[str], bool], reason: str, actor: str) -> list[tuple[str, int]]:
        """Remove every staging whose build ``keep`` does not keep (and nobody downloads now), for
        ``actor`` (who pruned, or the daemon restarting).
        """
        base = self.root / "outputs"
        if not base.is_dir():
            return []
        removed: list[tuple[str, int]] = []
        for build_dir in sorted(base.iterdir()):
            ref = build_dir.name
            if keep(ref):
                continue
            for entry in sorted(build_dir.iterdir()):
                index = int(entry.name) if entry.name.isdigit() else -1
                with self._lock:
                    if (ref, index) in self._busy:
                        continue
                    # Record, then act: the log says why this output never reached its client.
                    self.store.append(
                        f"outputs-{ref}",
                        [ev.OutputDiscarded(build_ref=ref, index=index, reason=reason)],
                        actor=actor,
                    )
                    shutil.rmtree(entry, ignore_errors=True)
                removed.append((ref, index))
            _remove_if_empty(build_dir)
        return removed

    def _remove(self, build_ref: str, index: int) -> None:
        where = _output_dir(self.root, build_ref, index)
        shutil.rmtree(where, ignore_errors=True)
        _remove_if_empty(where.parent)


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another output of the build waits), or gone
        path.rmdir()
