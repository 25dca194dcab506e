"""How each op kind runs on a worker, through the ports in ``worker.py`` only.

A handler has two jobs: say what a vertex's result depends on beyond its inputs (``content_key``:
the files a local source selects, the manifest an image tag points to) and make the result
(``run``: committed snapshots, one per output, or ``None`` for an empty result).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from buildsvc.errors import InvalidInput
from buildsvc.events import catalog as ev
from buildsvc.solver import contenthash
from buildsvc.solver.context import VertexContext
from buildsvc.solver.http_source import HttpDownloader
from buildsvc.solver.ops import (
    ATTR_HTTP_CHECKSUM,
    ATTR_HTTP_FILENAME,
    ATTR_HTTP_PERM,
    ATTR_LOCAL_EXCLUDE,
    ATTR_LOCAL_INCLUDE,
    CopyAction,
    DiffOp,
    ExecOp,
    FileAction,
    FileOp,
    MergeOp,
    MountType,
    NetMode,
    Op,
    SourceOp,
    Vertex,
    output_count,
)
from buildsvc.solver.worker import (
    ExecSpec,
    FileBackend,
    ImageSource,
    LayerBackend,
    Mount,
    MountKind,
    NetworkMode,
    ProcessSpec,
    SnapshotMount,
    Worker,
)

__all__ = ["Backends", "OpHandler", "handler_for"]


ContentReader = Callable[[int, str, Callable[[Path], str]], str]
"""``(input index, selection, compute) -> checksum``: runs ``compute`` on input ``index``'s tree
(mounted read-only), remembering the result per snapshot and ``selection``."""


class OpHandler(Protocol):
    """Runs one kind of op."""

    def content_key(self, vertex: Vertex, worker: Worker, local_dirs: Mapping[str, Path]) -> str:
        """What the result depends on besides the op and its inputs ("" when nothing)."""
        ...

    def input_keys(self, vertex: Vertex, keys: list[str | None], read: ContentReader) -> list[str | None]:
        """The inputs' part of the cache key: by default their own keys (``keys``), unchanged."""
        ...

    def run(self, vertex: Vertex, inputs: Sequence[str | None], ctx: VertexContext) -> tuple[str | None, ...]:
        """Make the vertex's results: one committed snapshot (or None) per output."""
        ...


def _never(path: Path) -> bool:
    return False


def _unknown(path: Path) -> Mapping[str, contenthash.KnownFile] | None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Backends:
    """The worker-side implementations the handlers call."""

    files: FileBackend
    layers: LayerBackend
    images: ImageSource | None = None
    http: HttpDownloader | None = None
    """Downloads of ``https://`` and ``http://`` sources (a cache under the solver's state dir)."""
    frozen_dir: Callable[[Path], bool] = _never
    """Whether a local source's directory is never written again (a tree of the daemon's context
    store): its files are then hard linked into the source's snapshot, not copied. By default none is.
    """
    tree_files: Callable[[Path], Mapping[str, contenthash.KnownFile] | None] = _unknown
    """A frozen directory's files as its maker recorded them (the context store's manifest), by
    path: a local source's content key then takes their digests instead of reading them."""
    digests: contenthash.FileDigests = field(default_factory=contenthash.FileDigests)
    """The digests of files in trees never written again (inputs, frozen local sources), kept for
    the solver's life: the content keys of a rebuild read only the files that changed."""


def handler_for(op: Op, backends: Backends) -> OpHandler:
    """The handler of ``op``'s kind."""
    match op:
        case ExecOp():
            return ExecHandler()
        case FileOp():
            return FileHandler(backends.files, backends.digests)
        case MergeOp() | DiffOp():
            return LayerHandler(backends.layers)
        case SourceOp():
            return SourceHandler(backends)


# --- exec -----------------------------------------------------------------------------------------

