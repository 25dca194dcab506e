"""``history debug``'s interactive shell: what a keystroke costs, and what a session costs.

    .venv/bin/python -m benchmarks.debug [--lines 200] [--sessions 5]

Needs root (runc, overlayfs). A daemon in this process (as ``benchmarks/api.py`` starts one) on a
fresh SQLite state, and a build that failed at a ``RUN`` on the busybox rootfs.

Figure 1, echo latency: ``--lines`` times, a line typed into the shell (``echo N``) until its output
comes back, over the ``Debug`` stream (client -> gRPC -> the daemon's pty -> runc -> the shell's
pty, and back). Baseline in the same run: the same lines typed into busybox ``sh`` on a local pty
(no daemon, no container). Median per line.
Figure 2, a whole session: ``exit 3`` typed into the shell, from the call to its exit status (a debug
build: plan from the log, SolveRequested, the container, its end recorded). Baseline: the same
debug build with ``-- sh -c 'exit 3'`` (Solve, no pty). The two alternate; medians of ``--sessions``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from buildsvc.api.client import Client
from buildsvc.api.debug_client import DebugCall
from buildsvc.api.model import SolveOptions
from buildsvc.api.serve import parse_address, start_server
from buildsvc.api.server import ControlServicer, SolveGate
from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.state import open_state
from buildsvc.errors import BuildsvcError
from buildsvc.executors import make_busybox_rootfs
from buildsvc.solver import llb


class _Shell:
    """Lines typed into a shell and waited for, whichever way its terminal is reached."""

    def __init__(self, write: Callable[[bytes], object], read: Callable[[], bytes]) -> None:
        self.write = write
        self.read = read
        self.seen = b""

    def roundtrip(self, n: int) -> float:
        began = time.perf_counter()
        self.write(f"echo line-{n}\n".encode())
        needle = f"\nline-{n}\r\n".encode()
        while needle not in self.seen:
            chunk = self.read()
            # busybox's line editor asks where the cursor is before each prompt and waits a while
            # for the answer: a terminal emulator answers it at once, and so does this.
            for _ in range(chunk.count(b"\x1b[6n")):
                self.write(b"\x1b[1;1R")
            self.seen += chunk
        took = time.perf_counter() - began
        self.seen = self.seen[self.seen.index(needle) + len(needle) :]
        return took


def _remote_latency(client: Client, ref: str, lines: int) -> float:
    call = DebugCall(client, ref, rows=24, cols=80)
    output = iter(call)
    shell = _Shell(call.send, lambda: next(output))
    shell.roundtrip(-1)  # the shell is up
    took = statistics.median(shell.roundtrip(n) for n in range(lines))
    call.send(b"exit 0\n")
    for _ in output:
        pass
    return took


def _local_latency(rootfs: Path, lines: int) -> float:
    master, slave = os.openpty()
    proc = subprocess.Popen([str(rootfs / "bin" / "busybox"), "sh"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)

    def read() -> bytes:
        select.select([master], [], [])
        return os.read(master, 65536)

    try:
        shell = _Shell(lambda data: os.write(master, data), read)
        shell.roundtrip(-1)
        return statistics.median(shell.roundtrip(n) for n in range(lines))
    finally:
        os.write(master, b"exit 0\n")
        proc.wait()
        os.close(master)


def _session(client: Client, ref: str) -> float:
    began = time.perf_counter()
    call = DebugCall(client, ref, rows=24, cols=80)
    call.send(b"exit 3\n")
    for _ in call:
        pass
    assert call.exit_code == 3, call.exit_code
    return time.perf_counter() - began


def _piped(client: Client, ref: str) -> float:
    began = time.perf_counter()
    with contextlib.suppress(BuildsvcError):  # exit 3: the debug build failed, as asked
        client.solve(
            SolveOptions(
                build_ref=f"debug-{time.monotonic_ns()}",
                definition_json=b"",
                rerun_of=ref,
                debug_command=("sh", "-c", "exit 3"),
            )
        )
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-debug-") as work:
        rootfs = Path(make_busybox_rootfs(f"{work}/rootfs"))
        state = open_state(Path(work) / "root", f"sqlite:///{work}/buildsvc.db")
        engine = open_engine(state)
        servicer = ControlServicer(engine, SolveGate())
        serving = start_server(servicer, parse_address(f"unix://{work}/buildsvcd.sock"))
        try:
            with Client(f"unix://{work}/buildsvcd.sock") as client:
                failing = llb.local("rootfs").run(["sh", "-c", "exit 1"], name="RUN fails").root()
                with contextlib.suppress(BuildsvcError):
                    client.solve(
                        SolveOptions(
                            build_ref="failed",
                            definition_json=failing.marshal().to_json(indent=None).encode(),
                            local_dirs={"rootfs": rootfs},
                        )
                    )
                remote = _remote_latency(client, "failed", args.lines)
                local = _local_latency(rootfs, args.lines)
                _session(client, "failed"), _piped(client, "failed")  # warm-up
                sessions, piped = [], []
                for _ in range(args.sessions):
                    sessions.append(_session(client, "failed"))
                    piped.append(_piped(client, "failed"))
        finally:
            serving.stop(None).wait()
            servicer.close()
            engine.close()
            state.close()
    session, plain = statistics.median(sessions), statistics.median(piped)
    print("| figure | interactive | baseline | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| echo latency, median of {args.lines} lines | {remote * 1e3:.2f} ms | "
        f"{local * 1e3:.2f} ms local pty | {remote / local:.1f}x |"
    )
    print(
        f"| debug session to its exit status, median of {args.sessions} | {session * 1e3:.0f} ms | "
        f"{plain * 1e3:.0f} ms `-- sh -c` | {session / plain:.2f}x |"
    )


if __name__ == "__main__":
    main()
