"""A build graph: vertices by digest, their metadata, and the output asked for (BuildKit's Definition).

**JSON form** (``Definition.to_json()``, ``Definition.from_json()``, ``buildsvc build --llb FILE``)::

    {
      "version": 1,
      "vertices": [
        {"id": "base", "op": {"source": {"identifier": "docker-image://busybox"}}},
        {"id": "hello",
         "inputs": ["base"],
         "op": {"exec": {"meta": {"args": ["sh", "-c", "echo hi > /out"]},
                         "mounts": [{"dest": "/", "input": 0, "output": 0}]}},
         "metadata": {"description": {"llb.customname": "say hi"}}}
      ],
      "output": "hello"
    }

- ``id`` is a label local to the file; inputs and ``output`` refer to vertices by it, either as
  ``"ID"`` (output 0) or ``{"vertex": "ID", "index": N}``. ``to_json()`` uses the vertex digests as
  ids, but digests are always recomputed on load, so ids may be any unique strings.
- ``op`` is one key, the op kind, holding the op's fields under their Python names (``ops.py``);
  fields left out take their defaults. Enums are strings (``"cache"``, ``"locked"``), modes are
  integers or octal strings (``"0755"``), ``bytes`` are UTF-8 text (or base64 under ``NAME_base64``),
  ``null`` stands for scratch / no output. A file action is
  ``{"input": 0, "output": 0, "mkdir": {"path": "/app"}}``. Source ``attrs`` values may be written as
  lists of strings; they are stored JSON-encoded, as BuildKit stores them.
- ``metadata`` (optional) is an :class:`OpMetadata`, ``locations`` (optional) a list of
  :class:`Location` into the top-level ``source_files``; neither is part of the digest.
- ``output`` may be ``null``: the result is an empty filesystem.
- Unknown keys anywhere are refused, so a misspelt field is an error rather than a silent default.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import json
import posixpath
import re
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import (
    ACTION_TYPES,
    ATTR_HTTP_CHECKSUM,
    ATTR_HTTP_FILENAME,
    ATTR_HTTP_PERM,
    ATTR_LOCAL_EXCLUDE,
    ATTR_LOCAL_FOLLOW_PATHS,
    ATTR_LOCAL_INCLUDE,
    ATTR_LOCAL_SHARED_KEY_HINT,
    OP_TYPES,
    SOURCE_ATTRS,
    CopyAction,
    DiffOp,
    Edge,
    ExecOp,
    FileAction,
    FileOp,
    FrozenDict,
    MergeOp,
    MkdirAction,
    MkfileAction,
    Mount,
    MountType,
    Op,
    OpMetadata,
    Owner,
    RmAction,
    SourceOp,
    SymlinkAction,
    Vertex,
    describe_op,
    encode_fields,
    normalize_image_ref,
    output_count,
)

JSON_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    """A file the definition was made from (a Dockerfile), for pointing errors at its lines."""

    filename: str
    data: bytes = b""
    language: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    """A span of lines and columns in a source file (lines count from 1)."""

    start_line: int
    end_line: int
    start_column: int = 0
    end_column: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    """Where in ``Definition.source_files[file]`` a vertex comes from."""

    file: int
    ranges: tuple[Range, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Definition:
    """A build graph. Build one with :mod:`buildsvc.solver.llb` or load one with :meth:`from_json`."""

    vertices: Mapping[str, Vertex]
    """Every vertex, keyed by its digest."""
    output: Edge | None
    """The result asked for; ``None`` is an empty filesystem."""
    metadata: Mapping[str, OpMetadata] = field(default_factory=FrozenDict[str, OpMetadata])
    """Metadata by vertex digest; a vertex without an entry has default metadata."""
    source_files: tuple[SourceFile, ...] = ()
    locations: Mapping[str, tuple[Location, ...]] = field(
        default_factory=FrozenDict[str, tuple[Location, ...]]
    )
    """Source locations by vertex digest."""
    # A definition never changes (frozen, its mappings FrozenDicts): what is worked out from the
    # whole graph is worked out once, however often a solve asks (validate, needed, to_dict).
    _order: tuple[Vertex, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _valid: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("vertices", "metadata", "locations"):
            if not isinstance(getattr(self, name), FrozenDict):
                object.__setattr__(self, name, FrozenDict(getattr(self, name)))

    @classmethod
    def from_vertices(
        cls,
        vertices: Iterable[Vertex],
        output: Edge | None,
        metadata: Mapping[str, OpMetadata] | None = None,
    ) -> Definition:
        """Key ``vertices`` by their digests (duplicates collapse into one)."""
        return cls(vertices={v.digest: v for v in vertices}, output=output, metadata=metadata or {})

    def name_of(self, digest: str) -> str | None:
        """A vertex's display name: its ``llb.customname``, else a summary of its op."""
        md = self.metadata.get(digest)
        if md is not None and md.name:
            return md.name
        vertex = self.vertices.get(digest)
        return describe_op(vertex.op) if vertex is not None else None

    def topological_order(self) -> list[Vertex]:
        """Every vertex, each after all of its inputs: first those the output needs, then the rest.

        Raises :class:`DefinitionError` for a dangling input or a cycle.
        """
        if self._order is not None:
            return list(self._order)
        roots = [self.output.digest] if self.output and self.output.digest in self.vertices else []
        roots += sorted(self.vertices)
        try:
            order = _toposort(roots, lambda d: [e.digest for e in self.vertices[d].inputs], self.vertices)
        except _Missing as e:
            raise self._error(str(e.node), f"input refers to unknown vertex {e.dep}") from None
        except _Cycle as e:
            raise self._error(e.path[0], "cycle: " + " -> ".join(e.path)) from None
        vertices = tuple(self.vertices[d] for d in order)
        object.__setattr__(self, "_order", vertices)
        return list(vertices)

    def validate(self) -> None:
        """Raise :class:`DefinitionError`, naming the vertex, at the first problem found."""
        if self._valid:
            return
        for key in sorted(self.vertices):
            if self.vertices[key].digest != key:
                raise self._error(key, f"stored under {key} but its op hashes to {self.vertices[key].digest}")
        for vertex in self.topological_order():
            try:
                _check_vertex(vertex, self.vertices)
            except _Invalid as e:
                raise self._error(vertex.digest, e.reason) from None
        for digest in sorted(self.metadata):
            if digest not in self.vertices:
                raise DefinitionError(f"metadata for unknown vertex {digest}", vertex=digest)
            try:
                _check_metadata(self.metadata[digest])
            except _Invalid as e:
                raise self._error(digest, e.reason) from None
        for digest in sorted(self.locations):
            if digest not in self.vertices:
                raise DefinitionError(f"source locations for unknown vertex {digest}", vertex=digest)
            try:
                _check_locations(self.locations[digest], len(self.source_files))
            except _Invalid as e:
                raise self._error(digest, e.reason) from None
        if self.output is not None:
            try:
                _check_edge(self.output, self.vertices, "output")
            except _Invalid as e:
                raise DefinitionError(e.reason) from None
        object.__setattr__(self, "_valid", True)

    def _error(self, digest: str, reason: str) -> DefinitionError:
        return DefinitionError(reason, vertex=digest, name=self.name_of(digest))

    # -- JSON ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form as plain Python data (vertices in topological order, ids = digests)."""
        entries: list[dict[str, Any]] = []
        for vertex in self.topological_order():
            entry: dict[str, Any] = {"id": vertex.digest}
            if vertex.inputs:
                entry["inputs"] = [{"vertex": e.digest, "index": e.index} for e in vertex.inputs]
            entry["op"] = vertex.op_json
            metadata = self.metadata.get(vertex.digest)
            if metadata is not None and (md := encode_fields(metadata)):
                entry["metadata"] = md
            if self.locations.get(vertex.digest):
                entry["locations"] = [encode_fields(loc) for loc in self.locations[vertex.digest]]
            entries.append(entry)
        out: dict[str, Any] = {"version": JSON_VERSION, "vertices": entries}
        out["output"] = (
            None if self.output is None else {"vertex": self.output.digest, "index": self.output.index}
        )
        if self.source_files:
            out["source_files"] = [encode_fields(f) for f in self.source_files]
        return out

    def to_json(self, *, indent: int | None = 2) -> str:
        """The JSON form (see the module docstring)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes, *, validate: bool = True) -> Definition:
        """Load the JSON form; with ``validate`` (the default) also run :meth:`validate`."""
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, UnicodeDecodeError) as e:
            raise DefinitionError(f"not valid JSON: {e}") from e
        return cls.from_dict(data, validate=validate)

    @classmethod
    def from_dict(cls, data: object, *, validate: bool = True) -> Definition:
        """Load the JSON form from plain Python data."""
        definition = _load(data)
        if validate:
            definition.validate()
        return definition


# ---------------------------------------------------------------------------------------------------
# Topological sort over any graph (digests here, file ids while loading JSON)

_N = TypeVar("_N", bound=Hashable)


class _Missing(Exception):
    def __init__(self, node: object, dep: object) -> None:
        self.node, self.dep = node, dep


class _Cycle(Exception):
    def __init__(self, path: list[str]) -> None:
        self.path = path


def _toposort(
    roots: Iterable[_N], deps: Callable[[_N], Sequence[_N]], known: Mapping[_N, object]
) -> list[_N]:
    # Iterative depth-first search: deep graphs (long Dockerfiles) must not hit the recursion limit.
    state: dict[_N, bool] = {}  # False while on the stack, True when done
    order: list[_N] = []
    for root in roots:
        if root in state:
            continue
        state[root] = False
        stack = [(root, iter(deps(root)))]
        while stack:
            node, pending = stack[-1]
            for dep in pending:
                if dep not in known:
                    raise _Missing(node, dep)
                if dep not in state:
                    state[dep] = False
                    stack.append((dep, iter(deps(dep))))
                    break
                if state[dep] is False:
                    on_stack = [n for n, _ in stack]
                    raise _Cycle([str(n) for n in on_stack[on_stack.index(dep) :]] + [str(dep)])
            else:
                stack.pop()
                state[node] = True
                order.append(node)
    return order


# ---------------------------------------------------------------------------------------------------
# Validation

_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_OCTAL_RE = re.compile(r"(?:0o)?[0-7]+")
_UINT32 = 2**32


class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _check_edge(edge: Edge, vertices: Mapping[str, Vertex], what: str) -> None:
    target = vertices.get(edge.digest)
    if target is None:
        raise _Invalid(f"{what} refers to unknown vertex {edge.digest}")
    count = output_count(target.op)
    if not 0 <= edge.index < count:
        raise _Invalid(f"{what} asks for output {edge.index} of {edge.digest}, which has {count} output(s)")


def _check_vertex(vertex: Vertex, vertices: Mapping[str, Vertex]) -> None:
    for i, edge in enumerate(vertex.inputs):
        _check_edge(edge, vertices, f"input {i}")
    n = len(vertex.inputs)
    match vertex.op:
        case SourceOp():
            if n:
                raise _Invalid("a source op takes no inputs")
            _check_source(vertex.op)
        case ExecOp():
            _check_exec(vertex.op, n)
        case FileOp():
            _check_file(vertex.op, n)
        case MergeOp():
            if not vertex.op.inputs:
                raise _Invalid("merge has no inputs")
            for i in vertex.op.inputs:
                _check_index(i, n, "merge input", nullable=False)
        case DiffOp():
            _check_index(vertex.op.lower, n, "diff lower", nullable=True)
            _check_index(vertex.op.upper, n, "diff upper", nullable=True)


def _check_index(index: int | None, limit: int, what: str, *, nullable: bool) -> None:
    if index is None:
        if not nullable:
            raise _Invalid(f"{what} must be an input index")
        return
    if not 0 <= index < limit:
        raise _Invalid(f"{what} {index} is out of range (the vertex has {limit} input(s))")


def _check_outputs(outputs: list[int], what: str) -> None:
    if sorted(outputs) != list(range(len(outputs))):
        raise _Invalid(f"{what} outputs must be numbered 0..{len(outputs) - 1} once each, got {outputs}")


def _check_text(value: str, what: str, *, empty_ok: bool = True) -> None:
    if not value and not empty_ok:
        raise _Invalid(f"{what} is empty")
    if "\0" in value:
        raise _Invalid(f"{what} {value!r} contains a NUL byte")


def _check_abs_path(path: str, what: str) -> None:
    """An absolute path that stays inside its root even before ``..`` is clamped."""
    _check_text(path, what, empty_ok=False)
    if not path.startswith("/"):
        raise _Invalid(f"{what} {path!r} must be absolute")
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise _Invalid(f"{what} {path!r} escapes its root with '..'")
        elif part not in ("", "."):
            depth += 1


def _check_mode(mode: int | None, what: str) -> None:
    if mode is not None and (not isinstance(mode, int) or isinstance(mode, bool)):
        raise _Invalid(f"{what} must be an integer, got {type(mode).__name__}")
    if mode is not None and not 0 <= mode <= 0o7777:
        raise _Invalid(f"{what} {mode!r} is not permission bits (0..0o7777)")


def _check_id(value: int, what: str) -> None:
    if not 0 <= value < _UINT32:
        raise _Invalid(f"{what} {value} is not a valid id")


def _check_owner(owner: Owner | None) -> None:
    if owner is None:
        return
    for what, value in (("owner user", owner.user), ("owner group", owner.group)):
        if isinstance(value, int):
            _check_id(value, what)
        elif isinstance(value, str):
            _check_text(value, what, empty_ok=False)
            if ":" in value:
                raise _Invalid(f"{what} {value!r} contains ':'")


def _check_timestamp(timestamp: int | None) -> None:
    if timestamp is not None and timestamp < 0:
        raise _Invalid(f"timestamp {timestamp} is before the Unix epoch")


def _check_patterns(patterns: Iterable[str], what: str) -> None:
    for p in patterns:
        _check_text(p, what, empty_ok=False)


def _check_source(op: SourceOp) -> None:
    _check_text(op.identifier, "source identifier", empty_ok=False)
    scheme = op.scheme
    if scheme not in SOURCE_ATTRS:
        raise _Invalid(f"unknown source scheme {scheme!r} in {op.identifier!r}")
    for key, value in op.attrs.items():
        if key not in SOURCE_ATTRS[scheme]:
            raise _Invalid(f"unknown attribute {key!r} for a {scheme} source")
        _check_text(value, f"attribute {key}")
    rest = op.location
    if scheme == "local":
        _check_text(rest, "local source name", empty_ok=False)
        for key in (ATTR_LOCAL_INCLUDE, ATTR_LOCAL_EXCLUDE, ATTR_LOCAL_FOLLOW_PATHS):
            if key in op.attrs:
                _check_patterns(_string_list(op.attrs[key], key), key)
        _check_text(op.attrs.get(ATTR_LOCAL_SHARED_KEY_HINT, ""), ATTR_LOCAL_SHARED_KEY_HINT)
    elif scheme == "docker-image":
        try:
            normalize_image_ref(rest)
        except ValueError as e:
            raise _Invalid(str(e)) from None
    elif scheme == "oci-layout":
        path, at, digest = rest.rpartition("@")
        if not at or not path or not _SHA256_RE.fullmatch(digest):
            raise _Invalid(f"an oci-layout source must be 'oci-layout://PATH@sha256:<64 hex>', got {rest!r}")
    else:
        _check_http(op)


def _check_http(op: SourceOp) -> None:
    url = urlsplit(op.identifier)
    if not url.netloc or any(c.isspace() for c in op.identifier):
        raise _Invalid(f"invalid URL {op.identifier!r}")
    checksum = op.attrs.get(ATTR_HTTP_CHECKSUM)
    if checksum is not None and not _SHA256_RE.fullmatch(checksum):
        raise _Invalid(f"checksum {checksum!r} is not 'sha256:<64 lowercase hex>'")
    filename = op.attrs.get(ATTR_HTTP_FILENAME)
    if filename is not None and (filename in ("", ".", "..") or "/" in filename):
        raise _Invalid(f"filename {filename!r} must be a plain file name")
    perm = op.attrs.get(ATTR_HTTP_PERM)
    if perm is not None:
        if not _OCTAL_RE.fullmatch(perm):
            raise _Invalid(f"perm {perm!r} is not an octal mode")
        _check_mode(int(perm.removeprefix("0o"), 8), "perm")


def _string_list(value: str, what: str) -> list[str]:
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise _Invalid(f"attribute {what} must be a JSON list of strings, got {value!r}")
    return items


def _check_exec(op: ExecOp, n_inputs: int) -> None:
    meta = op.meta
    if not meta.args:
        raise _Invalid("exec has no args")
    _check_text(meta.args[0], "exec args[0]", empty_ok=False)
    for arg in meta.args:
        _check_text(arg, "exec arg")
    for entry in meta.env:
        _check_text(entry, "env entry")
        if not entry.partition("=")[0] or "=" not in entry:
            raise _Invalid(f"env entry {entry!r} is not KEY=VALUE")
    _check_abs_path(meta.cwd, "cwd")
    _check_text(meta.user, "user")
    _check_text(meta.hostname, "hostname")
    for code in meta.valid_exit_codes:
        if not 0 <= code <= 255:
            raise _Invalid(f"valid exit code {code} is not in 0..255")
    if not op.mounts:
        raise _Invalid("exec has no mounts (it needs a root mount at '/')")
    seen: dict[str, Mount] = {}
    for mount in op.mounts:
        _check_mount(mount, n_inputs)
        dest = posixpath.normpath(mount.dest)
        if dest in seen:
            raise _Invalid(f"two mounts at {dest!r}")
        seen[dest] = mount
    root = seen.get("/")
    if root is None:
        raise _Invalid("exec has no root mount at '/'")
    if root.type is not MountType.BIND:
        raise _Invalid(f"the root mount must be a bind mount, not {root.type.value}")
    _check_outputs([m.output for m in op.mounts if m.output is not None], "exec mount")


def _check_mount(mount: Mount, n_inputs: int) -> None:
    where = f"mount at {mount.dest!r}"
    _check_abs_path(mount.dest, "mount dest")
    _check_index(mount.input, n_inputs, f"{where}: input", nullable=True)
    _check_text(mount.selector, f"{where}: selector")
    if mount.readonly and mount.output is not None:
        raise _Invalid(f"{where} is read-only but has output {mount.output}")
    kind = mount.type
    options = {"cache": mount.cache, "tmpfs": mount.tmpfs, "secret": mount.secret, "ssh": mount.ssh}
    for name, value in options.items():
        if value is not None and name != kind.value:
            raise _Invalid(f"{where} is a {kind.value} mount but has {name} options")
    if kind is not MountType.BIND and mount.output is not None:
        raise _Invalid(f"{where}: a {kind.value} mount has no output")
    if kind in (MountType.TMPFS, MountType.SECRET, MountType.SSH) and mount.input is not None:
        raise _Invalid(f"{where}: a {kind.value} mount takes no input")
    if kind is MountType.CACHE and (mount.cache is None or not mount.cache.id):
        raise _Invalid(f"{where}: a cache mount needs an id")
    if kind is MountType.TMPFS and mount.tmpfs is not None and mount.tmpfs.size < 0:
        raise _Invalid(f"{where}: tmpfs size {mount.tmpfs.size} is negative")
    secret = mount.secret or mount.ssh
    if kind is MountType.SECRET and mount.secret is None:
        raise _Invalid(f"{where}: a secret mount needs secret options with an id")
    if secret is not None:
        _check_text(secret.id, f"{where}: id", empty_ok=False)
        _check_id(secret.uid, f"{where}: uid")
        _check_id(secret.gid, f"{where}: gid")
        _check_mode(secret.mode, f"{where}: mode")


def _check_file(op: FileOp, n_inputs: int) -> None:
    if not op.actions:
        raise _Invalid("file op has no actions")
    for k, fa in enumerate(op.actions):
        where = f"action {k} ({fa.action.kind})"
        # Earlier actions' results are addressed as n_inputs + their position.
        _check_index(fa.input, n_inputs + k, f"{where}: input", nullable=True)
        if isinstance(fa.action, CopyAction):
            _check_index(fa.secondary_input, n_inputs + k, f"{where}: secondary input", nullable=True)
        elif fa.secondary_input is not None:
            raise _Invalid(f"{where}: only copy takes a secondary input")
        try:
            _check_action(fa)
        except _Invalid as e:
            raise _Invalid(f"{where}: {e.reason}") from None
    _check_outputs([a.output for a in op.actions if a.output is not None], "file action")


def _check_action(fa: FileAction) -> None:
    action = fa.action
    match action:
        case MkdirAction():
            _check_abs_path(action.path, "path")
            _check_mode(action.mode, "mode")
            _check_owner(action.owner)
            _check_timestamp(action.timestamp)
        case MkfileAction():
            _check_abs_path(action.path, "path")
            _check_mode(action.mode, "mode")
            _check_owner(action.owner)
            _check_timestamp(action.timestamp)
        case RmAction():
            _check_abs_path(action.path, "path")
        case CopyAction():
            # A relative src is resolved from the root of the secondary input, and '..' is clamped
            # there, so it cannot leave its input; only emptiness and NUL are errors.
            _check_text(action.src, "copy src", empty_ok=False)
            _check_abs_path(action.dest, "copy dest")
            _check_mode(action.mode, "mode")
            _check_owner(action.owner)
            _check_timestamp(action.timestamp)
            _check_patterns(action.include_patterns, "include pattern")
            _check_patterns(action.exclude_patterns, "exclude pattern")
        case SymlinkAction():
            _check_text(action.oldpath, "symlink oldpath", empty_ok=False)
            _check_abs_path(action.newpath, "symlink newpath")
            _check_owner(action.owner)
            _check_timestamp(action.timestamp)


def _check_metadata(md: OpMetadata) -> None:
    c = md.constraints
    if c is not None and c.worker is not None:
        _check_text(c.worker, "worker constraint", empty_ok=False)
    if md.progress_group is not None:
        _check_text(md.progress_group.id, "progress group id", empty_ok=False)


def _check_locations(locations: Iterable[Location], n_files: int) -> None:
    for loc in locations:
        if not 0 <= loc.file < n_files:
            raise _Invalid(f"source location refers to file {loc.file}, but there are {n_files}")
        for r in loc.ranges:
            if r.start_line < 1 or (r.end_line, r.end_column) < (r.start_line, r.start_column):
                raise _Invalid(f"source range {r} is not a forward range of lines counted from 1")


# ---------------------------------------------------------------------------------------------------
# Loading the JSON form


class _Bad(Exception):
    """A decoding problem; ``where`` is a path like ``op.exec.mounts[1].type``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


