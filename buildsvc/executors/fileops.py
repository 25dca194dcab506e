"""The file op on a worker: which actions make each output, and applying them to a directory.

A :class:`~buildsvc.solver.ops.FileOp` is a small graph: each action works on a base (an op input,
scratch, or an earlier action's result) and copies may read a secondary input. :func:`plan_file_op`
turns it into one straight chain per output (after BuildKit's ``solver/llbsolver/ops/file.go``):
start from a base snapshot, apply these actions in order. :func:`apply_actions` then runs a chain on
a writable directory with BuildKit's semantics (``solver/llbsolver/file/backend.go``).

Paths are always resolved inside their root: ``..`` stops at the root and symlinks (absolute or
relative, chained) are followed as if the root were ``/``; nothing is ever read or written outside it.

Deliberate differences from BuildKit, each for predictability:

- modes are applied exactly (``chmod`` after creation), so the daemon's umask never shows, and an
  existing file rewritten by ``mkfile`` gets the requested mode too;
- ``mkdir`` of a path that exists as a non-directory fails (BuildKit ignores it silently);
- ``copy`` with ``mode`` sets exactly those bits, special bits included;
- ``rm`` treats a dangling symlink as existing (it removes the link);
- ``symlink`` onto an existing symlink fails with "file exists" (BuildKit follows the old link first);
- ``copy`` with ``attempt_unpack`` extracts a tar (plain, gzip, bzip2, xz, zstd) into dest; a source
  that is not a tar archive is copied, as BuildKit does.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildsvc.errors import ExecutionError, InvalidInput
from buildsvc.executors.copy import Metadata, PathProblem, Unsupported, clean_path, copy_action, mkdir_all
from buildsvc.executors.errors import UnknownUser
from buildsvc.executors.paths import resolve_in_root
from buildsvc.executors.users import resolve_user
from buildsvc.solver.contenthash import expand_path
from buildsvc.solver.ops import (
    Action,
    CopyAction,
    FileOp,
    MkdirAction,
    MkfileAction,
    Owner,
    RmAction,
    SymlinkAction,
)

__all__ = [
    "CURRENT_ROOT",
    "ActionResult",
    "CopySource",
    "CurrentRoot",
    "FileActionError",
    "FileOpPlanError",
    "FileOutputPlan",
    "OpInput",
    "PlannedAction",
    "SourceRef",
    "UnsupportedFileAction",
    "apply_actions",
    "describe_action",
    "plan_action_result",
    "plan_file_op",
]


# ---------------------------------------------------------------------------------------------------
# Errors


class FileOpPlanError(InvalidInput):
    """The file op has a shape that cannot be planned; ``action`` is the offending action's index."""

    def __init__(self, action: int, reason: str) -> None:
        super().__init__(f"file op action {action}: {reason}")
        self.action = action
        self.reason = reason


class FileActionError(ExecutionError):
    """A file action failed: ``copy /src/x -> /dst: /src/x: no such file or directory``.

    ``action`` is the action's index in its op, ``description`` the action in words, ``path`` the
    container path at fault and ``reason`` what is wrong with it.
    """

    def __init__(self, action: int, description: str, path: str, reason: str) -> None:
        super().__init__(f"{description}: {path}: {reason}")
        self.action = action
        self.description = description
        self.path = path
        self.reason = reason


class UnsupportedFileAction(FileActionError):
    """The action asks for something this worker does not do (unpacking an archive)."""


