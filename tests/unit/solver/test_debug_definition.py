"""``debug_definition``: a failed step's command replaced, the graph cut there, never cached."""

from __future__ import annotations

import pytest

from buildsvc.daemon.rerun import debug_definition
from buildsvc.errors import InvalidInput
from buildsvc.solver import llb
from buildsvc.solver.ops import ExecOp


def test_the_failed_exec_runs_the_command_with_its_own_inputs_env_and_mounts() -> None:
    one = llb.local("rootfs").run(["sh", "-c", "echo one > /one"], name="RUN one").root()
    two = one.run(
        ["sh", "-c", "exit 3"],
        env={"FOO": "bar"},
        cwd="/tmp",
        mounts=[llb.cache_mount("/m", "c")],
        name="RUN two",
    )
    three = two.root().run(["true"], name="RUN three").root()
    definition = three.marshal()
    failed = next(d for d in definition.vertices if definition.name_of(d) == "RUN two")
    made = debug_definition(definition, failed, ["cat", "/one"])
    assert made.output is not None
    debug = made.vertices[made.output.digest]
    original = definition.vertices[failed]
    assert isinstance(debug.op, ExecOp) and isinstance(original.op, ExecOp)
    assert debug.op.meta.args == ("cat", "/one")
    assert (debug.op.meta.env, debug.op.meta.cwd, debug.op.mounts) == (
        original.op.meta.env,
        original.op.meta.cwd,
        original.op.mounts,
    )
    assert debug.inputs == original.inputs  # the same input snapshots: reused from the record
    assert made.metadata[debug.digest].ignore_cache
    assert made.name_of(debug.digest) == "debug RUN two"
    made.validate()


def test_only_an_exec_step_can_be_debugged() -> None:
    copy = llb.local("rootfs").file(llb.copy(llb.local("data"), "/f", "/f"), name="COPY f")
    definition = copy.marshal()
    assert definition.output is not None
    with pytest.raises(InvalidInput, match="only a RUN"):
        debug_definition(definition, definition.output.digest, ["true"])
    with pytest.raises(InvalidInput, match="missing"):
        debug_definition(definition, "sha256:nope", ["true"])
