from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildsvc.errors import NotFound
from buildsvc.solver import contenthash
from buildsvc.solver.contenthash import ContentNotFound, FileDigests, checksum


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """Files (``path: content``), directories (``path/: ""``) and symlinks (``path: "->target"``)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
            os.chmod(path, 0o755)
        elif content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_text(content)
            os.chmod(path, 0o644)
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    return root


TREE = {
    "src/app.py": "print('hi')\n",
    "src/util.py": "X = 1\n",
    "src/notes.txt": "notes\n",
    "src/docs/guide.md": "guide\n",
    "src/docs/keep.md": "keep\n",
    "other/big.bin": "unrelated\n",
    "link": "->src",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "ctx", TREE)


def test_digest_form_and_stability_across_copies(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a", TREE)
    b = make_tree(tmp_path / "b", dict(reversed(TREE.items())))  # another creation order
    value = checksum(a)
    assert value.startswith("sha256:") and len(value) == 71
    assert checksum(a) == value
    assert checksum(b) == value


def test_times_do_not_count(tree: Path) -> None:
    before = checksum(tree)
    os.utime(tree / "src" / "app.py", ns=(0, 0))
    os.utime(tree / "src", ns=(0, 0))
    assert checksum(tree) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda t: (t / "src/app.py").write_text("print('bye')\n"),
        lambda t: os.chmod(t / "src/app.py", 0o755),
        lambda t: (t / "src/new.py").write_text(""),
        lambda t: (t / "src/notes.txt").unlink(),
        lambda t: (t / "src/notes.txt").rename(t / "src/notes2.txt"),
        lambda t: os.mkdir(t / "src/empty"),
    ],
)
def test_selected_changes_change_it(tree: Path, change: object) -> None:
    before = checksum(tree, ["/src"])
    change(tree)  # type: ignore[operator]
    assert checksum(tree, ["/src"]) != before


def test_symlink_target_counts(tree: Path) -> None:
    before = checksum(tree)
    (tree / "link").unlink()
    (tree / "link").symlink_to("other")
    assert checksum(tree) != before


def test_an_unselected_file_does_not_count(tree: Path) -> None:
    before = checksum(tree, ["/src"])
    (tree / "other/big.bin").write_text("edited\n")
    (tree / "other/added").write_text("x")
    assert checksum(tree, ["/src"]) == before


def test_wildcards_select_matches_only(tree: Path) -> None:
    before = checksum(tree, ["/src/*.py"])
    (tree / "src/notes.txt").write_text("edited\n")
    (tree / "src/docs/guide.md").write_text("edited\n")
    assert checksum(tree, ["/src/*.py"]) == before
    (tree / "src/util.py").write_text("X = 2\n")
    assert checksum(tree, ["/src/*.py"]) != before


def test_which_files_match_a_wildcard_counts(tree: Path) -> None:
    before = checksum(tree, ["/src/*.py"])
    (tree / "src/extra.py").write_text("")
    assert checksum(tree, ["/src/*.py"]) != before


def test_a_wildcard_matching_nothing_is_not_an_error(tree: Path) -> None:
    assert checksum(tree, ["/src/*.rs"]) == checksum(tree, ["/nothing/*"])


def test_a_missing_literal_path_is_not_found(tree: Path) -> None:
    with pytest.raises(ContentNotFound) as err:
        checksum(tree, ["/missing"])
    assert isinstance(err.value, NotFound)
    assert "/missing" in str(err.value)


def test_exclude_patterns(tree: Path) -> None:
    before = checksum(tree, ["/src"], exclude=["*.txt", "docs"])
    (tree / "src/notes.txt").write_text("edited\n")
    (tree / "src/docs/guide.md").write_text("edited\n")
    (tree / "src/docs/new.md").write_text("new\n")
    assert checksum(tree, ["/src"], exclude=["*.txt", "docs"]) == before
    (tree / "src/app.py").write_text("edited\n")
    assert checksum(tree, ["/src"], exclude=["*.txt", "docs"]) != before


def test_exclusion_with_reinclude(tree: Path) -> None:
    exclude = ["docs", "!docs/keep.md"]
    before = checksum(tree, ["/src"], exclude=exclude)
    (tree / "src/docs/guide.md").write_text("edited\n")
    assert checksum(tree, ["/src"], exclude=exclude) == before
    (tree / "src/docs/keep.md").write_text("edited\n")
    assert checksum(tree, ["/src"], exclude=exclude) != before


def test_include_patterns(tree: Path) -> None:
    include = ["**/*.md"]
    before = checksum(tree, ["/src"], include=include)
    (tree / "src/app.py").write_text("edited\n")
    os.mkdir(tree / "src/emptydir")  # leads to no match: not taken
    assert checksum(tree, ["/src"], include=include) == before
    (tree / "src/docs/guide.md").write_text("edited\n")
    assert checksum(tree, ["/src"], include=include) != before


def test_symlinks_are_digested_as_links_unless_followed(tree: Path) -> None:
    as_link = checksum(tree, ["/link"])
    followed = checksum(tree, ["/link"], follow_links=True)
    (tree / "src/app.py").write_text("edited\n")
    assert checksum(tree, ["/link"]) == as_link
    assert checksum(tree, ["/link"], follow_links=True) != followed


def test_absolute_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "r", {"etc/hostname": "inside\n", "escape": "->/etc", "chain": "->escape"})
    for path in (["/escape/hostname"], ["/chain/hostname"], ["/../../../etc/hostname"]):
        before = checksum(root, path)
        (root / "etc/hostname").write_text("changed inside\n")
        assert checksum(root, path) != before, path
        (root / "etc/hostname").write_text("inside\n")
    # The host has /etc/passwd; the root does not: resolution must not reach the host's.
    with pytest.raises(ContentNotFound):
        checksum(root, ["/escape/passwd"])
    with pytest.raises(ContentNotFound):
        checksum(root, ["/../etc/passwd"], follow_links=True)


def test_paths_are_digested_in_the_given_order(tree: Path) -> None:
    assert checksum(tree, ["/src", "/other"]) != checksum(tree, ["/other", "/src"])


@pytest.mark.root
def test_owner_counts_and_a_pinned_value_holds(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "pinned", {"a/b.txt": "hello\n", "a/l": "->b.txt", "a/d/": ""})
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            os.chown(os.path.join(dirpath, name), 0, 0, follow_symlinks=False)
    # Pinned: the format must not drift between releases or machines (cache keys depend on it).
    assert checksum(root, ["/a"]) == PINNED
    os.chown(root / "a/b.txt", 1000, 1000)
    assert checksum(root, ["/a"]) != PINNED


PINNED = "sha256:58f6c36958e061dd78832f63dcbe7b2d025c06e60f9a6b5c172d1792e0bacd96"


@pytest.mark.root
def test_the_documented_encoding(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "one", {"f": "data"})
    os.chown(root / "f", 7, 8)

    def field(b: bytes) -> bytes:
        return len(b).to_bytes(8, "big") + b

    expected = hashlib.sha256(
        field(b"buildsvc.contenthash.v1")
        + field(b"path")
        + field(b"/f")
        + field(b"")
        + field(b"f")
        + field(b"644")
        + field(b"7")
        + field(b"8")
        + field(hashlib.sha256(b"data").digest())
    ).hexdigest()
    assert checksum(root, ["/f"]) == "sha256:" + expected


# --- FileDigests: the digests kept for trees never written again ----------------------------------


def on_a_disk(path: Path) -> None:
    assert os.major(os.stat(path).st_dev) != 0, f"{path} is on tmpfs: these tests need a disk's inodes"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose bytes a checksum read."""
    seen: list[str] = []
    real = contenthash._file_digest

    def counting(host: str) -> bytes:
        seen.append(os.path.basename(host))
        return real(host)

    monkeypatch.setattr(contenthash, "_file_digest", counting)
    return seen


