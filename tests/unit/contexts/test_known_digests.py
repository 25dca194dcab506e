"""The sending side remembers file digests between scans and trusts them only while a file's stat
(device, inode, size, mtime, ctime) is unchanged and was old enough when remembered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsvc.contexts import scan as scan_module
from buildsvc.contexts.known_digests import RACY_NS, KnownDigests
from buildsvc.contexts.scan import scan_dir


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the scan reads to hash it."""
    read: list[Path] = []
    real = scan_module._hash_file

    def counting(path: Path) -> tuple[str, int]:
        read.append(path)
        return real(path)

    monkeypatch.setattr(scan_module, "_hash_file", counting)
    return read


def _known(note: Path, *, later_by: int = 0) -> KnownDigests:
    known = KnownDigests(note)
    known.started_ns += later_by  # as if this scan began ``later_by`` ns from now
    return known


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, hashed: list[Path]) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "a").write_text("one")
    (ctx / "sub" / "b").write_text("two")
    note = tmp_path / "note.json"
    first = scan_dir(ctx, known=_known(note, later_by=RACY_NS + 10**9))
    assert len(hashed) == 2
    hashed.clear()
    again = scan_dir(ctx, known=_known(note))
    assert hashed == [] and again.manifest == first.manifest
    assert again.sources.keys() == first.sources.keys()


def test_a_rewritten_file_is_hashed_again_even_with_its_size_and_mtime_put_back(
    tmp_path: Path, hashed: list[Path]
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("one")
    note = tmp_path / "note.json"
    first = scan_dir(ctx, known=_known(note, later_by=RACY_NS + 10**9))
    before = os.stat(ctx / "a")
    (ctx / "a").write_text("two")  # same size
    os.utime(ctx / "a", ns=(before.st_atime_ns, before.st_mtime_ns))  # the ctime still moves
    hashed.clear()
    again = scan_dir(ctx, known=_known(note, later_by=RACY_NS + 10**9))
    assert hashed == [ctx / "a"]
    assert again.manifest.entries[0].digest != first.manifest.entries[0].digest


def test_a_file_changed_just_before_the_scan_is_not_remembered(tmp_path: Path, hashed: list[Path]) -> None:
    # Its ctime may not move again if it is written in the same clock tick: hash it every time until
    # it has been left alone for RACY_NS.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("one")
    note = tmp_path / "note.json"
    scan_dir(ctx, known=_known(note))
    scan_dir(ctx, known=_known(note))
    assert hashed == [ctx / "a", ctx / "a"]
    assert not note.exists()  # nothing it could trust: no note written


def test_an_unreadable_or_unwritable_note_only_costs_the_hashing(tmp_path: Path, hashed: list[Path]) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("one")
    garbage = tmp_path / "note.json"
    garbage.write_text("{not json")
    assert scan_dir(ctx, known=_known(garbage)).manifest.entries[0].path == "a"
    blocked = tmp_path / "file-not-dir" / "note.json"
    (tmp_path / "file-not-dir").write_text("")
    assert scan_dir(ctx, known=_known(blocked)).manifest.entries[0].path == "a"
    assert len(hashed) == 2


def test_notes_are_kept_per_directory_under_the_users_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert KnownDigests.for_dir(one).note != KnownDigests.for_dir(two).note
    note = KnownDigests.for_dir(one).note
    assert note is not None and note.parent == tmp_path / "cache" / "buildsvc" / "known-digests"


def test_two_selections_of_one_directory_keep_their_own_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hashed: list[Path]
) -> None:
    # `buildsvc build DIR` scans DIR as the context and again for the Dockerfile alone: with one note
    # per directory the second scan's two files replaced the context's notes on every build.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for n in range(5):
        (ctx / f"f{n}").write_text(str(n))
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    old = os.stat(ctx / "f0").st_mtime_ns  # files RACY_NS old are remembered: pretend the scan is later

    def scan(**rules: tuple[str, ...]) -> None:
        known = KnownDigests.for_dir(ctx, **rules)
        known.started_ns = old + RACY_NS + 10**9
        scan_dir(ctx, scan_module.ScanRules(**rules), known=known)

    scan()
    scan(include=("Dockerfile", ".dockerignore"))
    assert len(hashed) == 7
    hashed.clear()
    scan()  # the whole context again: nothing read
    scan(include=("Dockerfile", ".dockerignore"))
    assert hashed == []
    assert KnownDigests.for_dir(ctx).note != KnownDigests.for_dir(ctx, exclude=("f1",)).note
