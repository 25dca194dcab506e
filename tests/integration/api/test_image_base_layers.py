"""An image export of ``FROM base`` + RUN reuses the base's layer blobs and adds one layer of changes.

The base is the busybox test image (two layers: whiteouts, an opaque directory, a hard link) in
Debian's ``docker-registry``; the daemon pulls it over plain HTTP (``--insecure-registry``). The
exported manifest starts with the base manifest's own layer digests; a push to another repository
of the same registry mounts them instead of uploading them; umoci unpacks the result with the
build's changes (a new file, a changed one, a deleted one) over the base.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildsvc.sources import ContentStore, RegistryClient, RegistryOptions
from buildsvc.sources.manifests import parse_image_config
from buildsvc.sources.reference import parse_reference
from tests.integration.api.conftest import Daemons
from tests.integration.test_exporters import layer_files, read_oci_archive
from tests.support.images import build_image, busybox_layer_tars, make_layer, push_image
from tests.support.registry import TestRegistry

pytestmark = pytest.mark.root

DOCKERFILE = """\
FROM {base}
RUN echo built > /built.txt && echo changed > /etc/motd && rm /opq/new.txt
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    work = tmp_path_factory.mktemp("base-layers")
    with (
        TestRegistry(work / "registry") as reg,
        RegistryClient(RegistryOptions(insecure=True)) as client,
    ):
        layers = [make_layer(tar, "gzip") for tar in busybox_layer_tars(work / "busybox")]
        push_image(client, parse_reference(f"{reg.host}/base:1"), build_image(layers), tag="1")
        yield reg


def _base(registry: TestRegistry, store: Path) -> tuple[list[str], tuple[str, ...]]:
    """The base's layer digests and diff ids, as the registry has them."""
    ref = parse_reference(f"{registry.host}/base:1")
    with RegistryClient(RegistryOptions(insecure=True)) as client:
        resolved = client.resolve(ref)
        content = ContentStore(str(store))
        client.fetch_blob(ref, resolved.manifest.config, content)
        config = parse_image_config(str(ref), content.read(resolved.manifest.config.digest))
    return [layer.digest for layer in resolved.manifest.layers], config.diff_ids


def _requests_through(
    registry: TestRegistry, before: int, last: tuple[str, str]
) -> list[tuple[str, str, int]]:
    """The requests after the first ``before``, once the registry has logged ``last`` (its access
    log is written asynchronously: a line can land just after the client has its answer)."""
    deadline = time.monotonic() + 30
    while True:
        requests = registry.requests()[before:]
        if any((m, p) == last for m, p, _ in requests) or time.monotonic() > deadline:
            return requests
        time.sleep(0.05)


def _context(tmp_path: Path, registry: TestRegistry) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=f"{registry.host}/base:1"))
    return ctx


def test_the_oci_export_starts_with_the_base_layers_and_adds_only_the_changes(
    daemons: Daemons, registry: TestRegistry, tmp_path: Path
) -> None:
    base_layers, base_diff_ids = _base(registry, tmp_path / "content")
    d = daemons.start("--insecure-registry", registry.host)
    archive, meta_file = tmp_path / "img.tar", tmp_path / "meta.json"
    d.cli("build", str(_context(tmp_path, registry)), "-o", f"type=oci,dest={archive},name=app:1",
          "--metadata-file", str(meta_file))  # fmt: skip
    meta = json.loads(meta_file.read_text())
    _, blobs = read_oci_archive(archive)
    manifest: dict[str, Any] = json.loads(blobs[meta["containerimage.digest"]])
    config: dict[str, Any] = json.loads(blobs[meta["containerimage.config.digest"]])
    digests = [layer["digest"] for layer in manifest["layers"]]
    assert digests[:-1] == base_layers  # the very blobs of the base, not re-made
    assert config["rootfs"]["diff_ids"][:-1] == list(base_diff_ids)
    assert len(config["history"]) == len(digests)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blobs[digests[-1]]))) as top:
        # Exactly what the RUN changed: the directory that lost an entry comes with its whiteout.
        assert top.getnames() == ["built.txt", "etc/motd", "opq", "opq/.wh.new.txt"]
    added = layer_files(blobs[digests[-1]])
    assert added["built.txt"] == b"built\n"
    assert added["etc/motd"] == b"changed\n"
    assert added["opq/.wh.new.txt"] == b""  # the deletion, as a whiteout

    # umoci applies the layers in order (whiteouts, opaque dirs) to the tree the build saw.
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(layout)], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    rootfs = bundle / "rootfs"
    assert (rootfs / "built.txt").read_text() == "built\n"
    assert (rootfs / "etc" / "motd").read_text() == "changed\n"
    assert not (rootfs / "opq" / "new.txt").exists()
    assert not (rootfs / "doomed.txt").exists()  # the base's own whiteout still holds
    assert (rootfs / "hello.txt").read_text() == "hello from layer 2\n"


def test_a_push_mounts_the_base_layers_and_uploads_only_the_new_one(
    daemons: Daemons, registry: TestRegistry, tmp_path: Path
) -> None:
    base_layers, _ = _base(registry, tmp_path / "content")
    d = daemons.start("--insecure-registry", registry.host)
    before = len(registry.requests())
    meta_file = tmp_path / "meta.json"
    repo = f"app-{uuid.uuid4().hex[:8]}"  # a repository that has nothing yet, whichever run this is
    output = f"type=image,name={registry.host}/{repo}:2,push=true"
    d.cli("build", str(_context(tmp_path, registry)), "-o", output, "--metadata-file", str(meta_file))
    requests = _requests_through(registry, before, ("PUT", f"/v2/{repo}/manifests/2"))
    mounted = [p for m, p, status in requests if m == "POST" and "mount=" in p and status == 201]
    assert sorted(p.split("mount=")[1].split("&")[0].replace("%3A", ":") for p in mounted) == sorted(
        base_layers
    )
    uploads = [p for m, p, status in requests if m == "PUT" and f"/v2/{repo}/blobs/uploads/" in p]
    assert len(uploads) == 2  # the new layer and the config; no base layer's bytes
    assert not [p for p in uploads if any(digest.split(":")[1] in p for digest in base_layers)]
    with RegistryClient(RegistryOptions(insecure=True)) as client:
        pushed = client.resolve(parse_reference(f"{registry.host}/{repo}:2"))
    assert [layer.digest for layer in pushed.manifest.layers][:-1] == base_layers
    assert pushed.digest == json.loads(meta_file.read_text())["containerimage.digest"]
