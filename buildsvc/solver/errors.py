"""Errors raised by the solver's definition model.

They sit under :class:`buildsvc.errors.InvalidInput` in the tree drawn in ``buildsvc/errors.py``::

    InvalidInput
    ├── DefinitionError      a malformed definition; names the vertex when there is one
    └── NoMatchingWorker     a worker constraint no worker meets; lists the workers there are
    Conflict
    └── BuildRefInUse        a solve asked for a build ref the log already has
    ExecutionError
    ├── SolveError           a vertex failed: the vertex, its exit code, the tail of its output and
    │                        the source lines (``Dockerfile:3``) it came from
    └── SolveCancelled       the solve was cancelled
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from buildsvc.errors import Conflict, ExecutionError, InvalidInput


class DefinitionError(InvalidInput):
    """A definition (or a builder call that would make one) is malformed.

    ``vertex`` is the vertex digest; while a JSON definition is being decoded and a digest cannot be
    computed yet (an undecodable op, a cycle), it is the vertex's ``id`` from the file instead. It is
    ``None`` for problems that belong to no vertex. ``name`` is the vertex's human name (its
    ``llb.customname`` or a summary of its op) when known.
    """

    def __init__(self, reason: str, *, vertex: str | None = None, name: str | None = None) -> None:
        self.reason = reason
        self.vertex = vertex
        self.name = name
        super().__init__(_format(reason, vertex, name))

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments would otherwise be lost when the error crosses a process boundary.
        return (_rebuild, (self.reason, self.vertex, self.name))


def _rebuild(reason: str, vertex: str | None, name: str | None) -> DefinitionError:
    return DefinitionError(reason, vertex=vertex, name=name)


def _format(reason: str, vertex: str | None, name: str | None) -> str:
    if vertex is None:
        return f"invalid definition: {reason}"
    label = f"vertex {vertex}"
    if name:
        label += f" ({name!r})"
    return f"invalid definition: {label}: {reason}"


class NoMatchingWorker(InvalidInput):
    """No enabled worker has the requested name and labels."""

    def __init__(self, name: str | None, labels: Mapping[str, str], available: Sequence[str]) -> None:
        wanted = ", ".join(([f"name={name}"] if name else []) + [f"{k}={v}" for k, v in labels.items()])
        there = ", ".join(available) if available else "none (no OCI runtime found)"
        super().__init__(f"no worker matches {wanted or 'any'}; workers available: {there}")
        self.name = name
        self.labels = dict(labels)
        self.available = tuple(available)


class BuildRefInUse(Conflict):
    """A new solve named a build ref that is already in the log."""

    def __init__(self, build_ref: str) -> None:
        super().__init__(f"build ref {build_ref!r} is already used by another build")
        self.build_ref = build_ref


class SolveError(ExecutionError):
    """A build failed at a vertex."""

    def __init__(
        self,
        build_ref: str,
        message: str,
        *,
        vertex: str | None = None,
        name: str | None = None,
        exit_code: int | None = None,
        log_tail: str = "",
        source_location: str = "",
        source_excerpt: str = "",
    ) -> None:
        where = f" at {name!r}" if name else (f" at vertex {vertex}" if vertex else "")
        code = f" (exit code {exit_code})" if exit_code is not None else ""
        tail = f"\n--- last output ---\n{log_tail.rstrip()}" if log_tail.strip() else ""
        # As BuildKit prints it: the file and line, then the lines with the failing one marked.
        source = f"\n{source_location}" if source_location else ""
        source += f"\n{source_excerpt}" if source_location and source_excerpt else ""
        super().__init__(f"build {build_ref} failed{where}{code}: {message}{source}{tail}")
        self.build_ref = build_ref
        self.reason = message
        self.vertex = vertex
        self.name = name
        self.exit_code = exit_code
        self.log_tail = log_tail
        self.source_location = source_location
        """``Dockerfile:3`` when the failed vertex came from a source file (see ``source_excerpt``)."""
        self.source_excerpt = source_excerpt


class SolveCancelled(ExecutionError):
    """A build was cancelled before it finished."""

    def __init__(self, build_ref: str, reason: str = "") -> None:
        super().__init__(f"build {build_ref} was cancelled" + (f": {reason}" if reason else ""))
        self.build_ref = build_ref
        self.reason = reason