# BuildKit's "sandbox" network is a namespace with connectivity (CNI, or the host's network where no
# CNI is set up). We have no CNI: a sandboxed step gets the host's network, as buildkitd's "auto" mode
# does without CNI; "none" is a namespace with only loopback.
_NETWORK = {NetMode.SANDBOX: NetworkMode.HOST, NetMode.HOST: NetworkMode.HOST, NetMode.NONE: NetworkMode.NONE}


class ExecHandler:
    """Runs a process over its mounts; writable mounts with an output become results."""

    def content_key(self, vertex: Vertex, worker: Worker, local_dirs: Mapping[str, Path]) -> str:
        """Nothing beyond the op and its inputs."""
        return ""

    def input_keys(self, vertex: Vertex, keys: list[str | None], read: ContentReader) -> list[str | None]:
        """The inputs' own keys."""
        return keys

    def run(self, vertex: Vertex, inputs: Sequence[str | None], ctx: VertexContext) -> tuple[str | None, ...]:
        """Prepare the mounts, run the process, commit the outputs."""
        op = vertex.op
        assert isinstance(op, ExecOp)
        outputs: dict[int, str] = {}
        rootfs: SnapshotMount | None = None
        readonly_root = False
        mounts: list[Mount] = []
        # Parents before children, so a mount inside another one's tree lands on top of it.
        for m in sorted(op.mounts, key=lambda m: (m.dest.rstrip("/").count("/"), m.dest)):
            source = inputs[m.input] if m.input is not None else None
            if m.type == MountType.BIND:
                if m.dest == "/" or m.output is not None or not m.readonly:
                    # The root is always a writable snapshot, even when read-only in the container:
                    # the runtime must be able to create mount points (/proc, /dev) in it.
                    active = ctx.prepare(source)
                    mounted = ctx.mount(active)
                    if m.output is not None:
                        outputs[m.output] = active
                else:
                    mounted = (
                        ctx.mount(ctx.view(source)) if source is not None else ctx.mount(ctx.prepare(None))
                    )
                if m.dest == "/":
                    rootfs, readonly_root = mounted, m.readonly
                else:
                    mounts.append(
                        Mount(
                            kind=MountKind.BIND,
                            dest=m.dest,
                            source=mounted,
                            selector=m.selector or "/",
                            readonly=m.readonly,
                        )
                    )
            elif m.type == MountType.CACHE:
                assert m.cache is not None
                directory = ctx.cache_mount_dir(m.cache.id, m.cache.sharing.value)
                mounts.append(
                    Mount(kind=MountKind.CACHE, dest=m.dest, source=str(directory), readonly=m.readonly)
                )
            elif m.type == MountType.TMPFS:
                size = m.tmpfs.size if m.tmpfs is not None and m.tmpfs.size else None
                mounts.append(Mount(kind=MountKind.TMPFS, dest=m.dest, tmpfs_size=size))
            else:
                raise InvalidInput(
                    f"{m.type.value} mounts are not supported by this daemon yet (mount at {m.dest})"
                )
        if rootfs is None:
            raise InvalidInput("exec has no root mount (a mount at /)")
        spec = ExecSpec(
            process=ProcessSpec(
                args=op.meta.args,
                env=op.meta.env,
                cwd=op.meta.cwd or "/",
                user=op.meta.user,
                valid_exit_codes=op.meta.valid_exit_codes or (0,),
            ),
            rootfs=rootfs,
            mounts=tuple(mounts),
            hostname=op.meta.hostname,
            network=_NETWORK[op.network],
            readonly_root=readonly_root,
            terminal=ctx.terminal,
        )
        with ctx.running():
            ctx.worker.executor.run(spec, stdout=ctx.log.stdout, stderr=ctx.log.stderr, cancel=ctx.cancel)
        results: list[str | None] = [None] * output_count(op)
        for index, active in sorted(outputs.items()):
            results[index] = ctx.commit(active)
        return tuple(results)


# --- file -----------------------------------------------------------------------------------------


