"""Frontend inputs (BuildKit's FrontendInputs) of a client-side frontend, against a real daemon.

The caller passes named definitions with the Solve; the frontend gets them from Inputs, solves them
like any definition, and can build a Dockerfile on one (``context:DIR=input:NAME``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from buildsvc.api.gateway_client import Gateway, Ref
from buildsvc.api.model import SolveOptions
from buildsvc.errors import InvalidInput, NotFound
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition
from tests.integration.api.conftest import Daemon

pytestmark = pytest.mark.root


def _source_tree(nonce: str) -> Definition:
    """A context made by LLB (no local dir): a Dockerfile and the file it copies."""
    dockerfile = "FROM scratch\nCOPY made.txt /copied.txt\n"
    return (
        llb.scratch()
        .file(llb.mkfile("/Dockerfile", dockerfile).mkfile("/made.txt", f"made {nonce}\n"), name="src")
        .marshal()
    )


def test_inputs_are_given_to_the_frontend_and_solved_by_it(daemon: Daemon, tmp_path: Path) -> None:
    nonce = uuid.uuid4().hex
    src = _source_tree(nonce)

    def frontend(gw: Gateway) -> Ref:
        inputs = gw.inputs()
        assert set(inputs) == {"src"} and inputs["src"].output == src.output
        ref = gw.solve(inputs["src"])
        assert gw.read_file(ref, "/made.txt") == f"made {nonce}\n".encode()
        # The Dockerfile frontend, run by the daemon, on the input as its context and Dockerfile dir.
        return gw.solve(
            frontend="dockerfile.v0",
            options={"context:context": "input:src", "context:dockerfile": "input:src"},
        )

    out = tmp_path / "out"
    outcome = daemon.client().build(
        frontend, frontend_inputs={"src": src}, outputs=[{"type": "local", "dest": str(out)}]
    )
    assert (out / "copied.txt").read_text() == f"made {nonce}\n"
    events = daemon.events(outcome.build_ref)
    given = [e for e in events if isinstance(e, ev.FrontendInputReceived)]
    assert [(g.name, g.definition_digest) for g in given] == [
        ("src", src.output.digest if src.output else "")
    ]
    assert Definition.from_dict(given[0].definition) == src  # the log holds the input itself
    solves = [e for e in events if isinstance(e, ev.GatewaySolveRequested)]
    # The input solved for the frontend, solved again (once) to make the Dockerfile's two dirs, and
    # the Dockerfile build; the last one's dirs are named by manifest, made from the input.
    assert [s.frontend for s in solves] == ["", "", "dockerfile.v0"]  # one solve for both dirs
    dockerfile_build = daemon.events(solves[-1].solve_ref)
    received = {e.name: e for e in dockerfile_build if isinstance(e, ev.LocalContextReceived)}
    assert {n: e.source for n, e in received.items()} == {"context": "input:src", "dockerfile": "input:src"}
    requested = dockerfile_build[0]
    assert isinstance(requested, ev.SolveRequested)
    assert requested.local_dirs == {n: e.manifest_digest for n, e in received.items()}


def test_bad_input_options_are_refused_with_the_reason(daemon: Daemon) -> None:
    src = _source_tree(uuid.uuid4().hex)

    def frontend(gw: Gateway) -> None:
        with pytest.raises(NotFound, match=r"no frontend input 'nope' \(this job has: src\)"):
            gw.solve(frontend="dockerfile.v0", options={"context:context": "input:nope"})
        with pytest.raises(InvalidInput, match="expected context:DIR=input:NAME"):
            gw.solve(frontend="dockerfile.v0", options={"context:context": "src"})
        with pytest.raises(InvalidInput, match="has no frontend"):
            gw.solve(src, options={"context:context": "input:src"})

    daemon.client().build(frontend, frontend_inputs={"src": src})


def test_inputs_go_to_client_side_frontends_only(daemon: Daemon) -> None:
    src = _source_tree(uuid.uuid4().hex)
    with pytest.raises(InvalidInput, match="frontend inputs go to a client-side frontend"):
        daemon.client().solve(
            SolveOptions(build_ref="", definition_json=src.to_json().encode(), frontend_inputs={"src": b"{}"})
        )


def test_a_malformed_input_is_refused_naming_it(daemon: Daemon) -> None:
    options = SolveOptions(build_ref="", definition_json=b"", frontend_inputs={"broken": b"{not json"})
    with pytest.raises(InvalidInput, match="frontend input 'broken'"):
        daemon.client().solve(options)
