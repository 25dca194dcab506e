"""KeyedLocks: one lock per key, forgotten once nobody holds or waits for it."""

from __future__ import annotations

import threading
import time

import pytest

from buildsvc.keyed_locks import KeyedLocks


def test_one_key_is_held_by_one_thread_at_a_time() -> None:
    locks = KeyedLocks()
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(50):
            with locks.hold("layer"):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1
    assert len(locks) == 0


def test_other_keys_do_not_wait() -> None:
    locks = KeyedLocks()
    entered = threading.Event()
    with locks.hold("a"):

        def other() -> None:
            with locks.hold("b"):
                entered.set()

        t = threading.Thread(target=other)
        t.start()
        assert entered.wait(5)
        t.join()
        assert len(locks) == 1  # "b" is gone, "a" is still held


def test_a_waiter_keeps_the_entry_and_gets_the_same_lock() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    waiting = threading.Event()

    def second() -> None:
        waiting.set()
        with locks.hold("k"):
            order.append("second")

    with locks.hold("k"):
        t = threading.Thread(target=second)
        t.start()
        assert waiting.wait(5)
        deadline = time.monotonic() + 5
        while len(locks) == 1 and locks._entries["k"].users < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert locks._entries["k"].users == 2  # the waiter counts: the entry must outlive this holder
        order.append("first")
    t.join()
    assert order == ["first", "second"]
    assert len(locks) == 0


def test_an_error_in_the_block_releases_and_forgets_the_key() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError), locks.hold("k"):
        raise RuntimeError("boom")
    assert len(locks) == 0
    with locks.hold("k"):  # not left locked
        pass
