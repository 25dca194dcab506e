"""``history inspect``, ``history logs`` and ``history replay`` on builds a real daemon ran.

The replay page is opened in a real headless Chromium: its Gantt chart is drawn by the page's own
script, so bars in the dumped DOM prove the page works in a browser, not only that text was written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from buildsvc.api.model import SolveOptions
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.errors import SolveError
from tests.integration.api.conftest import Daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _three_steps(rootfs: Path, nonce: str, *, fail: bool = False) -> SolveOptions:
    base = llb.local("rootfs")
    first = base.run(
        # The pauses order the writes across the two pipes (each has its own reader); they are
        # shorter than the log's flush interval, so the three lines are recorded in one batch.
        [
            "sh",
            "-c",
            f": {nonce}; echo out-1; sleep 0.1; echo err-2 >&2; sleep 0.1; echo out-3; printf 'no newline'",
        ],
        name="[1/3] speak",
    ).root()
    second = first.file(llb.mkfile("/made", "x"), name="[2/3] write")
    third = second.run(["sh", "-c", "echo last; exit 7" if fail else "echo last"], name="[3/3] finish").root()
    return SolveOptions(
        build_ref=f"rp-{nonce}",
        definition_json=third.marshal().to_json(indent=None).encode(),
        local_dirs={"rootfs": rootfs},
        actor="tester",
    )


def history(daemon: Daemon, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``buildsvc --addr ADDR history ...``: the daemon serves its log (no root or database here)."""
    return daemon.cli("history", *args, expect=expect)


def _solve(daemon: Daemon, options: SolveOptions, *, fails: bool = False) -> str:
    with daemon.client() as client:
        if fails:
            with pytest.raises(SolveError):
                client.solve(options)
        else:
            client.solve(options)
    return options.build_ref


def test_inspect_shows_request_actor_inputs_and_each_vertex(shared_daemon: Daemon, rootfs: Path) -> None:
    ref = _solve(shared_daemon, _three_steps(rootfs, uuid.uuid4().hex, fail=True), fails=True)
    found = json.loads(history(shared_daemon, "inspect", ref, "--format", "json").stdout)
    assert found["status"] == "failed"
    assert found["actor"].startswith("uid=0 gid=0")
    request = found["request"]
    assert request["definition"]["vertices"] and request["definition_digest"].startswith("sha256:")
    [source] = request["inputs"]
    assert source["identifier"] == "local://rootfs" and source["digest"].startswith("sha256:")
    by_name = {v["name"]: v for v in found["vertices"]}
    assert by_name["[1/3] speak"]["status"] == "completed" and by_name["[1/3] speak"]["exit_code"] == 0
    assert by_name["[1/3] speak"]["runs"] == 1 and by_name["[1/3] speak"]["worker"]
    assert by_name["[3/3] finish"]["status"] == "failed" and by_name["[3/3] finish"]["exit_code"] == 7
    assert by_name["[3/3] finish"]["started_at"] and by_name["[3/3] finish"]["ended_at"]
    assert found["exit_code"] == 7 and found["error_vertex"] == by_name["[3/3] finish"]["vertex"]
    text = history(shared_daemon, "inspect", ref).stdout
    assert "[3/3] finish" in text and "failed" in text and "local://rootfs sha256:" in text


