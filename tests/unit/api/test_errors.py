"""The error table, through a real gRPC server and client: every class comes back as itself.

A tiny generic service (raw bytes in and out) raises each error with ``abort_with``; the client
side turns the failed call back with ``error_from_rpc``. No Control service, no engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildsvc.api.errors import (
    ERROR_KEY,
    DaemonUnavailable,
    abort_with,
    code_for,
    error_from_rpc,
    error_table,
)
from buildsvc.contexts import MissingBlobs
from buildsvc.errors import (
    BuildsvcError,
    Conflict,
    ExecutionError,
    IntegrityViolation,
    InvalidInput,
    NotFound,
    StoreUnavailable,
)
from buildsvc.events.store import StreamVersionConflict
from buildsvc.projections import UnknownProjection
from buildsvc.solver.errors import (
    BuildRefInUse,
    DefinitionError,
    NoMatchingWorker,
    SolveCancelled,
    SolveError,
)

Raiser = Callable[[], BaseException]
METHOD = "/buildsvc.test.Errors/Raise"


@pytest.fixture
def roundtrip(tmp_path: Path) -> Iterator[Callable[[BaseException], grpc.RpcError]]:
    current: list[BaseException] = []

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        abort_with(context, current[0])

    handler = grpc.method_handlers_generic_handler(
        "buildsvc.test.Errors",
        {"Raise": grpc.unary_unary_rpc_method_handler(handle, lambda b: b, lambda b: b)},
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    target = f"unix:{tmp_path / 'errors.sock'}"
    server.add_insecure_port(target)
    server.start()
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def run(error: BaseException) -> grpc.RpcError:
        current[:] = [error]
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
        return info.value

    try:
        yield run
    finally:
        channel.close()
        server.stop(None)


def _same(a: BaseException, b: BaseException, attrs: tuple[str, ...]) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    for name in attrs:
        assert getattr(a, name) == getattr(b, name), name


CASES: list[tuple[BaseException, grpc.StatusCode, tuple[str, ...]]] = [
    (
        SolveError(
            "ref1",
            "process exited with code 3",
            vertex="sha256:ab",
            name="RUN make",
            exit_code=3,
            log_tail="compiling\nerror: boom\n",
        ),
        grpc.StatusCode.UNKNOWN,
        ("build_ref", "reason", "vertex", "name", "exit_code", "log_tail"),
    ),
    (SolveError("ref2", "no vertex"), grpc.StatusCode.UNKNOWN, ("vertex", "name", "exit_code", "log_tail")),
    (SolveCancelled("ref3", "daemon is shutting down"), grpc.StatusCode.CANCELLED, ("build_ref", "reason")),
    (BuildRefInUse("ref4"), grpc.StatusCode.ALREADY_EXISTS, ("build_ref",)),
    (
        DefinitionError("cycle", vertex="sha256:cd", name="RUN x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("reason", "vertex", "name"),
    ),
    (
        NoMatchingWorker("gvisor", {"a": "b"}, ["runc-overlay"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ("name", "labels", "available"),
    ),
    (StreamVersionConflict("build-x", 3, 5), grpc.StatusCode.ABORTED, ("stream_id", "expected", "actual")),
    (
        MissingBlobs("sha256:" + "a" * 64, 3, "src/app.py"),
        grpc.StatusCode.FAILED_PRECONDITION,
        ("manifest_digest", "files", "example"),
    ),
    (InvalidInput("bad option"), grpc.StatusCode.INVALID_ARGUMENT, ()),
    (NotFound("no build 'x'"), grpc.StatusCode.NOT_FOUND, ()),
    (Conflict("precondition"), grpc.StatusCode.FAILED_PRECONDITION, ()),
    (StoreUnavailable("database did not answer"), grpc.StatusCode.UNAVAILABLE, ()),
    (DaemonUnavailable("daemon is shutting down"), grpc.StatusCode.UNAVAILABLE, ()),
    (IntegrityViolation("chain broken"), grpc.StatusCode.DATA_LOSS, ()),
    (ExecutionError("export failed"), grpc.StatusCode.UNKNOWN, ()),
    (BuildsvcError("something"), grpc.StatusCode.UNKNOWN, ()),
]


@pytest.mark.parametrize(
    ("error", "code", "attrs"), CASES, ids=[type(c[0]).__name__ + str(i) for i, c in enumerate(CASES)]
)
def test_each_error_comes_back_as_itself(
    roundtrip: Callable[[BaseException], grpc.RpcError],
    error: BaseException,
    code: grpc.StatusCode,
    attrs: tuple[str, ...],
) -> None:
    failed = roundtrip(error)
    assert failed.code() == code
    assert code_for(error) == code
    _same(error, error_from_rpc(failed), attrs)


def test_every_table_row_is_covered_and_reachable() -> None:
    covered = {type(e) for e, _, _ in CASES}
    assert {row.cls for row in error_table()} <= covered
    # The first matching row wins: a row after a row for one of its ancestors could never match.
    for i, row in enumerate(error_table()):
        for earlier in error_table()[:i]:
            assert not issubclass(row.cls, earlier.cls), (
                f"{row.cls.__name__} is shadowed by {earlier.cls.__name__}"
            )


def test_a_subclass_the_table_does_not_name_crosses_as_its_ancestor(
    roundtrip: Callable[[BaseException], grpc.RpcError],
) -> None:
    error = UnknownProjection("nosuch", ["builds", "refs"])
    failed = roundtrip(error)
    assert failed.code() == grpc.StatusCode.NOT_FOUND
    back = error_from_rpc(failed)
    assert type(back) is NotFound
    assert str(back) == str(error)


def test_the_details_are_json_in_the_trailers(roundtrip: Callable[[BaseException], grpc.RpcError]) -> None:
    failed = roundtrip(SolveError("r", "m", vertex="v", name="n", exit_code=1, log_tail="x" * 10_000))
    trailers: Any = failed.trailing_metadata()
    detail = dict(trailers)[ERROR_KEY]
    assert '"type": "SolveError"' in detail
    back = error_from_rpc(failed)
    assert isinstance(back, SolveError)
    # A long log is cut to its end (the part that explains the failure), to fit in the trailers.
    assert back.log_tail == "x" * 2000


def test_an_unexpected_error_is_internal_and_not_a_table_class(
    roundtrip: Callable[[BaseException], grpc.RpcError],
) -> None:
    failed = roundtrip(KeyError("oops"))
    assert failed.code() == grpc.StatusCode.INTERNAL
    assert "internal error" in (failed.details() or "")
    back = error_from_rpc(failed)
    assert type(back) is BuildsvcError