def test_kept_digests_read_each_file_once_across_hard_linked_trees(tmp_path: Path, reads: list[str]) -> None:
    # The context store's next tree and a local source's snapshot hard-link the files they share:
    # other paths, the same inodes (whose ctime the link moves), the same digests, not read again.
    on_a_disk(tmp_path)
    first = make_tree(tmp_path / "first", {"a.txt": "a\n", "b.txt": "b\n"})
    digests = FileDigests()
    plain = checksum(first)
    assert checksum(first, digests=digests) == plain and sorted(reads) == ["a.txt", "a.txt", "b.txt", "b.txt"]
    second = tmp_path / "second"
    second.mkdir()
    os.chmod(second, 0o755)
    os.link(first / "a.txt", second / "a.txt")
    (second / "b.txt").write_text("B, changed\n")
    os.chmod(second / "b.txt", 0o644)
    reads.clear()
    assert checksum(second, digests=digests) == checksum(second)
    assert reads == ["b.txt", "a.txt", "b.txt"]  # the kept a.txt once, then the uncached run reads both
    assert len(digests) == 3


def test_forgotten_digests_are_read_again_and_one_made_meanwhile_is_not_kept(
    tmp_path: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    on_a_disk(tmp_path)
    tree = make_tree(tmp_path / "t", {"a.txt": "a\n"})
    digests = FileDigests()
    checksum(tree, digests=digests)
    digests.forget()  # a prune deleted files: inode numbers may come back
    assert len(digests) == 0
    checksum(tree, digests=digests)
    assert reads == ["a.txt", "a.txt"]
    # A prune while a digest is being made: the file read may be one the prune deleted.
    digests.forget()
    real = contenthash._file_digest

    def pruned_meanwhile(host: str) -> bytes:
        digests.forget()
        return real(host)

    monkeypatch.setattr(contenthash, "_file_digest", pruned_meanwhile)
    checksum(tree, digests=digests)
    assert len(digests) == 0


def test_files_on_an_anonymous_device_are_never_kept(reads: list[str]) -> None:
    # An overlay mount or tmpfs: a later mount may get the same device number and inode numbers.
    shm = Path("/dev/shm") / f"buildsvc-digests-{os.getpid()}"
    try:
        tree = make_tree(shm, {"a.txt": "a\n"})
        digests = FileDigests()
        checksum(tree, digests=digests)
        checksum(tree, digests=digests)
        assert reads == ["a.txt", "a.txt"] and len(digests) == 0
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_kept_digests_are_bounded_oldest_first(tmp_path: Path, reads: list[str]) -> None:
    on_a_disk(tmp_path)
    tree = make_tree(tmp_path / "t", {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n"})
    digests = FileDigests(max_entries=2)
    checksum(tree, digests=digests)
    assert len(digests) == 2
    reads.clear()
    checksum(tree, ("/b.txt", "/c.txt"), digests=digests)  # the two newest were kept
    assert reads == []
    checksum(tree, ("/a.txt",), digests=digests)
    assert reads == ["a.txt"]


# --- known files: a frozen tree's maker already has their digests --------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Known:
    digest: str
    size: int
    mtime_ns: int


def known_files(tree: Path, names: list[str]) -> dict[str, Known]:
    """What the context store's manifest says of ``names`` (the true digests, sizes and times)."""
    found = {}
    for name in names:
        st = os.lstat(tree / name)
        digest = "sha256:" + hashlib.sha256((tree / name).read_bytes()).hexdigest()
        found[name] = Known(digest=digest, size=st.st_size, mtime_ns=st.st_mtime_ns)
    return found


def test_known_files_are_not_read_and_give_the_same_key(tmp_path: Path, reads: list[str]) -> None:
    on_a_disk(tmp_path)
    tree = make_tree(tmp_path / "t", {"a.txt": "a\n", "sub/b.txt": "b\n"})
    known = known_files(tree, ["a.txt", "sub/b.txt"])
    plain = checksum(tree)
    reads.clear()
    digests = FileDigests()
    assert checksum(tree, digests=digests, known=known) == plain
    assert reads == []
    # Kept by inode too: a COPY's key over the source's hard links of these files reads nothing.
    assert len(digests) == 2
    assert checksum(tree, ("/sub",), digests=digests) == checksum(tree, ("/sub",)) and reads == ["b.txt"]


def test_a_known_file_whose_size_or_time_differs_is_read(tmp_path: Path, reads: list[str]) -> None:
    # A record that does not describe the file on disk is not trusted: the bytes decide.
    on_a_disk(tmp_path)
    tree = make_tree(tmp_path / "t", {"a.txt": "a\n", "b.txt": "b\n"})
    good = known_files(tree, ["a.txt", "b.txt"])
    lying = {
        "a.txt": Known(
            digest="sha256:" + "0" * 64, size=good["a.txt"].size + 1, mtime_ns=good["a.txt"].mtime_ns
        ),
        "b.txt": Known(
            digest="sha256:" + "0" * 64, size=good["b.txt"].size, mtime_ns=good["b.txt"].mtime_ns + 1
        ),
    }
    plain = checksum(tree)
    reads.clear()
    assert checksum(tree, digests=FileDigests(), known=lying) == plain
    assert sorted(reads) == ["a.txt", "b.txt"]


def test_known_files_are_for_a_whole_frozen_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"a.txt": "a\n"})
    known = known_files(tree, ["a.txt"])
    with pytest.raises(ValueError, match="whole frozen tree"):
        checksum(tree, ("/a.txt",), digests=FileDigests(), known=known)
    with pytest.raises(ValueError, match="whole frozen tree"):
        checksum(tree, known=known)
