"""The context store: verified blobs, ingest, and trees made from manifests."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from buildsvc.contexts import ContextStore, Entry, Manifest, MissingBlobs, receive_contexts, scan_dir
from buildsvc.contexts.manifest import parse_manifest
from buildsvc.contexts.store import BlobBatch
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_blob_is_stored_only_when_its_bytes_match(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "store")
    good = store.open_blob(_sha(b"hello"), "greeting.txt")
    good.write(b"hel")
    good.write(b"lo")
    good.commit()
    assert store.blob_path(_sha(b"hello")).read_bytes() == b"hello"
    bad = store.open_blob(_sha(b"hello, world"), "src/a.txt")
    bad.write(b"tampered")
    with pytest.raises(InvalidInput, match=r"upload of 'src/a\.txt'.*" + _sha(b"tampered")):
        bad.commit()
    assert not store.has_blob(_sha(b"hello, world"))
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    with pytest.raises(InvalidInput, match="not a digest"):
        store.open_blob("sha256:../../../etc/passwd", "x")


def test_ingest_then_materialize_reproduces_the_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "ro").mkdir(parents=True)
    (src / "d" / "f").write_text("f\n")
    (src / "d" / "same").write_text("f\n")  # same bytes: one blob
    (src / "x").write_bytes(b"")
    os.chmod(src / "x", 0o4755)
    (src / "d" / "ro" / "inside").write_text("i\n")
    os.chmod(src / "d" / "ro", 0o555)
    (src / "link").symlink_to("/etc/passwd")
    os.utime(src / "d" / "f", ns=(5_000_000_000, 5_000_000_000))
    scan = scan_dir(src)
    store = ContextStore(tmp_path / "store")
    first = store.ingest(scan)
    assert (first.files, first.files_uploaded, first.files_reused) == (4, 3, 0)
    assert store.ingest(scan).files_uploaded == 0
    tree = store.materialize(scan.manifest)
    assert store.materialize(scan.manifest) == tree  # made once
    assert (tree / "d" / "f").read_text() == "f\n" and (tree / "d" / "ro" / "inside").read_text() == "i\n"
    assert stat.S_IMODE(os.stat(tree / "x").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(tree / "d" / "ro").st_mode) == 0o555
    assert os.readlink(tree / "link") == "/etc/passwd"
    assert os.stat(tree / "d" / "f").st_mtime_ns == 5_000_000_000
    assert scan_dir(tree).manifest == scan.manifest  # the tree is what was scanned, entry for entry
    # The first file of a blob is the blob's own inode; the second has another time: a copy.
    blob = store.blob_path(_sha(b"f\n"))
    assert os.stat(tree / "d" / "f").st_ino == os.stat(blob).st_ino
    assert os.stat(tree / "d" / "same").st_ino != os.stat(blob).st_ino


def test_a_tree_takes_a_blobs_inode_only_when_no_one_else_sees_it_change(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "store")

    def tree_of(name: str, mode: int, mtime_ns: int) -> Path:
        src = tmp_path / name
        src.mkdir()
        (src / "f").write_text("shared bytes\n")
        os.chmod(src / "f", mode)
        os.utime(src / "f", ns=(mtime_ns, mtime_ns))
        scan = scan_dir(src)
        store.ingest(scan)
        return store.materialize(scan.manifest)

    blob = store.blob_path(_sha(b"shared bytes\n"))
    first = tree_of("first", 0o640, 1_000)
    st = os.stat(first / "f")
    assert st.st_ino == os.stat(blob).st_ino  # nothing else held the blob: it became the tree's file
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_000)
    # Another mode: a copy, and the first tree's file (the blob) keeps its own metadata and bytes.
    second = tree_of("second", 0o755, 1_000)
    assert os.stat(second / "f").st_ino != st.st_ino and stat.S_IMODE(os.stat(second / "f").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(first / "f").st_mode) == 0o640 and blob.read_text() == "shared bytes\n"
    # The same owner, mode and time as the blob has now: the same inode, nothing changed.
    third = tree_of("third", 0o640, 1_000)
    assert os.stat(third / "f").st_ino == st.st_ino
    # A blob something else links (a snapshot, say) and that has other metadata is not taken.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "g").write_text("held\n")
    os.utime(lone / "g", ns=(7, 7))
    scan = scan_dir(lone)
    store.ingest(scan)
    held = store.blob_path(_sha(b"held\n"))
    os.link(held, tmp_path / "holder")
    before = os.stat(held)
    made = store.materialize(scan.manifest)
    assert os.stat(made / "g").st_ino != before.st_ino and os.stat(made / "g").st_mtime_ns == 7
    after = os.stat(held)
    assert (after.st_mode, after.st_mtime_ns, after.st_nlink) == (before.st_mode, before.st_mtime_ns, 2)


def test_materialize_refuses_a_manifest_whose_files_are_missing(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "store")
    manifest = Manifest.of([Entry(path="a", type="file", mode=0o644, size=1, digest=_sha(b"a"))])
    with pytest.raises(MissingBlobs, match="'a'"):
        store.materialize(manifest)
    with pytest.raises(NotFound, match="never sent"):
        store.load_manifest(manifest.digest)
    received, missing = store.receive_manifest(manifest.canonical())
    assert received == manifest and missing == [_sha(b"a")]
    writer = store.open_blob(_sha(b"a"), "a")
    writer.write(b"a")
    writer.commit()
    assert store.transfer(manifest).files_uploaded == 1  # what was missing when it was received
    assert (store.materialize(store.load_manifest(manifest.digest)) / "a").read_bytes() == b"a"


def test_a_symlink_in_the_tree_is_never_written_through(tmp_path: Path) -> None:
    # Manifest.of refuses entries below a symlink, so a tree cannot be made to write outside itself.
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(InvalidInput, match="below a symlink"):
        Manifest.of(
            [
                Entry(path="l", type="symlink", mode=0o777, target=str(victim)),
                Entry(path="l/owned", type="file", mode=0o644, digest=_sha(b"")),
            ]
        )
    assert list(victim.iterdir()) == []


def test_receive_contexts_records_how_each_dir_arrived(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / ".dockerignore").write_text("ignored\n")
    (ctx / "ignored").write_text("no\n")
    (ctx / "kept").write_text("yes\n")
    store = ContextStore(tmp_path / "store")
    got = receive_contexts(
        store,
        "ref-1",
        host_dirs={"context": ctx, "dockerfile": ctx},
        host_source="embedded",
        frontend="dockerfile.v0",
    )
    assert sorted(p.name for p in got.dirs["context"].iterdir()) == [".dockerignore", "Dockerfile", "kept"]
    assert sorted(p.name for p in got.dirs["dockerfile"].iterdir()) == [".dockerignore", "Dockerfile"]
    assert [type(e) for e in got.events] == [ev.LocalContextReceived, ev.LocalContextReceived]
    context = next(e for e in got.events if e.name == "context")
    assert (context.build_ref, context.source, context.host_path) == ("ref-1", "embedded", str(ctx))
    assert context.manifest_digest == got.digests["context"] and context.files == 3
    # Sent contexts are looked up by digest; one never sent is named in the error.
    again = receive_contexts(store, "ref-2", sent={"context": got.digests["context"]})
    assert again.dirs["context"] == got.dirs["context"] and again.events[0].source == "upload"
    with pytest.raises(NotFound, match="never sent"):
        receive_contexts(store, "ref-3", sent={"context": "sha256:" + "0" * 64})


def test_received_dirs_handed_to_another_build_name_the_same_manifests(tmp_path: Path) -> None:
    """A gateway job's solves record the job's dirs by manifest, as received from the job."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("a\n")
    store = ContextStore(tmp_path / "store")
    got = receive_contexts(store, "job", host_dirs={"src": ctx}, host_source="host")
    handed = got.handed_to("job-1")
    assert handed.dirs == got.dirs and handed.digests == got.digests
    (event,) = handed.events
    assert (event.build_ref, event.name, event.manifest_digest) == ("job-1", "src", got.digests["src"])
    assert (event.source, event.host_path, event.files_uploaded, event.bytes_uploaded) == ("job", "", 0, 0)
    assert event.files_reused == event.files == 1
    assert got.events[0].build_ref == "job"  # the job's own record is unchanged