class FileHandler:
    """Runs a chain of file actions; each output starts from its base input."""

    def __init__(self, backend: FileBackend, digests: contenthash.FileDigests | None = None) -> None:
        self.backend = backend
        self.digests = digests

    def content_key(self, vertex: Vertex, worker: Worker, local_dirs: Mapping[str, Path]) -> str:
        """Nothing beyond the op and its inputs."""
        return ""

    def input_keys(self, vertex: Vertex, keys: list[str | None], read: ContentReader) -> list[str | None]:
        """An input that is only a copy source counts by the content the copies select, not its key.

        So a copy of one file out of a context stays cached when other files of the context change.
        """
        op = vertex.op
        assert isinstance(op, FileOp)
        n = len(vertex.inputs)
        bases = {a.input for a in op.actions if a.input is not None and a.input < n}
        copies: dict[int, list[CopyAction]] = {}
        for a in op.actions:
            source = a.secondary_input
            if isinstance(a.action, CopyAction) and source is not None and source < n and source not in bases:
                copies.setdefault(source, []).append(a.action)
        result = list(keys)
        for index, actions in copies.items():
            if keys[index] is None:
                continue  # scratch has no content to select
            parts = []
            for c in actions:
                selection = json.dumps(
                    [c.src, c.follow_symlinks, c.allow_wildcard, c.include_patterns, c.exclude_patterns]
                )
                # An input is a committed snapshot: never written again, its digests can be kept.
                checksum = functools.partial(_copy_checksum, copy=c, digests=self.digests)
                parts.append(read(index, selection, checksum))
            result[index] = "content:" + hashlib.sha256("|".join(parts).encode()).hexdigest()
        return result

    def run(self, vertex: Vertex, inputs: Sequence[str | None], ctx: VertexContext) -> tuple[str | None, ...]:
        """Apply the actions onto a copy of each output's base."""
        op = vertex.op
        assert isinstance(op, FileOp)
        bases = sorted(self.backend.output_bases(op, len(inputs)).items())
        results: list[str | None] = [None] * output_count(op)
        # Snapshots are made before ``running`` so that their announcement carries the step's start
        # (one append fewer); the first output's snapshot is announced with the input views.
        actives: dict[int, str] = {}
        readable: list[Path | None] = [None] * len(inputs)
        for i, (output, base) in enumerate(bases):
            parent = inputs[base] if base is not None else None
            if i == 0:
                actives[output], readable = ctx.prepare_reading(parent, inputs)
            else:
                actives[output] = ctx.prepare(parent)
        if not bases:
            readable = ctx.read_inputs(inputs)
        with ctx.running():
            for output, active in actives.items():
                root = Path(ctx.mount(active).path)
                self.backend.apply(op, output, root, readable)
                results[output] = ctx.commit(active)
        return tuple(results)


def _copy_checksum(root: Path, copy: CopyAction, digests: contenthash.FileDigests | None = None) -> str:
    try:
        return contenthash.checksum(
            root,
            (copy.src,),
            include=copy.include_patterns,
            exclude=copy.exclude_patterns,
            follow_links=copy.follow_symlinks,
            digests=digests,
        )
    except contenthash.ContentNotFound:
        # The copy itself will fail and say so; the key only has to differ from any real content.
        return f"missing:{copy.src}"


# --- merge and diff -------------------------------------------------------------------------------


