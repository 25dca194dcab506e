"""Manifests: canonical bytes, digests, and the checks that keep every path inside its dir."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from buildsvc.contexts import Entry, InvalidManifest, Manifest, parse_manifest

DIGEST = "sha256:" + "ab" * 32


def _doc(*entries: dict[str, Any]) -> bytes:
    full = [
        {"digest": "", "gid": 0, "mode": 0o755, "mtime_ns": 0, "size": 0, "target": "", "uid": 0, **e}
        for e in entries
    ]
    return json.dumps({"version": 1, "entries": full}).encode()


def test_canonical_bytes_and_digest_are_stable_and_order_free() -> None:
    entries = [
        Entry(path="b", type="file", mode=0o644, size=3, digest=DIGEST),
        Entry(path="a", type="dir", mode=0o755),
        Entry(path="a/l", type="symlink", mode=0o777, target="../b"),
        Entry(path="a-b", type="file", mode=0o600, size=1, digest=DIGEST),
    ]
    one, two = Manifest.of(entries), Manifest.of(reversed(entries))
    assert one.canonical() == two.canonical()
    assert [e.path for e in one.entries] == ["a", "a/l", "a-b", "b"]  # parents first, then children
    assert one.digest == "sha256:" + hashlib.sha256(one.canonical()).hexdigest()
    assert b" " not in one.canonical()
    assert parse_manifest(one.canonical()) == one
    assert one.total_bytes == 4 and len(one.files) == 2 and list(one.blobs()) == [DIGEST]


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([{"path": "..", "type": "dir"}], "'..'"),
        ([{"path": "a/../../b", "type": "dir"}], "'..'"),
        ([{"path": "/etc", "type": "dir"}], "absolute"),
        ([{"path": "a//b", "type": "dir"}], "empty"),
        ([{"path": "x/y", "type": "dir"}], "directory 'x' is not listed"),
        (
            [
                {"path": "l", "type": "symlink", "mode": 0o777, "target": "/etc"},
                {"path": "l/passwd", "type": "dir"},
            ],
            "below a symlink",
        ),
        (
            [{"path": "f", "type": "file", "digest": DIGEST}, {"path": "f/g", "type": "dir"}],
            "below a file",
        ),
        ([{"path": "f", "type": "file", "digest": "sha256:../../x"}], "not a digest"),
        ([{"path": "d", "type": "device"}], "type 'device'"),
        ([{"path": "d", "type": "dir"}, {"path": "d", "type": "dir"}], "twice"),
        ([{"path": "l", "type": "symlink", "target": ""}], "needs a target"),
        ([{"path": "d", "type": "dir", "mode": 0o170000}], "permission bits"),
        ([{"path": "d", "type": "dir", "uid": -1}], "non-negative"),
        ([{"path": "b", "type": "dir"}, {"path": "a", "type": "dir"}], "not sorted"),
    ],
)
def test_malformed_or_escaping_manifests_are_refused(entries: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(InvalidManifest, match=problem):
        parse_manifest(_doc(*entries))


def test_not_json_or_wrong_shape_is_refused() -> None:
    with pytest.raises(InvalidManifest, match="not JSON"):
        parse_manifest(b"{nope")
    with pytest.raises(InvalidManifest, match="version"):
        parse_manifest(b'{"version": 2, "entries": []}')
    with pytest.raises(InvalidManifest, match="keys"):
        parse_manifest(b'{"version": 1, "entries": [{"path": "a"}]}')
