"""The engine end to end on real runtimes, overlayfs, the registry and both databases (run as root)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from buildsvc.solver.errors import NoMatchingWorker, SolveCancelled, SolveError
from buildsvc.solver.ops import WorkerConstraints
from tests.integration.solver.conftest import Harness, Images

pytestmark = pytest.mark.root


def tree(root: Path) -> dict[str, tuple[str, str, int, int]]:
    """Every path under ``root``: kind, content (or link target), mode bits and uid."""
    out: dict[str, tuple[str, str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), 0, st.st_uid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "", stat.S_IMODE(st.st_mode), st.st_uid)
            else:
                out[rel] = ("file", path.read_bytes().hex(), stat.S_IMODE(st.st_mode), st.st_uid)
    return out


def assert_no_leaks(h: Harness) -> None:
    report = h.leaks()
    assert report.refs == ()
    assert report.snapshots == ()


# --- (a) a chain of exec steps, exported, then fully cached ---------------------------------------


def test_exec_chain_exports_and_reruns_fully_cached(h: Harness, images: Images, tmp_path: Path) -> None:
    base = llb.image(images.busybox)
    one = base.run("echo one > /one.txt", name="one").root()
    two = one.run("cat /one.txt > /two.txt && echo two >> /two.txt", name="two").root()
    three = two.run(["/bin/sh", "-c", "mkdir -p /out && sed s/o/0/g /two.txt > /out/three.txt"], name="three")
    final = llb.scratch().file(llb.copy(three.root(), "/out/three.txt", "/"), name="collect")
    definition = final.marshal()

    first = h.solve(definition, build_ref="chain-1")
    out1 = h.export(first, tmp_path / "out1")
    assert (out1 / "three.txt").read_text() == "0ne\ntw0\n"
    assert sorted(p.name for p in out1.iterdir()) == ["three.txt"]
    started = h.of_type("chain-1", ev.VertexStarted)
    assert len(started) == len(definition.vertices) == 5
    assert {s.worker for s in started} == {"runc-overlay"}

    second = h.solve(definition, build_ref="chain-2")
    assert h.of_type("chain-2", ev.VertexStarted) == []
    cached = h.of_type("chain-2", ev.VertexCached)
    assert {c.vertex for c in cached} == set(definition.vertices)
    assert second.output is not None and first.output is not None
    assert second.output.snapshot_id == first.output.snapshot_id
    assert tree(h.export(second, tmp_path / "out2")) == tree(out1)
    assert_no_leaks(h)


# --- (b) file ops with BuildKit's semantics ---------------------------------------------------------


def test_file_ops_have_buildkit_semantics(h: Harness, images: Images, tmp_path: Path) -> None:
    busybox = llb.image(images.busybox)
    sources = llb.scratch().file(
        llb.mkdir("/src/sub", make_parents=True)
        .mkfile("/src/a.txt", "A")
        .mkfile("/src/b.txt", "B", mode=0o600)
        .mkfile("/src/c.log", "C")
        .mkfile("/src/sub/d.txt", "D")
    )
    built = busybox.file(
        llb.mkdir("/app", 0o750, owner="nobody:nobody")
        .copy(sources, "/src/*.txt", "/app/", allow_wildcard=True, owner="nobody")
        .mkfile("/app/gone", "x")
        .rm("/app/gone")
        .symlink("a.txt", "/app/link")
        .mkdir("/app/deep/er", make_parents=True)
        .rm("/etc/motd"),
        name="file ops",
    )
    # Copy from one image's state into another image's.
    bare = llb.image(images.bare).file(
        llb.copy(built, "/app", "/copied", create_dest_path=True).copy(busybox, "/hello.txt", "/hello.txt"),
        name="across images",
    )
    out = tree(h.export(h.solve(bare.marshal()), tmp_path / "out"))

    assert out["copied"] == ("dir", "", 0o750, 65534)
    assert out["copied/a.txt"] == ("file", b"A".hex(), 0o644, 65534)
    assert out["copied/b.txt"] == ("file", b"B".hex(), 0o600, 65534)
    assert "copied/c.log" not in out  # the wildcard picked *.txt only
    assert "copied/sub" not in out
    assert "copied/gone" not in out
    assert out["copied/link"][:2] == ("link", "a.txt")
    assert out["copied/deep/er"][0] == "dir"
    assert out["hello.txt"] == ("file", b"hello from layer 2\n".hex(), 0o755, 1000)
    assert "proc" not in out  # the bare image's tree, not busybox's
    assert "etc/motd" not in out
    assert_no_leaks(h)


def test_copy_dir_contents_into_the_root(h: Harness, images: Images, tmp_path: Path) -> None:
    """``COPY dir/ /`` (and every local source, which is copied in the same way) onto an existing /."""
    made = llb.image(images.busybox).run("mkdir -p /out/sub && echo x > /out/sub/x", name="make").root()
    copied = llb.scratch().file(llb.copy(made, "/out/", "/", dir_contents_only=True), name="collect")
    out = tree(h.export(h.solve(copied.marshal()), tmp_path / "out"))
    assert out["sub/x"][:2] == ("file", b"x\n".hex())
    assert "out" not in out
    assert_no_leaks(h)


def test_rm_and_copy_errors_name_the_path(h: Harness, images: Images) -> None:
    state = llb.image(images.busybox).file(llb.rm("/no/such/file"), name="bad rm")
    with pytest.raises(SolveError) as info:
        h.solve(state.marshal())
    assert "bad rm" in str(info.value)
    assert "/no/such/file" in str(info.value)
    assert_no_leaks(h)


# --- (c) a read-only root on an image without /proc ------------------------------------------------


def test_readonly_root_on_an_image_without_proc(h: Harness, images: Images, tmp_path: Path) -> None:
    bare = llb.image(images.bare)
    script = (
        "test -r /proc/self/status && echo proc-ok > /out/proc; "
        "if touch /written 2>/out/err; then echo writable > /out/root; else echo readonly > /out/root; fi"
    )
    ran = bare.run(script, readonly_root=True, mounts=[llb.bind(llb.scratch(), "/out")], name="ro")
    result = h.solve(ran.get_mount("/out").marshal())
    out = h.export(result, tmp_path / "out")
    assert (out / "proc").read_text() == "proc-ok\n"
    assert (out / "root").read_text() == "readonly\n"
    assert "Read-only file system" in (out / "err").read_text()

    # The same write as the whole step fails the solve with the step's error.
    failing = bare.run("touch /written", readonly_root=True, mounts=[llb.bind(llb.scratch(), "/o")], name="w")
    with pytest.raises(SolveError) as info:
        h.solve(failing.get_mount("/o").marshal())
    assert info.value.exit_code == 1
    assert "Read-only file system" in info.value.log_tail
    assert_no_leaks(h)


# --- (d) worker selection --------------------------------------------------------------------------


@pytest.mark.parametrize("worker", ["crun-overlay", "runc-native"])
def test_a_constraint_picks_the_worker(h: Harness, images: Images, worker: str, tmp_path: Path) -> None:
    on = WorkerConstraints(worker=worker)
    state = llb.image(images.busybox, constraints=on).run(
        "cat /proc/1/cmdline > /ran; echo done >> /ran", constraints=on, name="where"
    )
    result = h.solve(state.root().marshal(), build_ref=f"on-{worker}")
    started = h.of_type(f"on-{worker}", ev.VertexStarted)
    assert {s.name: s.worker for s in started}["where"] == worker
    assert result.output is not None and result.output.worker.info.name == worker
    assert (h.export(result, tmp_path / "out") / "ran").read_text().endswith("done\n")
    assert_no_leaks(h)


def test_an_unknown_worker_fails_listing_the_workers(h: Harness, images: Images) -> None:
    state = llb.image(images.busybox, constraints=WorkerConstraints(worker="kata-zfs"))
    with pytest.raises(NoMatchingWorker) as info:
        h.solve(state.marshal(), build_ref="nowhere")
    message = str(info.value)
    assert "kata-zfs" in message
    for name in ("runc-overlay", "crun-overlay", "runc-native"):
        assert name in message
    assert len(h.of_type("nowhere", ev.SolveFailed)) == 1
    assert_no_leaks(h)


# --- (e) concurrent solves share vertices ----------------------------------------------------------


def test_concurrent_solves_run_a_shared_vertex_once(h: Harness, images: Images, tmp_path: Path) -> None:
    shared = (
        llb.image(images.busybox)
        .run(
            "echo ran >> /counter/runs; sleep 1; echo shared > /shared",
            mounts=[llb.cache_mount("/counter", id="count-runs")],
            name="shared",
        )
        .root()
    )
    left = shared.run("echo left > /side", name="left").root().marshal()
    right = shared.run("echo right > /side", name="right").root().marshal()
    results = {}
    errors: list[BaseException] = []

    def solve(ref: str, definition: Definition) -> None:
        try:
            results[ref] = h.solve(definition, build_ref=ref)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=solve, args=a) for a in (("left", left), ("right", right))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    (cache_dir,) = (h.root / "solver" / "cache-mounts").iterdir()
    assert (cache_dir / "runs").read_text() == "ran\n"
    started = [s.name for ref in ("left", "right") for s in h.of_type(ref, ev.VertexStarted)]
    assert started.count("shared") == 1
    assert sorted(n for n in started if n != "shared" and not n.startswith("docker-image")) == [
        "left",
        "right",
    ]
    for ref, side in (("left", "left\n"), ("right", "right\n")):
        out = h.export(results[ref], tmp_path / ref)
        assert (out / "shared").read_text() == "shared\n"
        assert (out / "side").read_text() == side
    assert_no_leaks(h)


# --- (f) no leak after success, failure and cancellation -------------------------------------------


def test_no_leak_after_a_failure(h: Harness, images: Images) -> None:
    ok = llb.image(images.busybox).run("echo fine > /f", name="fine").root()
    h.solve(ok.marshal())
    assert_no_leaks(h)
    bad = ok.run("echo about to fail; echo oops >&2; exit 3", name="fails")
    with pytest.raises(SolveError) as info:
        h.solve(bad.root().marshal(), build_ref="failing")
    assert info.value.exit_code == 3
    assert info.value.name == "fails"
    assert "about to fail" in info.value.log_tail
    assert "oops" in info.value.log_tail
    (failed,) = h.of_type("failing", ev.SolveFailed)
    assert failed.exit_code == 3
    assert_no_leaks(h)


def test_no_leak_after_a_cancellation(h: Harness, images: Images) -> None:
    slow = llb.image(images.busybox).run("sleep 30", name="slow").root()
    errors: list[BaseException] = []

    def solve() -> None:
        try:
            h.solve(slow.marshal(), build_ref="cancelled")
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=solve)
    thread.start()
    deadline = time.monotonic() + 30
    while not any(s.name == "slow" for s in h.of_type("cancelled", ev.VertexStarted)):
        assert time.monotonic() < deadline, "the slow step never started"
        time.sleep(0.05)
    time.sleep(0.3)  # let the container really start
    began = time.monotonic()
    assert h.engine.solver.cancel("cancelled")
    thread.join(20)
    assert not thread.is_alive()
    assert time.monotonic() - began < 10
    assert len(errors) == 1 and isinstance(errors[0], SolveCancelled)
    assert len(h.of_type("cancelled", ev.SolveCancelled)) == 1
    assert_no_leaks(h)


# --- (g) local sources and content-based cache keys ------------------------------------------------


def test_an_unrelated_edit_keeps_an_included_copy_cached(h: Harness, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "wanted.txt").write_text("wanted\n")
    (context / "other.txt").write_text("other\n")
    src = llb.local("context", include=["wanted.txt"])
    copied = llb.scratch().file(llb.copy(src, "/wanted.txt", "/wanted.txt"), name="copy wanted")
    definition = copied.marshal()

    first = h.solve(definition, build_ref="ctx-1", local_dirs={"context": context})
    assert (h.export(first, tmp_path / "o1") / "wanted.txt").read_text() == "wanted\n"
    (context / "other.txt").write_text("edited\n")
    h.solve(definition, build_ref="ctx-2", local_dirs={"context": context})
    assert h.of_type("ctx-2", ev.VertexStarted) == []
    assert {c.name for c in h.of_type("ctx-2", ev.VertexCached)} >= {"copy wanted"}

    (context / "wanted.txt").write_text("changed\n")
    third = h.solve(definition, build_ref="ctx-3", local_dirs={"context": context})
    assert "copy wanted" in {s.name for s in h.of_type("ctx-3", ev.VertexStarted)}
    assert (h.export(third, tmp_path / "o3") / "wanted.txt").read_text() == "changed\n"
    assert_no_leaks(h)


def test_an_unrelated_edit_keeps_a_copy_of_one_file_cached_without_patterns(
    h: Harness, tmp_path: Path
) -> None:
    """The issue: copy sources are keyed by a checksum of the content selected, as in BuildKit."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "wanted.txt").write_text("wanted\n")
    (context / "other.txt").write_text("other\n")
    copied = llb.scratch().file(
        llb.copy(llb.local("context"), "/wanted.txt", "/wanted.txt"), name="copy wanted"
    )
    definition = copied.marshal()
    h.solve(definition, build_ref="whole-1", local_dirs={"context": context})
    (context / "other.txt").write_text("edited\n")
    h.solve(definition, build_ref="whole-2", local_dirs={"context": context})
    ran = {s.name for s in h.of_type("whole-2", ev.VertexStarted)}
    assert "copy wanted" not in ran, f"the copy ran again after an unrelated edit (ran: {sorted(ran)})"
    assert_no_leaks(h)