def test_inspect_names_the_dockerfile_line_of_the_failed_step(
    shared_daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    context = tmp_path / "ctx"
    shutil.copytree(rootfs, context / "rootfs", symlinks=True)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY rootfs/ /\n\nRUN echo before && exit 5\n")
    ref = f"df-{uuid.uuid4().hex[:12]}"
    shared_daemon.cli("build", str(context), "--ref", ref, expect=1)
    found = json.loads(history(shared_daemon, "inspect", ref, "--format", "json").stdout)
    assert found["error_location"] == "Dockerfile:4"
    failed = next(v for v in found["vertices"] if v["status"] == "failed")
    assert failed["source_location"] == "Dockerfile:4" and failed["exit_code"] == 5
    assert "at Dockerfile:4" in history(shared_daemon, "inspect", ref).stdout


def test_logs_print_each_vertex_output_in_the_order_it_was_written(
    shared_daemon: Daemon, rootfs: Path
) -> None:
    ref = _solve(shared_daemon, _three_steps(rootfs, uuid.uuid4().hex))
    out = history(shared_daemon, "logs", ref).stdout
    number = re.search(r"^(#\d+) \[1/3\] speak$", out, re.MULTILINE)
    assert number is not None, out
    speak = [line.split(" ", 2)[2] for line in out.splitlines() if re.match(rf"{number[1]} \d+\.\d+ ", line)]
    # stdout and stderr interleave as written; a last line without a newline is still printed whole.
    assert speak == ["out-1", "err-2", "out-3", "no newline"]
    assert out.index("[1/3] speak") < out.index("out-1") < out.index("[3/3] finish") < out.index("last")


def test_replay_at_a_position_in_the_middle_shows_what_ran_and_what_was_held(
    shared_daemon: Daemon, rootfs: Path
) -> None:
    ref = _solve(shared_daemon, _three_steps(rootfs, uuid.uuid4().hex))
    stored = shared_daemon.stored(ref)
    started_last = next(
        s for s in stored if s.type == ev.VertexStarted.type_name and s.payload["name"] == "[3/3] finish"
    )
    mid = json.loads(
        history(
            shared_daemon, "replay", ref, "--position", str(started_last.position), "--format", "json"
        ).stdout
    )
    status = {v["name"]: v["status"] for v in mid["vertices"]}
    # The module's earlier builds may have cached the local source already.
    assert status.pop("local://rootfs") in ("completed", "cached")
    assert status == {"[1/3] speak": "completed", "[2/3] write": "completed", "[3/3] finish": "running"}
    assert mid["status"] == "running"
    # While the last step runs, the build holds refs on its inputs; the cache holds the earlier results.
    holders = {r["holder"].split(":")[0] for r in mid["refs"] if r["build_ref"] == ref}
    assert "cache" in holders and holders - {"cache"}
    assert {s["snapshot_id"] for s in mid["snapshots"]} >= {r["snapshot_id"] for r in mid["refs"]}
    # The two steps that ran before the cut are cached; the running one is not yet.
    assert {c["vertex"] for c in mid["cache_records"] if c["build_ref"] == ref} >= {
        v["vertex"] for v in mid["vertices"] if v["name"] in ("[1/3] speak", "[2/3] write")
    }
    assert not [c for c in mid["cache_records"] if c["vertex"] == started_last.payload["vertex"]]
    end = json.loads(history(shared_daemon, "replay", ref, "--format", "json").stdout)
    assert end["status"] == "completed"
    assert all(v["status"] in ("completed", "cached") for v in end["vertices"])
    assert [c for c in end["cache_records"] if c["vertex"] == started_last.payload["vertex"]]
    assert not [r for r in end["refs"] if r["build_ref"] == ref and not r["holder"].startswith("cache:")]
    first = shared_daemon.stored(ref)[0]
    at_start = json.loads(history(shared_daemon, "replay", ref, "--at", "+0", "--format", "json").stdout)
    assert at_start["position"] >= first.position and at_start["status"] in ("requested", "running")


def test_replay_rejects_bad_cuts_with_a_clear_error(shared_daemon: Daemon, rootfs: Path) -> None:
    ref = _solve(shared_daemon, _three_steps(rootfs, uuid.uuid4().hex))
    bad = history(shared_daemon, "replay", ref, "--at", "yesterday", expect=2)
    assert "--at 'yesterday'" in bad.stderr
    both = history(shared_daemon, "replay", ref, "--at", "+1", "--position", "3", expect=2)
    assert "not both" in both.stderr
    missing = history(shared_daemon, "replay", "no-such-build", expect=None)
    assert missing.returncode != 0 and "no-such-build" in missing.stderr


def test_replay_page_draws_a_bar_per_vertex_in_a_real_browser(
    shared_daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    assert CHROMIUM is not None, "chromium is not installed (scripts/test installs it)"
    ref = _solve(shared_daemon, _three_steps(rootfs, uuid.uuid4().hex, fail=True), fails=True)
    page = tmp_path / "replay.html"
    history(shared_daemon, "replay", ref, "--html", str(page))
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    bars = dict(
        re.findall(
            r'<rect class="bar [a-z]+" data-vertex="(sha256:[0-9a-f]{64})" data-status="([a-z]+)"', dom
        )
    )
    vertices = {
        s.payload["vertex"]: s.type
        for s in shared_daemon.stored(ref)
        if s.type in (ev.VertexStarted.type_name, ev.VertexCached.type_name)
    }
    assert set(bars) == set(vertices)
    # Each bar has the status the history gives its vertex (one failed, the rest ran or were cached).
    inspected = json.loads(history(shared_daemon, "inspect", ref, "--format", "json").stdout)
    assert bars == {v["vertex"]: v["status"] for v in inspected["vertices"]}
    assert sorted(bars.values())[-1] == "failed" and "running" not in bars.values()


def test_provenance_is_an_in_toto_slsa_statement_with_the_logs_digests(
    shared_daemon: Daemon, rootfs: Path, tmp_path: Path
) -> None:
    ref = _solve(shared_daemon, _three_steps(rootfs, uuid.uuid4().hex))
    out = tmp_path / "provenance.json"
    history(shared_daemon, "provenance", ref, "-o", str(out))
    statement = json.loads(out.read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    stored = shared_daemon.stored(ref)
    requested = stored[0].payload
    predicate = statement["predicate"]
    definition = predicate["buildDefinition"]["externalParameters"]["definition"]
    assert definition == requested["definition"]
    # The subject is the output vertex's result, by the content digest the solver keyed it by.
    output = requested["definition"]["output"]["vertex"]
    done = {
        s.payload["vertex"]: s.payload["cache_key"]
        for s in stored
        if s.type in ("VertexCompleted", "VertexCached")
    }
    [subject] = statement["subject"]
    assert subject["digest"] == {"sha256": done[output].removeprefix("sha256:")}
    [dependency] = predicate["buildDefinition"]["resolvedDependencies"]
    local = next(e["id"] for e in definition["vertices"] if "source" in e["op"])
    assert dependency["uri"] == "local://rootfs"
    assert dependency["digest"] == {"sha256": done[local].removeprefix("sha256:")}
    run = predicate["runDetails"]
    daemon_id = next(s.payload["daemon_id"] for s in stored if s.type == "SolveStarted")
    assert run["builder"]["id"].endswith(f"/{daemon_id}") and run["builder"]["id"].startswith("buildsvc://")
    assert run["metadata"]["invocationId"] == ref
    assert run["metadata"]["startedOn"] <= run["metadata"]["finishedOn"]
    digest = hashlib.sha256(
        json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert run["byproducts"][0]["digest"] == {"sha256": digest}
