"""The Dockerfile corpus: one directory per case, ``NN-name/`` with a Dockerfile, its context, and
``expect.json`` saying what the Dockerfile means.

``expect.json`` keys (all optional):

- ``build_args``: ``{NAME: VALUE}`` passed as ``--opt build-arg:NAME=VALUE``;
- ``target``: the stage to build (``--opt target=``);
- ``files``: ``{PATH: {...}}`` in the exported tree, each with any of ``content`` (text),
  ``mode`` (octal string of the permission bits, e.g. ``"0644"`` or ``"4755"``), ``uid``, ``gid``,
  ``type`` (``file``, ``dir``) or ``symlink`` (its target, never followed);
- ``absent``: paths that must not be in the exported tree;
- ``config``: image config fields (``Env``, ``WorkingDir``, ``User``, ``Cmd``...) compared exactly;
  ``null`` means the field is absent or empty;
- ``error``: for a case that must fail: the CLI's ``exit_code``, the ``location``
  (``Dockerfile:LINE``, or ``""`` when the error names no line) and a ``message`` fragment.

Every Dockerfile that needs a base image says ``ARG BASE=localbusybox:latest`` / ``FROM ${BASE}``: the
tests here pass ``build-arg:BASE`` pointing at their own registry; Docker's BuildKit (the comparison in
``test_corpus_buildkit.py``) uses the default, the image ``buildkit-peer`` imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).parent


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    expect: dict[str, Any]

    @property
    def fails(self) -> bool:
        return "error" in self.expect

    def build_opts(self, base: str | None) -> list[str]:
        """``--opt`` arguments for the build; ``base`` overrides the Dockerfile's default BASE."""
        args = dict(self.expect.get("build_args", {}))
        if base is not None:
            args["BASE"] = base
        opts = [f"build-arg:{k}={v}" for k, v in sorted(args.items())]
        if "target" in self.expect:
            opts.append(f"target={self.expect['target']}")
        return opts


def load_cases() -> list[Case]:
    cases = [
        Case(d.name, d, json.loads((d / "expect.json").read_text()))
        for d in sorted(CORPUS.iterdir())
        if d.is_dir() and (d / "Dockerfile").is_file()
    ]
    for case in cases:
        unknown = set(case.expect) - {"build_args", "target", "files", "absent", "config", "error"}
        assert not unknown, f"{case.name}/expect.json: unknown keys {sorted(unknown)}"
    return cases


@dataclass(frozen=True)
class Node:
    """One path of an exported tree, as the comparison sees it (no times)."""

    kind: str  # "file", "dir", "symlink", "other"
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    digest: str = ""  # sha256 of a file's content
    target: str = ""  # a symlink's target
    size: int = field(default=0, compare=False)


def tree(root: Path) -> dict[str, Node]:
    """Every path under ``root`` (relative, ``/``-separated), symlinks never followed."""
    out: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Node("symlink", 0, st.st_uid, st.st_gid, target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Node("dir", mode, st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                data = full.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                out[rel] = Node("file", mode, st.st_uid, st.st_gid, digest=digest, size=len(data))
            else:
                out[rel] = Node("other", mode, st.st_uid, st.st_gid)
    return out


def check_files(case: Case, root: Path) -> list[str]:
    """What in the exported tree at ``root`` differs from ``case``'s ``files`` and ``absent``."""
    problems: list[str] = []
    for rel, want in case.expect.get("files", {}).items():
        path = root / rel
        if not os.path.lexists(path):
            problems.append(f"{rel}: missing")
            continue
        st = path.lstat()
        if "symlink" in want:
            if not stat.S_ISLNK(st.st_mode):
                problems.append(f"{rel}: not a symlink")
            elif os.readlink(path) != want["symlink"]:
                problems.append(f"{rel}: links to {os.readlink(path)!r}, expected {want['symlink']!r}")
            continue
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        expected_kind = want.get("type", "file")
        if kind != expected_kind:
            problems.append(f"{rel}: is a {kind}, expected a {expected_kind}")
            continue
        if "content" in want and path.read_text() != want["content"]:
            problems.append(f"{rel}: content {path.read_text()!r}, expected {want['content']!r}")
        if "mode" in want and stat.S_IMODE(st.st_mode) != int(want["mode"], 8):
            problems.append(f"{rel}: mode {stat.S_IMODE(st.st_mode):04o}, expected {want['mode']}")
        for key, actual in (("uid", st.st_uid), ("gid", st.st_gid)):
            if key in want and actual != want[key]:
                problems.append(f"{rel}: {key} {actual}, expected {want[key]}")
    for rel in case.expect.get("absent", []):
        if os.path.lexists(root / rel):
            problems.append(f"{rel}: exists, expected absent")
    return problems


def check_config(case: Case, config: dict[str, Any]) -> list[str]:
    """What in the image config's ``config`` object differs from ``case``'s ``config``."""
    problems = []
    for key, want in case.expect.get("config", {}).items():
        got = config.get(key) or None  # an empty list or map is no value, as Docker shows it
        if got != want:
            problems.append(f"config {key}: {got!r}, expected {want!r}")
    return problems


def image_config_from_oci_tar(path: Path) -> dict[str, Any]:
    """The image config inside an OCI layout tar (the one image its index names)."""
    with tarfile.open(path) as tar:

        def read(name: str) -> Any:
            member = tar.extractfile(name)
            assert member is not None, f"{name} missing from {path}"
            return json.loads(member.read())

        def blob(digest: str) -> Any:
            return read("blobs/" + digest.replace(":", "/"))

        (entry,) = read("index.json")["manifests"]
        manifest = blob(entry["digest"])
        config: dict[str, Any] = blob(manifest["config"]["digest"])
        return config


def tar_export_tree(path: Path) -> dict[str, Node]:
    """The same view as :func:`tree` of a tar export (hard links read as the file they share)."""
    out: dict[str, Node] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix("./").strip("/")
            if not rel or rel == ".":
                continue
            ids = (member.uid, member.gid)
            if member.issym():
                out[rel] = Node("symlink", 0, *ids, target=member.linkname)
            elif member.isdir():
                out[rel] = Node("dir", member.mode & 0o7777, *ids)
            elif member.isfile() or member.islnk():
                data = tar.extractfile(member)
                assert data is not None
                content = data.read()
                digest = hashlib.sha256(content).hexdigest()
                out[rel] = Node("file", member.mode & 0o7777, *ids, digest=digest, size=len(content))
            else:
                out[rel] = Node("other", member.mode & 0o7777, *ids)
    return out
