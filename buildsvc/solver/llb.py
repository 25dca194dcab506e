"""Build definitions in Python, in the spirit of BuildKit's Go ``client/llb`` package.

States are immutable values; each call returns a new one, and identical steps become one vertex::

    from buildsvc.solver import llb

    src = llb.local("context", exclude=["*.pyc"])
    base = llb.image("python:3.12-slim").with_cwd("/app").with_env("PIP_NO_CACHE_DIR", "1")
    app = base.file(llb.copy(src, "requirements.txt", "./").mkdir("/app/out", make_parents=True))
    built = app.run(
        "pip install -r requirements.txt",
        mounts=[llb.cache_mount("/root/.cache/pip", id="pip")],
        name="install deps",
    )
    definition = built.root().marshal()     # a validated Definition
    print(definition.to_json())

Relative paths are resolved against the state's working directory (``with_cwd``), and ``..`` is
clamped at ``/`` as Go's ``path.Join`` does. A string command runs under ``/bin/sh -c``.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from buildsvc.solver.definition import Definition
from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import (
    ATTR_HTTP_CHECKSUM,
    ATTR_HTTP_FILENAME,
    ATTR_HTTP_PERM,
    ATTR_LOCAL_EXCLUDE,
    ATTR_LOCAL_FOLLOW_PATHS,
    ATTR_LOCAL_INCLUDE,
    ATTR_LOCAL_SHARED_KEY_HINT,
    DESCRIPTION_NAME,
    Action,
    CacheOptions,
    CacheSharing,
    CopyAction,
    DiffOp,
    Edge,
    ExecOp,
    FileAction,
    FileOp,
    MergeOp,
    Meta,
    MkdirAction,
    MkfileAction,
    Mount,
    MountType,
    NetMode,
    Op,
    OpMetadata,
    Owner,
    ProgressGroup,
    RmAction,
    SecretOptions,
    SecurityMode,
    SourceOp,
    SSHOptions,
    SymlinkAction,
    TmpfsOptions,
    Vertex,
    WorkerConstraints,
    normalize_image_ref,
)

__all__ = [
    "DEFAULT_PATH",
    "ExecState",
    "FileActions",
    "RunMount",
    "State",
    "bind",
    "cache_mount",
    "copy",
    "diff",
    "https",
    "image",
    "local",
    "merge",
    "mkdir",
    "mkfile",
    "oci_layout",
    "rm",
    "scratch",
    "secret",
    "ssh",
    "symlink",
    "tmpfs",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` given to a run whose environment has none (as Go's llb does)."""

_E = TypeVar("_E", NetMode, SecurityMode, CacheSharing)

OwnerSpec = Owner | int | str | None
"""An :class:`Owner`, a uid, or ``"user[:group]"`` (names or numbers)."""


@dataclass(frozen=True, slots=True, eq=False)
class _Node:
    """A vertex in the builder's graph, holding the nodes its inputs point at."""

    vertex: Vertex
    metadata: OpMetadata
    inputs: tuple[_Node, ...]


def _node(op: Op, inputs: _Inputs | None, metadata: OpMetadata) -> _Node:
    items = inputs.items if inputs else []
    edges = tuple(Edge(digest=n.vertex.digest, index=i) for n, i in items)
    nodes = tuple(inputs.nodes) if inputs else ()
    return _Node(vertex=Vertex(op=op, inputs=edges), metadata=metadata, inputs=nodes)


def _metadata(
    name: str | None,
    ignore_cache: bool,
    constraints: WorkerConstraints | None,
    progress_group: ProgressGroup | None,
) -> OpMetadata:
    return OpMetadata(
        description={DESCRIPTION_NAME: name} if name else {},
        ignore_cache=ignore_cache,
        constraints=constraints,
        progress_group=progress_group,
    )


