"""Where a failed vertex came from in its source file, shown as BuildKit shows it::

    Dockerfile:3
    --------------------
       1 |     FROM busybox
       2 |     RUN true
       3 | >>> RUN false
    --------------------

Frontends put the source files and each vertex's line ranges in the definition (``source_files``,
``locations``); this reads them back for the error of a failed solve.
"""

from __future__ import annotations

from dataclasses import dataclass

from buildsvc.solver.definition import Definition, Range

__all__ = ["SourceExcerpt", "locate"]

# Lines shown around the failing ones, as BuildKit's error printer does.
_CONTEXT_LINES = 2
_RULE = "-" * 20


@dataclass(frozen=True, slots=True)
class SourceExcerpt:
    """``Dockerfile:3`` and the excerpt printed under it."""

    location: str
    excerpt: str


def locate(definition: Definition, vertex: str | None) -> SourceExcerpt | None:
    """The source location of ``vertex`` (its first range), or None when the definition has none."""
    if vertex is None:
        return None
    for loc in definition.locations.get(vertex, ()):
        if not loc.ranges or not 0 <= loc.file < len(definition.source_files):
            continue
        source = definition.source_files[loc.file]
        lines = source.data.decode("utf-8", "replace").splitlines()
        first = loc.ranges[0]
        where = f"{source.filename}:{first.start_line}"
        if first.end_line > first.start_line:
            where += f"-{first.end_line}"
        return SourceExcerpt(location=where, excerpt=_excerpt(lines, loc.ranges))
    return None


def _excerpt(lines: list[str], ranges: tuple[Range, ...]) -> str:
    marked = {n for r in ranges for n in range(r.start_line, r.end_line + 1)}
    if not lines or not marked:
        return ""
    start = max(1, min(marked) - _CONTEXT_LINES)
    end = min(len(lines), max(marked) + _CONTEXT_LINES)
    width = len(str(end))
    body = [
        f" {n:>{width}} | {'>>>' if n in marked else '   '} {lines[n - 1]}".rstrip()
        for n in range(start, end + 1)
    ]
    return "\n".join([_RULE, *body, _RULE])