@dataclass(slots=True)
class _Entry:
    id: str
    raw: dict[str, Any]
    inputs: list[tuple[str, int]]
    op: Op
    name: str | None


def _load(data: object) -> Definition:
    try:
        top = _object(data, "", {"version", "vertices", "output", "source_files"})
        if top.get("version", JSON_VERSION) != JSON_VERSION:
            raise _Bad("version", f"unsupported version {top['version']!r} (expected {JSON_VERSION})")
        raw_vertices = top.get("vertices")
        if not isinstance(raw_vertices, list):
            raise _Bad("vertices", "expected a list of vertices")
        source_files = _decode(tuple[SourceFile, ...], top.get("source_files", []), "source_files", {})
        output = None if top.get("output") is None else _ref(top["output"], "output")
    except _Bad as e:
        raise DefinitionError(str(e)) from None

    entries: dict[str, _Entry] = {}
    for i, raw in enumerate(raw_vertices):
        entry = _load_entry(raw, i)
        if entry.id in entries:
            raise DefinitionError("two vertices have this id", vertex=entry.id, name=entry.name)
        entries[entry.id] = entry

    roots = ([output[0]] if output and output[0] in entries else []) + list(entries)
    try:
        order = _toposort(roots, lambda i: [ref for ref, _ in entries[i].inputs], entries)
    except _Missing as e:
        bad = entries[str(e.node)]
        raise DefinitionError(
            f"input refers to unknown vertex {e.dep!r}", vertex=bad.id, name=bad.name
        ) from None
    except _Cycle as e:
        first = entries[e.path[0]]
        raise DefinitionError("cycle: " + " -> ".join(e.path), vertex=first.id, name=first.name) from None

    digests: dict[str, str] = {}
    vertices: dict[str, Vertex] = {}
    metadata: dict[str, OpMetadata] = {}
    locations: dict[str, tuple[Location, ...]] = {}
    for entry_id in order:
        entry = entries[entry_id]
        inputs = tuple(Edge(digest=digests[ref], index=index) for ref, index in entry.inputs)
        try:
            vertex = Vertex(op=entry.op, inputs=inputs)
            md = _decode(OpMetadata, entry.raw.get("metadata", {}), "metadata", {})
            locs = _decode(tuple[Location, ...], entry.raw.get("locations", []), "locations", {})
        except _Bad as e:
            raise DefinitionError(str(e), vertex=entry.id, name=entry.name) from None
        except UnicodeEncodeError as e:
            raise DefinitionError(
                f"text is not valid Unicode: {e}", vertex=entry.id, name=entry.name
            ) from None
        digests[entry_id] = vertex.digest
        vertices.setdefault(vertex.digest, vertex)
        # Identical vertices collapse into one; the first one's metadata is kept.
        if md != OpMetadata():
            metadata.setdefault(vertex.digest, md)
        if locs:
            locations.setdefault(vertex.digest, locs)
    if output is not None and output[0] not in entries:
        raise DefinitionError(f"output refers to unknown vertex {output[0]!r}")
    out_edge = None if output is None else Edge(digest=digests[output[0]], index=output[1])
    return Definition(
        vertices=vertices,
        output=out_edge,
        metadata=metadata,
        source_files=source_files,
        locations=locations,
    )


