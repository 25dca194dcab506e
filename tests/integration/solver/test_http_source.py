"""``https://`` / ``http://`` sources against a real HTTP server on loopback (run as root).

The server counts every request it answers, so "cached" means "no request was made", not just
"the vertex was reported cached".
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from buildsvc.events import catalog as ev
from buildsvc.solver import llb
from buildsvc.solver.errors import SolveError
from tests.integration.solver.conftest import Harness

pytestmark = pytest.mark.root


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass
class FileServer:
    """Serves ``files`` by path with an ETag, answering ``If-None-Match`` with 304."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, If-None-Match) of every request answered."""
    fail_next: dict[str, list[int]] = field(default_factory=dict)
    """Statuses to answer a path with before serving it (to test retries)."""
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


@pytest.fixture
def server() -> Iterator[FileServer]:
    served = FileServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                served.requests.append((self.path, self.headers.get("If-None-Match")))
                failures = served.fail_next.get(self.path)
                status = failures.pop(0) if failures else None
                body = served.files.get(self.path)
            if status is not None:
                self.send_error(status)
                return
            if body is None:
                self.send_error(404)
                return
            etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output for failures

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def files_of(root: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file under ``root``: content, mode bits, uid, gid (directories must not exist)."""
    out: dict[str, tuple[bytes, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        assert dirpath == str(root) and dirnames == [], f"unexpected directories under {root}"
        for name in filenames:
            st = (Path(dirpath) / name).lstat()
            assert stat.S_ISREG(st.st_mode)
            out[name] = ((Path(dirpath) / name).read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def assert_no_leaks(h: Harness) -> None:
    report = h.leaks()
    assert report.refs == ()
    assert report.snapshots == ()


def test_the_file_gets_its_name_mode_and_root_owner(h: Harness, server: FileServer, tmp_path: Path) -> None:
    server.files["/files/hello%20world.txt"] = b"hello\n"
    server.files["/files/tool"] = b"#!/bin/sh\necho tool\n"
    server.files["/dir/"] = b"<html>index</html>"

    default = h.solve(llb.https(server.url("/files/hello%20world.txt")).marshal())
    # The URL's basename, decoded, and BuildKit's default mode 0600.
    assert files_of(h.export(default, tmp_path / "default")) == {"hello world.txt": (b"hello\n", 0o600, 0, 0)}

    named = h.solve(llb.https(server.url("/files/tool"), filename="run.sh", perm=0o755).marshal())
    assert files_of(h.export(named, tmp_path / "named")) == {
        "run.sh": (b"#!/bin/sh\necho tool\n", 0o755, 0, 0)
    }

    index = h.solve(llb.https(server.url("/dir/")).marshal())
    assert files_of(h.export(index, tmp_path / "index")) == {"index": (b"<html>index</html>", 0o600, 0, 0)}
    # Unpinned: the key needs the bytes, downloaded once for the key and reused by the run.
    assert [server.count(p) for p in ("/files/hello%20world.txt", "/files/tool", "/dir/")] == [1, 1, 1]
    assert_no_leaks(h)


def test_a_pinned_file_is_cached_without_any_request(h: Harness, server: FileServer, tmp_path: Path) -> None:
    body = b"pinned content\n" * 1000
    server.files["/pinned.bin"] = body
    definition = llb.https(server.url("/pinned.bin"), checksum=digest(body)).marshal()

    first = h.solve(definition, build_ref="pinned-1")
    assert server.count("/pinned.bin") == 1
    assert len(h.of_type("pinned-1", ev.VertexStarted)) == 1

    server.files["/pinned.bin"] = b"the server changed its mind"  # must not matter: the pin decides
    second = h.solve(definition, build_ref="pinned-2")
    assert server.count("/pinned.bin") == 1
    assert h.of_type("pinned-2", ev.VertexStarted) == []
    assert len(h.of_type("pinned-2", ev.VertexCached)) == 1
    assert first.output is not None and second.output is not None
    assert second.output.snapshot_id == first.output.snapshot_id
    assert files_of(h.export(second, tmp_path / "out")) == {"pinned.bin": (body, 0o600, 0, 0)}
    assert_no_leaks(h)


def test_an_unpinned_file_is_keyed_by_its_content(h: Harness, server: FileServer, tmp_path: Path) -> None:
    server.files["/data.txt"] = b"version 1\n"
    definition = llb.https(server.url("/data.txt")).marshal()
    h.solve(definition, build_ref="v1")

    # Unchanged: one conditional request, answered 304, and the vertex is cached.
    h.solve(definition, build_ref="v1-again")
    assert server.requests[-1][1] is not None  # sent with If-None-Match
    assert server.count("/data.txt") == 2
    assert len(h.of_type("v1-again", ev.VertexCached)) == 1

    server.files["/data.txt"] = b"version 2\n"
    changed = h.solve(definition, build_ref="v2")
    assert len(h.of_type("v2", ev.VertexStarted)) == 1
    assert server.count("/data.txt") == 3
    assert files_of(h.export(changed, tmp_path / "out")) == {"data.txt": (b"version 2\n", 0o600, 0, 0)}
    assert_no_leaks(h)


def test_a_checksum_mismatch_names_url_and_digests_and_writes_nothing(h: Harness, server: FileServer) -> None:
    server.files["/evil.tar"] = b"not what you pinned"
    wanted = digest(b"what you pinned")
    url = server.url("/evil.tar")
    with pytest.raises(SolveError) as info:
        h.solve(llb.https(url, checksum=wanted).marshal(), build_ref="mismatch")
    message = str(info.value)
    assert url in message
    assert wanted in message
    assert digest(b"not what you pinned") in message
    assert h.of_type("mismatch", ev.SnapshotCreated) == []
    assert len(h.of_type("mismatch", ev.VertexFailed)) == 1
    downloads = h.root / "solver" / "downloads"
    assert [p for p in downloads.rglob("*") if p.is_file()] == []  # not even in the download cache
    assert_no_leaks(h)


def test_an_http_error_names_url_and_status(h: Harness, server: FileServer) -> None:
    url = server.url("/missing.txt")
    with pytest.raises(SolveError) as info:
        h.solve(llb.https(url).marshal(), build_ref="missing")
    message = str(info.value)
    assert url in message
    assert "404" in message
    assert server.count("/missing.txt") == 1  # a 404 is not retried
    (failed,) = h.of_type("missing", ev.SolveFailed)
    assert "404" in failed.error
    assert_no_leaks(h)


def test_a_transient_error_is_retried(h: Harness, server: FileServer, tmp_path: Path) -> None:
    server.files["/flaky.txt"] = b"eventually\n"
    server.fail_next["/flaky.txt"] = [503]
    result = h.solve(llb.https(server.url("/flaky.txt")).marshal())
    assert server.count("/flaky.txt") == 2
    assert files_of(h.export(result, tmp_path / "out")) == {"flaky.txt": (b"eventually\n", 0o600, 0, 0)}

    server.files["/down.txt"] = b"never"
    server.fail_next["/down.txt"] = [503, 503, 503, 503]
    with pytest.raises(SolveError) as info:
        h.solve(llb.https(server.url("/down.txt")).marshal())
    assert "503" in str(info.value)
    assert server.count("/down.txt") == 3  # bounded: three attempts, then the error
    assert_no_leaks(h)