class State:
    """One filesystem result (or scratch) plus the env, cwd and user that later runs start from."""

    __slots__ = ("_cwd", "_env", "_index", "_node", "_user")

    def __init__(
        self,
        node: _Node | None = None,
        index: int = 0,
        *,
        env: tuple[tuple[str, str], ...] = (),
        cwd: str = "/",
        user: str = "",
    ) -> None:
        self._node = node
        self._index = index
        self._env = env
        self._cwd = cwd
        self._user = user

    def __repr__(self) -> str:
        if self._node is None:
            return "State(scratch)"
        return f"State({self._node.vertex.digest}:{self._index})"

    @property
    def is_scratch(self) -> bool:
        """True for the empty filesystem."""
        return self._node is None

    @property
    def output(self) -> Edge | None:
        """The vertex output this state is, or ``None`` for scratch."""
        return None if self._node is None else Edge(digest=self._node.vertex.digest, index=self._index)

    @property
    def env(self) -> dict[str, str]:
        """The environment later runs start with."""
        return dict(self._env)

    @property
    def cwd(self) -> str:
        """The working directory later runs and relative paths use."""
        return self._cwd

    @property
    def user(self) -> str:
        """The user later runs run as (empty: root)."""
        return self._user

    def _with(
        self,
        *,
        env: tuple[tuple[str, str], ...] | None = None,
        cwd: str | None = None,
        user: str | None = None,
    ) -> State:
        return State(
            self._node,
            self._index,
            env=self._env if env is None else env,
            cwd=self._cwd if cwd is None else cwd,
            user=self._user if user is None else user,
        )

    def with_env(self, key: str, value: str) -> State:
        """Set an environment variable for later runs (Go's ``AddEnv``)."""
        if not key or "=" in key:
            raise DefinitionError(f"invalid environment variable name {key!r}")
        env = dict(self._env)
        env[key] = value
        return self._with(env=tuple(env.items()))

    def with_cwd(self, path: str) -> State:
        """Set the working directory; a relative path is joined to the current one (Go's ``Dir``)."""
        return self._with(cwd=_resolve(self._cwd, path))

    def with_user(self, user: str) -> State:
        """Set the ``user[:group]`` later runs run as (Go's ``User``)."""
        return self._with(user=user)

    def run(
        self,
        args: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        hostname: str = "",
        mounts: Iterable[RunMount] = (),
        network: NetMode | Literal["sandbox", "host", "none"] = NetMode.SANDBOX,
        security: SecurityMode | Literal["sandbox", "insecure"] = SecurityMode.SANDBOX,
        readonly_root: bool = False,
        valid_exit_codes: Iterable[int] = (),
        name: str | None = None,
        ignore_cache: bool = False,
        constraints: WorkerConstraints | None = None,
        progress_group: ProgressGroup | None = None,
    ) -> ExecState:
        """Run a command with this state as its root filesystem.

        ``args`` is an argv list or a shell string (run as ``/bin/sh -c ARGS``). With
        ``readonly_root`` the root is not a result: ``root()`` is this state unchanged, and the run
        happens only if one of its writable mounts is used.
        """
        argv = ["/bin/sh", "-c", args] if isinstance(args, str) else list(args)
        if not argv:
            raise DefinitionError("run needs at least one argument")
        run_cwd = self._cwd if cwd is None else _resolve(self._cwd, cwd)
        merged = dict(self._env)
        merged.update(env or {})
        merged.setdefault("PATH", DEFAULT_PATH)

        inputs = _Inputs()
        root_input = inputs.add(self)
        op_mounts = [
            Mount(dest="/", input=root_input, output=None if readonly_root else 0, readonly=readonly_root)
        ]
        specs: list[tuple[str, RunMount, int | None]] = []
        next_output = 0 if readonly_root else 1
        for spec in mounts:
            dest = _resolve(run_cwd, spec.dest)
            output = None
            if spec.type is MountType.BIND and not spec.readonly:
                output, next_output = next_output, next_output + 1
            specs.append((dest, spec, output))
            op_mounts.append(
                Mount(
                    dest=dest,
                    input=inputs.add(spec.source) if spec.source is not None else None,
                    selector=spec.selector,
                    output=output,
                    readonly=spec.readonly,
                    type=spec.type,
                    cache=spec.cache,
                    tmpfs=spec.tmpfs,
                    secret=spec.secret,
                    ssh=spec.ssh,
                )
            )
        op = ExecOp(
            meta=Meta(
                args=tuple(argv),
                env=tuple(f"{k}={v}" for k, v in merged.items()),
                cwd=run_cwd,
                user=self._user if user is None else user,
                hostname=hostname,
                valid_exit_codes=tuple(valid_exit_codes),
            ),
            mounts=tuple(op_mounts),
            network=_enum(NetMode, network, "network"),
            security=_enum(SecurityMode, security, "security"),
        )
        node = _node(op, inputs, _metadata(name, ignore_cache, constraints, progress_group))
        root = self if readonly_root else State(node, 0, env=self._env, cwd=self._cwd, user=self._user)
        results: dict[str, State | RunMount] = {}
        for dest, spec, output in specs:
            if output is not None:
                results[dest] = State(node, output)
            elif spec.type is MountType.BIND and spec.source is not None:
                results[dest] = spec.source  # a read-only bind leaves its source unchanged
            else:
                results[dest] = spec
        return ExecState(root, results, run_cwd)

    def file(
        self,
        actions: FileActions,
        *,
        name: str | None = None,
        ignore_cache: bool = False,
        constraints: WorkerConstraints | None = None,
        progress_group: ProgressGroup | None = None,
    ) -> State:
        """Apply a chain of file actions (``llb.mkdir(...).copy(...)``) to this state."""
        if not actions.steps:
            raise DefinitionError("file needs at least one action")
        inputs = _Inputs()
        base = inputs.add(self)
        sources = [inputs.add(src) if src is not None else None for _, src in actions.steps]
        n = len(inputs.items)
        file_actions = []
        for k, (action, src) in enumerate(actions.steps):
            file_actions.append(
                FileAction(
                    action=_resolve_action(action, self._cwd, src),
                    # Action k works on the result of action k-1, addressed as n + (k - 1).
                    input=base if k == 0 else n + k - 1,
                    secondary_input=sources[k],
                    output=0 if k == len(actions.steps) - 1 else None,
                )
            )
        op = FileOp(actions=tuple(file_actions))
        node = _node(op, inputs, _metadata(name, ignore_cache, constraints, progress_group))
        return State(node, 0, env=self._env, cwd=self._cwd, user=self._user)

    def marshal(self) -> Definition:
        """The validated :class:`Definition` whose output is this state."""
        vertices: dict[str, Vertex] = {}
        metadata: dict[str, OpMetadata] = {}
        stack = [self._node] if self._node is not None else []
        while stack:
            node = stack.pop()
            digest = node.vertex.digest
            if digest in vertices:
                # The same step built twice: one vertex. The first metadata wins, but a request to
                # skip the cache from either is kept.
                if node.metadata.ignore_cache and digest in metadata:
                    metadata[digest] = dataclasses.replace(metadata[digest], ignore_cache=True)
                continue
            vertices[digest] = node.vertex
            if node.metadata != OpMetadata():
                metadata[digest] = node.metadata
            stack.extend(reversed(node.inputs))
        definition = Definition(vertices=vertices, output=self.output, metadata=metadata)
        definition.validate()
        return definition


