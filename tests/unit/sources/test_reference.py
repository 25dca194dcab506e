"""Image reference parsing and normalization, as distribution's ParseNormalizedNamed."""

from __future__ import annotations

import pytest

from buildsvc.sources import InvalidReference, parse_layout_ref, parse_platform, parse_reference
from buildsvc.sources.platforms import ImagePlatform

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "normalized"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
        ("127.0.0.1:5000/a/b/c:v1.2_x-y", "127.0.0.1:5000/a/b/c:v1.2_x-y"),
        ("ghcr.io/org/my__app.x-y", "ghcr.io/org/my__app.x-y:latest"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"host:5000/a/b:tag@{DIGEST}", f"host:5000/a/b:tag@{DIGEST}"),
    ],
)
def test_normalizes_like_distribution(ref: str, normalized: str) -> None:
    assert str(parse_reference(ref)) == normalized


def test_parts_and_what_to_ask_the_registry_for() -> None:
    tagged = parse_reference("host:5000/a/b:tag")
    assert (tagged.domain, tagged.path, tagged.tag, tagged.digest) == ("host:5000", "a/b", "tag", None)
    assert tagged.name == "host:5000/a/b" and tagged.reference == "tag"
    pinned = parse_reference(f"host:5000/a/b:tag@{DIGEST}")
    assert pinned.reference == DIGEST
    assert parse_reference(f"a@{DIGEST}").tag is None  # a digest pins it: no "latest" added


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-bad", "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        (f"busybox@sha256:{'A' * 64}", "invalid sha256 digest"),
        (f"busybox@md5:{'a' * 32}", "unsupported digest algorithm"),
        ("@" + DIGEST, "missing repository"),
        ("a//b", "invalid repository path component"),
        ("a/b_", "invalid repository path component"),
        ("-host.io/a", "invalid registry host"),
        (" busybox", "whitespace"),
        ("a/" + "b" * 260, "longer than 255"),
    ],
)
def test_bad_references_name_the_ref_and_the_problem(ref: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(ref)
    assert info.value.ref == ref
    assert repr(ref) in str(info.value) and reason in str(info.value)


def test_platforms_parse_and_match_with_aliases() -> None:
    assert str(parse_platform("linux/amd64")) == "linux/amd64"
    assert parse_platform("linux/x86_64") == ImagePlatform(os="linux", architecture="amd64")
    assert str(parse_platform("linux/arm64/v8")) == "linux/arm64"
    arm = ImagePlatform(os="linux", architecture="aarch64")
    assert arm.matches(ImagePlatform(os="linux", architecture="arm64", variant="v8"))
    v7 = parse_platform("linux/arm/v7")
    assert not v7.matches(ImagePlatform(os="linux", architecture="arm", variant="v6"))
    assert not parse_platform("linux/amd64").matches(ImagePlatform(os="windows", architecture="amd64"))
    with pytest.raises(InvalidReference):
        parse_platform("linux")


def test_layout_refs() -> None:
    ref = parse_layout_ref(f"oci-layout:///srv/layouts/app@{DIGEST}")
    assert (ref.path, ref.tag, ref.digest) == ("/srv/layouts/app", None, DIGEST)
    tagged = parse_layout_ref("oci-layout://rel/dir:v1")
    assert (tagged.path, tagged.tag, tagged.digest) == ("rel/dir", "v1", None)
    assert str(tagged) == "oci-layout://rel/dir:v1"
    with pytest.raises(InvalidReference):
        parse_layout_ref("oci-layout://dir@sha256:nothex")
    with pytest.raises(InvalidReference):
        parse_layout_ref(f"oci-layout://@{DIGEST}")
