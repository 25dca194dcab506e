"""The command line reaches a tcp:// daemon over mutual TLS with the top-level --tls* options."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.api.conftest import BUILDSVC, Daemon, Daemons, cli_env
from tests.integration.api.test_listen import _certificates, _free_port

pytestmark = pytest.mark.root


def _tls_daemon(daemons: Daemons, certs: Path) -> Daemon:
    return daemons.start(
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "server.pem"),
        "--tlskey",
        str(certs / "server.key"),
        addr=f"tcp://127.0.0.1:{_free_port()}",
    )


def _client_flags(ca: Path, cert_dir: Path) -> list[str]:
    return [
        "--tlscacert",
        str(ca),
        "--tlscert",
        str(cert_dir / "client.pem"),
        "--tlskey",
        str(cert_dir / "client.key"),
    ]


def test_workers_over_tls_with_flags_and_with_the_environment(daemons: Daemons) -> None:
    certs = _certificates(daemons.tmp_path / "certs")
    d = _tls_daemon(daemons, certs)
    out = d.cli(*_client_flags(certs / "ca.pem", certs), "workers", "--format", "json").stdout
    assert [w["name"] for w in json.loads(out)]

    env = {
        **cli_env(),
        "BUILDSVC_ADDR": d.addr,
        "BUILDSVC_TLS_CACERT": str(certs / "ca.pem"),
        "BUILDSVC_TLS_CERT": str(certs / "client.pem"),
        "BUILDSVC_TLS_KEY": str(certs / "client.key"),
    }
    result = subprocess.run(
        [BUILDSVC, "workers", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(out)


def test_without_a_client_certificate_the_cli_says_what_is_missing(daemons: Daemons) -> None:
    certs = _certificates(daemons.tmp_path / "certs")
    d = _tls_daemon(daemons, certs)
    result = d.cli("--tlscacert", str(certs / "ca.pem"), "workers", expect=2)
    assert "missing --tlscert, --tlskey" in result.stderr
    assert "requires a client certificate" in result.stderr


def test_a_client_certificate_the_daemon_does_not_trust_fails_the_handshake(daemons: Daemons) -> None:
    certs = _certificates(daemons.tmp_path / "certs")
    strangers = _certificates(daemons.tmp_path / "strangers")
    d = _tls_daemon(daemons, certs)
    result = d.cli(*_client_flags(certs / "ca.pem", strangers), "workers", expect=1)
    assert f"TLS handshake with the daemon at {d.addr} failed" in result.stderr
    # A server name the daemon's certificate does not carry fails the same way.
    result = d.cli(
        *_client_flags(certs / "ca.pem", certs), "--tlsservername", "other.example", "workers", expect=1
    )
    assert "TLS handshake" in result.stderr
    assert d.proc.poll() is None


def test_tls_options_on_a_unix_socket_are_refused(daemon: Daemon, tmp_path: Path) -> None:
    certs = _certificates(tmp_path / "certs")
    result = daemon.cli(*_client_flags(certs / "ca.pem", certs), "workers", expect=2)
    assert "--tls* options are for a tcp:// daemon" in result.stderr


def test_over_tls_with_no_daemon_listening_says_no_daemon_answers(tmp_path: Path) -> None:
    certs = _certificates(tmp_path / "certs")
    addr = f"tcp://127.0.0.1:{_free_port()}"
    result = subprocess.run(
        [BUILDSVC, "--addr", addr, *_client_flags(certs / "ca.pem", certs), "workers"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"no daemon answers at {addr}" in result.stderr
    assert "TLS handshake" not in result.stderr
