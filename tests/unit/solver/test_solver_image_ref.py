"""Image references are normalized the way BuildKit (distribution/reference) does."""

from __future__ import annotations

import pytest

from buildsvc.solver import llb
from buildsvc.solver.errors import DefinitionError
from buildsvc.solver.ops import normalize_image_ref

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:musl", "docker.io/library/busybox:musl"),
        ("user/app:v1.2_3-rc", "docker.io/user/app:v1.2_3-rc"),
        ("ghcr.io/org/team/app", "ghcr.io/org/team/app:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}"),
        (f"reg.example.com:443/x/y@{DIGEST}", f"reg.example.com:443/x/y@{DIGEST}"),
        ("my-app__x.y", "docker.io/library/my-app__x.y:latest"),
    ],
)
def test_normalizes(ref: str, expected: str) -> None:
    assert normalize_image_ref(ref) == expected
    assert normalize_image_ref(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("", "empty"),
        ("BusyBox", "lowercase"),
        ("ghcr.io/Org/app", "lowercase"),
        ("busybox:", "invalid tag"),
        ("busybox:-bad", "invalid tag"),
        ("busybox@sha256:abc", "invalid digest"),
        ("busybox@md5:" + "0" * 32, "invalid digest"),
        ("a//b", "invalid repository name"),
        ("-app", "invalid repository name"),
        ("app-", "invalid repository name"),
        ("reg-.io/app", "invalid registry"),
        ("docker.io/" + "a" * 300, "longer than 255"),
    ],
)
def test_refuses(ref: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        normalize_image_ref(ref)


def test_builder_reports_a_bad_reference_as_a_definition_error() -> None:
    with pytest.raises(DefinitionError, match="must be lowercase") as info:
        llb.image("Busybox")
    assert info.value.vertex is None


def test_builder_uses_the_normalized_reference() -> None:
    a = llb.image("busybox").marshal()
    b = llb.image("docker.io/library/busybox:latest").marshal()
    assert a == b
    assert a.output is not None
    op = a.vertices[a.output.digest].op
    assert getattr(op, "identifier", None) == "docker-image://docker.io/library/busybox:latest"
