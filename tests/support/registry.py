"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution) on a loopback port.

Storage is a temporary directory, the config a generated file (JSON, which YAML reads), and the
request log is kept so tests can see what a client really downloaded. No internet needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from types import TracebackType

REGISTRY_BINARY = "/usr/bin/docker-registry"
_REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (/v2/\S*) HTTP/[\d.]+" (\d{3})')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestRegistry:
    """Start with ``start()`` (or as a context manager); ``host`` is ``127.0.0.1:PORT``."""

    __test__ = False  # Not a test class, whatever pytest thinks of the name.

    def __init__(
        self, workdir: Path, *, binary: str = REGISTRY_BINARY, users: dict[str, str] | None = None
    ) -> None:
        """``users`` (name -> password) turns on basic auth through an htpasswd file."""
        self.users = users or {}
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.binary = shutil.which(binary) or binary
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> TestRegistry:
        assert os.path.exists(self.binary), f"{self.binary} missing (apt-get install docker-registry)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        # The port can be taken between probing and binding: try a few.
        for _ in range(3):
            self.port = free_port()
            self._write_config()
            log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start; log:\n{self.log()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> TestRegistry:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every API request served so far."""
        return [(m, p, int(s)) for m, p, s in _REQUEST.findall(self.log())]

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes (to corrupt it on purpose)."""
        hex_part = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_part[:2] / hex_part / "data"

    def _write_config(self) -> None:
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                # No blob descriptor cache: a test that corrupts a blob on disk must see it served.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "buildsvc-test-secret"},
        }
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{_bcrypt(p)}\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "buildsvc-test", "path": str(htpasswd)}}
        self.config_path.write_text(json.dumps(config, indent=2))

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as response:
                    if response.status == 200:
                        return True
            except urllib.error.HTTPError as e:
                if e.code == 401 and self.users:
                    return True  # Up, and asking for credentials as configured.
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        return False


def _bcrypt(password: str) -> str:
    # distribution's htpasswd reads bcrypt only; the stdlib crypt module (deprecated, still in
    # 3.11) makes it through libcrypt, so the tests need no extra package.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))  # cost 4: fast tests
