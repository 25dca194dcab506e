"""The op model: what one vertex of a build graph does (after BuildKit's ``solver/pb/ops.proto``).

Five op kinds: :class:`SourceOp` (an image, a local context, an HTTP file, an OCI layout),
:class:`ExecOp` (run a command over mounts), :class:`FileOp` (a chain of file actions),
:class:`MergeOp` and :class:`DiffOp` (layer arithmetic). A :class:`Vertex` is an op plus its input
edges; its digest is the identity the solver, the cache and the event log use.

Indexes follow ops.proto, with ``None`` where the protobuf uses ``-1``: a mount or file action input of
``None`` is scratch (an empty directory); an ``output`` of ``None`` produces no result.

**Canonical form.** ``Vertex.canonical_bytes()`` is the UTF-8 encoding of the JSON object
``{"inputs": [{"digest": D, "index": I}, ...], "op": {KIND: FIELDS}}`` written with sorted keys and no
whitespace (``separators=(",", ":")``, ``ensure_ascii=False``). ``KIND`` is ``source``, ``exec``,
``file``, ``merge`` or ``diff``; ``FIELDS`` holds each dataclass field under its Python name, and a
field equal to its default is left out (as protobuf leaves out zero values, so adding a field with a
default later keeps old digests). Enums are their string values, modes are octal strings (``"0755"``),
``bytes`` are UTF-8 text under the field name or base64 under ``NAME_base64`` when not UTF-8, a file
action is ``{"input": .., "secondary_input": .., "output": .., ACTION: FIELDS}``. The vertex digest is
``"sha256:" + hex(sha256(canonical bytes))``. Metadata (:class:`OpMetadata`) is not part of it.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import enum
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenDict(Mapping[_K, _V]):
    """A read-only, hashable mapping, so ops stay immutable and hashable."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = ()) -> None:
        self._data: dict[_K, _V] = dict(data)

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def _freeze(obj: object, name: str) -> None:
    """Replace a mapping field by a FrozenDict (called from ``__post_init__`` of frozen classes)."""
    value = getattr(obj, name)
    if not isinstance(value, FrozenDict):
        object.__setattr__(obj, name, FrozenDict(value))


# Field metadata understood by the JSON codec (here and in definition.py).
MODE: Mapping[str, bool] = {"mode": True}
"""Marks an ``int`` field holding permission bits: written as an octal string."""


# ---------------------------------------------------------------------------------------------------
# Enumerations


class NetMode(enum.StrEnum):
    """Network of an exec: its own namespace (``sandbox``), the host's, or none."""

    SANDBOX = "sandbox"
    HOST = "host"
    NONE = "none"


class SecurityMode(enum.StrEnum):
    """``insecure`` runs the exec privileged."""

    SANDBOX = "sandbox"
    INSECURE = "insecure"


class MountType(enum.StrEnum):
    """What an exec mount is backed by."""

    BIND = "bind"
    CACHE = "cache"
    TMPFS = "tmpfs"
    SECRET = "secret"
    SSH = "ssh"


class CacheSharing(enum.StrEnum):
    """How concurrent builds share one cache mount."""

    SHARED = "shared"
    """Many writers use the same directory at once."""
    PRIVATE = "private"
    """A second writer gets a new, empty directory."""
    LOCKED = "locked"
    """A second writer waits until the first one is done."""


# ---------------------------------------------------------------------------------------------------
# Source


# Attribute keys, spelled as BuildKit spells them (source/types.go) so definitions translate 1:1.
ATTR_LOCAL_INCLUDE = "local.includepattern"
ATTR_LOCAL_EXCLUDE = "local.excludepatterns"
ATTR_LOCAL_FOLLOW_PATHS = "local.followpaths"
ATTR_LOCAL_SHARED_KEY_HINT = "local.sharedkeyhint"
ATTR_HTTP_CHECKSUM = "http.checksum"
ATTR_HTTP_FILENAME = "http.filename"
ATTR_HTTP_PERM = "http.perm"