def _load_entry(raw: object, position: int) -> _Entry:
    where = f"vertices[{position}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise DefinitionError(f"{where} must be an object with a non-empty string 'id'")
    vertex_id: str = raw["id"]
    name = _raw_name(raw)
    try:
        _object(raw, "", {"id", "op", "inputs", "metadata", "locations"})
        inputs_raw = raw.get("inputs", [])
        if not isinstance(inputs_raw, list):
            raise _Bad("inputs", "expected a list")
        inputs = [_ref(r, f"inputs[{i}]") for i, r in enumerate(inputs_raw)]
        op = _decode_op(raw.get("op"))
    except _Bad as e:
        raise DefinitionError(str(e), vertex=vertex_id, name=name) from None
    return _Entry(id=vertex_id, raw=raw, inputs=inputs, op=op, name=name or describe_op(op))


def _raw_name(raw: dict[str, Any]) -> str | None:
    md = raw.get("metadata")
    desc = md.get("description") if isinstance(md, dict) else None
    name = desc.get("llb.customname") if isinstance(desc, dict) else None
    return name if isinstance(name, str) else None


def _ref(raw: object, where: str) -> tuple[str, int]:
    if isinstance(raw, str) and raw:
        return raw, 0
    obj = _object(raw, where, {"vertex", "index"})
    vertex, index = obj.get("vertex"), obj.get("index", 0)
    if not isinstance(vertex, str) or not vertex:
        raise _Bad(where, "expected a vertex id or {'vertex': ID, 'index': N}")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise _Bad(f"{where}.index", f"expected a non-negative integer, got {index!r}")
    return vertex, index