# ---------------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True, slots=True)
class OpInput:
    """Input ``index`` of the vertex (a committed snapshot the worker mounts)."""

    index: int


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The result of action ``index`` of the same op (materialize it with :func:`plan_action_result`)."""

    index: int


@dataclass(frozen=True, slots=True)
class CurrentRoot:
    """The destination itself as it is before the action (the copy reads its own input)."""


CURRENT_ROOT = CurrentRoot()

SourceRef = OpInput | ActionResult
"""A secondary root the caller provides to :func:`apply_actions`."""
CopySource = SourceRef | CurrentRoot | None
"""Where a copy reads from: a provided root, the destination itself, or scratch (``None``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedAction:
    """One action of a chain, with its copy source resolved."""

    index: int
    """Position of the action in ``FileOp.actions``."""
    action: Action
    source: CopySource = None
    """For ``copy`` only: where it reads from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOutputPlan:
    """How to make one result: snapshot ``base`` (an op input index; ``None``: scratch), apply ``actions``."""

    output: int | None
    """The output index, or ``None`` for an intermediate result needed only as a copy source."""
    result_of: int
    """The index of the action whose result this is (the last one of ``actions``)."""
    base: int | None
    actions: tuple[PlannedAction, ...]

    @property
    def sources(self) -> frozenset[SourceRef]:
        """The secondary roots :func:`apply_actions` needs for this chain."""
        return frozenset(a.source for a in self.actions if isinstance(a.source, OpInput | ActionResult))


def plan_file_op(op: FileOp, n_inputs: int) -> list[FileOutputPlan]:
    """One plan per output of ``op``, ordered by output index.

    Refuses (:class:`FileOpPlanError`, naming the action) an input or secondary input that is out of
    range or names a later action, a secondary input on anything but ``copy``, and outputs that are
    not numbered ``0..n-1`` once each. Chains that share a prefix repeat it; a copy reading another
    action's result names it as :class:`ActionResult` (plan it with :func:`plan_action_result`).
    """
    outputs: dict[int, int] = {}
    for k, fa in enumerate(op.actions):
        _check_ref(fa.input, k, n_inputs, len(op.actions), "input")
        if fa.secondary_input is not None and not isinstance(fa.action, CopyAction):
            raise FileOpPlanError(k, f"{fa.action.kind} takes no secondary input")
        _check_ref(fa.secondary_input, k, n_inputs, len(op.actions), "secondary input")
        if fa.output is not None:
            if fa.output in outputs:
                raise FileOpPlanError(
                    k, f"output {fa.output} is also produced by action {outputs[fa.output]}"
                )
            outputs[fa.output] = k
    if sorted(outputs) != list(range(len(outputs))):
        raise FileOpPlanError(max(outputs.values()), f"outputs must be numbered 0..{len(outputs) - 1}")
    return [_plan(op, n_inputs, outputs[o], o) for o in sorted(outputs)]


def plan_action_result(op: FileOp, n_inputs: int, index: int) -> FileOutputPlan:
    """The plan that materializes the result of action ``index`` (for an :class:`ActionResult` source)."""
    if not 0 <= index < len(op.actions):
        raise FileOpPlanError(index, f"no such action (the op has {len(op.actions)})")
    for k, fa in enumerate(op.actions[: index + 1]):
        _check_ref(fa.input, k, n_inputs, len(op.actions), "input")
        _check_ref(fa.secondary_input, k, n_inputs, len(op.actions), "secondary input")
    return _plan(op, n_inputs, index, op.actions[index].output)


def _check_ref(ref: int | None, k: int, n_inputs: int, n_actions: int, what: str) -> None:
    if ref is None or 0 <= ref < n_inputs:
        return
    if n_inputs <= ref < n_inputs + k:
        return
    if n_inputs + k <= ref < n_inputs + n_actions:
        raise FileOpPlanError(
            k, f"{what} {ref} names action {ref - n_inputs}, which does not come before action {k}"
        )
    raise FileOpPlanError(k, f"{what} {ref} is out of range")


def _plan(op: FileOp, n_inputs: int, last: int, output: int | None) -> FileOutputPlan:
    chain: list[int] = []
    k: int | None = last
    while k is not None:
        chain.append(k)
        ref = op.actions[k].input
        k = ref - n_inputs if ref is not None and ref >= n_inputs else None
    chain.reverse()
    base = op.actions[chain[0]].input
    planned: list[PlannedAction] = []
    for k in chain:
        fa = op.actions[k]
        source: CopySource = None
        if isinstance(fa.action, CopyAction) and fa.secondary_input is not None:
            ref = fa.secondary_input
            if ref == fa.input:
                # Reading the action's own input: that is the destination just before this action.
                source = CURRENT_ROOT
            elif ref < n_inputs:
                source = OpInput(ref)
            else:
                source = ActionResult(ref - n_inputs)
        planned.append(PlannedAction(index=k, action=fa.action, source=source))
    return FileOutputPlan(output=output, result_of=last, base=base, actions=tuple(planned))


# ---------------------------------------------------------------------------------------------------
# Applying


def describe_action(action: Action) -> str:
    """The action in words, as error messages start."""
    match action:
        case MkdirAction():
            return f"mkdir {action.path}"
        case MkfileAction():
            return f"mkfile {action.path}"
        case RmAction():
            return f"rm {action.path}"
        case CopyAction():
            return f"copy {action.src} -> {action.dest}"
        case SymlinkAction():
            return f"symlink {action.newpath} -> {action.oldpath}"


def apply_actions(
    root: Path,
    actions: Sequence[PlannedAction],
    secondary_roots: Mapping[SourceRef, Path],
    *,
    user_root: Path | None = None,
    link_sources: bool = False,
) -> None:
    """Apply ``actions`` in order onto the writable directory ``root``.

    ``secondary_roots`` maps each copy source of the chain (see :attr:`FileOutputPlan.sources`) to a
    directory holding it. Owner names are looked up in ``user_root``'s ``/etc/passwd`` and
    ``/etc/group``, by default in ``root`` as it is before each action (the destination, as in
    BuildKit). Raises :class:`FileActionError` naming the action and the path.

    ``link_sources``: the op's inputs are never written again and nothing writes ``root``'s files
    after these actions: a copy from an op input with no owner, mode or time to set hard links each
    non-directory entry (``EntryWriter.link_files``) instead of copying it.
    """
    top = os.path.abspath(root)
    for planned in actions:
        description = describe_action(planned.action)
        try:
            _apply_one(top, planned, secondary_roots, user_root, link_sources)
        except Unsupported as e:
            raise UnsupportedFileAction(planned.index, description, e.path, e.reason) from e
        except PathProblem as e:
            raise FileActionError(planned.index, description, e.path, e.reason) from e
        except UnknownUser as e:
            raise FileActionError(planned.index, description, e.user, str(e)) from e
        except InvalidInput as e:
            raise FileActionError(planned.index, description, _main_path(planned.action), str(e)) from e
        except OSError as e:
            reason = e.strerror or str(e)
            raise FileActionError(planned.index, description, _main_path(planned.action), reason) from e


def _main_path(action: Action) -> str:
    match action:
        case CopyAction():
            return action.dest
        case SymlinkAction():
            return action.newpath
        case _:
            return action.path


def _apply_one(
    root: str,
    planned: PlannedAction,
    secondary_roots: Mapping[SourceRef, Path],
    user_root: Path | None,
    link_sources: bool = False,
) -> None:
    action = planned.action
    match action:
        case RmAction():
            _rm(root, action)
            return
        case _:
            pass
    meta = Metadata(
        owner=_resolve_owner(action.owner, str(user_root) if user_root is not None else root),
        timestamp_ns=action.timestamp,
    )
    match action:
        case MkdirAction():
            _mkdir(root, action, meta)
        case MkfileAction():
            _mkfile(root, action, meta)
        case SymlinkAction():
            _symlink(root, action, meta)
        case CopyAction():
            meta = Metadata(owner=meta.owner, timestamp_ns=meta.timestamp_ns, mode=action.mode)
            source = planned.source
            if source is None:
                # Scratch: an empty tree, so only an empty wildcard can succeed.
                with tempfile.TemporaryDirectory(prefix="buildsvc-scratch-") as empty:
                    copy_action(empty, root, action, meta)
            elif isinstance(source, CurrentRoot):
                copy_action(root, root, action, meta)
            else:
                if source not in secondary_roots:
                    raise PathProblem(action.src, f"no directory was provided for copy source {source}")
                link = link_sources and isinstance(source, OpInput)  # not an action's result aside
                copy_action(os.path.abspath(secondary_roots[source]), root, action, meta, link_files=link)


def _resolve_owner(owner: Owner | None, user_root: str) -> tuple[int, int] | None:
    """Numeric ids for ``owner`` as BuildKit's ``readUser`` does.

    A user by id means that uid and the same gid; by name, the entry's uid and primary gid; a group
    (by id or by name) replaces the gid; a group alone means uid 0.
    """
    if owner is None or (owner.user is None and owner.group is None):
        return None
    uid = gid = 0
    user = owner.user
    if isinstance(user, str) and user.isdigit():
        user = int(user)
    if isinstance(user, int):
        uid = gid = user
    elif isinstance(user, str):
        resolved = resolve_user(user_root, user)
        uid, gid = resolved.uid, resolved.gid
    group = owner.group
    if isinstance(group, str) and group.isdigit():
        group = int(group)
    if isinstance(group, int):
        gid = group
    elif isinstance(group, str):
        gid = resolve_user(user_root, f"{uid}:{group}").gid
    return uid, gid


def _mkdir(root: str, action: MkdirAction, meta: Metadata) -> None:
    host = resolve_in_root(root, action.path)
    st = _lstat(host)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return  # Already there: left as it is, as in BuildKit.
        raise PathProblem(action.path, "exists and is not a directory")
    if action.make_parents:
        mkdir_all(root, host, mode=action.mode, meta=meta)
        return
    parent = os.path.dirname(host)
    if not os.path.isdir(parent):
        raise PathProblem(posixpath.dirname(clean_path(action.path).rstrip("/")) or "/", "no such directory")
    os.mkdir(host, 0o700)
    _set(host, meta, action.mode)


def _mkfile(root: str, action: MkfileAction, meta: Metadata) -> None:
    host = resolve_in_root(root, action.path)
    st = _lstat(host)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise PathProblem(action.path, "is a directory")
    if not os.path.isdir(os.path.dirname(host)):
        raise PathProblem(action.path, "parent directory does not exist")
    # O_NOFOLLOW: resolution left no symlink here; never write through one that appears anyway.
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(action.data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    _set(host, meta, action.mode)


def _symlink(root: str, action: SymlinkAction, meta: Metadata) -> None:
    # The parent is resolved; the last component is the new link itself, never followed.
    clean = posixpath.normpath(clean_path(action.newpath).rstrip("/") or "/")
    if clean == "/":
        raise PathProblem(action.newpath, "file exists")
    host = os.path.join(resolve_in_root(root, posixpath.dirname(clean)), posixpath.basename(clean))
    if not os.path.isdir(os.path.dirname(host)):
        raise PathProblem(action.newpath, "parent directory does not exist")
    if _lstat(host) is not None:
        raise PathProblem(action.newpath, "file exists")
    os.symlink(action.oldpath, host)
    _set(host, meta, None, is_link=True)


def _set(host: str, meta: Metadata, mode: int | None, *, is_link: bool = False) -> None:
    # chown first: it clears setuid/setgid bits that chmod then sets.
    if meta.owner is not None:
        os.chown(host, meta.owner[0], meta.owner[1], follow_symlinks=False)
    if mode is not None and not is_link:
        os.chmod(host, mode & 0o7777)
    if meta.timestamp_ns is not None:
        os.utime(host, ns=(meta.timestamp_ns, meta.timestamp_ns), follow_symlinks=False)


def _rm(root: str, action: RmAction) -> None:
    if action.allow_wildcard:
        # Matches are links themselves, never their targets; no match is not an error (as BuildKit).
        for container, _ in expand_path(root, action.path, follow_links=False):
            _rm_path(root, container, allow_not_found=True)
        return
    _rm_path(root, action.path, allow_not_found=action.allow_not_found)


def _rm_path(root: str, path: str, *, allow_not_found: bool) -> None:
    clean = posixpath.normpath(clean_path(path).rstrip("/") or "/")
    if clean == "/":
        raise PathProblem(path, "cannot remove the root directory")
    # The parent is resolved (symlinks followed inside root); the last component is removed as is.
    host = os.path.join(resolve_in_root(root, posixpath.dirname(clean)), posixpath.basename(clean))
    st = _lstat(host)
    if st is None:
        if allow_not_found:
            return
        raise PathProblem(path, "no such file or directory")
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(host)
    else:
        os.unlink(host)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