SOURCE_ATTRS: Mapping[str, frozenset[str]] = {
    "local": frozenset(
        {ATTR_LOCAL_INCLUDE, ATTR_LOCAL_EXCLUDE, ATTR_LOCAL_FOLLOW_PATHS, ATTR_LOCAL_SHARED_KEY_HINT}
    ),
    "docker-image": frozenset(),
    "oci-layout": frozenset(),
    "https": frozenset({ATTR_HTTP_CHECKSUM, ATTR_HTTP_FILENAME, ATTR_HTTP_PERM}),
    "http": frozenset({ATTR_HTTP_CHECKSUM, ATTR_HTTP_FILENAME, ATTR_HTTP_PERM}),
}
"""The identifier schemes a source may use, and the attributes each one accepts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceOp:
    """Content from outside the graph: ``local://NAME``, ``docker-image://REF``,
    ``oci-layout://PATH@sha256:DIGEST``, ``https://URL`` or ``http://URL``.

    A ``docker-image://`` reference is normalized on construction (``busybox`` becomes
    ``docker.io/library/busybox:latest``) so that equal images get equal digests.
    """

    kind: ClassVar[str] = "source"

    identifier: str
    attrs: Mapping[str, str] = field(default_factory=FrozenDict[str, str])
    """Scheme-specific options (see ``SOURCE_ATTRS``); list values are JSON-encoded string lists."""

    def __post_init__(self) -> None:
        _freeze(self, "attrs")
        scheme, _, rest = self.identifier.partition("://")
        if scheme == "docker-image":
            # An unparsable reference is kept as written; Definition.validate() reports it.
            with contextlib.suppress(ValueError):
                object.__setattr__(self, "identifier", f"docker-image://{normalize_image_ref(rest)}")

    @property
    def scheme(self) -> str:
        """The identifier's scheme (``local``, ``docker-image``, ...), or ``""`` without one."""
        scheme, sep, _ = self.identifier.partition("://")
        return scheme if sep else ""

    @property
    def location(self) -> str:
        """The identifier without its ``scheme://`` prefix (for ``http(s)`` the whole URL)."""
        scheme, sep, rest = self.identifier.partition("://")
        if scheme in ("http", "https"):
            return self.identifier
        return rest if sep else self.identifier


_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?")
_PATH_PART_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_IMAGE_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128}")
DEFAULT_REGISTRY = "docker.io"


def normalize_image_ref(ref: str) -> str:
    """Return the fully qualified form of an image reference, as BuildKit's ``llb.Image`` does.

    ``busybox`` -> ``docker.io/library/busybox:latest``; ``ghcr.io/a/b@sha256:..`` keeps its digest
    and gets no tag. Raises ``ValueError`` naming the problem when ``ref`` is not a reference.
    """
    if not ref:
        raise ValueError("empty image reference")
    name, at, digest = ref.partition("@")
    if at and not _IMAGE_DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid digest {digest!r} in image reference {ref!r}")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"invalid tag {tag!r} in image reference {ref!r}")
    first, sep, remainder = name.partition("/")
    # Like distribution's splitDockerDomain: a first component is a registry only if it looks like one.
    if not sep or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, path = DEFAULT_REGISTRY, name
    else:
        domain, path = first, remainder
        if not _DOMAIN_RE.fullmatch(domain):
            raise ValueError(f"invalid registry {domain!r} in image reference {ref!r}")
    if domain == "index.docker.io":
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if path.lower() != path:
        raise ValueError(f"repository name must be lowercase in image reference {ref!r}")
    if not all(_PATH_PART_RE.fullmatch(part) for part in path.split("/")):
        raise ValueError(f"invalid repository name {path!r} in image reference {ref!r}")
    full = f"{domain}/{path}"
    if len(full) > 255:
        raise ValueError(f"repository name longer than 255 characters in image reference {ref!r}")
    if not tag and not digest:
        tag = "latest"
    return full + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