class LayerHandler:
    """MergeOp and DiffOp, materialized as a new layer."""

    def __init__(self, backend: LayerBackend) -> None:
        self.backend = backend

    def content_key(self, vertex: Vertex, worker: Worker, local_dirs: Mapping[str, Path]) -> str:
        """Nothing beyond the op and its inputs."""
        return ""

    def input_keys(self, vertex: Vertex, keys: list[str | None], read: ContentReader) -> list[str | None]:
        """The inputs' own keys."""
        return keys

    def run(self, vertex: Vertex, inputs: Sequence[str | None], ctx: VertexContext) -> tuple[str | None, ...]:
        """Merge the inputs in order, or write the diff of two."""
        op = vertex.op
        if isinstance(op, MergeOp):
            layers = [inputs[i] for i in op.inputs]
            trees = ctx.whole_trees(layers)
            if any(t is not None for t in trees) and all(
                t is not None or layer is None for layer, t in zip(layers, trees, strict=True)
            ):
                # Every input is a whole tree in a plain directory: the merge is a new layer of
                # hard links to their files (no copy, no mount, and no parent to stack on), which
                # the next merge reads in place in turn.
                active = ctx.prepare(None)
                with ctx.running():
                    dest = Path(ctx.mount(active).path)
                    self.backend.merge_into(dest, [t for t in trees if t is not None], link=True)
                return (ctx.commit(active),)
            # The new layer and the views of the layers merged onto it, announced in one append.
            active, views = ctx.prepare_reading(layers[0] if layers else None, layers[1:])
            with ctx.running():
                dest = Path(ctx.mount(active).path)
                self.backend.merge_into(dest, [p for p in views if p is not None])
            return (ctx.commit(active),)
        assert isinstance(op, DiffOp)
        with ctx.running():
            active = ctx.prepare(None)
            dest = Path(ctx.mount(active).path)
            empty = Path(ctx.mount(ctx.prepare(None)).path)
            lower = ctx.read_input(inputs[op.lower]) if op.lower is not None else None
            upper = ctx.read_input(inputs[op.upper]) if op.upper is not None else None
            self.backend.diff_into(dest, lower or empty, upper or empty)
        return (ctx.commit(active),)


# --- sources --------------------------------------------------------------------------------------


