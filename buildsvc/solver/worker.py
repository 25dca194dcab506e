"""The port through which the solver runs build steps on a worker.

A worker is an ``Executor`` (runs one process in a container) plus a ``Snapshotter`` (makes the
filesystems it runs on). The solver owns these types; backends live in ``buildsvc.executors`` and
never leak their own types through here. Everything that crosses the port is a frozen dataclass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from buildsvc.solver.ops import FileOp

OutputCallback = Callable[[bytes], None]
"""Receives a process's output in chunks, as they arrive (not line-buffered)."""

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` a process gets when its environment names none (as BuildKit does)."""


class NetworkMode(StrEnum):
    """Which network a process sees."""

    NONE = "none"
    """A fresh network namespace with only ``lo``."""
    HOST = "host"
    """The host's network namespace."""


class MountKind(StrEnum):
    """What a ``Mount`` puts at its destination."""

    BIND = "bind"
    """A snapshot or host directory, bound in."""
    CACHE = "cache"
    """A persistent cache directory (a host path the cache manager owns), bound in read-write."""
    TMPFS = "tmpfs"
    """An empty in-memory filesystem."""


class SnapshotKind(StrEnum):
    """The life stage of a snapshot."""

    COMMITTED = "committed"
    """Immutable; may be a parent."""
    ACTIVE = "active"
    """Writable; becomes committed by ``Snapshotter.commit``."""
    VIEW = "view"
    """A read-only window on a committed snapshot; never committed."""


class ChangeKind(StrEnum):
    """How a path differs between a snapshot and its parent."""

    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotInfo:
    """What a snapshotter knows about one snapshot."""

    key: str
    """The caller-chosen name of the snapshot."""
    kind: SnapshotKind
    parent: str | None = None
    """The committed snapshot this one was made on, if any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotMount:
    """A snapshot whose tree is visible on the host at ``path`` until it is unmounted."""

    key: str
    path: str
    readonly: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One path that a snapshot changed relative to its parent (the content of a layer)."""

    kind: ChangeKind
    path: str
    """Absolute path inside the snapshot, ``/``-separated."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    """Something mounted into the container besides its root filesystem."""

    kind: MountKind
    dest: str
    """Absolute path inside the container; cleaned, and ``..`` is rejected."""
    source: SnapshotMount | str | None = None
    """A mounted snapshot or a host path (``BIND``, ``CACHE``); ``None`` for ``TMPFS``."""
    selector: str = "/"
    """A sub-path of ``source`` to mount instead of its top; resolved inside ``source``."""
    readonly: bool = False
    tmpfs_size: int | None = None
    """Upper bound in bytes for a ``TMPFS`` mount; ``None`` takes the kernel's default."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    """The process to run: what BuildKit calls ``executor.Meta``."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    """``KEY=VALUE`` entries; ``DEFAULT_PATH`` is added when none sets ``PATH``."""
    cwd: str = "/"
    """Working directory inside the root filesystem; created when missing."""
    user: str = ""
    """``uid``, ``uid:gid``, ``name`` or ``name:group``, resolved in the rootfs; empty means root."""
    valid_exit_codes: tuple[int, ...] = (0,)
    """Exit codes that count as success; any other raises from ``Executor.run``."""


class Terminal:
    """A pseudo-terminal a process runs on instead of pipes (``history debug``'s interactive shell).

    ``fd`` is the slave side of a pty whose master its maker reads and writes; the executor gives
    it to the runtime as stdin, stdout and stderr, and the process gets a terminal of its own
    whose window size follows this one's. The maker calls :meth:`resized` after changing the
    window size (TIOCSWINSZ on the master), which the executor passes on while the process runs.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self._listener: Callable[[], None] | None = None

    def on_resize(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener`` on each :meth:`resized` from now on (``None``: stop)."""
        with self._lock:
            self._listener = listener

    def resized(self) -> None:
        """The window size changed: tell the process (when one runs)."""
        with self._lock:
            listener = self._listener
        if listener is not None:
            listener()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecSpec:
    """Everything an executor needs to run one build step."""

    process: ProcessSpec
    rootfs: SnapshotMount
    """The writable snapshot the process runs on (also for a read-only root, see below)."""
    mounts: tuple[Mount, ...] = ()
    hostname: str = ""
    """Empty gives the executor's default."""
    network: NetworkMode = NetworkMode.NONE
    readonly_root: bool = False
    """Make ``/`` read-only in the container. ``rootfs`` stays a writable snapshot so the runtime can
    still create mount points (``/proc``...) in it, as BuildKit does."""
    terminal: Terminal | None = None
    """Run on this terminal (its output then goes there, not to the output callbacks)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecResult:
    """How a process that ran to the end finished."""

    exit_code: int
    duration: float
    """Wall-clock seconds from start to exit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    """An OCI platform."""

    os: str
    architecture: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """How a worker describes itself (``ListWorkers``)."""

    name: str
    executor: str
    snapshotter: str
    platform: Platform
    labels: Mapping[str, str] = field(default_factory=dict)


class Executor(Protocol):
    """Runs one process in an isolated container."""

    @property
    def name(self) -> str:
        """The executor's name, e.g. ``runc``."""
        ...

    def run(
        self,
        spec: ExecSpec,
        *,
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        """Run ``spec`` to completion; raise when it fails or ``cancel`` is set."""
        ...


class Snapshotter(Protocol):
    """Makes, mounts and keeps the filesystems that processes run on.

    Keys are chosen by the caller (so an event can name a snapshot before it exists).
    """

    @property
    def name(self) -> str:
        """The snapshotter's name, e.g. ``overlay``."""
        ...

    def prepare(self, key: str, parent: str | None = None) -> SnapshotInfo:
        """Create an active (writable) snapshot on ``parent`` (a committed snapshot), or empty."""
        ...

    def view(self, key: str, parent: str) -> SnapshotInfo:
        """Create a read-only view of the committed snapshot ``parent``."""
        ...

    def mount(self, key: str) -> SnapshotMount:
        """Make an active snapshot or view visible on the host; idempotent."""
        ...

    def unmount(self, key: str) -> None:
        """Undo ``mount``; a no-op when not mounted."""
        ...

    def commit(self, key: str, active_key: str) -> SnapshotInfo:
        """Turn the (unmounted) active snapshot ``active_key`` into the committed snapshot ``key``."""
        ...

    def remove(self, key: str) -> None:
        """Delete a snapshot; refused while a child or a mount depends on it."""
        ...

    def stat(self, key: str) -> SnapshotInfo:
        """Describe one snapshot."""
        ...

    def list(self) -> Sequence[SnapshotInfo]:
        """Describe every snapshot."""
        ...

    def changes(self, key: str) -> Sequence[Change]:
        """What ``key`` changed relative to its parent, sorted by path."""
        ...


@runtime_checkable
class DirectReads(Protocol):
    """A snapshotter some of whose committed snapshots are a plain directory holding their whole tree.

    Such a snapshot's content can be read in place, with no view (no snapshot, no mount, and none of
    their events): the solve reading it holds a ref on it already, which keeps it from removal.
    """

    def committed_dir(self, key: str) -> str | None:
        """The directory of the committed ``key``'s whole tree, to read only; ``None`` when reading it
        takes a view (layers stacked by a mount).
        """
        ...


class Worker(Protocol):
    """An executor on a snapshotter's filesystems, as the solver sees one."""

    @property
    def info(self) -> WorkerInfo:
        """Name, labels and platform."""
        ...

    @property
    def executor(self) -> Executor:
        """Runs exec steps."""
        ...

    @property
    def snapshotter(self) -> Snapshotter:
        """Makes the filesystems steps run on."""
        ...


class RemoteCache(Protocol):
    """Cache records imported (``--import-cache``) but not unpacked yet: lazy, as BuildKit's.

    On a local miss the solver asks what is offered for the key and takes the record's snapshot ids
    without its layers; when something reads the result, the implementation
    (``buildsvc.daemon.cache_exports``) fetches, verifies and unpacks the record's layers, records
    them and the cache record, and answers as the cache index would. A blob that fails its check is
    a miss (recorded there), never a hit: the solver then runs the step after all.
    """

    def offered(self, cache_key: str, worker: Worker) -> Mapping[int, str]:
        """Output index -> snapshot id the imported result of ``cache_key`` has once materialized
        (empty: nothing offered, or it failed its check); nothing is fetched or recorded.
        """
        ...

    def materialize(
        self,
        cache_key: str,
        worker: Worker,
        build_ref: str,
        write_before: Callable[[Callable[[], None]], None] | None = None,
    ) -> Mapping[int, str]:
        """Output index -> snapshot id of the imported result of ``cache_key`` (empty: none, or bad).

        ``write_before``: the build's ``BuildRecorder.write_before_appends``. Given it, a hit's events
        may be held back and written just before the build's next append (many hits, one append);
        without it they are written before this returns.
        """
        ...


class FileBackend(Protocol):
    """Applies a FileOp's actions to mounted snapshot directories (BuildKit's file backend)."""

    def output_bases(self, op: FileOp, n_inputs: int) -> Mapping[int, int | None]:
        """For each output index of ``op``: the vertex input its result starts from (``None``: scratch)."""
        ...

    def apply(
        self,
        op: FileOp,
        output: int,
        root: Path,
        inputs: Sequence[Path | None],
        *,
        link_sources: bool = False,
    ) -> None:
        """Apply the actions that produce ``output`` onto ``root`` (a writable copy of its base).

        ``inputs`` are the vertex's inputs, mounted read-only (``None`` for scratch), for copy sources.
        ``link_sources``: ``inputs`` are never written again and ``root`` is committed as the actions
        leave it: a copy from one of them that changes no owner, mode or time may hard link its files
        rather than copy them (a local source from the context store; copied across filesystems).
        """
        ...


class LayerBackend(Protocol):
    """Materializes MergeOp and DiffOp results into a writable directory."""

    def merge_into(self, dest: Path, sources: Sequence[Path], *, link: bool = False) -> None:
        """Overlay ``sources`` onto ``dest`` in order (later ones win).

        ``link``: the sources are committed snapshots' own directories, never written again, on
        ``dest``'s filesystem: their files may be hard linked rather than copied.
        """
        ...

    def diff_into(self, dest: Path, lower: Path, upper: Path) -> None:
        """Write into ``dest`` what ``upper`` adds or changes relative to ``lower``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageLayerSnapshot:
    """One committed snapshot an image pull made (or found already made)."""

    key: str
    parent: str | None
    created: bool
    """False when the snapshot already existed (nothing was unpacked)."""
    size_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledImage:
    """An image unpacked into a chain of committed snapshots."""

    manifest_digest: str
    top: str | None
    """The top layer's snapshot key (``None`` for an image without layers)."""
    layers: tuple[ImageLayerSnapshot, ...]
    env: tuple[str, ...] = ()
    cwd: str = ""
    user: str = ""


class ImageSource(Protocol):
    """Resolves and pulls images for ``docker-image://`` and ``oci-layout://`` sources."""

    def resolve(self, identifier: str, platform: Platform) -> str:
        """The manifest digest the identifier names now (part of the cache key)."""
        ...

    def pull(self, identifier: str, platform: Platform, snapshotter: Snapshotter) -> PulledImage:
        """Unpack the image into ``snapshotter`` as committed snapshots keyed by layer chain ids."""
        ...


W = TypeVar("W", bound=Worker)


def select_worker(
    workers: Sequence[W], name: str | None = None, labels: Mapping[str, str] | None = None
) -> W:
    """The first worker (the default is first) with ``name`` and all ``labels``, else NoMatchingWorker."""
    from buildsvc.solver.errors import NoMatchingWorker

    wanted = dict(labels or {})
    for worker in workers:
        if name is not None and worker.info.name != name:
            continue
        if all(worker.info.labels.get(k) == v for k, v in wanted.items()):
            return worker
    raise NoMatchingWorker(name, wanted, [w.info.name for w in workers])
