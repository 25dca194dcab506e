"""The tty printer: a live view of running steps with timers and output, finished steps kept."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from buildsvc.api.model import StatusUpdate, VertexLog, VertexUpdate
from buildsvc.cli.progress import PlainProgress, make_printer
from buildsvc.cli.tty_progress import TAIL_LINES, TtyProgress

_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _vertex(digest: str, state: str, name: str = "", **kw: object) -> StatusUpdate:
    return StatusUpdate(
        position=0,
        time=_T0,
        type="Vertex",
        payload_json="{}",
        vertex=VertexUpdate(digest=digest, state=state, name=name, **kw),  # type: ignore[arg-type]
    )


def _log(digest: str, data: bytes) -> StatusUpdate:
    return StatusUpdate(
        position=0, time=_T0, type="VertexLog", payload_json="{}", log=VertexLog(vertex=digest, data=data)
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100, color_system=None, highlight=False), out


def _text(console_width: int, printer: TtyProgress) -> str:
    """What the live part shows now, as plain text."""
    console = Console(file=io.StringIO(), width=console_width, color_system=None)
    with console.capture() as captured:
        console.print(printer.render())
    return captured.get()


def test_running_steps_show_timers_and_their_last_output_lines() -> None:
    console, _ = _terminal()
    clock = _Clock()
    printer = TtyProgress(console, clock=clock)
    try:
        printer.feed(_vertex("a", "started", "[1/2] RUN make"))
        printer.feed(_log("a", b"".join(f"line {i}\n".encode() for i in range(10)) + b"partial"))
        printer.feed(_vertex("b", "started", "[2/2] RUN test"))
        clock.now += 2.5
        shown = _text(100, printer)
    finally:
        printer.close()
    lines = shown.splitlines()
    assert lines[0] == "[+] Building 2.5s (0/2)"
    assert " => #1 [1/2] RUN make  2.5s" in lines
    assert " => #2 [2/2] RUN test  2.5s" in lines
    # Only the last lines of a step's output, the unfinished one included.
    a_output = [line.strip() for line in lines[2 : 2 + TAIL_LINES]]
    assert a_output == [*(f"line {i}" for i in range(10 - TAIL_LINES + 1, 10)), "partial"]
    assert "line 0" not in shown


def test_finished_steps_leave_done_cached_and_error_lines() -> None:
    console, out = _terminal()
    clock = _Clock()
    printer = TtyProgress(console, clock=clock)
    printer.feed(_vertex("base", "cached", "[1/3] FROM busybox"))
    printer.feed(_vertex("a", "started", "[2/3] RUN make"))
    clock.now += 1
    printer.feed(_vertex("a", "completed", "[2/3] RUN make", duration_ms=1234))
    printer.feed(_vertex("b", "started", "[3/3] RUN false"))
    printer.feed(_log("b", b"about to fail\n"))
    clock.now += 0.5
    printer.feed(_vertex("b", "failed", "[3/3] RUN false", error="exit code 1", exit_code=1))
    running = _text(100, printer)
    printer.close()
    text = out.getvalue()
    assert "#1 [1/3] FROM busybox  CACHED" in text
    assert "#2 [2/3] RUN make  DONE 1.2s" in text
    assert "#3 [3/3] RUN false  ERROR 0.5s: exit code 1" in text
    assert "#3 about to fail" in text  # the failed step's output is kept with it
    assert "=>" not in running  # nothing runs any more
    assert text.rstrip().endswith("[+] Built in 1.5s (3/3)")


def test_auto_is_plain_off_a_terminal_and_tty_on_one() -> None:
    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_printer("auto", io.StringIO()), PlainProgress)
    printer = make_printer("auto", _Tty())
    assert isinstance(printer, TtyProgress)
    printer.close()
    assert make_printer("quiet") is None
    with pytest.raises(ValueError, match="unknown progress mode 'fancy'"):
        make_printer("fancy")
