"""Outputs against a real daemon reach the client: ``-o type=local|tar|oci`` written by the CLI from
what the daemon staged (``Content.Download``), the staging removed after, or at the next prune or
daemon start when the client never comes (run as root)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from buildsvc.api.output_client import fetch_output
from buildsvc.daemon.leaks import scan_leaks
from buildsvc.daemon.outputs import CLIENT_DEST
from buildsvc.daemon.state import open_state
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev
from tests.integration.api.conftest import BUILDSVC, Daemon, Daemons, cli_env, run_definition, solve_options

pytestmark = pytest.mark.root

SCRIPT = (
    "mkdir -p /out/sub && echo built > /out/f && echo run > /out/sub/x && chmod 4751 /out/sub/x"
    " && ln -s {outside} /out/escape && ln -s ../../../etc /out/up"
)


def _llb(tmp_path: Path, outside: Path) -> Path:
    definition = tmp_path / f"def-{uuid.uuid4().hex[:8]}.json"
    definition.write_bytes(run_definition(SCRIPT.format(outside=outside), "RUN make outputs"))
    return definition


def _build(d: Daemon, rootfs: Path, llb: Path, *args: str) -> str:
    ref = uuid.uuid4().hex[:25]
    d.cli(
        "build", "--llb", str(llb), "--local", f"rootfs={rootfs}", "--ref", ref, "--progress", "plain", *args
    )
    return ref


def _staged(d: Daemon) -> list[str]:
    base = d.root / "outputs"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.exists() else []


def _output_events(d: Daemon, ref: str) -> list[Any]:
    state = open_state(d.root, d.db_url, migrate=False)
    try:
        return [s.decode() for s in state.store.read_stream(f"outputs-{ref}")]
    finally:
        state.close()


def test_a_local_output_is_written_by_the_client_with_links_and_modes_kept(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "client" / "out"
    meta = tmp_path / "meta.json"
    ref = _build(
        daemon, rootfs, _llb(tmp_path, outside), "-o", f"type=local,dest={out}", "--metadata-file", str(meta)
    )

    assert (out / "out" / "f").read_text() == "built\n"
    x = (out / "out" / "sub" / "x").lstat()
    assert stat.S_IMODE(x.st_mode) == 0o4751
    # Symlinks arrive as symlinks, their targets as the build made them; nothing was followed.
    assert os.readlink(out / "out" / "escape") == str(outside)
    assert os.readlink(out / "out" / "up") == "../../../etc"
    assert list(outside.iterdir()) == []
    assert (out / "bin" / "busybox").is_file()  # the whole result, as the daemon-host export writes it

    doc = json.loads(meta.read_text())
    assert doc["buildsvc.build.ref"] == ref
    assert doc["local.dest"] == str(out) and doc["local.to"] == "client"
    # The log says what was exported and where it went.
    events = daemon.events(ref)
    export = next(e for e in events if isinstance(e, ev.ExportCompleted))
    assert export.attrs[CLIENT_DEST] == str(out) and "dest" not in export.attrs
    assert export.response["local.digest"].startswith("sha256:") and int(export.response["local.size"]) > 0
    fetched = _output_events(daemon, ref)
    assert [type(e) for e in fetched] == [ev.OutputFetched]
    assert fetched[0].digest == export.response["local.digest"]
    assert _staged(daemon) == []


def test_an_existing_symlink_in_dest_is_replaced_not_followed(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "out").symlink_to(victim)  # the output has a directory "out": never written through this
    _build(daemon, rootfs, _llb(tmp_path, tmp_path / "nowhere"), "-o", f"type=local,dest={out}")
    assert list(victim.iterdir()) == []
    assert not (out / "out").is_symlink() and (out / "out" / "f").read_text() == "built\n"


def test_tar_to_a_file_and_to_stdout(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    llb = _llb(tmp_path, tmp_path / "nowhere")
    tar_file = tmp_path / "deep" / "out.tar"
    meta = tmp_path / "meta.json"
    _build(daemon, rootfs, llb, "-o", f"type=tar,dest={tar_file}", "--metadata-file", str(meta))
    doc = json.loads(meta.read_text())
    assert doc["tar.dest"] == str(tar_file) and doc["tar.to"] == "client"
    assert doc["tar.digest"] == "sha256:" + hashlib.sha256(tar_file.read_bytes()).hexdigest()
    with tarfile.open(tar_file) as tar:
        assert tar.extractfile("out/f").read() == b"built\n"  # type: ignore[union-attr]
        assert tar.getmember("out/escape").issym()

    # As buildctl: dest=- writes the tar to stdout, progress and messages to stderr.
    piped = subprocess.run(
        [
            *(BUILDSVC, "--addr", daemon.addr, "build", "--llb", str(llb), "--local", f"rootfs={rootfs}"),
            *("-o", "type=tar,dest=-", "--progress", "plain"),
        ],
        capture_output=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(piped.stdout)) as tar:
        assert tar.extractfile("out/sub/x").read() == b"run\n"  # type: ignore[union-attr]
    assert _staged(daemon) == []


def test_oci_to_a_file_that_skopeo_reads(daemon: Daemon, rootfs: Path, tmp_path: Path) -> None:
    image = tmp_path / "image.tar"
    meta = tmp_path / "meta.json"
    llb = _llb(tmp_path, tmp_path / "nowhere")
    _build(
        daemon,
        rootfs,
        llb,
        "-o",
        f"type=oci,dest={image},name=example.com/out:v1",
        "--metadata-file",
        str(meta),
    )
    doc = json.loads(meta.read_text())
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{image}:v1"], capture_output=True, text=True, check=True
    )
    assert json.loads(inspected.stdout)["Digest"] == doc["containerimage.digest"]
    assert doc["oci.to"] == "client" and doc["oci.dest"] == str(image)
    assert _staged(daemon) == []


def test_an_output_never_fetched_is_not_a_leak_and_goes_with_the_next_prune(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    client = daemon.client()
    options = solve_options(
        rootfs, "echo x > /x", "RUN x", exporters=({"type": "local", CLIENT_DEST: str(tmp_path / "never")},)
    )
    response = client.solve(options)  # a client that goes away before it downloads
    assert response["local.to"] == "client"
    ref = options.build_ref
    assert _staged(daemon) == [ref, f"{ref}/0", f"{ref}/0/meta.json", f"{ref}/0/payload"]
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        assert scan_leaks(state).empty  # staged for a client: no snapshot, no mount, no leak
    finally:
        state.close()
    daemon.cli("prune")
    assert _staged(daemon) == []
    assert [type(e) for e in _output_events(daemon, options.build_ref)] == [ev.OutputDiscarded]
    with pytest.raises(NotFound, match="no output 0 waiting"):
        fetch_output(client.channel, options.build_ref, 0, str(tmp_path / "late"), addr=daemon.addr)
    assert not (tmp_path / "never").exists() and not (tmp_path / "late").exists()


def test_an_output_never_fetched_goes_when_the_daemon_starts_again(
    daemons: Daemons, rootfs: Path, tmp_path: Path
) -> None:
    d = daemons.start()
    options = solve_options(
        rootfs, "echo x > /x", "RUN x", exporters=({"type": "tar", CLIENT_DEST: str(tmp_path / "t.tar")},)
    )
    d.client().solve(options)
    assert _staged(d) != []
    d.terminate()
    assert d.wait() == 0
    again = Daemon(d.db_url, d.root, d.addr, d.log.with_name("again.log"), [])
    daemons.started.append(again)
    again.wait_listening()
    assert _staged(again) == []
    discarded = _output_events(again, options.build_ref)
    assert [type(e) for e in discarded] == [ev.OutputDiscarded]
    assert "daemon restarted" in discarded[0].reason


def test_a_download_is_checked_and_a_bad_output_spec_is_refused(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    client = daemon.client()
    both = solve_options(
        rootfs, "true", "RUN x", exporters=({"type": "tar", "dest": "/tmp/x.tar", CLIENT_DEST: "/y"},)
    )
    with pytest.raises(InvalidInput, match="not both"):
        client.solve(both)
    image = solve_options(
        rootfs, "true", "RUN x", exporters=({"type": "image", "name": "a/b:c", CLIENT_DEST: "-"},)
    )
    with pytest.raises(InvalidInput, match="client-dest= is for local, tar and oci"):
        client.solve(image)
    with pytest.raises(InvalidInput, match="not a build ref"):
        fetch_output(client.channel, "../x", 0, str(tmp_path / "x"), addr=daemon.addr)
    bad = daemon.cli("build", "--llb", str(_llb(tmp_path, tmp_path)), "-o", "type=local,dest=-", expect=2)
    assert "dest=- (stdout) is for tar and oci" in bad.stderr


def test_daemon_host_true_keeps_the_output_on_the_daemon_host(
    daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "on-daemon"
    meta = tmp_path / "meta.json"
    llb = _llb(tmp_path, tmp_path / "nowhere")
    ref = _build(
        daemon, rootfs, llb, "-o", f"type=local,dest={out},daemon-host=true", "--metadata-file", str(meta)
    )
    assert (out / "out" / "f").read_text() == "built\n"
    doc = json.loads(meta.read_text())
    assert doc["local.dest"] == str(out) and "local.to" not in doc
    export = next(e for e in daemon.events(ref) if isinstance(e, ev.ExportCompleted))
    assert export.attrs == {"type": "local", "dest": str(out)}
    assert _output_events(daemon, ref) == [] and _staged(daemon) == []
