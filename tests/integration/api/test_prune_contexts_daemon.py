"""The context store through a real daemon: ``du`` shows it, ``prune --all`` empties it, and a pruned
build's ``--rerun`` says its context was pruned (run as root).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from tests.integration.api.conftest import Daemon
from tests.integration.test_prune_contexts import age_contexts

pytestmark = pytest.mark.root


def _build(daemon: Daemon, tmp_path: Path, ref: str) -> None:
    ctx = tmp_path / ref
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / "data").write_text(f"the data of {ref}\n")
    daemon.cli("build", str(ctx), "-o", f"type=local,dest={tmp_path / (ref + '-out')}", "--ref", ref)


def test_du_shows_the_context_store_and_prune_all_empties_it(daemon: Daemon, tmp_path: Path) -> None:
    _build(daemon, tmp_path, "first")
    _build(daemon, tmp_path, "second")
    usage = json.loads(daemon.cli("du", "--format", "json").stdout)["contexts"]
    # Each build: its context and its dockerfile local.
    assert usage["manifests"] == 4 and usage["trees"] == 4
    assert usage["blobs"] >= 3 and usage["blob_bytes"] > 0
    assert "context store: 4 manifests" in daemon.cli("du").stdout
    received = {e.manifest_digest for e in daemon.events("first") if isinstance(e, ev.LocalContextReceived)}
    received |= {e.manifest_digest for e in daemon.events("second") if isinstance(e, ev.LocalContextReceived)}

    age_contexts(daemon.root)
    report = json.loads(daemon.cli("prune", "--all", "--format", "json").stdout)
    assert set(report["contexts"]["manifests"]) == received
    assert report["contexts"]["blobs_removed"] == usage["blobs"]
    assert report["reclaimed_bytes"] >= report["contexts"]["bytes_reclaimed"] >= usage["blob_bytes"]
    after = json.loads(daemon.cli("du", "--format", "json").stdout)["contexts"]
    assert (after["manifests"], after["blobs"], after["trees"]) == (0, 0, 0)

    rerun = daemon.cli("build", "--rerun", "first", expect=None)
    assert rerun.returncode != 0
    assert "was pruned from the context store at " in rerun.stderr, rerun.stderr
    state = open_state(daemon.root, daemon.db_url, migrate=False)
    try:
        (pruned,) = state.store.read_stream("contexts")
        assert pruned.type == "LocalContextsPruned" and pruned.actor
        assert f"by {pruned.actor}" in rerun.stderr
    finally:
        state.close()
