"""The engine's registry client is made when something first talks to a registry, not at start."""

from __future__ import annotations

from typing import Any

import pytest

from buildsvc.daemon import engine
from buildsvc.sources import RegistryOptions


class _Counting:
    made = 0
    closed = 0

    def __init__(self, options: RegistryOptions) -> None:
        type(self).made += 1
        self.options = options

    def resolve(self, *args: Any) -> str:
        return "resolved"

    def close(self) -> None:
        type(self).closed += 1


def test_the_client_is_made_once_on_first_use_and_closed_only_if_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine, "RegistryClient", _Counting)
    _Counting.made = _Counting.closed = 0
    options = RegistryOptions(insecure_hosts=frozenset({"reg:5000"}))
    unused = engine._LazyRegistry(options)
    assert unused.options is options  # read without making a client (registry_push.client_for)
    unused.close()
    assert (_Counting.made, _Counting.closed) == (0, 0)
    used = engine._LazyRegistry(options)
    assert used.resolve("x") == "resolved"
    assert used.resolve("y") == "resolved"
    used.close()
    assert (_Counting.made, _Counting.closed) == (1, 1)
