"""``--progress tty``: a live view of a build on a terminal, in the way of BuildKit's tty display.

While the build runs, the bottom of the screen is redrawn a few times a second: a header with the
build's elapsed time and how many steps are done, then each running step with its timer and the last
lines of its output. A step that ends leaves one line above the live part, which stays on the
screen: ``#N name  DONE 1.2s``, ``CACHED`` or ``ERROR``; a failed step also keeps its last lines of
output, since they are what explains the failure.

Timers use this process's monotonic clock from the moment an update arrives (the daemon's clock may
differ from ours); the duration of a finished step is the solver's own measure when it has one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from buildsvc.api.model import StatusUpdate

__all__ = ["TtyProgress"]

# As BuildKit: a few lines of each running step's output are enough to see that it moves.
TAIL_LINES = 6
_REFRESH_PER_SECOND = 8


@dataclass(slots=True)
class _Step:
    digest: str
    number: int
    name: str
    started: float | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    partial: str = ""
    """Output after the last newline: shown, and completed by the next piece."""

    def add_output(self, data: bytes) -> None:
        text = self.partial + data.decode("utf-8", "replace").replace("\r\n", "\n")
        *complete, self.partial = text.split("\n")
        self.tail.extend(complete)

    def last_lines(self) -> list[str]:
        lines = list(self.tail) + ([self.partial] if self.partial else [])
        return lines[-TAIL_LINES:]


class TtyProgress:
    """The live view, drawn on ``console`` (a terminal, or any console with ``force_terminal``)."""

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self._clock = clock
        self._began = clock()
        self._lock = threading.Lock()
        self._steps: dict[str, _Step] = {}
        self._running: dict[str, _Step] = {}
        self._finished = 0
        self._live = Live(
            console=console,
            get_renderable=self.render,
            refresh_per_second=_REFRESH_PER_SECOND,
            transient=True,  # the running part goes; the kept lines above it stay
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def _step(self, digest: str, name: str = "") -> _Step:
        step = self._steps.get(digest)
        if step is None:
            step = self._steps[digest] = _Step(
                digest=digest, number=len(self._steps) + 1, name=name or digest
            )
        elif name and step.name == digest:
            step.name = name
        return step

    def feed(self, update: StatusUpdate) -> None:
        """Take one update into the view (kept lines are printed at once)."""
        with self._lock:
            kept = self._apply(update)
        # Printed outside the lock: the console hands prints to the Live display, whose refresh
        # thread holds its own lock while it calls render(), which takes ours.
        for line in kept:
            self.console.print(line, soft_wrap=True)

    def _apply(self, update: StatusUpdate) -> list[Text]:
        if update.log is not None:
            self._step(update.log.vertex).add_output(update.log.data)
            return []
        v = update.vertex
        if v is None:
            return []
        step = self._step(v.digest, v.name)
        match v.state:
            case "started":
                step.started = self._clock()
                self._running[v.digest] = step
                return []
            case "cached":
                return [self._keep(step, Text("CACHED", style="blue"))]
            case "completed":
                took = v.duration_ms / 1000 if v.duration_ms else self._elapsed(step)
                return [self._keep(step, Text(f"DONE {took:.1f}s", style="green"))]
            case "failed":
                error = Text(f"ERROR {self._elapsed(step):.1f}s: {v.error}", style="bold red")
                # The output that explains the failure stays on the screen with it.
                tail = [Text(f"#{step.number} {line}", style="red") for line in step.last_lines()]
                return [self._keep(step, error), *tail]
            case "interrupted":
                return [self._keep(step, Text(f"INTERRUPTED: {v.error}", style="yellow"))]
        return []

    def _elapsed(self, step: _Step) -> float:
        return self._clock() - step.started if step.started is not None else 0.0

    def _keep(self, step: _Step, outcome: Text) -> Text:
        """The line a finished step leaves (printed above the redrawn part)."""
        self._running.pop(step.digest, None)
        self._finished += 1
        line = Text(f"#{step.number} ", style="bold")
        line.append(step.name)
        line.append("  ")
        line.append_text(outcome)
        return line

    def _header(self, verb: str, now: float) -> Text:
        return Text(
            f"[+] {verb} {now - self._began:.1f}s ({self._finished}/{len(self._steps)})", style="bold"
        )

    def render(self) -> RenderableType:
        """The live part: the header, then each running step with its timer and last output."""
        with self._lock:
            now = self._clock()
            header = self._header("Building", now)
            parts: list[RenderableType] = [header]
            for step in self._running.values():
                took = now - step.started if step.started is not None else 0.0
                line = Text(f" => #{step.number} ")
                line.append(step.name)
                line.append(f"  {took:.1f}s", style="cyan")
                parts.append(line)
                parts.extend(Text(f"    {out}", style="dim") for out in step.last_lines())
            return Group(*parts)

    def close(self) -> None:
        """Stop redrawing; the kept lines stay on the screen, under a last header."""
        self._live.stop()
        with self._lock:
            last = self._header("Built in" if not self._running else "Stopped after", self._clock())
        self.console.print(last)
