"""Errors raised by the solver's definition model.

They sit under :class:`buildsvc.errors.InvalidInput` in the tree drawn in ``buildsvc/errors.py``::

    InvalidInput
    └── DefinitionError      a malformed definition; names the vertex when there is one
"""

from __future__ import annotations

from buildsvc.errors import InvalidInput


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
