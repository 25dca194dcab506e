"""Where the daemon listens: a 0660 unix socket, TCP only with mutual TLS or on loopback (as root)."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import grpc
import pytest

from buildsvc.api.client import Client
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.gen import control_pb2_grpc as pb_grpc
from buildsvc.api.serve import TlsFiles
from buildsvc.errors import InvalidInput
from tests.integration.api.conftest import Daemons

pytestmark = pytest.mark.root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_unix_socket_is_0660(daemons: Daemons) -> None:
    d = daemons.start()
    path = Path(d.addr.removeprefix("unix://"))
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_plaintext_tcp_on_a_public_address_is_refused(daemons: Daemons) -> None:
    port = _free_port()
    for extra in ([], ["--insecure-loopback"]):
        d = daemons.start(*extra, addr=f"tcp://0.0.0.0:{port}", wait=False)
        assert d.wait(60) == 2
        out = d.output()
        assert f"refusing to listen on tcp://0.0.0.0:{port} without TLS" in out
        assert "--tlscacert" in out
    # Refused before anything was opened: no daemon was recorded.
    assert not (daemons.tmp_path / "daemon0" / "root").exists()


def test_plaintext_tcp_on_loopback_with_the_flag(daemons: Daemons) -> None:
    port = _free_port()
    d = daemons.start("--insecure-loopback", addr=f"tcp://127.0.0.1:{port}")
    with Client(f"tcp://127.0.0.1:{port}") as client:
        assert [w.name for w in client.list_workers()]
    d.terminate()
    assert d.wait() == 0


def _list_workers(channel: grpc.Channel) -> None:
    stub = pb_grpc.ControlStub(channel)  # type: ignore[no-untyped-call]
    stub.ListWorkers(pb.ListWorkersRequest(), timeout=10)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificates(work: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    work.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=buildsvc test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        cwd=work,
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (work / f"{name}.ext").write_text(ext)
        _openssl(
            "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=work
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=work,
        )
    return work


def test_mutual_tls_lets_a_client_with_a_certificate_in_and_no_one_else(daemons: Daemons) -> None:
    certs = _certificates(daemons.tmp_path / "certs")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    d = daemons.start(
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "server.pem"),
        "--tlskey",
        str(certs / "server.key"),
        addr=addr,
    )
    tls = TlsFiles(ca=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
    with Client(addr, tls=tls) as client:
        assert [w.name for w in client.list_workers()]

    # The server's certificate is trusted, but the client shows none: the handshake fails.
    no_cert = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", no_cert) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _list_workers(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Nor does plaintext get in.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            _list_workers(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert d.proc.poll() is None


def test_a_client_will_not_speak_plaintext_to_a_remote_host() -> None:
    with pytest.raises(InvalidInput, match="needs TLS"):
        Client("tcp://192.0.2.1:1234")
