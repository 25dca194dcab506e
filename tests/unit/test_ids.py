"""Ids made without a system call each: unique, UUID-shaped, and never shared with a forked child."""

from __future__ import annotations

import os
import uuid

from buildsvc import ids


def test_ids_are_distinct_version_4_uuids() -> None:
    made = [ids.new_uuid() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert {u.version for u in made} == {4}
    assert {u.variant for u in made} == {uuid.RFC_4122}
    assert len(ids.new_hex()) == 32 and ids.new_hex() != ids.new_hex()


def test_a_forked_child_draws_its_own_prefix() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, ids.new_uuid().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    mine = ids.new_uuid()
    assert child.int >> 64 != mine.int >> 64