def _patterns(attrs: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = attrs.get(name)
    if not raw:
        return ()
    value = json.loads(raw)
    return tuple(value) if isinstance(value, list) else (str(value),)


_HTTP_SCHEMES = ("http", "https")
_HTTP_DEFAULT_PERM = 0o600  # BuildKit's default for a downloaded file


def _http_filename(op: SourceOp) -> str:
    """``http.filename``, else the URL path's last segment (decoded), else ``index`` as BuildKit."""
    given = op.attrs.get(ATTR_HTTP_FILENAME)
    if given:
        return given  # Definition.validate() refused anything but a plain file name
    name = posixpath.basename(unquote(urlsplit(op.identifier).path))
    # A decoded %00 or a path ending in "/.." must not become a name the snapshot cannot hold.
    return "index" if name in ("", ".", "..") or "\0" in name else name


def _http_perm(op: SourceOp) -> int:
    perm = op.attrs.get(ATTR_HTTP_PERM)
    return int(perm.removeprefix("0o"), 8) if perm else _HTTP_DEFAULT_PERM


class SourceHandler:
    """Local contexts, images, OCI layouts and files downloaded over http(s)."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    def _local_dir(self, op: SourceOp, local_dirs: Mapping[str, Path]) -> Path:
        try:
            return local_dirs[op.location]
        except KeyError:
            given = ", ".join(sorted(local_dirs)) or "none"
            raise InvalidInput(
                f"local source {op.location!r} was not sent with the build (sent: {given})"
            ) from None

    def _images(self, op: SourceOp) -> ImageSource:
        if self.backends.images is None:
            raise InvalidInput(f"{op.scheme} sources need an image store, and this solver has none")
        return self.backends.images

    def _http(self, op: SourceOp) -> HttpDownloader:
        if self.backends.http is None:
            raise InvalidInput(f"{op.scheme} sources need a download cache, and this solver has none")
        return self.backends.http

    def content_key(self, vertex: Vertex, worker: Worker, local_dirs: Mapping[str, Path]) -> str:
        """The selected files' checksum for a local context; the manifest digest for an image; the
        pinned checksum, else the downloaded bytes' digest, for an http(s) file.
        """
        op = vertex.op
        assert isinstance(op, SourceOp)
        if op.scheme in _HTTP_SCHEMES:
            return self._http(op).content_digest(op.identifier, op.attrs.get(ATTR_HTTP_CHECKSUM))
        if op.scheme == "local":
            directory = self._local_dir(op, local_dirs)
            frozen = self.backends.frozen_dir(directory)
            return contenthash.checksum(
                directory,
                include=_patterns(op.attrs, ATTR_LOCAL_INCLUDE),
                exclude=_patterns(op.attrs, ATTR_LOCAL_EXCLUDE),
                digests=self.backends.digests if frozen else None,
                known=self.backends.tree_files(directory) if frozen else None,
            )
        if op.scheme in ("docker-image", "oci-layout"):
            return self._images(op).resolve(op.identifier, worker.info.platform)
        raise InvalidInput(f"{op.scheme}:// sources are not supported by this daemon yet ({op.identifier})")

    def input_keys(self, vertex: Vertex, keys: list[str | None], read: ContentReader) -> list[str | None]:
        """Sources have no inputs."""
        return keys

    def run(self, vertex: Vertex, inputs: Sequence[str | None], ctx: VertexContext) -> tuple[str | None, ...]:
        """Copy the local context in, write the downloaded file, or pull the image."""
        op = vertex.op
        assert isinstance(op, SourceOp)
        if op.scheme in _HTTP_SCHEMES:
            return self._run_http(op, ctx)
        if op.scheme == "local":
            source = self._local_dir(op, ctx.local_dirs)
            copy = FileOp(
                actions=(
                    FileAction(
                        action=CopyAction(
                            src="/",
                            dest="/",
                            dir_contents_only=True,
                            include_patterns=_patterns(op.attrs, ATTR_LOCAL_INCLUDE),
                            exclude_patterns=_patterns(op.attrs, ATTR_LOCAL_EXCLUDE),
                            create_dest_path=True,
                        ),
                        input=None,
                        secondary_input=0,
                        output=0,
                    ),
                )
            )
            # A tree the context store made is never written, and this snapshot is committed right
            # after its one copy (no owner, mode or time to change): its files may be the tree's own
            # inodes. A later step that writes one writes a copy (overlay copy-up, native copies).
            link = self.backends.frozen_dir(source)
            with ctx.running():
                active = ctx.prepare(None)
                self.backends.files.apply(copy, 0, Path(ctx.mount(active).path), [source], link_sources=link)
                return (ctx.commit(active),)
        with ctx.running():
            pulled = self._images(op).pull(op.identifier, ctx.worker.info.platform, ctx.worker.snapshotter)
        for layer in pulled.layers:
            if layer.created:
                # Content-addressed layers are made, then recorded: remaking one is harmless.
                ctx.step.record(
                    ev.SnapshotCreated(
                        snapshot_id=layer.key,
                        worker=ctx.worker.info.name,
                        snapshotter=ctx.snapshotter_name,
                        parent=layer.parent,
                        kind="committed",
                    ),
                    ev.SnapshotCommitted(
                        snapshot_id=layer.key, size_bytes=layer.size_bytes, parent=layer.parent
                    ),
                )
        return (pulled.top,)

    def _run_http(self, op: SourceOp, ctx: VertexContext) -> tuple[str | None, ...]:
        """One file, ``/<filename>``, in a new layer on scratch."""
        with ctx.running():
            # Fetched (and verified) before any snapshot exists: a failed download or a checksum
            # mismatch leaves nothing behind, on disk or in the log.
            blob = self._http(op).fetch(op.identifier, op.attrs.get(ATTR_HTTP_CHECKSUM))
            active = ctx.prepare(None)
            dest = Path(ctx.mount(active).path) / _http_filename(op)
            shutil.copyfile(blob, dest)
            os.chmod(dest, _http_perm(op))
            if os.geteuid() == 0:
                # Owned by root as BuildKit makes it; a daemon that is not root cannot give files away.
                os.chown(dest, 0, 0)
            return (ctx.commit(active),)