class ExecState(State):
    """The result of :meth:`State.run`: it is the root filesystem after the run, plus its mounts."""

    __slots__ = ("_mounts", "_root", "_run_cwd")

    def __init__(self, root: State, mounts: dict[str, State | RunMount], run_cwd: str) -> None:
        super().__init__(root._node, root._index, env=root._env, cwd=root._cwd, user=root._user)
        self._root = root
        self._mounts = mounts
        self._run_cwd = run_cwd

    def root(self) -> State:
        """The root filesystem after the run."""
        return self._root

    def get_mount(self, dest: str) -> State:
        """The contents of the mount at ``dest`` after the run (a read-only bind: its source).

        A relative ``dest`` is resolved against the run's working directory, as when mounting.
        """
        key = _resolve(self._run_cwd, dest)
        result = self._mounts.get(key)
        if result is None:
            raise ValueError(f"the run has no mount at {key!r}")
        if isinstance(result, RunMount):
            raise ValueError(f"the {result.type.value} mount at {key!r} has no result")
        return result


class _Inputs:
    """Collects a new vertex's inputs, one edge per distinct (digest, output).

    Two states can be the same vertex built twice with different metadata; the edge is shared (the
    digest must not depend on metadata) but both nodes are kept so marshal() sees both metadata.
    """

    def __init__(self) -> None:
        self.items: list[tuple[_Node, int]] = []
        self.nodes: list[_Node] = []

    def add(self, state: State) -> int | None:
        node = state._node
        if node is None:
            return None
        if all(n is not node for n in self.nodes):
            self.nodes.append(node)
        for i, (seen, index) in enumerate(self.items):
            if seen.vertex.digest == node.vertex.digest and index == state._index:
                return i
        self.items.append((node, state._index))
        return len(self.items) - 1


