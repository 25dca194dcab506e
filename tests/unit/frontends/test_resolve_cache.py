"""A base image resolved recently is not asked of the registry again, unless the build asks for a
fresh answer (``image-resolve-mode=pull`` or ``no-cache``), the entry is older than the cache's
lifetime, or its config blob is gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from buildsvc.daemon.frontend import wants_fresh_resolve
from buildsvc.frontends.dockerfile.config import Platform
from buildsvc.frontends.dockerfile.resolver import RegistryImageResolver, ResolveCache
from buildsvc.sources import ContentStore, RegistryClient

PLATFORM = Platform(os="linux", architecture="amd64")
REF = "registry.test/base:latest"


class _Registry:
    """Answers each resolve with the image the tag names now (``tag``), counting the calls."""

    def __init__(self, content: ContentStore) -> None:
        self.content = content
        self.calls = 0
        self.tag = "one"

    def resolve(self, reference: Any, platform: Any, *, keep: Any = None) -> Any:
        self.calls += 1
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Env": [f"TAG={self.tag}"]},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        )
        digest = self.content.put(config.encode())
        return SimpleNamespace(
            digest=f"sha256:{self.tag:0>64}",
            index_digest=None,
            manifest=SimpleNamespace(config=SimpleNamespace(digest=digest)),
        )

    def fetch_blob(self, reference: Any, desc: Any, store: Any) -> str:
        raise AssertionError("the config is put in the content store by resolve")


def _resolver(
    tmp_path: Path, cache: ResolveCache, *, fresh: bool = False
) -> tuple[RegistryImageResolver, _Registry]:
    content = ContentStore(str(tmp_path / "content"))
    registry = _Registry(content)
    return RegistryImageResolver(cast(RegistryClient, registry), content, cache=cache, fresh=fresh), registry


def test_a_second_resolve_within_the_lifetime_does_not_ask_the_registry(tmp_path: Path) -> None:
    cache = ResolveCache(ttl=300)
    resolver, registry = _resolver(tmp_path, cache)
    first = resolver.resolve(REF, PLATFORM)
    registry.tag = "two"  # the tag moved; the cached answer is the one a rebuild uses
    again = resolver.resolve(REF, PLATFORM)
    assert registry.calls == 1
    assert again[0] == first[0]
    assert again[1].env == first[1].env


def test_a_fresh_resolve_asks_the_registry_and_updates_the_cache(tmp_path: Path) -> None:
    cache = ResolveCache(ttl=300)
    resolver, registry = _resolver(tmp_path, cache)
    resolver.resolve(REF, PLATFORM)
    registry.tag = "two"
    fresh = RegistryImageResolver(cast(RegistryClient, registry), resolver.content, cache=cache, fresh=True)
    pinned, _ = fresh.resolve(REF, PLATFORM)
    assert registry.calls == 2
    assert pinned == f"sha256:{'two':0>64}"
    assert resolver.resolve(REF, PLATFORM)[0] == pinned  # later builds see the new answer
    assert registry.calls == 2


def test_an_entry_past_its_lifetime_is_resolved_again(tmp_path: Path) -> None:
    now = [0.0]
    cache = ResolveCache(ttl=300, clock=lambda: now[0])
    resolver, registry = _resolver(tmp_path, cache)
    resolver.resolve(REF, PLATFORM)
    now[0] = 299.0
    resolver.resolve(REF, PLATFORM)
    assert registry.calls == 1
    now[0] = 300.0
    registry.tag = "two"
    assert resolver.resolve(REF, PLATFORM)[0] == f"sha256:{'two':0>64}"
    assert registry.calls == 2


def test_a_pruned_config_blob_is_resolved_again(tmp_path: Path) -> None:
    cache = ResolveCache(ttl=300)
    resolver, registry = _resolver(tmp_path, cache)
    resolver.resolve(REF, PLATFORM)
    for blob in (tmp_path / "content").rglob("*"):
        if blob.is_file():
            blob.unlink()
    resolver.resolve(REF, PLATFORM)
    assert registry.calls == 2


def test_other_platforms_and_references_are_their_own_entries(tmp_path: Path) -> None:
    cache = ResolveCache(ttl=300)
    resolver, registry = _resolver(tmp_path, cache)
    resolver.resolve(REF, PLATFORM)
    resolver.resolve(REF, Platform(os="linux", architecture="amd64", variant="v2"))
    resolver.resolve("registry.test/other:latest", PLATFORM)
    assert registry.calls == 3


def test_the_options_that_ask_for_a_fresh_resolve() -> None:
    assert wants_fresh_resolve({"image-resolve-mode": "pull"})
    assert wants_fresh_resolve({"no-cache": ""})
    assert not wants_fresh_resolve({"image-resolve-mode": "default"})
    assert not wants_fresh_resolve({"target": "x"})


def test_a_cache_with_a_file_is_shared_by_the_next_process(tmp_path: Path) -> None:
    path = tmp_path / "content" / "resolved.json"
    resolver, registry = _resolver(tmp_path, ResolveCache(ttl=300, path=path))
    first = resolver.resolve(REF, PLATFORM)
    # An embedded build is a process of its own: a new cache on the same file.
    later = RegistryImageResolver(
        cast(RegistryClient, registry), resolver.content, cache=ResolveCache(path=path)
    )
    assert later.resolve(REF, PLATFORM)[0] == first[0]
    assert registry.calls == 1


def test_an_unreadable_cache_file_is_an_empty_cache(tmp_path: Path) -> None:
    path = tmp_path / "resolved.json"
    path.write_text("{not json")
    resolver, registry = _resolver(tmp_path, ResolveCache(ttl=300, path=path))
    resolver.resolve(REF, PLATFORM)
    assert registry.calls == 1
    assert ResolveCache(path=path).get(REF, PLATFORM) is not None  # and it was written anew


def test_an_entry_from_a_clock_that_went_back_is_not_trusted(tmp_path: Path) -> None:
    now = [1000.0]
    cache = ResolveCache(ttl=300, clock=lambda: now[0])
    cache.put(REF, PLATFORM, "sha256:" + "a" * 64, "sha256:" + "b" * 64)
    now[0] = 900.0
    assert cache.get(REF, PLATFORM) is None
