"""A registry import streams each layer from the download into its snapshot (nothing stored first):
a blob whose bytes are not its digest is a recorded miss that leaves no snapshot behind, and a
download that breaks off halfway is fetched again, never half-applied."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from tests.integration.cache.test_cache_roundtrip import (
    all_events,
    assert_all_cached,
    assert_no_leaks,
    build,
    layout_config,
    random_definition,
    same_bytes,
)
from tests.integration.test_build_cli import Cli, cli, rootfs
from tests.support.cutting_proxy import CuttingProxy
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root

__all__ = ["cli", "rootfs"]  # fixtures


def _export_both(cli: Cli, rootfs: Path, tmp_path: Path, ref: str) -> tuple[Path, str, set[str]]:
    """Build once, exporting to the registry and to a layout (same layers: the layout names them);
    the definition, the top layer of the longest chain, and every layer."""
    llb_file = random_definition(tmp_path / "def.json")
    store = tmp_path / "cache"
    build(
        cli,
        llb_file,
        rootfs,
        tmp_path / "out",
        "--export-cache",
        f"type=registry,ref={ref},mode=max,registry.insecure=true",
        "--export-cache",
        f"type=local,dest={store},mode=max",
    )
    _, config = layout_config(store)
    # The layer of the second random step (the top of the longest chain).
    victim = config.layers[max(r.results[0].layer for r in config.records if r.results)].blob
    return llb_file, victim, {layer.blob for layer in config.layers}


def _content_blobs(cli: Cli) -> set[str]:
    found = cli.root.rglob("blobs/sha256/*")
    return {"sha256:" + p.name for p in found if p.is_file() and not p.name.startswith(".")}


def test_a_corrupt_registry_blob_is_a_miss_and_leaves_nothing(
    cli: Cli, fresh_cli: Callable[[], Cli], rootfs: Path, tmp_path: Path, registry: TestRegistry
) -> None:
    ref = f"{registry.host}/cache/app:max"
    llb_file, victim, _ = _export_both(cli, rootfs, tmp_path, ref)
    data = bytearray(registry.blob_path(victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    registry.blob_path(victim).write_bytes(bytes(data))

    fresh = fresh_cli()
    attrs = f"type=registry,ref={ref},registry.insecure=true"
    _, stderr = build(fresh, llb_file, rootfs, tmp_path / "out2", "--import-cache", attrs)
    # The corrupt record is a miss: its step ran again and wrote new random bytes.
    assert "random two" in stderr and " DONE" in stderr
    assert (tmp_path / "out" / "r2").read_bytes() != (tmp_path / "out2" / "r2").read_bytes()
    misses = [e for e in all_events(fresh) if isinstance(e, ev.CacheImportMiss)]
    assert len(misses) == 1 and victim in misses[0].error and "corrupt" in misses[0].error
    assert victim not in _content_blobs(fresh)  # streamed: never stored, corrupt or not
    assert_no_leaks(fresh)  # the half-applied snapshot was removed


@pytest.fixture
def proxies() -> Iterator[list[CuttingProxy]]:
    made: list[CuttingProxy] = []
    yield made
    for proxy in made:
        proxy.close()


def test_a_download_that_breaks_off_is_fetched_again_and_hits(
    cli: Cli,
    fresh_cli: Callable[[], Cli],
    rootfs: Path,
    tmp_path: Path,
    registry: TestRegistry,
    proxies: list[CuttingProxy],
) -> None:
    llb_file, victim, layers = _export_both(cli, rootfs, tmp_path, f"{registry.host}/cache/app:max")
    # The same registry through a proxy that cuts the victim's first download after its headers
    # and a few hundred bytes of the body.
    proxy = CuttingProxy(int(registry.host.rsplit(":", 1)[1]), victim.encode(), keep=900)
    proxies.append(proxy)

    fresh = fresh_cli()
    attrs = f"type=registry,ref={proxy.host}/cache/app:max,registry.insecure=true"
    _, stderr = build(fresh, llb_file, rootfs, tmp_path / "out2", "--import-cache", attrs)
    assert proxy.cuts == 1
    assert_all_cached(stderr)
    assert same_bytes(tmp_path / "out", tmp_path / "out2")
    gets = [p for m, p, s in registry.requests() if m == "GET" and p.endswith(f"/blobs/{victim}")]
    assert len(gets) == 2, gets  # the broken download, then the retried fetch
    assert not [e for e in all_events(fresh) if isinstance(e, ev.CacheImportMiss)]
    # The others went from the download into their snapshots; only the refetched one was stored.
    assert _content_blobs(fresh) & layers == {victim}
    assert_no_leaks(fresh)
