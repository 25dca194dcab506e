"""Errors of the Dockerfile frontend.

They sit under :class:`buildsvc.errors.InvalidInput` (the tree is drawn in ``buildsvc/errors.py``)::

    InvalidInput
    └── DockerfileError      a malformed Dockerfile, an unknown instruction, flag or stage, a bad
                             option or build arg; names the file and the line when there is one
"""

from __future__ import annotations

from buildsvc.errors import InvalidInput


class DockerfileError(InvalidInput):
    """The Dockerfile (or a frontend option) cannot be turned into a definition.

    The message reads like BuildKit's: ``Dockerfile:7: unknown instruction: RUNN``. ``line`` and
    ``end_line`` count from 1 and are ``None`` for problems that belong to no line (a bad option).
    """

    def __init__(
        self,
        reason: str,
        *,
        filename: str = "Dockerfile",
        line: int | None = None,
        end_line: int | None = None,
    ) -> None:
        self.reason = reason
        self.filename = filename
        self.line = line
        self.end_line = end_line if end_line is not None else line
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments would otherwise be lost when the error crosses a process boundary.
        return (_rebuild, (self.reason, self.filename, self.line, self.end_line))


def _rebuild(reason: str, filename: str, line: int | None, end_line: int | None) -> DockerfileError:
    return DockerfileError(reason, filename=filename, line=line, end_line=end_line)