# ---------------------------------------------------------------------------------------------------
# Sources


def scratch() -> State:
    """The empty filesystem."""
    return State()


def _source(
    identifier: str,
    attrs: Mapping[str, str],
    name: str | None,
    ignore_cache: bool,
    constraints: WorkerConstraints | None,
) -> State:
    op = SourceOp(identifier=identifier, attrs=attrs)
    return State(_node(op, None, _metadata(name, ignore_cache, constraints, None)))


def image(
    ref: str,
    *,
    name: str | None = None,
    ignore_cache: bool = False,
    constraints: WorkerConstraints | None = None,
) -> State:
    """A container image; ``ref`` is normalized (``busybox`` -> ``docker.io/library/busybox:latest``)."""
    try:
        normalized = normalize_image_ref(ref)
    except ValueError as e:
        raise DefinitionError(str(e)) from e
    return _source(f"docker-image://{normalized}", {}, name, ignore_cache, constraints)


def local(
    source_name: str,
    /,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    follow_paths: Sequence[str] | None = None,
    shared_key_hint: str | None = None,
    name: str | None = None,
    ignore_cache: bool = False,
    constraints: WorkerConstraints | None = None,
) -> State:
    """A directory the client sends (``local://NAME``), filtered by include/exclude patterns."""
    if not source_name:
        raise DefinitionError("a local source needs a name")
    attrs: dict[str, str] = {}
    for key, values in (
        (ATTR_LOCAL_INCLUDE, include),
        (ATTR_LOCAL_EXCLUDE, exclude),
        (ATTR_LOCAL_FOLLOW_PATHS, follow_paths),
    ):
        if values:
            attrs[key] = json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)
    if shared_key_hint:
        attrs[ATTR_LOCAL_SHARED_KEY_HINT] = shared_key_hint
    return _source(f"local://{source_name}", attrs, name, ignore_cache, constraints)


def https(
    url: str,
    *,
    checksum: str | None = None,
    filename: str | None = None,
    perm: int | None = None,
    name: str | None = None,
    ignore_cache: bool = False,
    constraints: WorkerConstraints | None = None,
) -> State:
    """A file downloaded from an ``https://`` (or ``http://``) URL, optionally pinned by checksum."""
    if not url.startswith(("https://", "http://")):
        raise DefinitionError(f"not an http(s) URL: {url!r}")
    attrs: dict[str, str] = {}
    if checksum is not None:
        attrs[ATTR_HTTP_CHECKSUM] = checksum
    if filename is not None:
        attrs[ATTR_HTTP_FILENAME] = filename
    if perm is not None:
        attrs[ATTR_HTTP_PERM] = f"{perm:04o}"
    return _source(url, attrs, name, ignore_cache, constraints)


def oci_layout(
    path: str,
    digest: str,
    *,
    name: str | None = None,
    ignore_cache: bool = False,
    constraints: WorkerConstraints | None = None,
) -> State:
    """An image from an OCI layout (``oci-layout://PATH@sha256:...``)."""
    return _source(f"oci-layout://{path}@{digest}", {}, name, ignore_cache, constraints)


# ---------------------------------------------------------------------------------------------------
# Mounts for State.run


@dataclass(frozen=True, slots=True, kw_only=True)
class RunMount:
    """A mount to add to a run; make one with :func:`bind`, :func:`cache_mount`, :func:`tmpfs`,
    :func:`secret` or :func:`ssh`.
    """

    dest: str
    type: MountType
    source: State | None = None
    selector: str = ""
    readonly: bool = False
    cache: CacheOptions | None = None
    tmpfs: TmpfsOptions | None = None
    secret: SecretOptions | None = None
    ssh: SSHOptions | None = None


def bind(state: State, dest: str, readonly: bool = False, *, selector: str = "") -> RunMount:
    """Mount ``state`` (or its ``selector`` subdirectory) at ``dest``; writable binds are results."""
    return RunMount(dest=dest, type=MountType.BIND, source=state, selector=selector, readonly=readonly)


