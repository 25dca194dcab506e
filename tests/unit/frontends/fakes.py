"""The fake image resolver and small readers of the definitions the frontend makes."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field

from buildsvc.errors import NotFound
from buildsvc.frontends.dockerfile import DockerfileResult, Platform, build_definition
from buildsvc.solver.definition import Definition
from buildsvc.solver.ops import CopyAction, ExecOp, FileOp, SourceOp, Vertex


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeConfig:
    env: tuple[str, ...] = ("PATH=/usr/bin:/bin",)
    working_dir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("sh",)
    labels: Mapping[str, str] = field(default_factory=dict)


def digest_of(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


class FakeResolver:
    """Knows a few images; records every lookup so tests can see what was (not) resolved."""

    def __init__(self, images: Mapping[str, FakeConfig] | None = None) -> None:
        self.images = dict(images or {"docker.io/library/busybox:latest": FakeConfig()})
        self.calls: list[tuple[str, Platform]] = []

    def resolve(self, ref: str, platform: Platform) -> tuple[str, FakeConfig]:
        self.calls.append((ref, platform))
        if ref not in self.images:
            raise NotFound(f"image {ref} not found")
        return digest_of(ref), self.images[ref]


def build(text: str, resolver: FakeResolver | None = None, **options: str) -> DockerfileResult:
    opts = {k.replace("_", "-"): v for k, v in options.items()}
    return build_definition(textwrap.dedent(text).lstrip(), options=opts, resolver=resolver or FakeResolver())


def by_name(definition: Definition, prefix: str) -> Vertex:
    """The one vertex whose step name starts with ``prefix``."""
    found = [
        definition.vertices[d]
        for d, md in definition.metadata.items()
        if md.name is not None and md.name.startswith(prefix)
    ]
    assert len(found) == 1, f"{len(found)} vertices named {prefix!r}: {names(definition)}"
    return found[0]


def names(definition: Definition) -> list[str]:
    return sorted(md.name for md in definition.metadata.values() if md.name)


def exec_op(definition: Definition, prefix: str) -> ExecOp:
    op = by_name(definition, prefix).op
    assert isinstance(op, ExecOp)
    return op


def copies(definition: Definition, prefix: str) -> list[CopyAction]:
    op = by_name(definition, prefix).op
    assert isinstance(op, FileOp)
    return [a.action for a in op.actions if isinstance(a.action, CopyAction)]


def sources(definition: Definition) -> list[SourceOp]:
    return sorted(
        (v.op for v in definition.vertices.values() if isinstance(v.op, SourceOp)), key=lambda s: s.identifier
    )


def env_of(op: ExecOp) -> dict[str, str]:
    return dict(e.split("=", 1) for e in op.meta.env)


def output_vertex(definition: Definition) -> Vertex:
    assert definition.output is not None
    return definition.vertices[definition.output.digest]