def _object(raw: object, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Bad(where, f"expected an object, got {_json_type(raw)}")
    for key in raw:
        if key not in allowed:
            raise _Bad(where, f"unknown field {key!r} (expected one of {', '.join(sorted(allowed))})")
    return raw


def _decode_op(raw: object) -> Op:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _Bad("op", f"expected an object with one key, the op type ({', '.join(OP_TYPES)})")
    ((kind, body),) = raw.items()
    cls = OP_TYPES.get(kind)
    if cls is None:
        raise _Bad("op", f"unknown op type {kind!r} (expected one of {', '.join(OP_TYPES)})")
    op: Op = _decode(cls, body, f"op.{kind}", {})
    return op


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_dataclass(cls: type, raw: object, where: str) -> Any:
    if not isinstance(raw, dict):
        raise _Bad(where, f"expected an object, got {_json_type(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        sub = f"{where}.{key}"
        if cls is FileAction and key in ACTION_TYPES:
            if "action" in kwargs:
                raise _Bad(where, "a file action has exactly one action (mkdir, mkfile, rm, copy, symlink)")
            kwargs["action"] = _decode_dataclass(ACTION_TYPES[key], value, sub)
            continue
        base = key.removesuffix("_base64")
        if base != key and hints.get(base) is bytes:
            if base in raw:
                raise _Bad(where, f"give {base!r} or {key!r}, not both")
            if not isinstance(value, str):
                raise _Bad(sub, "expected a base64 string")
            try:
                kwargs[base] = base64.b64decode(value, validate=True)
            except ValueError:
                raise _Bad(sub, "not valid base64") from None
            continue
        f = fields.get(key)
        if f is None or (cls is FileAction and key == "action"):
            expected = sorted(set(fields) - {"action"}) + (sorted(ACTION_TYPES) if cls is FileAction else [])
            raise _Bad(where, f"unknown field {key!r} (expected one of {', '.join(expected)})")
        kwargs[key] = _decode(hints[key], value, sub, f.metadata)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            what = "an action (mkdir, mkfile, rm, copy, symlink)" if cls is FileAction else f"field {name!r}"
            raise _Bad(where, f"missing {what}")
    return cls(**kwargs)


def _decode(tp: Any, raw: object, where: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None:
            if len(options) < len(typing.get_args(tp)):
                return None
            raise _Bad(where, "must not be null")
        for option in options:
            if _matches(option, raw, meta):
                return _decode(option, raw, where, meta)
        return _decode(options[0], raw, where, meta)  # produces the error message
    if origin is tuple:
        if not isinstance(raw, list):
            raise _Bad(where, f"expected a list, got {_json_type(raw)}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_decode(item, v, f"{where}[{i}]", {}) for i, v in enumerate(raw))
    if origin is Mapping:
        if not isinstance(raw, dict):
            raise _Bad(where, f"expected an object, got {_json_type(raw)}")
        out: dict[str, str] = {}
        for k, v in raw.items():
            # Lists are accepted for hand-written source attrs and stored JSON-encoded, as BuildKit does.
            if isinstance(v, list) and all(isinstance(s, str) for s in v):
                v = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
            if not isinstance(v, str):
                raise _Bad(f"{where}.{k}", f"expected a string, got {_json_type(v)}")
            out[k] = v
        return FrozenDict(out)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, raw, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        if raw not in values:
            raise _Bad(where, f"unknown value {raw!r} (expected one of {', '.join(map(str, values))})")
        return tp(raw)
    if tp is bool:
        if not isinstance(raw, bool):
            raise _Bad(where, f"expected true or false, got {_json_type(raw)}")
        return raw
    if tp is int:
        if meta.get("mode") and isinstance(raw, str):
            if not _OCTAL_RE.fullmatch(raw):
                raise _Bad(where, f'expected an octal mode like "0755", got {raw!r}')
            return int(raw.removeprefix("0o"), 8)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise _Bad(where, f"expected an integer, got {_json_type(raw)}")
        return raw
    if tp is str:
        if not isinstance(raw, str):
            raise _Bad(where, f"expected a string, got {_json_type(raw)}")
        return raw
    if tp is bytes:
        if not isinstance(raw, str):
            raise _Bad(where, f"expected a string, got {_json_type(raw)}")
        return raw.encode("utf-8")
    raise TypeError(f"no JSON decoding for {tp!r}")  # a programming error in ops.py, not bad input


def _matches(tp: Any, raw: object, meta: Mapping[str, Any]) -> bool:
    if tp is int:
        return (isinstance(raw, int) and not isinstance(raw, bool)) or bool(meta.get("mode"))
    if tp is str:
        return isinstance(raw, str)
    return True


def _json_type(raw: object) -> str:
    match raw:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "an object"
        case _:
            return type(raw).__name__