def cache_mount(
    dest: str,
    id: str,
    *,
    sharing: CacheSharing | Literal["shared", "private", "locked"] = CacheSharing.SHARED,
    source: State | None = None,
) -> RunMount:
    """A persistent cache directory shared by every run that uses the same ``id``."""
    if not id:
        raise DefinitionError(f"the cache mount at {dest!r} needs an id")
    options = CacheOptions(id=id, sharing=_enum(CacheSharing, sharing, "sharing"))
    return RunMount(dest=dest, type=MountType.CACHE, source=source, cache=options)


def tmpfs(dest: str, *, size: int = 0) -> RunMount:
    """An in-memory filesystem, ``size`` bytes at most (0: the kernel default)."""
    return RunMount(dest=dest, type=MountType.TMPFS, tmpfs=TmpfsOptions(size=size) if size else None)


def secret(
    dest: str, id: str, *, uid: int = 0, gid: int = 0, mode: int = 0o400, optional: bool = False
) -> RunMount:
    """A file holding the secret ``id`` the client provides."""
    options = SecretOptions(id=id, uid=uid, gid=gid, mode=mode, optional=optional)
    return RunMount(dest=dest, type=MountType.SECRET, secret=options)


def ssh(
    dest: str = "/run/buildkit/ssh_agent.0",
    id: str = "default",
    *,
    uid: int = 0,
    gid: int = 0,
    mode: int = 0o600,
    optional: bool = False,
) -> RunMount:
    """A socket forwarding the client's SSH agent ``id``."""
    options = SSHOptions(id=id, uid=uid, gid=gid, mode=mode, optional=optional)
    return RunMount(dest=dest, type=MountType.SSH, ssh=options)


# ---------------------------------------------------------------------------------------------------
# File actions


@dataclass(frozen=True, slots=True)
class FileActions:
    """A chain of file actions, each applied to the result of the one before (Go's ``FileAction``)."""

    steps: tuple[tuple[Action, State | None], ...] = ()
    """Each action with its copy source (``None`` for other actions)."""

    def _then(self, action: Action, source: State | None = None) -> FileActions:
        return FileActions((*self.steps, (action, source)))

    def mkdir(
        self,
        path: str,
        mode: int = 0o755,
        *,
        make_parents: bool = False,
        owner: OwnerSpec = None,
        timestamp: int | datetime | None = None,
    ) -> FileActions:
        """Then create a directory."""
        return self._then(
            MkdirAction(
                path=path,
                mode=mode,
                make_parents=make_parents,
                owner=_owner(owner),
                timestamp=_timestamp(timestamp),
            )
        )

    def mkfile(
        self,
        path: str,
        data: bytes | str = b"",
        mode: int = 0o644,
        *,
        owner: OwnerSpec = None,
        timestamp: int | datetime | None = None,
    ) -> FileActions:
        """Then create a file holding ``data`` (a ``str`` is written as UTF-8)."""
        content = data.encode() if isinstance(data, str) else bytes(data)
        return self._then(
            MkfileAction(
                path=path, data=content, mode=mode, owner=_owner(owner), timestamp=_timestamp(timestamp)
            )
        )

    def rm(self, path: str, *, allow_not_found: bool = False, allow_wildcard: bool = False) -> FileActions:
        """Then remove a path."""
        return self._then(RmAction(path=path, allow_not_found=allow_not_found, allow_wildcard=allow_wildcard))

    def copy(
        self,
        source: State,
        src: str,
        dest: str,
        *,
        owner: OwnerSpec = None,
        mode: int | None = None,
        follow_symlinks: bool = False,
        dir_contents_only: bool = False,
        attempt_unpack: bool = False,
        create_dest_path: bool = False,
        allow_wildcard: bool = False,
        allow_empty_wildcard: bool = False,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        always_replace_existing: bool = False,
        timestamp: int | datetime | None = None,
    ) -> FileActions:
        """Then copy ``src`` from ``source`` to ``dest`` (relative ``src`` uses ``source``'s cwd)."""
        action = CopyAction(
            src=src,
            dest=dest,
            owner=_owner(owner),
            mode=mode,
            follow_symlinks=follow_symlinks,
            dir_contents_only=dir_contents_only,
            attempt_unpack=attempt_unpack,
            create_dest_path=create_dest_path,
            allow_wildcard=allow_wildcard,
            allow_empty_wildcard=allow_empty_wildcard,
            include_patterns=tuple(include),
            exclude_patterns=tuple(exclude),
            always_replace_existing=always_replace_existing,
            timestamp=_timestamp(timestamp),
        )
        return self._then(action, source)

    def symlink(
        self, oldpath: str, newpath: str, *, owner: OwnerSpec = None, timestamp: int | datetime | None = None
    ) -> FileActions:
        """Then create a symlink ``newpath`` -> ``oldpath``."""
        return self._then(
            SymlinkAction(
                oldpath=oldpath, newpath=newpath, owner=_owner(owner), timestamp=_timestamp(timestamp)
            )
        )


