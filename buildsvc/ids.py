"""Unique ids made without a system call each.

``uuid.uuid4()`` reads 16 bytes from the kernel (``getrandom``) per id, and a thread in a system
call gives up the interpreter lock: a cold solve makes a dozen ids per vertex (its events' ids, its
snapshots' keys), each a lock hand-over between the vertex threads. Here a process draws 60 random
bits once (again in a forked child) and counts: ids stay unique across processes and restarts (two
processes share a prefix with a chance of one in 2^60) and are valid version-4 UUIDs in form.
"""

from __future__ import annotations

import itertools
import os
import secrets
import uuid

__all__ = ["new_hex", "new_uuid"]


class _Source:
    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self.prefix = secrets.randbits(64) << 64
        self.counter = itertools.count()  # next() on it is atomic under the GIL: no lock needed


_source = _Source()
_LOW = (1 << 64) - 1


def new_uuid() -> uuid.UUID:
    """A new id, unique like a ``uuid4`` (its version and variant bits set as one's)."""
    return uuid.UUID(int=_source.prefix | (next(_source.counter) & _LOW), version=4)


def new_hex() -> str:
    """:func:`new_uuid` as 32 lowercase hex digits."""
    return new_uuid().hex
