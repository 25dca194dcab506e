"""A throwaway PostgreSQL cluster for tests that stop and start a real server.

The machine's server on 127.0.0.1:5432 is shared, so a test that needs to take a server away from a
writer runs its own: ``initdb`` into a temporary directory (trust auth), ``pg_ctl`` to start and stop it,
listening on 127.0.0.1 on a free port with its unix socket inside that directory. initdb and postgres
refuse to run as root, so as root every command runs as the ``postgres`` user and the directory is
chowned to it.

    cluster = ThrowawayCluster()
    url = cluster.start()    # waits until it accepts connections
    cluster.stop()           # fast shutdown: clients are disconnected, connects are refused
    cluster.start()          # same data, same port
    cluster.close()          # stops it and deletes the directory
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import psycopg

ShutdownMode = Literal["smart", "fast", "immediate"]

_OWNER = "postgres"


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message holds the command's output and the server log's tail."""


def find_pg_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl``: from PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise ClusterError("no initdb on PATH nor in /usr/lib/postgresql/*/bin: apt-get install postgresql")
    return candidates[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThrowawayCluster:
    """A PostgreSQL cluster of its own in a temporary directory; see the module docstring."""

    def __init__(self, *, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_pg_bindir()
        self._as_owner = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="buildsvc-pgcluster-"))
        if self._as_owner:
            owner = pwd.getpwnam(_OWNER)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self._port: int | None = None
        self._initialized = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise ClusterError("the cluster has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The maintenance database's URL (user ``postgres``, no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self, port: int | None = None) -> str:
        """Start the server (initdb on first use) and wait until it accepts connections; returns the URL.

        A restart keeps the port of the first start unless another is given.
        """
        if not self._initialized:
            locale = ["-E", "UTF8", "--locale=C.UTF-8"]
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", *locale)
            self._initialized = True
        if port is not None:
            self._port = port
        elif self._port is None:
            self._port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {self._port} -k {self.directory}"
        self._pg_ctl("-l", str(self.log), "-o", options, "start")
        self._wait_until_accepting(timeout=30.0)
        return self.url

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server, waiting until it is down (``fast`` disconnects clients, ``immediate`` crashes)."""
        if self.running:
            self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: ShutdownMode = "fast") -> str:
        self.stop(mode)
        return self.start()

    def close(self) -> None:
        """Stop the server if it runs and delete the directory."""
        try:
            if self._initialized:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ThrowawayCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_until_accepting(self, *, timeout: float) -> None:
        # pg_ctl -w already waits for "ready"; a real connection also proves the TCP listener is up.
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise ClusterError(f"server on port {self._port} does not accept connections: {e}") from e
                time.sleep(0.05)

    def _pg_ctl(self, *args: str) -> None:
        # -w: wait for the server to be up (start) or gone (stop); -t bounds that wait.
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", *args)

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_owner:
            cmd = ["runuser", "-u", _OWNER, "--", *cmd]
        result = subprocess.run(
            cmd, cwd=self.directory, capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            output = f"{result.stdout}{result.stderr}{self._log_tail()}"
            raise ClusterError(f"{' '.join(cmd)} exited {result.returncode}:\n{output}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "--- server log ---\n" + "\n".join(text.splitlines()[-lines:])
