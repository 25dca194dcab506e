"""Cache export and import through real daemons: one daemon exports, a fresh one imports.

Each daemon is a ``buildsvc daemon`` subprocess on its own root and its own database, so nothing
but the exported cache links them. Builds write random bytes: a hit is the only way the second
daemon's result can hold the same bytes. Covered here: ``type=inline`` (the cache in a pushed
image's config, imported with ``type=registry,ref=<the image>``), a ``mode=max`` local cache with
the vertex of each imported record, a Dockerfile build importing through the frontend option
``cache-imports``, and a client-side frontend (gateway job) exporting its result's cache.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.projections.schema import cache_records
from buildsvc.solver.definition import Definition
from buildsvc.sources import RegistryClient, RegistryOptions
from buildsvc.sources.reference import parse_reference
from tests.integration.api.conftest import Daemon
from tests.integration.cache.conftest import FreshDaemons
from tests.integration.cache.test_cache_roundtrip import layout_config, random_definition, with_results
from tests.integration.test_build_cli import rootfs
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root

__all__ = ["rootfs"]  # a fixture

DOCKERFILE = """\
FROM {base}
RUN head -c 3000 /dev/urandom > /r1
RUN head -c 3000 /dev/urandom > /r2 && rm /etc/motd
"""


@pytest.fixture(scope="module")
def base_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    """A registry holding the busybox test image as ``base:1``."""
    work = tmp_path_factory.mktemp("cache-daemon")
    with (
        TestRegistry(work / "registry") as reg,
        RegistryClient(RegistryOptions(insecure=True)) as client,
    ):
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "busybox")]
        push_image(client, parse_reference(f"{reg.host}/base:1"), build_image(layers), tag="1")
        yield reg


def build(d: Daemon, out: Path, *args: str) -> tuple[str, str]:
    """``buildsvc build ... -o type=local,dest=out`` on ``d``: the build ref and the progress."""
    meta = out.with_suffix(".meta.json")
    done = d.cli(
        "build", "-o", f"type=local,dest={out}", "--metadata-file", str(meta), "--progress", "plain", *args
    )
    return json.loads(meta.read_text())["buildsvc.build.ref"], done.stderr


def llb_args(llb_file: Path, rootfs: Path) -> tuple[str, ...]:
    return ("--llb", str(llb_file), "--local", f"rootfs={rootfs}")


def all_events(d: Daemon) -> list[Event]:
    state = open_state(d.root, d.db_url, migrate=False)
    try:
        return [s.decode() for s in state.store.read_all()]
    finally:
        state.close()


def records(d: Daemon) -> list[tuple[str, str, str]]:
    """The cache index: (cache key, vertex, source) of each record."""
    state = open_state(d.root, d.db_url, migrate=False)
    try:
        with state.db.read() as conn:
            rows = conn.execute(
                sa.select(cache_records.c.cache_key, cache_records.c.vertex, cache_records.c.source)
            )
            return sorted((r.cache_key, r.vertex, r.source) for r in rows)
    finally:
        state.close()


def same_random_bytes(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in ("r1", "r2"))


def no_leaks(d: Daemon) -> None:
    report = json.loads(d.cli("leaks", "--format", "json").stdout)
    assert all(not found for found in report.values()), report


def test_inline_cache_rides_in_the_pushed_image_and_a_fresh_daemon_imports_it(
    fresh_daemons: FreshDaemons, base_registry: TestRegistry, rootfs: Path, tmp_path: Path
) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    image = f"{base_registry.host}/app/inline:1"
    first = fresh_daemons.start("--insecure-registry", base_registry.host)
    ref, _ = build(
        first,
        tmp_path / "out",
        *llb_args(llb_file, rootfs),
        "-o",
        f"type=image,name={image},push=true",
        "--export-cache",
        "type=inline",
    )
    meta = json.loads((tmp_path / "out.meta.json").read_text())
    # The pushed image's config carries BuildKit's key: base64 of the records, the result's record
    # pointing at the image's top layer.
    config = subprocess.run(
        ["skopeo", "inspect", "--config", "--raw", "--tls-verify=false", f"docker://{image}"],
        capture_output=True,
        text=True,
        check=True,
    )
    inline = json.loads(base64.b64decode(json.loads(config.stdout)["moby.buildkit.cache.v0"]))
    layer_count = len(json.loads(config.stdout)["rootfs"]["diff_ids"])
    assert [r["layers"] for r in inline] == [[{"layer": layer_count - 1}]]
    definition = Definition.from_json(llb_file.read_text())
    assert definition.output is not None
    completed = [e for e in first.events(ref) if isinstance(e, ev.CacheExportCompleted)]
    assert [(e.manifest_digest, e.records) for e in completed] == [(meta["containerimage.digest"], 1)]
    no_leaks(first)

    second = fresh_daemons.start("--insecure-registry", base_registry.host)
    _, stderr = build(
        second, tmp_path / "out2", *llb_args(llb_file, rootfs), "--import-cache", f"type=registry,ref={image}"
    )
    # Inline holds the result only (as min): the earlier steps run, the result is a hit.
    assert stderr.count(" CACHED") == 1, stderr
    assert same_random_bytes(tmp_path / "out", tmp_path / "out2")
    imported = [e for e in all_events(second) if isinstance(e, ev.CacheImported)]
    assert [(e.manifest_digest, e.records, e.error) for e in imported] == [
        (meta["containerimage.digest"], 1, "")
    ]
    from_import = [r for r in records(second) if r[2] == "import:registry"]
    assert [vertex for _, vertex, _ in from_import] == [definition.output.digest]
    no_leaks(second)


def test_an_image_without_inline_cache_is_a_clear_import_error(
    fresh_daemons: FreshDaemons, base_registry: TestRegistry, rootfs: Path, tmp_path: Path
) -> None:
    d = fresh_daemons.start("--insecure-registry", base_registry.host)
    llb_file = random_definition(tmp_path / "def.json")
    failed = d.cli(
        "build",
        *llb_args(llb_file, rootfs),
        "--import-cache",
        f"type=registry,ref={base_registry.host}/base:1",
        expect=None,
    )
    assert failed.returncode != 0
    assert "moby.buildkit.cache.v0" in failed.stderr, failed.stderr
    # Without an image output an inline export has nowhere to go: refused before the build.
    refused = d.cli("build", *llb_args(llb_file, rootfs), "--export-cache", "type=inline", expect=2)
    assert "type=inline" in refused.stderr and "image output" in refused.stderr, refused.stderr


def test_a_max_cache_moves_between_daemons_every_step_a_hit_each_record_with_its_vertex(
    fresh_daemons: FreshDaemons, rootfs: Path, tmp_path: Path
) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    store = tmp_path / "cache"
    first = fresh_daemons.start()
    build(
        first,
        tmp_path / "out",
        *llb_args(llb_file, rootfs),
        "--export-cache",
        f"type=local,dest={store},mode=max",
    )
    _, config = layout_config(store)
    assert with_results(config) == 3
    built = records(first)
    no_leaks(first)

    second = fresh_daemons.start()
    _, stderr = build(
        second, tmp_path / "out2", *llb_args(llb_file, rootfs), "--import-cache", f"type=local,src={store}"
    )
    assert stderr.count(" CACHED") == 3 and " DONE" not in stderr, stderr
    assert same_random_bytes(tmp_path / "out", tmp_path / "out2")
    # The same keys made by the same vertices: the import says which vertex made each record.
    assert [(k, v) for k, v, _ in records(second)] == [(k, v) for k, v, _ in built]
    assert {source for _, _, source in records(second)} == {"import:local"}
    assert all(vertex for _, vertex, _ in records(second))
    no_leaks(second)


def dockerfile_context(tmp_path: Path, registry: TestRegistry) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=f"{registry.host}/base:1"))
    return ctx


def test_a_dockerfile_build_imports_a_local_cache_through_the_cache_imports_option(
    fresh_daemons: FreshDaemons, base_registry: TestRegistry, tmp_path: Path
) -> None:
    ctx = dockerfile_context(tmp_path, base_registry)
    store = tmp_path / "cache"
    first = fresh_daemons.start("--insecure-registry", base_registry.host)
    build(first, tmp_path / "out", str(ctx), "--export-cache", f"type=local,dest={store},mode=max")
    no_leaks(first)

    second = fresh_daemons.start("--insecure-registry", base_registry.host)
    option = json.dumps([{"type": "local", "attrs": {"src": str(store)}}])
    ref, stderr = build(second, tmp_path / "out2", str(ctx), "--opt", f"cache-imports={option}")
    assert same_random_bytes(tmp_path / "out", tmp_path / "out2")
    assert not (tmp_path / "out2" / "etc" / "motd").exists()
    events = second.events(ref)
    assert not [e for e in events if isinstance(e, ev.VertexStarted)], stderr  # nothing ran
    assert len([e for e in events if isinstance(e, ev.VertexCached)]) == 3, stderr
    imported = [e for e in all_events(second) if isinstance(e, ev.CacheImported)]
    assert [(e.type, e.records, e.error) for e in imported] == [("local", 3, "")]
    no_leaks(second)


def test_a_client_side_frontend_build_exports_its_cache(
    fresh_daemons: FreshDaemons, base_registry: TestRegistry, tmp_path: Path
) -> None:
    ctx = dockerfile_context(tmp_path, base_registry)
    store = tmp_path / "cache"
    first = fresh_daemons.start("--insecure-registry", base_registry.host)
    ref, _ = build(
        first,
        tmp_path / "out",
        str(ctx),
        "--client-side",
        "--export-cache",
        f"type=local,dest={store},mode=max",
    )
    completed = [e for e in first.events(ref) if isinstance(e, ev.CacheExportCompleted)]
    assert [e.records for e in completed] == [3]
    no_leaks(first)

    second = fresh_daemons.start("--insecure-registry", base_registry.host)
    build(second, tmp_path / "out2", str(ctx), "--client-side", "--import-cache", f"type=local,src={store}")
    assert same_random_bytes(tmp_path / "out", tmp_path / "out2")
    no_leaks(second)