# Module-level starters, so a chain reads like Go's ``llb.Mkdir(...).Mkfile(...)``.
mkdir = FileActions().mkdir
mkfile = FileActions().mkfile
rm = FileActions().rm
copy = FileActions().copy
symlink = FileActions().symlink


# ---------------------------------------------------------------------------------------------------
# Merge and diff


def merge(
    states: Iterable[State],
    *,
    name: str | None = None,
    ignore_cache: bool = False,
    constraints: WorkerConstraints | None = None,
) -> State:
    """Layer ``states`` on top of each other, later ones on top. Scratch inputs are dropped; merging
    nothing is scratch and merging one state is that state (as in Go).
    """
    layers = [s for s in states if not s.is_scratch]
    if not layers:
        return scratch()
    if len(layers) == 1:
        return layers[0]
    inputs = _Inputs()
    indexes = tuple(i for s in layers if (i := inputs.add(s)) is not None)
    op = MergeOp(inputs=indexes)
    return State(_node(op, inputs, _metadata(name, ignore_cache, constraints, None)))


def diff(
    lower: State,
    upper: State,
    *,
    name: str | None = None,
    ignore_cache: bool = False,
    constraints: WorkerConstraints | None = None,
) -> State:
    """The changes from ``lower`` to ``upper``; a diff from scratch is ``upper`` itself (as in Go)."""
    if lower.is_scratch:
        return upper
    inputs = _Inputs()
    op = DiffOp(lower=inputs.add(lower), upper=inputs.add(upper))
    return State(_node(op, inputs, _metadata(name, ignore_cache, constraints, None)))


# ---------------------------------------------------------------------------------------------------
# Helpers


def _resolve(cwd: str, path: str) -> str:
    """Join ``path`` to ``cwd`` and clean it, keeping a trailing slash (it means "into")."""
    if "\0" in path:
        raise DefinitionError(f"path {path!r} contains a NUL byte")
    joined = posixpath.normpath(posixpath.join("/", cwd, path))
    if joined.startswith("//"):  # POSIX lets normpath keep a leading "//"; we never want it
        joined = "/" + joined.lstrip("/")
    if path.endswith("/") and joined != "/":
        joined += "/"
    return joined


def _resolve_action(action: Action, cwd: str, source: State | None) -> Action:
    match action:
        case CopyAction():
            src_cwd = source.cwd if source is not None else "/"
            return dataclasses.replace(
                action, src=_resolve(src_cwd, action.src), dest=_resolve(cwd, action.dest)
            )
        case SymlinkAction():
            # oldpath is the link's content and is kept verbatim.
            return dataclasses.replace(action, newpath=_resolve(cwd, action.newpath))
        case _:
            return dataclasses.replace(action, path=_resolve(cwd, action.path))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _owner(owner: OwnerSpec) -> Owner | None:
    if owner is None or isinstance(owner, Owner):
        return owner
    if isinstance(owner, int):
        return Owner(user=owner, group=owner)
    user, _, group = owner.partition(":")

    def part(text: str) -> int | str | None:
        return int(text) if text.isdigit() else (text or None)

    return Owner(user=part(user), group=part(group))


def _timestamp(value: int | datetime | None) -> int | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise DefinitionError(f"timestamp {value} has no time zone")
        return (value - _EPOCH) // timedelta(microseconds=1) * 1000
    return value


def _enum(cls: type[_E], value: _E | str, what: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise DefinitionError(f"unknown {what} {value!r} (expected one of {allowed})") from None
