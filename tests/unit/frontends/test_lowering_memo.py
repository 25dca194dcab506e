"""A Dockerfile built again with the same inputs reuses its lowering, and only then (issue 4: the
daemon's no-op Solve spent ~40% of its time lowering the same steps again).
"""

from __future__ import annotations

import pytest

import buildsvc.frontends.dockerfile as frontend
from buildsvc.frontends.dockerfile.convert import lower
from buildsvc.frontends.dockerfile.memo import LoweringMemo
from tests.unit.frontends.fakes import FakeConfig, FakeResolver, build, digest_of

BUSYBOX = "docker.io/library/busybox:latest"
ALPINE = "docker.io/library/alpine:latest"
TEXT = """
FROM busybox AS base
RUN echo one > /one
FROM alpine
COPY --from=base /one /one
RUN echo two
"""


@pytest.fixture
def lowerings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A memo of its own for the test, and the Dockerfiles actually lowered."""
    monkeypatch.setattr(frontend, "_RECENT", LoweringMemo(size=2))
    lowered: list[str] = []

    def counting(parsed, source, options, resolver):  # type: ignore[no-untyped-def]
        lowered.append(source)
        return lower(parsed, source, options, resolver)

    monkeypatch.setattr(frontend, "lower", counting)
    return lowered


def _images() -> dict[str, FakeConfig]:
    return {BUSYBOX: FakeConfig(), ALPINE: FakeConfig(env=("PATH=/bin",))}


def test_the_same_build_again_is_not_lowered_again_but_its_bases_are_resolved_again(
    lowerings: list[str],
) -> None:
    first_resolver, again_resolver = FakeResolver(_images()), FakeResolver(_images())
    first = build(TEXT, first_resolver)
    again = build(TEXT, again_resolver)
    assert len(lowerings) == 1
    assert again.definition == first.definition
    assert again.image_config == first.image_config
    # Every base is asked for again, in the same order: the resolver's own rules still decide.
    assert again_resolver.calls == first_resolver.calls
    assert [ref for ref, _ in again_resolver.calls] == [BUSYBOX, ALPINE]


def test_a_base_that_resolves_to_another_digest_is_lowered_afresh(lowerings: list[str]) -> None:
    build(TEXT, FakeResolver(_images()))
    moved = FakeResolver(_images())
    real = moved.resolve

    def resolve(ref, platform):  # type: ignore[no-untyped-def]
        digest, config = real(ref, platform)
        return (digest_of("moved") if ref == BUSYBOX else digest), config

    moved.resolve = resolve  # type: ignore[method-assign]
    result = build(TEXT, moved)
    assert len(lowerings) == 2
    pinned = [v.op.identifier for v in result.definition.vertices.values() if hasattr(v.op, "identifier")]
    assert any(digest_of("moved") in p for p in pinned)
    # The check's answer for busybox is reused by the lowering: each base is asked for once.
    assert [ref for ref, _ in moved.calls] == [BUSYBOX, ALPINE]


def test_a_base_whose_config_changed_is_lowered_afresh(lowerings: list[str]) -> None:
    build(TEXT, FakeResolver(_images()))
    changed = {**_images(), ALPINE: FakeConfig(env=("PATH=/opt/bin",))}
    result = build(TEXT, FakeResolver(changed))
    assert len(lowerings) == 2
    assert "PATH=/opt/bin" in result.image_config["config"]["Env"]


def test_other_options_or_text_are_other_lowerings(lowerings: list[str]) -> None:
    build(TEXT, FakeResolver(_images()))
    build(TEXT, FakeResolver(_images()), target="base")
    build(TEXT + "RUN echo three\n", FakeResolver(_images()))
    assert len(lowerings) == 3


def test_a_reused_image_config_is_a_copy_of_its_own(lowerings: list[str]) -> None:
    first = build(TEXT, FakeResolver(_images()))
    first.image_config["config"]["Env"].append("CHANGED=1")
    again = build(TEXT, FakeResolver(_images()))
    assert len(lowerings) == 1
    assert "CHANGED=1" not in again.image_config["config"]["Env"]


def test_a_failing_lowering_is_not_remembered(lowerings: list[str]) -> None:
    with pytest.raises(Exception, match="not found"):
        build(TEXT, FakeResolver({BUSYBOX: FakeConfig()}))
    build(TEXT, FakeResolver(_images()))
    assert len(lowerings) == 2


def test_only_the_most_recent_lowerings_are_kept(lowerings: list[str]) -> None:
    for n in range(3):
        build(TEXT + f"RUN echo {n}\n", FakeResolver(_images()))
    build(TEXT + "RUN echo 0\n", FakeResolver(_images()))  # the oldest of three, with room for two
    build(TEXT + "RUN echo 2\n", FakeResolver(_images()))  # still there
    assert len(lowerings) == 4
