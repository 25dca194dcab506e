"""Errors of the worker layer (executors and snapshotters).

The leaves this module adds to the tree in ``buildsvc.errors``::

    InvalidInput
    ├── InvalidPath               a mount destination, cwd or selector that is not a clean path
    ├── InvalidProcessSpec        empty args, an env entry without '=', a mount without a source
    ├── UnknownUser               a user or group name the rootfs does not define
    ├── InvalidSnapshotKey        a snapshot key that cannot name a directory
    └── (NoMatchingWorker lives in buildsvc.solver.errors: selection is the solver's)
    NotFound
    └── SnapshotNotFound
    Conflict
    ├── SnapshotExists
    ├── SnapshotInUse             a child snapshot or a mount still depends on it
    └── SnapshotStateError        the snapshot is of the wrong kind for the operation
    ExecutionError
    ├── ProcessExitError          the process exited with a code not in ``valid_exit_codes``
    ├── ProcessCancelled          the run was cancelled and the container killed
    ├── RuntimeFailure            the OCI runtime itself failed (could not create the container)
    └── MountFailure              ``mount(8)`` refused (for example overlayfs missing)
"""

from __future__ import annotations

from collections.abc import Sequence

from buildsvc.errors import Conflict, ExecutionError, InvalidInput, NotFound


class InvalidPath(InvalidInput):
    """A path given by a build is not an absolute, clean path inside the container."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"invalid path {path!r}: {reason}")
        self.path = path
        self.reason = reason


class InvalidProcessSpec(InvalidInput):
    """A field of the process or mount description is malformed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownUser(InvalidInput):
    """The user (or group) of a process is not defined in the rootfs's /etc/passwd or /etc/group."""

    def __init__(self, user: str, name: str, database: str) -> None:
        super().__init__(f"user {user!r}: no {name!r} in {database} of the root filesystem")
        self.user = user
        self.name = name
        self.database = database


class InvalidSnapshotKey(InvalidInput):
    """A snapshot key is empty or has characters that cannot name a directory."""

    def __init__(self, key: str) -> None:
        super().__init__(f"invalid snapshot key {key!r}: use letters, digits, '.', '_', '-' and ':'")
        self.key = key


class SnapshotNotFound(NotFound):
    """No snapshot has this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"snapshot {key!r} does not exist")
        self.key = key


class SnapshotExists(Conflict):
    """A snapshot with this key already exists."""

    def __init__(self, key: str) -> None:
        super().__init__(f"snapshot {key!r} already exists")
        self.key = key


class SnapshotInUse(Conflict):
    """A snapshot cannot be removed while children or mounts depend on it."""

    def __init__(self, key: str, children: Sequence[str], mounted: bool) -> None:
        reasons = [f"children {', '.join(children)}"] if children else []
        if mounted:
            reasons.append("it is mounted")
        super().__init__(f"snapshot {key!r} is in use: {'; '.join(reasons)}")
        self.key = key
        self.children = tuple(children)
        self.mounted = mounted


class SnapshotStateError(Conflict):
    """The operation needs a snapshot of another kind (e.g. committing a committed snapshot)."""

    def __init__(self, key: str, kind: str, operation: str) -> None:
        super().__init__(f"cannot {operation} snapshot {key!r}: it is {kind}")
        self.key = key
        self.kind = kind
        self.operation = operation


class ProcessExitError(ExecutionError):
    """The process exited with a code that is not one of its valid exit codes."""

    def __init__(self, container_id: str, exit_code: int, valid_exit_codes: Sequence[int]) -> None:
        super().__init__(
            f"process in {container_id} exited with code {exit_code}"
            f" (expected {', '.join(map(str, valid_exit_codes))})"
        )
        self.container_id = container_id
        self.exit_code = exit_code
        self.valid_exit_codes = tuple(valid_exit_codes)


class ProcessCancelled(ExecutionError):
    """The run was cancelled; the container was killed and removed."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id} was cancelled")
        self.container_id = container_id


class RuntimeFailure(ExecutionError):
    """The OCI runtime (runc, crun) failed before or around the process, not the process itself."""

    def __init__(self, runtime: str, container_id: str, message: str) -> None:
        super().__init__(f"{runtime} failed for {container_id}: {message}")
        self.runtime = runtime
        self.container_id = container_id
        self.message = message


class MountFailure(ExecutionError):
    """A kernel mount or unmount failed."""

    def __init__(self, target: str, message: str) -> None:
        super().__init__(f"mount at {target} failed: {message}")
        self.target = target
        self.message = message
