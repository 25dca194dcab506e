"""One lock per key (a layer, a URL, an image's snapshot), kept only while it is held or awaited.

A daemon runs for weeks and sees a new key with every layer, URL or image it touches: a plain
``dict.setdefault(key, Lock())`` keeps every lock it ever made. Here an entry counts the threads
that hold or wait for it, and the last one out removes it; a thread that comes later makes a new
lock, which is the same thing, as nobody holds the old one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["KeyedLocks"]


@dataclass(slots=True)
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    """Threads holding the lock or waiting for it."""


class KeyedLocks:
    """Mutual exclusion per key: ``with locks.hold(key): ...`` (see the module doc)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock for the ``with`` block (waiting while another thread holds it)."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        """Keys held or awaited now."""
        with self._guard:
            return len(self._entries)
