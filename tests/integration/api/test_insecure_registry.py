"""``buildsvc daemon --insecure-registry HOST:PORT``: pulls and pushes to that host over plain HTTP.

The registry is Debian's ``docker-registry`` on a loopback port, serving HTTP only. Without the flag
the daemon speaks HTTPS to it and the build fails naming the registry; with it, the base image is
pulled and the result pushed with no per-output ``registry.insecure=true``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from buildsvc.cli.daemon_cmd import registry_host
from buildsvc.errors import InvalidInput
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.integration.api.conftest import Daemons
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    work = tmp_path_factory.mktemp("insecure-registry")
    with (
        TestRegistry(work / "registry") as reg,
        RegistryClient(RegistryOptions(insecure=True)) as client,
    ):
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "busybox")]
        push_image(client, parse_reference(f"{reg.host}/busybox:latest"), build_image(layers), tag="latest")
        yield reg


def _context(tmp_path: Path, registry: TestRegistry) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/busybox:latest\nRUN echo hi > /hi\n")
    return ctx


def test_the_daemon_pulls_and_pushes_over_http_to_the_named_registry(
    daemons: Daemons, registry: TestRegistry, tmp_path: Path
) -> None:
    d = daemons.start("--insecure-registry", registry.host)
    target = f"{registry.host}/built:1"
    d.cli("build", str(_context(tmp_path, registry)), "-o", f"type=image,name={target},push=true")
    with RegistryClient(RegistryOptions(insecure=True)) as client:
        manifest, _ = client.get_manifest(parse_reference(target))
    assert manifest
    pushed = [p for m, p, status in registry.requests() if m == "PUT" and "/v2/built/manifests/1" in p]
    assert pushed


def test_without_the_flag_the_daemon_speaks_https_and_the_build_fails(
    daemons: Daemons, registry: TestRegistry, tmp_path: Path
) -> None:
    d = daemons.start()
    result = d.cli("build", str(_context(tmp_path, registry)), expect=None)
    assert result.returncode != 0
    assert registry.host in result.stderr
    assert "start the daemon with --insecure-registry HOST" in result.stderr


@pytest.mark.parametrize("bad", ["http://reg:5000", "reg:5000/path", "reg:port", "", "reg:70000"])
def test_a_malformed_host_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="--insecure-registry"):
        registry_host(bad)


def test_a_host_is_kept_lowercase_with_its_port() -> None:
    assert registry_host("Registry.Local:5000") == "registry.local:5000"
    assert registry_host("[::1]:5000") == "[::1]:5000"


def test_a_rebuild_reuses_the_resolved_base_image_unless_it_asks_to_pull(
    daemons: Daemons, registry: TestRegistry, tmp_path: Path
) -> None:
    d = daemons.start("--insecure-registry", registry.host)
    ctx = _context(tmp_path, registry)

    def manifest_reads() -> int:
        # What the tag names now (a read by digest is of content that cannot change).
        tag = "/v2/busybox/manifests/latest"
        return sum(1 for m, p, _ in registry.requests() if m in ("GET", "HEAD") and p == tag)

    d.cli("build", str(ctx))
    first = manifest_reads()
    assert first > 0
    d.cli("build", str(ctx))
    assert manifest_reads() == first  # resolved a moment ago: the registry is not asked again
    d.cli("build", str(ctx), "--opt", "image-resolve-mode=pull")
    assert manifest_reads() > first
    pulled = manifest_reads()
    d.cli("build", str(ctx), "--opt", "no-cache=")
    assert manifest_reads() > pulled


def test_a_pinned_base_image_the_daemon_holds_builds_with_the_registry_down(
    daemons: Daemons, busybox_tars: list[bytes], tmp_path: Path
) -> None:
    # As BuildKit resolves a digest from its content store: a FROM pinned by digest (and the solver's
    # own pinned source) asks no registry once the daemon holds the image's manifest and config.
    with TestRegistry(tmp_path / "own-registry") as own, RegistryClient(RegistryOptions(insecure=True)) as c:
        layers = [make_layer(tar, "gzip") for tar in busybox_tars]
        digest = push_image(c, parse_reference(f"{own.host}/busybox:v1"), build_image(layers), tag="v1")
        d = daemons.start("--insecure-registry", own.host)
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {own.host}/busybox@{digest}\nRUN echo hi > /hi\n")
        d.cli("build", str(ctx))
    d.cli("prune", "--all")  # the RUN runs again: its base is pulled (from what the daemon holds)
    rebuilt = d.cli("build", "--progress", "plain", str(ctx))
    assert "RUN echo hi > /hi" in rebuilt.stderr and "CACHED" not in rebuilt.stderr


@pytest.fixture(scope="module")
def busybox_tars(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return busybox_layer_tars(tmp_path_factory.mktemp("held-busybox"))
