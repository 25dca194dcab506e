"""Scanning a directory: .dockerignore semantics, symlinks never followed, stable digests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildsvc.contexts import ScanRules, read_ignore_file, scan_dir, scan_rules
from buildsvc.errors import InvalidInput


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / "a" / "one.txt").write_text("one\n")
    (root / "a" / "b" / "two.log").write_text("two\n")
    (root / "a" / "b" / "deep.txt").write_text("deep\n")
    (root / "node_modules" / "pkg" / "index.js").write_text("js\n")
    (root / "node_modules" / "pkg" / "LICENSE").write_text("mit\n")
    (root / "top.log").write_text("top\n")
    return root


def _paths(root: Path, rules: ScanRules | None = None) -> list[str]:
    return [e.path for e in scan_dir(root, rules or ScanRules()).manifest.entries]


def test_everything_is_taken_without_rules(tmp_path: Path) -> None:
    assert _paths(_tree(tmp_path)) == [
        "a",
        "a/b",
        "a/b/deep.txt",
        "a/b/two.log",
        "a/one.txt",
        "node_modules",
        "node_modules/pkg",
        "node_modules/pkg/LICENSE",
        "node_modules/pkg/index.js",
        "top.log",
    ]


def test_dockerignore_patterns_exceptions_and_double_star(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    rules = ScanRules(exclude=("**/*.log", "node_modules", "!node_modules/pkg/LICENSE"))
    assert _paths(root, rules) == [
        "a",
        "a/b",
        "a/b/deep.txt",
        "a/one.txt",
        "node_modules",
        "node_modules/pkg",
        "node_modules/pkg/LICENSE",
    ]
    # Later patterns win: re-excluding what an exception took back.
    again = ScanRules(exclude=("a", "!a/b", "a/b/deep.txt"))
    assert [p for p in _paths(root, again) if p.startswith("a")] == ["a", "a/b", "a/b/two.log"]


def test_include_patterns_take_the_named_files_and_their_parents(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert _paths(root, ScanRules(include=("a/b/deep.txt", "missing"))) == ["a", "a/b", "a/b/deep.txt"]


def test_symlinks_are_sent_as_symlinks_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "secret").write_text("secret\n")
    root = tmp_path / "ctx"
    (root / "real").mkdir(parents=True)
    (root / "real" / "f").write_text("f\n")
    (root / "out").symlink_to(outside)
    (root / "up").symlink_to("../outside/inner/secret")
    (root / "in").symlink_to("real")  # even one pointing inside is not followed
    (root / "dangling").symlink_to("/nowhere")
    scan = scan_dir(root)
    by_path = {e.path: e for e in scan.manifest.entries}
    assert sorted(by_path) == ["dangling", "in", "out", "real", "real/f", "up"]
    assert {p: (e.type, e.target) for p, e in by_path.items() if e.type == "symlink"} == {
        "dangling": ("symlink", "/nowhere"),
        "in": ("symlink", "real"),
        "out": ("symlink", str(outside)),
        "up": ("symlink", "../outside/inner/secret"),
    }
    assert all(not str(p).startswith(str(outside)) for p in scan.sources.values())


def test_sockets_and_fifos_are_left_out(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "f").write_text("x")
    assert _paths(tmp_path) == ["f"]


def test_the_manifest_digest_depends_on_content_not_on_creation_order(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for root, names in ((first, ["x", "y", "z"]), (second, ["z", "x", "y"])):
        root.mkdir()
        for name in names:
            (root / name).write_text(f"{name}\n")
            os.utime(root / name, ns=(1_000_000_000, 1_000_000_000))
        os.utime(root, ns=(1_000_000_000, 1_000_000_000))
    one, two = scan_dir(first).manifest, scan_dir(second).manifest
    assert one.canonical() == two.canonical() and one.digest == two.digest
    assert scan_dir(first).manifest.digest == one.digest  # stable across scans
    (second / "y").write_text("Y\n")
    os.utime(second / "y", ns=(1_000_000_000, 1_000_000_000))
    assert scan_dir(second).manifest.digest != one.digest
    os.chmod(first / "x", 0o600)
    assert scan_dir(first).manifest.digest != one.digest  # the mode is part of what is sent


def test_read_ignore_file_drops_comments_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / ".dockerignore"
    f.write_text("\ufeff# comment\n\n  *.log  \n!keep.log\n   \n")
    assert read_ignore_file(f) == ["*.log", "!keep.log"]
    f.write_text("[unclosed\n")
    with pytest.raises(InvalidInput, match=r"\.dockerignore.*unclosed"):
        read_ignore_file(f)


def test_scan_rules_for_a_dockerfile_build(tmp_path: Path) -> None:
    ctx, df = tmp_path / "ctx", tmp_path / "df"
    ctx.mkdir()
    df.mkdir()
    dirs = {"context": ctx, "dockerfile": df}
    rules = scan_rules("dockerfile.v0", {"filename": "X"}, dirs)
    assert rules["context"] == ScanRules()
    assert rules["dockerfile"] == ScanRules(include=("X", "X.dockerignore", ".dockerignore"))
    (ctx / ".dockerignore").write_text("a\n")
    assert scan_rules("dockerfile.v0", {"filename": "X"}, dirs)["context"] == ScanRules(exclude=("a",))
    # X.dockerignore beside the Dockerfile wins over the context's .dockerignore.
    (df / "X.dockerignore").write_text("b\n")
    assert scan_rules("dockerfile.v0", {"filename": "X"}, dirs)["context"] == ScanRules(exclude=("b",))
    # A plain definition's locals are sent whole, as buildctl sends them.
    assert scan_rules("", {}, dirs) == {"context": ScanRules(), "dockerfile": ScanRules()}
    (df / "X.dockerignore").unlink()
    (df / "X.dockerignore").symlink_to(ctx / ".dockerignore")
    with pytest.raises(InvalidInput, match="symlink"):
        scan_rules("dockerfile.v0", {"filename": "X"}, dirs)


def test_the_dockerfile_and_its_ignore_file_are_sent_even_when_ignored(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")
    (tmp_path / "other").write_text("x\n")
    rules = scan_rules("dockerfile.v0", {}, {"context": tmp_path, "dockerfile": tmp_path})
    assert _paths(tmp_path, rules["context"]) == ["other"]
    assert _paths(tmp_path, rules["dockerfile"]) == [".dockerignore", "Dockerfile"]
