"""Local dirs sent to a real daemon over gRPC: ``.dockerignore``, symlinks, one blob per edit, and
uploads that do not match their digest refused.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from buildsvc.api.gen import content_pb2 as content_pb
from buildsvc.api.gen import content_pb2_grpc as content_grpc
from buildsvc.api.model import SolveOptions
from buildsvc.contexts import Entry, Manifest, scan_dir
from buildsvc.daemon.state import open_state
from buildsvc.errors import Conflict, InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import BUILDSVC, Daemon, cli_env

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _context(tmp_path: Path) -> Path:
    """A Dockerfile context with ignored files, a re-included one, and symlinks pointing out."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("outside the context\n")
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "logs").mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / ".dockerignore").write_text("# local junk\nsecret.txt\nlogs\n!logs/keep.log\n**/*.tmp\n")
    (ctx / "src" / "app.py").write_text("print('one')\nprint('two')\n")
    (ctx / "src" / "notes.tmp").write_text("scratch\n")
    (ctx / "secret.txt").write_text("do not send\n")
    (ctx / "logs" / "keep.log").write_text("kept\n")
    (ctx / "logs" / "drop.log").write_text("dropped\n")
    (ctx / "abs-link").symlink_to(outside / "secret")
    (ctx / "src" / "rel-link").symlink_to("../../outside/secret")
    (ctx / "src" / "dir-link").symlink_to(outside)
    return ctx


def _blob_digests(daemon: Daemon) -> set[str]:
    blobs = daemon.root / "contexts" / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in blobs.iterdir()}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_dockerfile_context_goes_over_grpc_with_dockerignore_and_symlinks(
    daemon: Daemon, tmp_path: Path
) -> None:
    ctx = _context(tmp_path)
    out = tmp_path / "out"
    done = daemon.cli(
        "build", str(ctx), "-o", f"type=local,dest={out}", "--ref", "ctx-1", "--progress", "plain"
    )
    assert "context context: " in done.stderr

    # What the build saw is what it exported: ignored files are not there, the exception is.
    assert (out / "src" / "app.py").read_text() == "print('one')\nprint('two')\n"
    assert (out / "logs" / "keep.log").read_text() == "kept\n"
    assert not (out / "secret.txt").exists()
    assert not (out / "logs" / "drop.log").exists()
    assert not (out / "src" / "notes.tmp").exists()
    # Symlinks pointing out of the context arrive as symlinks; what they point at was never sent.
    assert os.readlink(out / "abs-link") == str(tmp_path / "outside" / "secret")
    assert os.readlink(out / "src" / "rel-link") == "../../outside/secret"
    assert os.readlink(out / "src" / "dir-link") == str(tmp_path / "outside")
    sent = _blob_digests(daemon)
    assert _sha(b"outside the context\n") not in sent
    assert _sha(b"do not send\n") not in sent and _sha(b"dropped\n") not in sent

    events = daemon.events("ctx-1")
    requested = events[0]
    assert isinstance(requested, ev.SolveRequested)
    received = {e.name: e for e in events if isinstance(e, ev.LocalContextReceived)}
    assert set(received) == {"context", "dockerfile"}
    assert all(e.source == "upload" for e in received.values())
    assert requested.local_dirs == {n: e.manifest_digest for n, e in received.items()}
    # Recorded before the solve starts, in the build's stream.
    started = next(i for i, e in enumerate(events) if isinstance(e, ev.SolveStarted))
    assert all(events.index(e) < started for e in received.values())
    # The dockerfile local carries only the Dockerfile and its ignore file.
    assert received["dockerfile"].files == 2
    # Context: Dockerfile, .dockerignore, src/app.py, logs/keep.log.
    assert received["context"].files == 4
    assert received["context"].files_uploaded == received["context"].files  # all new to this daemon


