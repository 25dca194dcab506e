"""The layers of an exported image: reproducible layer tars, whole trees or only what changed.

A build on a base image exports the base's own layer blobs unchanged (same digests as the base
manifest: nothing is re-created or re-compressed, and a push finds them already there or mounts
them) plus ONE layer with what the build changed above them. That layer is the difference between
the result's tree and the base's, found as containerd's double-walking differ finds it: the base
tree is read from its layer tars (whiteouts applied, bottom first), the result is walked on disk,
and an entry goes in the layer when it is new or its type, mode, owner, size, link target, device
or modification time differ. A regular file whose times match to the second with no sub-second part
(a tar-extracted file keeps only seconds, so the time proves nothing) is compared by content. What
the base has and the result does not becomes a ``.wh.NAME`` whiteout in its parent. Extended
attributes are not compared.

Every layer is written reproducibly: entries sorted, mtimes 0, no user or group names, gzip
without a name or time. The same result on the same base gives the same layer bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import zstandard

__all__ = ["BaseEntry", "base_tree", "walk_tree", "write_diff_layer", "write_full_layer"]

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
# A tar's PAX mtime goes through a float on its way to the file (about 0.25 us at today's dates):
# times closer than this are the same time.
_TIME_SLACK_NS = 1000


@dataclass(frozen=True, slots=True)
class BaseEntry:
    """What the comparison needs of one entry of a tree."""

    kind: str
    """``file``, ``dir``, ``symlink`` or ``device`` (char, block, fifo)."""
    mode: int
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    link: str = ""
    device: tuple[int, int] = (0, 0)
    content: str = ""
    """sha256 of a regular file's bytes."""


# --- the base tree, from its layer tars ---------------------------------------------------------------


def base_tree(blobs: Sequence[Path]) -> dict[str, BaseEntry]:
    """The tree the layer blobs ``blobs`` (bottom first) make, by path relative to the root."""
    tree: dict[str, BaseEntry] = {}
    for blob in blobs:
        added: set[str] = set()
        with blob.open("rb") as raw, tarfile.open(fileobj=_decompressed(raw), mode="r|") as tar:
            for member in tar:
                name = _clean(member.name)
                if not name:
                    continue
                parent, _, base = name.rpartition("/")
                if base == _OPAQUE:
                    # The directory hides what the layers below put in it, not what this one adds.
                    _drop_under(tree, parent, keep=added)
                elif base.startswith(_WHITEOUT):
                    gone = f"{parent}/{base[len(_WHITEOUT) :]}" if parent else base[len(_WHITEOUT) :]
                    tree.pop(gone, None)
                    _drop_under(tree, gone, keep=set())
                else:
                    entry = _entry_of(member, tar, tree)
                    if entry is not None:
                        if entry.kind != "dir":
                            _drop_under(tree, name, keep=added)
                        tree[name] = entry
                        added.add(name)
    return tree


