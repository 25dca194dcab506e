"""Cache export and import through ``buildsvc build``, as users run it (real runc, overlayfs, registry).

A build whose steps write random bytes is exported, the state (root and database) is thrown away,
the cache is imported into a fresh one and the build runs again: every step must be a cache hit and
the random bytes identical, which nothing but a real import can give. A missing blob is a clear
error, or with ``ignore-error=true`` a miss; a corrupt one is found when its record is hit (imports
are lazy) and is a recorded miss (the steps run again: new random bytes), never a wrong hit.
After every build the leak report must be empty.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from buildsvc.cache.config import CacheConfig, parse_config
from buildsvc.cache.manifest import parse_root
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.sql_store import SqlEventStore
from buildsvc.projections.schema import cache_records
from buildsvc.solver import llb
from tests.integration.cache.conftest import wipe
from tests.integration.test_build_cli import Cli, cli, rootfs, write_definition
from tests.support.databases import open_test_database
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root

__all__ = ["cli", "rootfs"]  # fixtures

STEPS = 3  # the local source and two exec steps


def random_definition(path: Path) -> Path:
    """Two steps that write random bytes, the second also deletes a file of the base (a whiteout)."""
    state = llb.local("rootfs").run("head -c 3000 /dev/urandom > /r1", name="random one").root()
    state = state.run("head -c 3000 /dev/urandom > /r2 && rm /bin/ls", name="random two").root()
    return write_definition(state.marshal(), path)


def build(cli: Cli, llb_file: Path, rootfs: Path, out: Path, *args: str, expect: int = 0) -> tuple[str, str]:
    """Run the build; its ref and stderr."""
    meta = out.with_suffix(".meta.json")
    done = cli.run(
        "build",
        "--llb",
        str(llb_file),
        "--local",
        f"rootfs={rootfs}",
        "--output",
        f"type=local,dest={out}",
        "--metadata-file",
        str(meta),
        "--progress",
        "plain",
        *args,
        expect=expect,
    )
    ref = json.loads(meta.read_text())["buildsvc.build.ref"] if expect == 0 else ""
    return ref, done.stderr


def assert_no_leaks(cli: Cli) -> None:
    report = json.loads(cli.run("leaks", "--format", "json").stdout)
    assert all(not found for found in report.values()), report


def events_of(cli: Cli, ref: str) -> list[Event]:
    db = open_test_database(cli.db_url)
    try:
        return [s.decode() for s in SqlEventStore(db).read_stream(f"build-{ref}")]
    finally:
        db.dispose()


def all_events(cli: Cli) -> list[Event]:
    db = open_test_database(cli.db_url)
    try:
        return [s.decode() for s in SqlEventStore(db).read_all()]
    finally:
        db.dispose()


def record_sources(cli: Cli) -> list[str]:
    db = open_test_database(cli.db_url)
    try:
        with db.read() as conn:
            return sorted(conn.scalars(sa.select(cache_records.c.source)))
    finally:
        db.dispose()


def layout_config(store: Path, tag: str = "latest") -> tuple[str, CacheConfig]:
    index = json.loads((store / "index.json").read_text())
    entry = next(
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )
    blobs = store / "blobs" / "sha256"
    root = parse_root((blobs / entry["digest"].split(":")[1]).read_bytes(), str(store))
    return entry["digest"], parse_config((blobs / root.config.digest.split(":")[1]).read_bytes(), str(store))


def with_results(config: CacheConfig) -> int:
    return sum(1 for r in config.records if r.results)


def assert_all_cached(stderr: str) -> None:
    assert stderr.count(" CACHED") == STEPS, stderr
    assert " DONE" not in stderr, stderr


def same_bytes(a: Path, b: Path) -> bool:
    return (a / "r1").read_bytes() == (b / "r1").read_bytes() and (a / "r2").read_bytes() == (
        b / "r2"
    ).read_bytes()


def test_local_export_min_and_max_then_import_into_a_fresh_state(
    cli: Cli, fresh_cli: Callable[[], Cli], rootfs: Path, tmp_path: Path
) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    store_max, store_min = tmp_path / "cache-max", tmp_path / "cache-min"
    ref, _ = build(
        cli,
        llb_file,
        rootfs,
        tmp_path / "out",
        "--export-cache",
        f"type=local,dest={store_max},mode=max",
        "--export-cache",
        f"type=local,store={store_min},tag=v1",  # store= is the original name; min is the default
    )
    assert not (tmp_path / "out" / "bin" / "ls").exists()
    # The layouts are OCI layouts other tools read.
    for store, tag in ((store_max, "latest"), (store_min, "v1")):
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{store}:{tag}"], capture_output=True, text=True, check=False
        )
        assert raw.returncode == 0, raw.stderr
        assert "application/vnd.buildkit.cacheconfig.v0" in raw.stdout
        tags = subprocess.run(
            ["umoci", "ls", "--layout", str(store)], capture_output=True, text=True, check=False
        )
        assert tags.returncode == 0 and tags.stdout.split() == [tag], tags
    max_digest, max_config = layout_config(store_max)
    min_digest, min_config = layout_config(store_min, "v1")
    assert with_results(max_config) == STEPS
    assert with_results(min_config) == 1 < with_results(max_config)
    # Each export is recorded with what it wrote.
    completed = [e for e in events_of(cli, ref) if isinstance(e, ev.CacheExportCompleted)]
    assert sorted((e.manifest_digest, e.records) for e in completed) == sorted(
        [(max_digest, STEPS), (min_digest, 1)]
    )
    assert all(e.layers > 0 and e.bytes_written > 0 for e in completed)
    started = [e for e in events_of(cli, ref) if isinstance(e, ev.CacheExportStarted)]
    assert sorted(e.mode for e in started) == ["max", "min"]
    assert_no_leaks(cli)
    wipe(cli)

    # max: every step is a hit in a fresh state, and the random bytes are the same.
    fresh = fresh_cli()
    ref2, stderr = build(
        fresh, llb_file, rootfs, tmp_path / "out-max", "--import-cache", f"type=local,src={store_max}"
    )
    assert_all_cached(stderr)
    assert same_bytes(tmp_path / "out", tmp_path / "out-max")
    assert record_sources(fresh) == ["import:local"] * STEPS
    imported = [e for e in all_events(fresh) if isinstance(e, ev.CacheImported)]
    assert [(e.build_ref, e.manifest_digest, e.records, e.error) for e in imported] == [
        (ref2, max_digest, STEPS, "")
    ]
    assert_no_leaks(fresh)

    # min: only the result's record; the earlier steps run again, the result is a hit.
    fresh = fresh_cli()
    _, stderr = build(
        fresh, llb_file, rootfs, tmp_path / "out-min", "--import-cache", f"type=local,src={store_min},tag=v1"
    )
    assert stderr.count(" CACHED") == 1, stderr
    assert same_bytes(tmp_path / "out", tmp_path / "out-min")
    assert_no_leaks(fresh)

    # digest= picks the manifest whatever the tags say.
    fresh = fresh_cli()
    _, stderr = build(
        fresh,
        llb_file,
        rootfs,
        tmp_path / "out-dg",
        "--import-cache",
        f"type=local,src={store_max},digest={max_digest}",
    )
    assert_all_cached(stderr)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_blob_is_a_clear_error_or_a_miss_never_a_wrong_hit(
    cli: Cli, fresh_cli: Callable[[], Cli], rootfs: Path, tmp_path: Path, damage: str
) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    store = tmp_path / "cache"
    build(cli, llb_file, rootfs, tmp_path / "out", "--export-cache", f"type=local,dest={store},mode=max")
    _, config = layout_config(store)
    # The layer of the second random step (the top of the longest chain).
    victim = config.layers[max(r.results[0].layer for r in config.records if r.results)].blob
    path = store / "blobs" / "sha256" / victim.split(":")[1]
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    fresh = fresh_cli()
    if damage == "missing":
        # Known without reading a byte: the import itself fails, naming the blob.
        done = fresh.run(
            "build",
            "--llb",
            str(llb_file),
            "--local",
            f"rootfs={rootfs}",
            "--progress",
            "quiet",
            "--import-cache",
            f"type=local,src={store}",
            expect=2,
        )
        assert victim in done.stderr and "missing" in done.stderr, done.stderr
        assert_no_leaks(fresh)
        fresh = fresh_cli()
        attrs = f"type=local,src={store},ignore-error=true"
    else:
        # Lazy import: a corrupt blob is found when the lookup hits its record, with or without
        # ignore-error; it is a recorded miss and the step runs (before: an import-time error).
        attrs = f"type=local,src={store}"
    _, stderr = build(fresh, llb_file, rootfs, tmp_path / "out2", "--import-cache", attrs)
    # The damaged record is a miss: its step ran again and wrote new random bytes.
    assert (
        "random two" in stderr
        and (tmp_path / "out" / "r2").read_bytes() != (tmp_path / "out2" / "r2").read_bytes()
    )
    events = all_events(fresh)
    imported = [e for e in events if isinstance(e, ev.CacheImported)]
    assert len(imported) == 1 and len(imported[0].offered) == imported[0].records
    if damage == "missing":
        assert imported[0].records_skipped >= 1 and victim in imported[0].error
    else:
        misses = [e for e in events if isinstance(e, ev.CacheImportMiss)]
        assert len(misses) == 1 and victim in misses[0].error and "corrupt" in misses[0].error
    assert_no_leaks(fresh)


def test_layers_unpacked_before_a_corrupt_one_are_recorded(
    cli: Cli, fresh_cli: Callable[[], Cli], rootfs: Path, tmp_path: Path
) -> None:
    # mode=min: one record whose chain is every layer, so its hit unpacks the lower layers before
    # it reaches the corrupt top one. They stay (verified, content-addressed) and must be in the log.
    llb_file = random_definition(tmp_path / "def.json")
    store = tmp_path / "cache"
    build(cli, llb_file, rootfs, tmp_path / "out", "--export-cache", f"type=local,dest={store},mode=min")
    _, config = layout_config(store)
    [record] = [r for r in config.records if r.results]
    path = store / "blobs" / "sha256" / config.layers[record.results[0].layer].blob.split(":")[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = fresh_cli()
    build(fresh, llb_file, rootfs, tmp_path / "out2", "--import-cache", f"type=local,src={store}")
    events = all_events(fresh)
    assert len([e for e in events if isinstance(e, ev.CacheImportMiss)]) == 1
    assert any(isinstance(e, ev.SnapshotCommitted) for e in events)
    assert_no_leaks(fresh)  # an unpacked layer no event made would be an unreferenced snapshot


def test_registry_export_and_import_with_the_deprecated_forms_too(
    cli: Cli, fresh_cli: Callable[[], Cli], rootfs: Path, tmp_path: Path, registry: TestRegistry
) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    ref_new = f"{registry.host}/cache/app:max"
    ref_old = f"{registry.host}/cache/app:old"
    _, stderr = build(
        cli,
        llb_file,
        rootfs,
        tmp_path / "out",
        "--export-cache",
        f"type=registry,ref={ref_new},mode=max,registry.insecure=true,compression=zstd,image-manifest=true",
    )
    assert "warning" not in stderr
    _, stderr = build(
        cli,
        llb_file,
        rootfs,
        tmp_path / "out-again",
        "--export-cache",
        ref_old,
        "--export-cache-opt",
        "mode=max",
        "--export-cache-opt",
        "registry.insecure=true",
    )
    assert "--export-cache" in stderr and "deprecated" in stderr
    manifest = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref_new}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert manifest.returncode == 0, manifest.stderr
    doc: dict[str, Any] = json.loads(manifest.stdout)
    assert doc["config"]["mediaType"] == "application/vnd.buildkit.cacheconfig.v0"
    assert {layer["mediaType"] for layer in doc["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    wipe(cli)

    for ref in (ref_new, ref_old):
        fresh = fresh_cli()
        out = tmp_path / f"out-{ref.rsplit(':', 1)[1]}"
        _, stderr = build(
            fresh, llb_file, rootfs, out, "--import-cache", f"type=registry,ref={ref},registry.insecure=true"
        )
        assert_all_cached(stderr)
        assert same_bytes(tmp_path / "out", out)
        assert record_sources(fresh) == ["import:registry"] * STEPS
        assert_no_leaks(fresh)


def test_a_failed_export_fails_the_build_unless_ignored(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache dir should be")
    done = cli.run(
        "build",
        "--llb",
        str(llb_file),
        "--local",
        f"rootfs={rootfs}",
        "--progress",
        "quiet",
        "--export-cache",
        f"type=local,dest={blocked}",
        expect=1,
    )
    assert str(blocked) in done.stderr
    ref, _ = build(
        cli,
        llb_file,
        rootfs,
        tmp_path / "out",
        "--export-cache",
        f"type=local,dest={blocked},ignore-error=true",
    )
    failed = [e for e in events_of(cli, ref) if isinstance(e, ev.CacheExportFailed)]
    assert len(failed) == 1 and failed[0].ignored and str(blocked) in failed[0].error
    assert any(isinstance(e, ev.SolveCompleted) for e in events_of(cli, ref))
    assert_no_leaks(cli)


def test_bad_cache_options_exit_2_naming_the_problem(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = random_definition(tmp_path / "def.json")
    for args, message in (
        (("--export-cache", "type=local"), "dest= is required"),
        (("--export-cache", "type=local,dest=/x,mode=most"), "mode must be min or max"),
        (("--export-cache", "type=s3,bucket=b"), "type must be one of"),
        (("--import-cache", "type=local,src=/nonexistent"), "not an OCI layout"),
        (("--export-cache", "type=local,dest=/x,compression=lz4"), "compression must be one of"),
    ):
        done = cli.run("build", "--llb", str(llb_file), "--local", f"rootfs={rootfs}", *args, expect=2)
        assert message in done.stderr, done.stderr
