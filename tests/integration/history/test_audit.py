"""Every event of a build carries who asked, as the transport proved it: unix peer uid/gid, TLS subject."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions
from buildsvc.api.serve import TlsFiles
from buildsvc.solver import llb
from tests.integration.api.conftest import Daemon, Daemons, daemons
from tests.integration.api.test_listen import _certificates, _free_port

__all__ = ["daemons"]

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