def test_a_rebuild_after_a_one_line_edit_uploads_exactly_one_file(daemon: Daemon, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    for i in range(20):
        (ctx / "src" / f"module{i}.py").write_text(f"value = {i}\n")
    client = daemon.client()
    first = client.sync_dir(scan_dir(ctx))
    assert first.files_uploaded == first.files > 20

    again = client.sync_dir(scan_dir(ctx))
    assert again.manifest_digest == first.manifest_digest
    assert (again.files_uploaded, again.bytes_uploaded, again.files_reused) == (0, 0, again.files)

    app = ctx / "src" / "app.py"
    app.write_text("print('one')\nprint('three')\n")
    edited = client.sync_dir(scan_dir(ctx))
    assert edited.manifest_digest != first.manifest_digest
    assert (edited.files_uploaded, edited.bytes_uploaded) == (1, app.stat().st_size)
    assert edited.files_reused == edited.files - 1

    # The same through the command line, recorded in the build's stream.
    out = tmp_path / "out"
    app.write_text("print('one')\nprint('four')\n")
    daemon.cli("build", str(ctx), "-o", f"type=local,dest={out}", "--ref", "edit-1")
    assert (out / "src" / "app.py").read_text() == "print('one')\nprint('four')\n"
    context = next(
        e for e in daemon.events("edit-1") if isinstance(e, ev.LocalContextReceived) and e.name == "context"
    )
    assert (context.files_uploaded, context.bytes_uploaded) == (1, app.stat().st_size)
    assert context.files_reused == context.files - 1


# The command with its client's send wrapped: after the first dir is sent, every blob goes from the
# daemon's store, as a prune running between that upload and the Solve would remove them.
_PRUNED_AFTER_THE_FIRST_SEND = (
    "import os, sys\n"
    "from buildsvc.api.client import Client\n"
    "blobs = sys.argv.pop(1)\n"
    "real, sent = Client.sync_dir, []\n"
    "def sync_dir(self, scan):\n"
    "    sent.append(real(self, scan))\n"
    "    if len(sent) == 1:\n"
    "        for name in os.listdir(blobs):\n"
    "            os.unlink(os.path.join(blobs, name))\n"
    "    return sent[-1]\n"
    "Client.sync_dir = sync_dir\n"
    "from buildsvc.cli.main import main\n"
    "sys.argv[0] = 'buildsvc'\n"
    "main()\n"
)


def test_a_build_sends_its_dirs_again_when_a_blob_went_before_its_solve(
    daemon: Daemon, tmp_path: Path
) -> None:
    ctx, out = _context(tmp_path), tmp_path / "out"
    blobs = daemon.root / "contexts" / "blobs" / "sha256"
    build = ["build", str(ctx), "-o", f"type=local,dest={out}", "--ref", "resent-1", "--progress", "plain"]
    done = subprocess.run(
        [sys.executable, "-c", _PRUNED_AFTER_THE_FIRST_SEND, str(blobs), "--addr", daemon.addr, *build],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "src" / "app.py").read_text() == "print('one')\nprint('two')\n"
    # Sent twice; the Solve that found its files gone recorded nothing, the second one the build.
    assert done.stderr.count("context context:") == 2, done.stderr
    events = daemon.events("resent-1")
    assert sum(isinstance(e, ev.SolveRequested) for e in events) == 1
    context = next(e for e in events if isinstance(e, ev.LocalContextReceived) and e.name == "context")
    assert context.files_uploaded >= 1


def test_an_upload_that_does_not_match_its_digest_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    claimed = _sha(b"the real bytes\n")
    with grpc.insecure_channel(f"unix:{daemon.addr.removeprefix('unix://')}") as channel:
        stub = content_grpc.ContentStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.Upload(iter([content_pb.UploadChunk(digest=claimed, path="src/app.py", data=b"tampered\n")]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "src/app.py" in (info.value.details() or "")
        assert claimed in (info.value.details() or "")
        # A digest that is not one (it would name a file in the store) is refused too.
        with pytest.raises(grpc.RpcError) as bad:
            stub.Upload(iter([content_pb.UploadChunk(digest="sha256:../../etc", path="x", data=b"")]))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert claimed not in _blob_digests(daemon)

    # A file edited between the scan and the upload: refused, naming it.
    ctx = _context(tmp_path)
    scan = scan_dir(ctx)
    (ctx / "src" / "app.py").write_text("changed after the scan\n")
    client = daemon.client()
    with pytest.raises(InvalidInput, match=r"src/app\.py"):
        client.sync_dir(scan)


def test_a_manifest_escaping_its_dir_or_missing_files_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    escaping = (
        b'{"entries":[{"digest":"","gid":0,"mode":493,"mtime_ns":0,"path":"..","size":0,'
        b'"target":"","type":"dir","uid":0}],"version":1}'
    )
    with grpc.insecure_channel(f"unix:{daemon.addr.removeprefix('unix://')}") as channel:
        stub = content_grpc.ContentStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.Missing(iter([content_pb.ManifestChunk(data=escaping)]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'..'" in (info.value.details() or "")

    # A Solve naming a context whose files were never uploaded fails before anything runs.
    manifest = Manifest.of(
        [Entry(path="rootfs-file", type="file", mode=0o644, size=5, digest=_sha(b"nope\n"))]
    )
    never_sent = SolveOptions(
        build_ref="not-uploaded",
        definition_json=llb.local("rootfs").marshal().to_json(indent=None).encode(),
        local_contexts={"rootfs": manifest.digest},
    )
    client = daemon.client()
    with pytest.raises(NotFound, match="never sent"):
        client.solve(never_sent)
    # Sent, but its file was not: the daemon names the file.
    with grpc.insecure_channel(f"unix:{daemon.addr.removeprefix('unix://')}") as channel:
        stub = content_grpc.ContentStub(channel)  # type: ignore[no-untyped-call]
        answer = stub.Missing(iter([content_pb.ManifestChunk(data=manifest.canonical())]))
        assert list(answer.missing) == [_sha(b"nope\n")]
    with pytest.raises(Conflict, match="rootfs-file"):
        client.solve(never_sent)
    assert daemon.events("not-uploaded") == []


def test_embedded_builds_go_through_the_same_store(db_url: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    root, out = tmp_path / "root", tmp_path / "out"
    args = [BUILDSVC, "--root", str(root), "--db", db_url, "build", str(ctx), "-o", f"type=local,dest={out}"]
    done = subprocess.run(
        [*args, "--ref", "embedded-1"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "logs" / "keep.log").exists() and not (out / "secret.txt").exists()
    assert os.readlink(out / "abs-link") == str(tmp_path / "outside" / "secret")
    state = open_state(root, db_url, migrate=False)
    try:
        events = [s.decode() for s in state.store.read_stream("build-embedded-1")]
    finally:
        state.close()
    received = {e.name: e for e in events if isinstance(e, ev.LocalContextReceived)}
    assert {e.source for e in received.values()} == {"embedded"}
    assert received["context"].host_path == str(ctx) and received["context"].files == 4
    requested = events[0]
    assert isinstance(requested, ev.SolveRequested)
    assert requested.local_dirs == {n: e.manifest_digest for n, e in received.items()}
    blobs = {f"sha256:{p.name}" for p in (root / "contexts" / "blobs" / "sha256").iterdir()}
    assert _sha(b"kept\n") in blobs and _sha(b"do not send\n") not in blobs