def _clean(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _drop_under(tree: dict[str, BaseEntry], directory: str, *, keep: set[str]) -> None:
    prefix = f"{directory}/" if directory else ""
    for path in [p for p in tree if p.startswith(prefix) and p not in keep]:
        del tree[path]


def _entry_of(member: tarfile.TarInfo, tar: tarfile.TarFile, tree: dict[str, BaseEntry]) -> BaseEntry | None:
    mode, uid, gid = member.mode & 0o7777, member.uid, member.gid
    mtime_ns = int(member.mtime * 1_000_000_000)
    if member.islnk():
        return tree.get(_clean(member.linkname))  # a hard link is its target's inode
    if member.isreg():
        f = tar.extractfile(member)
        sha = hashlib.sha256()
        if f is not None:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
        return BaseEntry("file", mode, uid, gid, size=member.size, mtime_ns=mtime_ns, content=sha.hexdigest())
    if member.isdir():
        return BaseEntry("dir", mode, uid, gid, mtime_ns=mtime_ns)
    if member.issym():
        return BaseEntry("symlink", mode, uid, gid, mtime_ns=mtime_ns, link=member.linkname)
    if member.ischr() or member.isblk() or member.isfifo():
        kind = {tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p"}[member.type]
        return BaseEntry(f"device-{kind}", mode, uid, gid, device=(member.devmajor, member.devminor))
    return None


def _decompressed(raw: BinaryIO) -> IO[bytes] | gzip.GzipFile:
    # Sniffed, as the unpacker does: Docker schema2 says gzip even for plain tars.
    magic = raw.read(4)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


# --- the result tree, on disk -------------------------------------------------------------------------


def walk_tree(root: Path) -> Iterator[Path]:
    """Every entry under ``root`` (not ``root`` itself), parents first, names sorted."""
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from walk_tree(child)


def _unchanged(path: Path, st: os.stat_result, base: BaseEntry) -> bool:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
    elif stat.S_ISCHR(mode):
        kind = "device-c"
    elif stat.S_ISBLK(mode):
        kind = "device-b"
    elif stat.S_ISFIFO(mode):
        kind = "device-p"
    else:
        return False
    if (kind, st.st_uid, st.st_gid) != (base.kind, base.uid, base.gid):
        return False
    if kind == "symlink":
        return os.readlink(path) == base.link  # a link's own mode means nothing on Linux
    if stat.S_IMODE(mode) != base.mode:
        return False
    if kind.startswith("device-"):
        return (os.major(st.st_rdev), os.minor(st.st_rdev)) == base.device
    if abs(st.st_mtime_ns - base.mtime_ns) >= _TIME_SLACK_NS:
        return False
    if kind == "file":
        if st.st_size != base.size:
            return False
        if base.mtime_ns % 1_000_000_000 == 0:
            return _sha256(path) == base.content
    return True


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


# --- writing layers -----------------------------------------------------------------------------------


class _Hashing:
    """A write-only file that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


@dataclass(frozen=True, slots=True)
class WrittenLayer:
    """A layer tar written to disk: its uncompressed digest, compressed digest and size, entries."""

    diff_id: str
    digest: str
    size: int
    entries: int


def _write(path: Path, entries: Iterator[tuple[str, Path | None]]) -> WrittenLayer:
    count = 0
    with path.open("wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gz:
            plain = _Hashing(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for arcname, source in entries:
                    count += 1
                    if source is None:
                        whiteout = tarfile.TarInfo(arcname)
                        whiteout.mode = 0
                        tar.addfile(whiteout)
                    else:
                        _add(tar, source, arcname)
    return WrittenLayer(plain.digest, compressed.digest, compressed.size, count)


def _add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = tar.gettarinfo(str(path), arcname=arcname)
    if info is None:  # a socket: not in layers
        return
    info.mtime = 0
    info.uname = info.gname = ""
    info.pax_headers = {}
    if info.isreg():
        with path.open("rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def write_full_layer(root: Path | None, path: Path) -> WrittenLayer:
    """``root``'s whole tree (or nothing) as a gzipped tar at ``path``, mtimes 0."""
    if root is None:
        return _write(path, iter(()))
    return _write(path, ((p.relative_to(root).as_posix(), p) for p in walk_tree(root)))


def write_diff_layer(root: Path, base: dict[str, BaseEntry], path: Path) -> WrittenLayer:
    """What ``root`` changed from ``base``, as a gzipped tar at ``path`` (``entries`` 0: no change)."""
    return _write(path, iter(sorted(_changes(root, base), key=_order)))


def _changes(root: Path, base: dict[str, BaseEntry]) -> Iterator[tuple[str, Path | None]]:
    present: set[str] = set()
    dirs: set[str] = {""}
    for path in walk_tree(root):
        rel = path.relative_to(root).as_posix()
        present.add(rel)
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            dirs.add(rel)
        before = base.get(rel)
        if before is None or not _unchanged(path, st, before):
            yield rel, path
    for rel in base:
        if rel in present:
            continue
        parent, _, name = rel.rpartition("/")
        if parent not in dirs:
            # Under a removed directory (its own whiteout covers it), or one that is now a file
            # or a link (which replaces the whole directory when the layer is applied).
            continue
        yield (f"{parent}/{_WHITEOUT}{name}" if parent else f"{_WHITEOUT}{name}"), None


def _order(item: tuple[str, Path | None]) -> list[str]:
    # Parents before their children, names sorted: the same tree gives the same bytes.
    return item[0].split("/")
