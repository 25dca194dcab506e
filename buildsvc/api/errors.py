"""Errors across gRPC: one table from error class to status code, and structure in the trailers.

The servicers end a failed call with the table's status code and the error's typed attributes as
JSON in the trailing metadata key ``buildsvc-error``; the client turns that back into the same
class with the same attributes (``SolveError`` with its vertex, name, exit code and log tail), so
code and messages on the command line are the same with and without a daemon. The most specific
class comes first: the first row the error is an instance of wins. A subclass the table does not
name crosses as its nearest named ancestor, with its message.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from buildsvc.errors import (
    BuildsvcError,
    Conflict,
    ExecutionError,
    IntegrityViolation,
    InvalidInput,
    NotFound,
    StoreUnavailable,
)
from buildsvc.solver.errors import (
    BuildRefInUse,
    DefinitionError,
    NoMatchingWorker,
    SolveCancelled,
    SolveError,
)

__all__ = [
    "ERROR_KEY",
    "DaemonUnavailable",
    "abort_with",
    "code_for",
    "error_from_rpc",
    "error_metadata",
    "error_table",
]

ERROR_KEY = "buildsvc-error"
# Trailers share gRPC's 8 KiB metadata budget with the status message; keep well inside it.
_MAX_TEXT = 2000


class DaemonUnavailable(BuildsvcError):
    """The daemon cannot take the request: it is shutting down, or it does not answer."""


@dataclass(frozen=True, slots=True)
class _Row:
    cls: type[BuildsvcError]
    code: grpc.StatusCode
    attrs: tuple[str, ...] = ()
    rebuild: Callable[[str, Mapping[str, Any]], BuildsvcError] | None = None
    """Makes the error from its message and attrs; ``cls(message)`` when None."""


def _solve_error(_: str, a: Mapping[str, Any]) -> BuildsvcError:
    return SolveError(
        a["build_ref"],
        a["reason"],
        vertex=a.get("vertex"),
        name=a.get("name"),
        exit_code=a.get("exit_code"),
        log_tail=a.get("log_tail") or "",
        source_location=a.get("source_location") or "",
        source_excerpt=a.get("source_excerpt") or "",
    )


@functools.cache
def error_table() -> tuple[_Row, ...]:
    """The table, most specific class first: the first row an error is an instance of wins."""
    # Built on first use: the event store's error drags in the log's envelope, which a client
    # (the no-op build's whole cost) otherwise never loads.
    from buildsvc.contexts.store import MissingBlobs
    from buildsvc.events.store import StreamVersionConflict

    return (
        _Row(
            SolveCancelled,
            grpc.StatusCode.CANCELLED,
            ("build_ref", "reason"),
            lambda _, a: SolveCancelled(a["build_ref"], a["reason"]),
        ),
        _Row(
            SolveError,
            grpc.StatusCode.UNKNOWN,
            (
                "build_ref",
                "reason",
                "vertex",
                "name",
                "exit_code",
                "log_tail",
                "source_location",
                "source_excerpt",
            ),
            _solve_error,
        ),
        _Row(
            BuildRefInUse,
            grpc.StatusCode.ALREADY_EXISTS,
            ("build_ref",),
            lambda _, a: BuildRefInUse(a["build_ref"]),
        ),
        _Row(
            DefinitionError,
            grpc.StatusCode.INVALID_ARGUMENT,
            ("reason", "vertex", "name"),
            lambda _, a: DefinitionError(a["reason"], vertex=a.get("vertex"), name=a.get("name")),
        ),
        _Row(
            NoMatchingWorker,
            grpc.StatusCode.INVALID_ARGUMENT,
            ("name", "labels", "available"),
            lambda _, a: NoMatchingWorker(a.get("name"), a.get("labels") or {}, a.get("available") or ()),
        ),
        _Row(
            StreamVersionConflict,
            grpc.StatusCode.ABORTED,
            ("stream_id", "expected", "actual"),
            lambda _, a: StreamVersionConflict(a["stream_id"], a["expected"], a["actual"]),
        ),
        _Row(
            MissingBlobs,
            grpc.StatusCode.FAILED_PRECONDITION,
            ("manifest_digest", "files", "example"),
            lambda _, a: MissingBlobs(a["manifest_digest"], a["files"], a["example"]),
        ),
        _Row(InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        _Row(NotFound, grpc.StatusCode.NOT_FOUND),
        _Row(Conflict, grpc.StatusCode.FAILED_PRECONDITION),
        _Row(StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
        _Row(DaemonUnavailable, grpc.StatusCode.UNAVAILABLE),
        _Row(IntegrityViolation, grpc.StatusCode.DATA_LOSS),
        _Row(ExecutionError, grpc.StatusCode.UNKNOWN),
        _Row(BuildsvcError, grpc.StatusCode.UNKNOWN),
    )


@functools.cache
def _by_name() -> dict[str, _Row]:
    return {row.cls.__name__: row for row in error_table()}


# Without structured details (a proxy in between, a daemon that died) the code alone picks the class.
_BY_CODE: dict[grpc.StatusCode, type[BuildsvcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.UNAVAILABLE: DaemonUnavailable,
    grpc.StatusCode.DATA_LOSS: IntegrityViolation,
}


def _row_for(error: BaseException) -> _Row | None:
    return next((row for row in error_table() if isinstance(error, row.cls)), None)


def code_for(error: BaseException) -> grpc.StatusCode:
    """The status code an error is sent with (INTERNAL for anything that is not a buildsvc error)."""
    row = _row_for(error)
    return row.code if row is not None else grpc.StatusCode.INTERNAL


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        return value[-_MAX_TEXT:]  # the end of a log is the part that explains the failure
    if isinstance(value, tuple):
        return list(value)
    return value


def error_metadata(error: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(code, message, ``buildsvc-error`` JSON) for ``error``."""
    row = _row_for(error)
    message = str(error) or type(error).__name__
    if len(message) > 2 * _MAX_TEXT:
        message = message[: 2 * _MAX_TEXT] + " [...]"
    if row is None:
        logging.getLogger(__name__).error("unexpected error in a call", exc_info=error)
        return grpc.StatusCode.INTERNAL, f"internal error: {message}", ""
    attrs = {name: _clip(getattr(error, name, None)) for name in row.attrs}
    detail = json.dumps({"type": row.cls.__name__, "message": message, "attrs": attrs}, sort_keys=True)
    return row.code, message, detail


def abort_with(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    """End the call with ``error``'s status code, message and structured details."""
    code, message, detail = error_metadata(error)
    if detail:
        context.set_trailing_metadata(((ERROR_KEY, detail),))
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _detail(error: grpc.RpcError) -> str | None:
    trailers = getattr(error, "trailing_metadata", None)
    for key, value in (trailers() if callable(trailers) else None) or ():
        if key == ERROR_KEY:
            return value if isinstance(value, str) else bytes(value).decode()
    return None


def error_from_rpc(error: grpc.RpcError, *, addr: str = "") -> BuildsvcError:
    """The buildsvc error a failed call stands for (the same class the daemon raised)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name.lower()
    detail = _detail(error)
    if detail is not None:
        try:
            parsed = json.loads(detail)
            row = _by_name()[parsed["type"]]
            attrs: Mapping[str, Any] = parsed.get("attrs") or {}
            return row.rebuild(message, attrs) if row.rebuild else row.cls(parsed.get("message", message))
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable detail: fall back to the status code
    if code == grpc.StatusCode.UNAVAILABLE and addr:
        message = f"the daemon at {addr} does not answer: {message}"
    return _BY_CODE.get(code, BuildsvcError)(message)
