"""Image exporters through ``buildsvc build``: ``type=oci`` (a layout tarball skopeo and umoci read),
``type=image,push=true`` (to a real registry) and ``--metadata-file``, embedded and on a daemon, on
both databases (run as root). After every build the leak report must be empty.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildsvc.api.model import SolveOptions
from buildsvc.sources import ContentStore, RegistryClient, RegistryOptions, parse_reference
from buildsvc.sources.manifests import parse_image_config
from tests.integration.api.conftest import Daemons
from tests.integration.test_build_cli import Cli, cli, hello_definition, rootfs, write_definition
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root

__all__ = ["cli", "rootfs"]  # fixtures


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[TestRegistry]:
    with TestRegistry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
def daemons(db_url: str, tmp_path: Path) -> Iterator[Daemons]:
    ds = Daemons(db_url, tmp_path)
    try:
        yield ds
        ds.check_all_releasable()
    finally:
        ds.close()


def layer_files(layer_gz: bytes) -> dict[str, bytes]:
    """Regular files in a gzipped layer tar, by name."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_gz))) as tar:
        out = {}
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
        return out


def read_oci_archive(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``index.json`` and the blobs (by digest) of an OCI layout tarball."""
    blobs: dict[str, bytes] = {}
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert "oci-layout" in names and "index.json" in names, names
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None and member.name.startswith("blobs/sha256/"):
                blobs["sha256:" + member.name.rsplit("/", 1)[1]] = f.read()
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index: dict[str, Any] = json.load(index_file)
    return index, blobs


def skopeo_inspect(target: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        ["skopeo", "inspect", *extra, target], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def completed_ref(stderr: str) -> str:
    match = re.search(r"^build (\w+) completed$", stderr, re.MULTILINE)
    assert match is not None, stderr
    return match.group(1)


def build_args(llb_file: Path, rootfs_dir: Path, *outputs: str, metadata: Path | None = None) -> list[str]:
    args = ["build", "--llb", str(llb_file), "--local", f"rootfs={rootfs_dir}", "--progress", "quiet"]
    for out in outputs:
        args += ["-o", out]
    if metadata is not None:
        args += ["--metadata-file", str(metadata)]
    return args


def test_oci_output_is_a_layout_tarball_skopeo_and_umoci_read(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    archive, meta_file = tmp_path / "x.tar", tmp_path / "meta.json"
    done = cli.run(
        *build_args(llb_file, rootfs, f"type=oci,dest={archive},name=example.com/demo:1", metadata=meta_file)
    )
    meta = json.loads(meta_file.read_text())
    assert meta["buildsvc.build.ref"] == completed_ref(done.stderr)
    assert meta["oci.dest"] == str(archive)
    assert meta["image.name"] == "example.com/demo:1"

    index, blobs = read_oci_archive(archive)
    (entry,) = index["manifests"]
    assert entry["digest"] == meta["containerimage.digest"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
    assert entry["annotations"]["io.containerd.image.name"] == "example.com/demo:1"
    manifest = json.loads(blobs[entry["digest"]])
    assert manifest["config"]["digest"] == meta["containerimage.config.digest"]
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer_files(blobs[layer["digest"]]) == {"hello.txt": b"hi from busybox\n"}
    config = parse_image_config("x.tar", blobs[manifest["config"]["digest"]])
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(blobs[layer["digest"]])).hexdigest()
    assert config.diff_ids == (diff_id,)

    inspected = skopeo_inspect(f"oci-archive:{archive}")
    assert inspected["Digest"] == meta["containerimage.digest"]
    assert inspected["Layers"] == [layer["digest"]]
    assert skopeo_inspect(f"oci-archive:{archive}:1")["Digest"] == meta["containerimage.digest"]

    # umoci unpacks it by its tag into a bundle holding the file.
    layout_dir, bundle = tmp_path / "layout", tmp_path / "bundle"
    layout_dir.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(layout_dir, filter="data")
    unpacked = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout_dir}:1", str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unpacked.returncode == 0, unpacked.stderr
    assert (bundle / "rootfs" / "hello.txt").read_text() == "hi from busybox\n"
    cli.assert_no_leaks()

    # Reproducible: the cached result exports to the very same bytes.
    again = tmp_path / "y.tar"
    cli.run(*build_args(llb_file, rootfs, f"type=oci,dest={again},name=example.com/demo:1"))
    assert again.read_bytes() == archive.read_bytes()
    cli.assert_no_leaks()


def test_dockerfile_image_config_is_the_images_config(cli: Cli, tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "greeting.txt").write_text("hello\n")
    (context / "Dockerfile").write_text(
        'FROM scratch\nCOPY greeting.txt /etc/\nENV GREETING=hello\nWORKDIR /etc\nCMD ["/bin/true"]\n'
    )
    archive, meta_file = tmp_path / "df.tar", tmp_path / "meta.json"
    cli.run(
        "build", str(context), "--progress", "quiet", "-o", f"type=oci,dest={archive}",
        "--metadata-file", str(meta_file),
    )  # fmt: skip
    meta = json.loads(meta_file.read_text())
    index, blobs = read_oci_archive(archive)
    (entry,) = index["manifests"]
    assert "annotations" not in entry  # no name=
    manifest = json.loads(blobs[meta["containerimage.digest"]])
    config = json.loads(blobs[meta["containerimage.config.digest"]])
    assert config["config"]["Env"][-1] == "GREETING=hello"  # after the default PATH
    assert config["config"]["Cmd"] == ["/bin/true"]
    assert config["config"]["WorkingDir"] == "/etc"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 1
    assert config["history"]
    files = layer_files(blobs[manifest["layers"][0]["digest"]])
    assert files == {"etc/greeting.txt": b"hello\n"}
    cli.assert_no_leaks()


def pull_back(registry: TestRegistry, name: str, store: Path) -> tuple[str, dict[str, bytes]]:
    """The manifest digest and the layer files of ``name``, read through buildsvc.sources."""
    ref = parse_reference(name)
    content = ContentStore(str(store))
    with RegistryClient(RegistryOptions(insecure=True)) as client:
        resolved = client.resolve(ref)
        client.fetch_blob(ref, resolved.manifest.config, content)
        config = parse_image_config(name, content.read(resolved.manifest.config.digest))
        assert len(config.diff_ids) == len(resolved.manifest.layers) == 1
        (layer,) = resolved.manifest.layers
        client.fetch_blob(ref, layer, content)
        return resolved.digest, layer_files(content.read(layer.digest))


def test_image_output_pushes_to_a_registry(
    cli: Cli, rootfs: Path, tmp_path: Path, registry: TestRegistry
) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    name = f"{registry.host}/demo:1"
    meta_file, archive = tmp_path / "meta.json", tmp_path / "x.tar"
    done = cli.run(
        *build_args(
            llb_file,
            rootfs,
            f"type=image,name={name},push=true,registry.insecure=true",
            f"type=oci,dest={archive}",
            metadata=meta_file,
        )
    )
    meta = json.loads(meta_file.read_text())
    assert meta["buildsvc.build.ref"] == completed_ref(done.stderr)
    assert meta["image.name"] == name
    digest, files = pull_back(registry, name, tmp_path / "pulled")
    assert digest == meta["containerimage.digest"]
    assert files == {"hello.txt": b"hi from busybox\n"}
    # The same image either way: the layout's manifest is the pushed one.
    index, _ = read_oci_archive(archive)
    assert [m["digest"] for m in index["manifests"]] == [digest]
    assert any(m == "PUT" and p == "/v2/demo/manifests/1" for m, p, _ in registry.requests())
    cli.assert_no_leaks()


def test_bad_outputs_exit_2(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    meta_file = tmp_path / "meta.json"
    for spec, says in [
        ("type=bogus,dest=/tmp/x", "bogus"),
        ("type=image,push=true", "name= is required"),
        ("type=image,name=127.0.0.1:1/demo:1", "push=true"),
        ("type=oci,name=example.com/demo:1", "dest= is required"),
        ("type=oci,dest=/tmp/x.tar,name=UPPER/Case:1", "UPPER/Case"),
    ]:
        err = cli.run(*build_args(llb_file, rootfs, spec, metadata=meta_file), expect=2).stderr
        assert "--output" in err and says in err, err
    assert not meta_file.exists()
    cli.assert_no_leaks()


def test_daemon_exports_oci_and_pushes(
    daemons: Daemons, rootfs: Path, tmp_path: Path, registry: TestRegistry
) -> None:
    daemon = daemons.start()
    llb_file = write_definition(hello_definition(), tmp_path / "def.json")
    name = f"{registry.host}/daemon/demo:2"
    archive, meta_file = tmp_path / "out" / "d.tar", tmp_path / "meta.json"
    done = daemon.cli(
        *build_args(
            llb_file,
            rootfs,
            f"type=oci,dest={archive},name={name}",
            f"type=image,name={name},push=true,registry.insecure=true",
            metadata=meta_file,
        )
    )
    meta = json.loads(meta_file.read_text())
    assert meta["buildsvc.build.ref"] == completed_ref(done.stderr)
    assert meta["oci.dest"] == str(archive)
    digest, files = pull_back(registry, name, tmp_path / "pulled")
    assert digest == meta["containerimage.digest"]
    assert files == {"hello.txt": b"hi from busybox\n"}
    assert skopeo_inspect(f"oci-archive:{archive}:2")["Digest"] == digest
    assert skopeo_inspect(f"docker://{name}", "--tls-verify=false")["Digest"] == digest

    for spec, says in [
        ("type=image,name=x/y:1", "push=true"),
        ("type=tarball,dest=/tmp/x", "tarball"),
    ]:
        err = daemon.cli(*build_args(llb_file, rootfs, spec), expect=2).stderr
        assert says in err, err
    # The daemon refuses what a client that skips the checks sends it.
    with pytest.raises(Exception, match="name= is required"):
        daemon.client().solve(
            SolveOptions(
                build_ref="badexporter",
                definition_json=llb_file.read_bytes(),
                local_dirs={"rootfs": rootfs},
                exporters=({"type": "image", "push": "true"},),
                actor="tester",
            )
        )
    leaks = Cli(daemon.db_url, daemon.root)
    leaks.assert_no_leaks()
