"""Every event of a build carries who asked, as the transport proved it: unix peer uid/gid, TLS subject."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.api.serve import TlsFiles
from buildsvc.daemon.state import open_state
from buildsvc.events import catalog as ev
from buildsvc.events.codec import Event
from buildsvc.events.envelope import StoredEvent
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon, Daemons, daemons
from tests.integration.api.test_listen import _certificates, _free_port
from tests.integration.resume.test_resume import (
    Build,
    _quiet,
    events_of,
    kill,
    restart,
    started,
    wait_ended,
    wait_for,
)
from tests.integration.test_cli import Cli, cli

__all__ = ["cli", "daemons"]  # fixtures

NOBODY = 65534


def _tiny(ref: str) -> SolveOptions:
    state = llb.scratch().file(llb.mkfile("/who", uuid.uuid4().hex))
    return SolveOptions(
        build_ref=ref, definition_json=state.marshal().to_json(indent=None).encode(), actor="claimed-name"
    )


def _actors(d: Daemon, ref: str) -> set[str]:
    return {s.actor for s in d.stored(ref)}


def test_over_the_unix_socket_the_actor_is_the_peers_uid_and_gid(daemons: Daemons) -> None:
    # Another user must reach the socket: it lives in a directory anyone can enter.
    public = Path(tempfile.mkdtemp(prefix="buildsvc-audit-"))
    public.chmod(0o755)
    try:
        _unix_actors(daemons, public)
    finally:
        shutil.rmtree(public)


def _unix_actors(daemons: Daemons, public: Path) -> None:
    d = daemons.start(addr=f"unix://{public}/buildsvcd.sock")
    with d.client() as client:
        client.solve(_tiny("as-root"))
    assert _actors(d, "as-root") == {"uid=0 gid=0 (root)"}
    # Another user: the socket is opened up for the test, and the client runs as nobody.
    os.chmod(d.addr.removeprefix("unix://"), 0o666)
    # Everything is imported as root (the interpreter lives under /root); then the process becomes
    # nobody and only then connects, so the kernel's SO_PEERCRED is nobody's.
    script = (
        "import os, sys\n"
        "from buildsvc.api.client import Client\n"
        "from tests.integration.history.test_audit import _tiny\n"
        "options = _tiny('as-nobody')\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "Client(sys.argv[1]).solve(options)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, d.addr], check=True, cwd=Path(__file__).parents[3], timeout=120
    )
    [actor] = _actors(d, "as-nobody")
    assert actor.startswith(f"uid={NOBODY} gid={NOBODY}")


def test_over_tls_the_actor_is_the_client_certificate_subject(daemons: Daemons) -> None:
    certs = _certificates(daemons.tmp_path / "certs")
    addr = f"tcp://127.0.0.1:{_free_port()}"
    tls_args = ("--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "server.pem"))
    d = daemons.start(*tls_args, "--tlskey", str(certs / "server.key"), addr=addr)
    tls = TlsFiles(ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
    with Client(addr, tls=tls) as client:
        client.solve(_tiny("over-tls"))
    assert _actors(d, "over-tls") == {"x509:CN=client"}


def test_plaintext_loopback_keeps_the_claim_but_marks_it_unverified(daemons: Daemons) -> None:
    addr = f"tcp://127.0.0.1:{_free_port()}"
    d = daemons.start("--insecure-loopback", addr=addr)
    with Client(addr) as client:
        client.solve(_tiny("plain"))
    assert _actors(d, "plain") == {"unverified:claimed-name"}


def test_every_event_of_a_daemons_log_has_an_actor(daemons: Daemons, rootfs: Path, tmp_path: Path) -> None:
    """Builds, exports, cache exports and imports, a debug build, a history deletion and a restart's
    recovery: the whole log, walked, names who each event is for (recovery's is the daemon itself)."""
    d = daemons.start()
    step = llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}; echo made > /made"], name="RUN made")
    definition = tmp_path / "build.json"
    definition.write_text(step.root().marshal().to_json(indent=None))
    cache = tmp_path / "cache"
    build = ("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--progress", "quiet")
    d.cli(
        *build,
        "--ref",
        "exported",
        "--output",
        f"type=local,dest={tmp_path / 'out'}",
        "--export-cache",
        f"type=local,dest={cache},mode=max",
    )
    d.cli(*build, "--ref", "imported", "--import-cache", f"type=local,src={cache}")
    failing = llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}; exit 3"], name="RUN fails")
    definition.write_text(failing.root().marshal().to_json(indent=None))
    d.cli(*build[:-2], "--ref", "failed", expect=1)
    d.cli("history", "debug", "failed", "--", "true")
    d.cli("history", "rm", "exported")
    # A build the daemon dies in, resumed by the next one (its recovery's events).
    slow = Build(rootfs, tmp_path, sleep_one=0, sleep_two=30)
    with Client(d.addr) as client:
        thread = threading.Thread(target=lambda: _quiet(client.solve, slow.options()), daemon=True)
        thread.start()
        wait_for("RUN two to start", lambda: started(events_of(d, slow.ref), "RUN two") > 0, d)
        kill(d)
        thread.join(60)
    d2 = restart(daemons, d)
    assert isinstance(wait_ended(d2, slow.ref), ev.SolveCompleted)

    log = _whole_log(d2.root, d2.db_url)
    _assert_has(log, ev.CacheExportCompleted, ev.BuildDebugged, ev.BuildHistoryDeleted, ev.VertexInterrupted)
    anonymous = [f"@{s.position} {s.type} in {s.stream_id}" for s in log if not s.actor]
    assert anonymous == [], anonymous


def test_embedded_commands_record_the_identity_a_daemon_would(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    """With no daemon the process is its own client: its events name its uid and gid as the daemon
    names a unix peer's, so "who built this" reads the same whichever way a build ran."""
    step = llb.local("rootfs").run(["sh", "-c", f": {uuid.uuid4().hex}; echo made > /made"], name="RUN made")
    definition = tmp_path / "build.json"
    definition.write_text(step.root().marshal().to_json(indent=None))
    cli.run("build", "--llb", str(definition), "--local", f"rootfs={rootfs}", "--ref", "embedded")
    cli.run("history", "pin", "embedded")
    cli.run("prune", "--all")

    log = _whole_log(cli.root, cli.db_url)
    _assert_has(log, ev.SolveCompleted, ev.BuildHistoryPinned, ev.SnapshotRemoved)
    # The engine's own lifecycle (started, workers, stopped) is the engine's; all else is the user's.
    lifecycle = {t.type_name for t in (ev.DaemonStarted, ev.WorkerRegistered, ev.DaemonStopped)}
    assert {s.actor for s in log if s.type in lifecycle} == {"daemon"}
    assert {s.actor for s in log if s.type not in lifecycle} == {"uid=0 gid=0 (root)"}


def _whole_log(root: Path, db_url: str) -> list[StoredEvent]:
    state = open_state(root, db_url, migrate=False)
    try:
        return list(state.store.read_all())
    finally:
        state.close()


def _assert_has(log: list[StoredEvent], *expected: type[Event]) -> None:
    types = {s.type for s in log}
    for event_type in expected:
        assert event_type.type_name in types, event_type
