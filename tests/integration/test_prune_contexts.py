"""``buildsvc prune`` and ``buildsvc du`` on the context store with the embedded engine, on both
databases (run as root).

Builds copy a local dir into scratch through the console script (no container runs); the store's
files are then made older than the grace period, as they would be an hour later.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from buildsvc.contexts import ContextStore, scan_dir
from buildsvc.contexts.prune import GRACE_SECONDS
from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.prune import prune
from buildsvc.daemon.rerun import plan_rerun
from buildsvc.daemon.state import open_state
from buildsvc.errors import NotFound
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.solver import llb
from buildsvc.solver.contenthash import checksum
from tests.integration.test_build_cli import Cli, cli, write_definition

pytestmark = pytest.mark.root

__all__ = ["cli"]  # fixtures


def age_contexts(root: Path) -> None:
    """Make every file of the root's context store older than the prune's grace period."""
    old = time.time() - GRACE_SECONDS - 60
    for dirpath, dirnames, filenames in os.walk(root / "contexts"):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)


def contexts_usage(c: Cli) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(c.run("du", "--format", "json").stdout)["contexts"]
    return found


def pruned_contexts(c: Cli, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(c.run("prune", *args, "--format", "json").stdout)["contexts"]
    return found


def build_dir(c: Cli, tmp_path: Path, ref: str, files: dict[str, str]) -> str:
    """Build ``ref`` from a dir of ``files`` sent as ``--local src``; returns its manifest digest."""
    src = tmp_path / ref
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    definition = llb.scratch().file(llb.copy(llb.local("src"), "/", "/"), name="copy src").marshal()
    llb_file = write_definition(definition, tmp_path / f"{ref}.json")
    c.run("build", "--llb", str(llb_file), "--local", f"src={src}", "--ref", ref, "--progress", "quiet")
    return scan_dir(src).manifest.digest


def events_of(c: Cli, stream: str) -> list[Event]:
    state = open_state(c.root, c.db_url)
    try:
        return [s.decode() for s in state.store.read_stream(stream)]
    finally:
        state.close()


def test_prune_keeps_the_newest_builds_context_and_all_removes_it(cli: Cli, tmp_path: Path) -> None:
    older = build_dir(cli, tmp_path, "older", {"a": "older\n", "shared": "both\n"})
    newer = build_dir(cli, tmp_path, "newer", {"b": "newer\n", "shared": "both\n"})
    before = contexts_usage(cli)
    assert (before["manifests"], before["blobs"], before["trees"]) == (2, 3, 2)
    assert before["blob_bytes"] == len("older\n") + len("newer\n") + len("both\n")
    # Young files stay whatever the options: a build may be on its way to naming them.
    assert pruned_contexts(cli, "--all")["manifests"] == []
    age_contexts(cli.root)
    assert pruned_contexts(cli, "--all", "--keep-duration", "3600")["manifests"] == []
    assert pruned_contexts(cli, "--all", "--filter", "worker=any")["manifests"] == []

    report = json.loads(cli.run("prune", "--format", "json").stdout)
    assert report["contexts"]["manifests"] == [older]
    assert report["contexts"]["blobs_removed"] == 1  # "older\n"; "both\n" is the newer build's too
    assert report["contexts"]["trees_removed"] == 1
    assert report["reclaimed_bytes"] >= report["contexts"]["bytes_reclaimed"] > 0
    after = contexts_usage(cli)
    assert (after["manifests"], after["blobs"], after["trees"]) == (1, 2, 1)

    assert pruned_contexts(cli, "--all")["manifests"] == [newer]
    empty = contexts_usage(cli)
    assert (empty["manifests"], empty["blobs"], empty["trees"], empty["total_bytes"]) == (0, 0, 0, 0)

    pruned = [e for e in events_of(cli, "contexts") if isinstance(e, ev.LocalContextsPruned)]
    assert [p.manifests for p in pruned] == [(older,), (newer,)]
    assert [p.blobs_removed for p in pruned] == [1, 2]
    cli.assert_no_leaks()


def test_a_pruned_build_cannot_be_run_again_and_says_why(cli: Cli, tmp_path: Path) -> None:
    older = build_dir(cli, tmp_path, "older", {"a": "older\n"})
    build_dir(cli, tmp_path, "newer", {"b": "newer\n"})
    age_contexts(cli.root)
    assert pruned_contexts(cli)["manifests"] == [older]

    state = open_state(cli.root, cli.db_url)
    try:
        with pytest.raises(NotFound, match=r"local dir 'src' .* was pruned from the context store at .* by "):
            plan_rerun(state.store, "older", contexts=ContextStore.under(cli.root))
        kept = plan_rerun(state.store, "newer", contexts=ContextStore.under(cli.root))
        assert list(kept.local_contexts) == ["src"]
    finally:
        state.close()
    # The command with no daemon says the same: when and by whom, and what to do instead.
    stderr = cli.run("build", "--rerun", "older", expect=1).stderr
    assert re.search(r"local dir 'src' .* was pruned from the context store at .* by .*build again", stderr)
    cli.run("build", "--rerun", "newer", "--progress", "quiet")


def test_a_pinned_build_keeps_its_context_even_with_all(cli: Cli, tmp_path: Path) -> None:
    pinned = build_dir(cli, tmp_path, "pinned", {"a": "pinned\n"})
    cli.run("history", "pin", "pinned")
    other = build_dir(cli, tmp_path, "other", {"b": "other\n"})
    third = build_dir(cli, tmp_path, "third", {"c": "third\n"})
    age_contexts(cli.root)
    # With a build filter, only that build's manifests may go.
    assert pruned_contexts(cli, "--all", "--filter", "build=other")["manifests"] == [other]
    assert pruned_contexts(cli, "--all")["manifests"] == [third]
    assert contexts_usage(cli)["manifests"] == 1
    cli.run("build", "--rerun", "pinned", "--progress", "quiet")  # its dir is made again from the store
    assert ContextStore.under(cli.root).has_manifest(pinned)
    cli.run("history", "pin", "pinned", "--unpin")
    age_contexts(cli.root)  # the rerun used it just now
    assert pruned_contexts(cli, "--all")["manifests"] == [pinned]


def test_a_build_that_has_not_ended_keeps_its_context(db_url: str, tmp_path: Path) -> None:
    # A daemon that died mid-build leaves SolveRequested with no end: the next one resumes it,
    # making its dirs again from the store.
    root = tmp_path / "root"
    state = open_state(root, db_url)
    try:
        with open_engine(state) as engine:
            store = ContextStore.under(root)
            src = tmp_path / "src"
            src.mkdir()
            (src / "f").write_text("resumed\n")
            scan = scan_dir(src)
            store.ingest(scan)
            tree = store.materialize(scan.manifest)
            digest = scan.manifest.digest
            state.store.append(
                "build-interrupted",
                [ev.SolveRequested(build_ref="interrupted", local_dirs={"src": digest})],
                actor="tester",
            )
            age_contexts(root)
            # The solver keeps the digests of a tree's files by inode (FileDigests); a prune that
            # deletes trees makes it forget them, as their inode numbers may come back.
            kept = engine.solver.backends.digests
            checksum(tree, digests=kept)
            assert len(kept) == 1
            assert prune(engine, all=True).contexts.manifests == ()
            assert store.has_manifest(digest) and len(kept) == 1  # nothing deleted, nothing forgotten
            state.store.append(
                "build-interrupted", [ev.SolveCancelled(build_ref="interrupted", reason="gave up")]
            )
            report = prune(engine, all=True, actor="tester")
            assert report.contexts.manifests == (digest,)
            assert report.reclaimed_bytes == report.contexts.bytes_reclaimed > 0
            assert len(kept) == 0
    finally:
        state.close()
