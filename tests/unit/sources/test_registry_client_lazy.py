"""A registry client opens its HTTP connections when it first talks to a registry, not when made."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.errors import ImageNotFound
from buildsvc.sources.reference import parse_reference


class _Counting(httpx.Client):
    made = 0
    closed = 0

    def __init__(self, **kwargs: Any) -> None:
        type(self).made += 1
        super().__init__(**kwargs, transport=httpx.MockTransport(lambda r: httpx.Response(404)))

    def close(self) -> None:
        type(self).closed += 1
        super().close()


def test_the_http_client_is_made_once_on_first_use_and_closed_only_if_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpx, "Client", _Counting)
    _Counting.made = _Counting.closed = 0
    options = RegistryOptions(insecure_hosts=frozenset({"reg:5000"}))
    unused = RegistryClient(options)
    assert unused.options is options  # read without making a client (registry_push.client_for)
    unused.close()
    assert (_Counting.made, _Counting.closed) == (0, 0)

    used = RegistryClient(options)
    for _ in range(2):
        with pytest.raises(ImageNotFound, match="manifest latest not found"):
            used.get_manifest(parse_reference("reg:5000/busybox:latest"))
    used.close()
    assert (_Counting.made, _Counting.closed) == (1, 1)
