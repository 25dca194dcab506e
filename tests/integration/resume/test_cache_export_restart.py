"""A kill during a cache export: after the restart the unfinished cache export runs again and the
one that completed before the kill is not repeated; both digests are in the build's response."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemons
from tests.integration.resume.test_resume import (
    _quiet,
    assert_no_leaks,
    events_of,
    kill,
    restart,
    wait_ended,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_kill_during_a_cache_export(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    d = daemons.start()
    ref = uuid.uuid4().hex[:25]
    # Random data does not compress: the gzip export of this layer takes long enough to kill in.
    step = llb.local("rootfs").run(
        ["sh", "-c", f": {ref}; head -c 80000000 /dev/urandom > /big"], name="RUN big"
    )
    fast = {"type": "local", "dest": str(tmp_path / "cache-zstd"), "compression": "zstd"}
    slow = {"type": "local", "dest": str(tmp_path / "cache-gzip"), "compression": "gzip"}
    options = SolveOptions(
        build_ref=ref,
        definition_json=step.root().marshal().to_json(indent=None).encode(),
        local_dirs={"rootfs": rootfs},
        exporters=({"type": "tar", "dest": str(tmp_path / "out.tar")},),
        cache_exports=(fast, slow),
        actor="tester",
    )
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, options), daemon=True)
        thread.start()
        wait_for(
            "the second cache export to start",
            lambda: sum(isinstance(e, ev.CacheExportStarted) for e in events_of(d, ref)) == 2,
            d,
        )
        kill(d)
        thread.join(60)
    before = events_of(d, ref)
    assert [type(e).__name__ for e in before if type(e).__name__.startswith("CacheExport")] == [
        "CacheExportStarted",
        "CacheExportCompleted",
        "CacheExportStarted",
    ]

    d2 = restart(daemons, d)
    end = wait_ended(d2, ref)
    assert isinstance(end, ev.SolveCompleted), end
    events = events_of(d2, ref)
    started = {e.export_id: e.attrs["dest"] for e in events if isinstance(e, ev.CacheExportStarted)}
    done = [started[e.export_id] for e in events if isinstance(e, ev.CacheExportCompleted)]
    assert sorted(done) == sorted([fast["dest"], slow["dest"]])  # each exactly once
    assert list(started.values()).count(fast["dest"]) == 1  # completed before the kill: not again
    assert list(started.values()).count(slow["dest"]) == 2  # interrupted: run again
    digests = {e.export_id: e.manifest_digest for e in events if isinstance(e, ev.CacheExportCompleted)}
    by_dest = {started[i]: digest for i, digest in digests.items()}
    assert end.exporter_response["cache.export.0.digest"] == by_dest[fast["dest"]]
    assert end.exporter_response["cache.export.1.digest"] == by_dest[slow["dest"]]
    for dest in (fast["dest"], slow["dest"]):
        index = json.loads((Path(dest) / "index.json").read_text())
        assert index["manifests"], index
    assert sum(isinstance(e, ev.VertexStarted) and e.name == "RUN big" for e in events) == 1
    assert sum(isinstance(e, ev.ExportCompleted) for e in events) == 1
    assert_no_leaks(d2)
