"""A quiet build shows no progress, so it follows none: through a daemon it asks for no Status
stream (the daemon reads and sends nothing; issue 4's no-op rebuild), and with the embedded engine
it subscribes to nothing and waits for no follower at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from buildsvc.api.model import SolveOptions, StatusUpdate
from buildsvc.cli.build_cmd import run_remote_build
from buildsvc.cli.progress import printing_progress


class _Stream:
    def __init__(self) -> None:
        self.cancelled = False

    def __iter__(self) -> Iterator[StatusUpdate]:
        return iter(())

    def cancel(self) -> None:
        self.cancelled = True


class _FakeClient:
    """Records the calls a build makes to its daemon."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.streams: list[_Stream] = []
        self.solved: list[SolveOptions] = []

    def status(self, build_ref: str, *, after_position: int = 0) -> _Stream:
        self.calls.append("status")
        stream = _Stream()
        self.streams.append(stream)
        return stream

    def solve(self, options: SolveOptions) -> dict[str, str]:
        self.calls.append("solve")
        self.solved.append(options)
        return {"k": "v"}


def _build(client: _FakeClient, progress: str) -> tuple[str, Any]:
    return run_remote_build(
        client,  # type: ignore[arg-type]
        None,
        local_dirs={},
        local_contexts={"context": "sha256:" + "0" * 64},
        outputs=[],
        progress=progress,
        build_ref="ref1",
        frontend="dockerfile.v0",
    )


def test_a_quiet_build_asks_the_daemon_for_no_status() -> None:
    client = _FakeClient()
    ref, response = _build(client, "quiet")
    assert (ref, dict(response)) == ("ref1", {"k": "v"})
    assert client.calls == ["solve"]


@pytest.mark.parametrize("progress", ["plain", "rawjson"])
def test_a_build_that_shows_progress_follows_its_status_stream(progress: str) -> None:
    client = _FakeClient()
    _build(client, progress)
    assert client.calls == ["status", "solve"]  # asked for before the Solve
    assert client.streams[0].cancelled


class _NoStore:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a quiet build read the store ({name})")


def test_a_quiet_embedded_build_follows_nothing() -> None:
    ran = []
    with printing_progress(_NoStore(), "quiet", lambda stream: True):  # type: ignore[arg-type]
        ran.append(True)
    assert ran == [True]


def test_a_plain_embedded_build_still_follows_the_log() -> None:
    with (
        pytest.raises(AssertionError, match="read the store"),
        printing_progress(_NoStore(), "plain", lambda stream: True),  # type: ignore[arg-type]
    ):
        pass