# ---------------------------------------------------------------------------------------------------
# Exec


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    """The process an exec runs (ops.proto ``Meta``)."""

    args: tuple[str, ...]
    """argv; ``args[0]`` is looked up in ``PATH``."""
    env: tuple[str, ...] = ()
    """``KEY=VALUE`` entries, in order."""
    cwd: str = "/"
    """Absolute working directory."""
    user: str = ""
    """``user[:group]`` by name or id; empty means root."""
    hostname: str = ""
    valid_exit_codes: tuple[int, ...] = ()
    """Exit codes that count as success; empty means only 0."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """Options of a ``cache`` mount."""

    id: str
    """Namespace of the cache: mounts with the same id share their contents across builds."""
    sharing: CacheSharing = CacheSharing.SHARED


@dataclass(frozen=True, slots=True, kw_only=True)
class TmpfsOptions:
    """Options of a ``tmpfs`` mount."""

    size: int = 0
    """Upper limit in bytes; 0 means the kernel default."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretOptions:
    """Options of a ``secret`` mount: a file holding the secret's value."""

    id: str
    uid: int = 0
    gid: int = 0
    mode: int = field(default=0o400, metadata=MODE)
    optional: bool = False
    """When true a missing secret leaves the mount empty instead of failing the exec."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SSHOptions:
    """Options of an ``ssh`` mount: a socket forwarding the client's SSH agent."""

    id: str = "default"
    uid: int = 0
    gid: int = 0
    mode: int = field(default=0o600, metadata=MODE)
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Mount:
    """One filesystem mounted into an exec (ops.proto ``Mount``)."""

    dest: str
    """Absolute path inside the container; exactly one mount of an exec has ``/``."""
    input: int | None = None
    """Index into the vertex's inputs, or ``None`` for scratch."""
    selector: str = ""
    """Path inside the input to mount instead of its root."""
    output: int | None = None
    """Output index under which the mount's final contents are a result, or ``None``."""
    readonly: bool = False
    type: MountType = MountType.BIND
    cache: CacheOptions | None = None
    """Required for (and only for) ``cache`` mounts."""
    tmpfs: TmpfsOptions | None = None
    secret: SecretOptions | None = None
    """Required for ``secret`` mounts."""
    ssh: SSHOptions | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecOp:
    """Run a process over a set of mounts; each writable mount with an output is a result."""

    kind: ClassVar[str] = "exec"

    meta: Meta
    mounts: tuple[Mount, ...]
    network: NetMode = NetMode.SANDBOX
    security: SecurityMode = SecurityMode.SANDBOX


# ---------------------------------------------------------------------------------------------------
# File


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """Owner of created files: user and group each by numeric id or by name (looked up in the target)."""

    user: int | str | None = None
    group: int | str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MkdirAction:
    """Create a directory."""

    kind: ClassVar[str] = "mkdir"

    path: str
    """Absolute path of the new directory."""
    mode: int = field(default=0o755, metadata=MODE)
    make_parents: bool = False
    """Create missing parents too (``mkdir -p``)."""
    owner: Owner | None = None
    timestamp: int | None = None
    """Modification time in nanoseconds since the Unix epoch; ``None`` means now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MkfileAction:
    """Create (or overwrite) a regular file."""

    kind: ClassVar[str] = "mkfile"

    path: str
    """Absolute path of the file."""
    data: bytes = b""
    mode: int = field(default=0o644, metadata=MODE)
    owner: Owner | None = None
    timestamp: int | None = None
    """Modification time in nanoseconds since the Unix epoch; ``None`` means now."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RmAction:
    """Remove a path."""

    kind: ClassVar[str] = "rm"

    path: str
    """Absolute path (or pattern, with ``allow_wildcard``) to remove."""
    allow_not_found: bool = False
    allow_wildcard: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyAction:
    """Copy from the action's secondary input onto its input."""

    kind: ClassVar[str] = "copy"

    src: str
    """Path in the secondary input; a relative path is resolved from its root and cannot leave it."""
    dest: str
    """Absolute destination path; a trailing ``/`` means "into this directory"."""
    owner: Owner | None = None
    mode: int | None = field(default=None, metadata=MODE)
    """Permission bits to set on copied files; ``None`` keeps the source's."""
    follow_symlinks: bool = False
    """Resolve a symlink at ``src`` and copy its target."""
    dir_contents_only: bool = False
    """When ``src`` is a directory, copy its contents rather than the directory itself."""
    attempt_unpack: bool = False
    """Unpack ``src`` when it is an archive (Dockerfile ``ADD`` behaviour)."""
    create_dest_path: bool = False
    """Create missing parent directories of ``dest``."""
    allow_wildcard: bool = False
    """Treat ``src`` as a glob pattern."""
    allow_empty_wildcard: bool = False
    """Do not fail when the pattern matches nothing."""
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    always_replace_existing: bool = False
    """Replace an existing destination of a different type (file vs directory) instead of failing."""
    timestamp: int | None = None
    """Modification time in nanoseconds since the Unix epoch; ``None`` keeps the source's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SymlinkAction:
    """Create a symbolic link ``newpath`` pointing at ``oldpath``."""

    kind: ClassVar[str] = "symlink"

    oldpath: str
    """The link's target, stored verbatim (it may be relative and need not exist)."""
    newpath: str
    """Absolute path of the link itself."""
    owner: Owner | None = None
    timestamp: int | None = None