def _tree_entries(tree: Path) -> dict[str, tuple[int, int, int, int, bytes]]:
    out = {}
    for path in sorted(tree.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(path.relative_to(tree))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, data)
    return out


def test_a_new_tree_links_the_files_it_shares_with_a_recent_one(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for n in range(5):
        (src / "d" / f"f{n}").write_text(f"file {n}\n")
    os.chmod(src / "d" / "f1", 0o600)
    store = ContextStore(tmp_path / "store")
    scan = scan_dir(src)
    store.ingest(scan)
    before = store.materialize(scan.manifest)
    made_before = _tree_entries(before)
    (src / "d" / "f0").write_text("file 0, edited\n")  # new content
    os.chmod(src / "d" / "f2", 0o640)  # same content, another mode: a file of its own
    (src / "d" / "new").write_text("new\n")
    edited = scan_dir(src)
    store.ingest(edited)
    after = store.materialize(edited.manifest)

    def inode(tree: Path, name: str) -> int:
        return (tree / "d" / name).stat().st_ino

    assert [n for n in ("f0", "f1", "f2", "f3", "f4") if inode(before, n) == inode(after, n)] == [
        "f1",
        "f3",
        "f4",
    ]
    # Both trees still say exactly what their manifests say.
    assert _tree_entries(before) == made_before
    fresh = ContextStore(tmp_path / "fresh")
    fresh.ingest(edited)
    assert _tree_entries(after) == _tree_entries(fresh.materialize(edited.manifest))


def test_a_stale_note_of_a_recent_tree_only_costs_copies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    store = ContextStore(tmp_path / "store")
    scan = scan_dir(src)
    store.ingest(scan)
    first = store.materialize(scan.manifest)
    (src / "b").write_text("b\n")
    shutil.rmtree(first)  # the tree a note names is gone
    (store.trees / "recent.json").write_text('[["sha256:' + "0" * 64 + '", 1], "junk"]')
    edited = scan_dir(src)
    store.ingest(edited)
    tree = store.materialize(edited.manifest)
    assert (tree / "a").read_text() == "a\n" and (tree / "b").read_text() == "b\n"


@pytest.mark.root
def test_a_tree_gives_each_entry_its_owner(tmp_path: Path) -> None:
    # Files wanting the owner they are born with skip the chown; the others must still get theirs.
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("root", "other", "group"):
        (src / "d" / name).write_text(name)
    os.chown(src / "d" / "other", 321, 654)
    os.chown(src / "d" / "group", 0, 654)
    os.chown(src / "d", 321, 0)
    (src / "l").symlink_to("d/other")
    os.chown(src / "l", 7, 8, follow_symlinks=False)
    store = ContextStore(tmp_path / "store")
    scan = scan_dir(src)
    store.ingest(scan)
    tree = store.materialize(scan.manifest)
    owners = {
        p: (os.lstat(tree / p).st_uid, os.lstat(tree / p).st_gid)
        for p in ("d", "d/root", "d/other", "d/group", "l")
    }
    assert owners == {
        "d": (321, 0),
        "d/root": (0, 0),
        "d/other": (321, 654),
        "d/group": (0, 654),
        "l": (7, 8),
    }


def test_a_batch_puts_its_blobs_in_place_together_once_durable(tmp_path: Path) -> None:
    store = ContextStore(tmp_path / "store")
    batch = BlobBatch(store)
    for data in (b"one", b"two"):
        writer = store.open_blob(_sha(data), data.decode())
        writer.write(data)
        batch.add(writer)
    assert not store.has_blob(_sha(b"one"))  # verified, not yet synced: not a blob yet
    bad = store.open_blob(_sha(b"three"), "three")
    bad.write(b"tampered")
    with pytest.raises(InvalidInput, match="upload of 'three'"):
        batch.add(bad)
    batch.flush()  # what was verified before the bad one stays
    assert store.blob_path(_sha(b"one")).read_bytes() == b"one" and store.has_blob(_sha(b"two"))
    assert not store.has_blob(_sha(b"three"))
    assert list(store.tmp.iterdir()) == []
    assert stat.S_IMODE(store.blob_path(_sha(b"two")).stat().st_mode) == 0o444


def test_the_last_manifests_are_kept_parsed_and_a_removed_one_is_not_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from buildsvc.contexts import store as store_module

    store = ContextStore(tmp_path / "contexts")
    manifests = [
        Manifest.of([Entry(path=f"f{n}", type="dir", mode=0o755, uid=0, gid=0, mtime_ns=n)]) for n in range(4)
    ]
    for m in manifests:
        store.put_manifest(m)
    parsed: list[bytes] = []
    real = parse_manifest

    def counting(data: bytes) -> Manifest:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(store_module, "parse_manifest", counting)
    # The last three are kept: no file is parsed for them, and they are the manifests given...
    for m in manifests[1:]:
        assert store.load_manifest(m.digest) is m
    # ...by any store of the process that holds them (the engine's, the server's): named by digest.
    other = ContextStore(tmp_path / "contexts")
    assert other.load_manifest(manifests[3].digest) is manifests[3]
    assert parsed == []
    # The first was let go (three are kept): it is read and checked again.
    assert store.load_manifest(manifests[0].digest) == manifests[0]
    assert len(parsed) == 1
    # A kept manifest whose file is gone is not answered from memory.
    os.unlink(store.manifests / (manifests[0].digest.removeprefix("sha256:") + ".json"))
    with pytest.raises(NotFound):
        store.load_manifest(manifests[0].digest)
    assert len(parsed) == 1
    # Nor one another root never received.
    elsewhere = ContextStore(tmp_path / "elsewhere")
    with pytest.raises(NotFound):
        elsewhere.load_manifest(manifests[3].digest)
