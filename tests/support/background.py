"""Run a call (a solve) in a thread and act while it is at a known point."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def running_until(call: Callable[[], object], reached: Callable[[], bool], what: str) -> Iterator[None]:
    """Start ``call`` in a thread; run the block once ``reached()`` is true (within 30 s), then wait
    for the call, which must end without error.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not reached():
            assert not errors, f"ended before {what}: {errors[0]!r}"
            assert time.monotonic() < deadline, f"{what} never happened"
            time.sleep(0.05)
        yield
    finally:
        thread.join(60)
    assert errors == []