Action = MkdirAction | MkfileAction | RmAction | CopyAction | SymlinkAction
ACTION_TYPES: Mapping[str, type[Action]] = {
    cls.kind: cls for cls in (MkdirAction, MkfileAction, RmAction, CopyAction, SymlinkAction)
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FileAction:
    """One step of a :class:`FileOp`.

    ``input`` and ``secondary_input`` are ``None`` (scratch), an index ``i < len(vertex.inputs)`` (that
    vertex input), or ``len(vertex.inputs) + k`` (the result of the op's action number ``k``, which must
    come earlier). ``secondary_input`` is used by ``copy`` only, as the copy's source.
    """

    action: Action
    input: int | None = None
    secondary_input: int | None = None
    output: int | None = None
    """Output index under which this action's result is a result of the op, or ``None``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOp:
    """A chain of file actions run as one step."""

    kind: ClassVar[str] = "file"

    actions: tuple[FileAction, ...]


# ---------------------------------------------------------------------------------------------------
# Merge and diff


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeOp:
    """Stack inputs as layers, later ones on top."""

    kind: ClassVar[str] = "merge"

    inputs: tuple[int, ...]
    """Indexes into the vertex's inputs, bottom first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffOp:
    """The changes that turn ``lower`` into ``upper``."""

    kind: ClassVar[str] = "diff"

    lower: int | None = None
    """Index into the vertex's inputs, or ``None`` for scratch."""
    upper: int | None = None
    """Index into the vertex's inputs, or ``None`` for scratch."""


Op = SourceOp | ExecOp | FileOp | MergeOp | DiffOp
OP_TYPES: Mapping[str, type[Op]] = {cls.kind: cls for cls in (SourceOp, ExecOp, FileOp, MergeOp, DiffOp)}


def output_count(op: Op) -> int:
    """How many results (outputs 0..n-1) the op produces."""
    match op:
        case ExecOp():
            return sum(1 for m in op.mounts if m.output is not None)
        case FileOp():
            return sum(1 for a in op.actions if a.output is not None)
        case _:
            return 1


def describe_op(op: Op) -> str:
    """A short human summary of an op, used in error messages when a vertex has no name."""
    match op:
        case SourceOp():
            return op.identifier
        case ExecOp():
            text = " ".join(op.meta.args)
            return text if len(text) <= 60 else text[:57] + "..."
        case FileOp():
            if not op.actions:
                return "file"
            first = op.actions[0].action
            target = first.newpath if isinstance(first, SymlinkAction) else _action_path(first)
            more = f" (+{len(op.actions) - 1})" if len(op.actions) > 1 else ""
            return f"{first.kind} {target}{more}"
        case MergeOp():
            return "merge"
        case DiffOp():
            return "diff"


def _action_path(action: Action) -> str:
    match action:
        case CopyAction():
            return f"{action.src} {action.dest}"
        case SymlinkAction():
            return action.newpath
        case _:
            return action.path


# ---------------------------------------------------------------------------------------------------
# Vertices and metadata


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """A reference to one output of a vertex."""

    digest: str
    """The vertex digest (``sha256:<hex>``)."""
    index: int = 0
    """The output index."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Vertex:
    """An op and its input edges; ``digest`` identifies it (see the module docstring)."""

    op: Op
    inputs: tuple[Edge, ...] = ()
    digest: str = field(init=False, repr=False, compare=False)
    """``sha256:`` + hex sha256 of :meth:`canonical_bytes`, computed on construction."""
    op_json: dict[str, Any] = field(init=False, repr=False, compare=False)
    """``encode_op(op)``, made once for the digest and reused by the JSON form (read it, never change it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_json", encode_op(self.op))
        object.__setattr__(self, "digest", "sha256:" + hashlib.sha256(self.canonical_bytes()).hexdigest())

    def canonical_bytes(self) -> bytes:
        """The bytes the digest is computed over."""
        doc = {
            "inputs": [{"digest": e.digest, "index": e.index} for e in self.inputs],
            "op": self.op_json,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConstraints:
    """Which workers may run a vertex: a worker by name and/or all of some labels."""

    worker: str | None = None
    labels: Mapping[str, str] = field(default_factory=FrozenDict[str, str])

    def __post_init__(self) -> None:
        _freeze(self, "labels")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressGroup:
    """Groups vertices under one line in progress output."""

    id: str
    name: str = ""
    weak: bool = False
    """A weak group does not start a group of its own; it only joins one that exists."""


DESCRIPTION_NAME = "llb.customname"
"""The description key holding a vertex's display name (as in BuildKit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpMetadata:
    """What is said about a vertex without being part of its identity (not in its digest)."""

    description: Mapping[str, str] = field(default_factory=FrozenDict[str, str])
    """Free-form text fields, e.g. ``llb.customname``."""
    ignore_cache: bool = False
    """Run the vertex even when a cache record exists."""
    constraints: WorkerConstraints | None = None
    progress_group: ProgressGroup | None = None

    def __post_init__(self) -> None:
        _freeze(self, "description")

    @property
    def name(self) -> str | None:
        """The ``llb.customname`` description, if any."""
        return self.description.get(DESCRIPTION_NAME)


# ---------------------------------------------------------------------------------------------------
# Encoding (the decoding half lives in definition.py, beside validation)


def encode_op(op: Op) -> dict[str, Any]:
    """The JSON form of an op: ``{KIND: FIELDS}`` (see the module docstring)."""
    return {op.kind: encode_fields(op)}


def encode_fields(obj: Any) -> dict[str, Any]:
    """Encode a dataclass's fields, leaving out those equal to their defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if _is_default(f, value):
            continue
        if isinstance(obj, FileAction) and f.name == "action":
            out[value.kind] = encode_fields(value)
        elif isinstance(value, bytes):
            try:
                out[f.name] = value.decode("utf-8")
            except UnicodeDecodeError:
                out[f"{f.name}_base64"] = base64.b64encode(value).decode("ascii")
        elif f.metadata.get("mode") and isinstance(value, int):
            out[f.name] = format_mode(value)
        else:
            out[f.name] = _encode_value(value)
    return out


def format_mode(mode: int) -> str:
    """Permission bits as the octal string the JSON form uses (``0o755`` -> ``"0755"``)."""
    return f"{mode:04o}" if mode >= 0 else f"-{-mode:04o}"


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default) and type(value) is type(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False


def _encode_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode_fields(value)
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode_value(v) for k, v in value.items()}
    return value
