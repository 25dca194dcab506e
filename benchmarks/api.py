"""The peer-credential relay's cost: Control calls over the daemon's public unix socket (through the
relay, which reads SO_PEERCRED and copies bytes to gRPC's private socket) against the same calls
straight to gRPC's private socket, in the same run, on the same server.

    .venv/bin/python -m benchmarks.api [--calls 1000] [--connections 100] [--repeat 3]

Figure 1: ``--calls`` ListWorkers calls on one connection (the relay copies each request and reply).
Figure 2: ``--connections`` new connections, one ListWorkers each (the relay also accepts, reads the
credentials, connects upstream and starts its two pump threads per connection; what each ``buildsvc``
command pays once). Each side is warmed up, the sides alternate, and the median of ``--repeat`` is
printed with the ratio relay/direct.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from buildsvc.api.client import Client
from buildsvc.api.serve import parse_address, start_server
from buildsvc.api.server import ControlServicer, SolveGate
from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.state import open_state


def _calls_on_one_connection(addr: str, calls: int) -> float:
    with Client(addr) as client:
        client.list_workers()  # connected and warm before the clock starts
        began = time.perf_counter()
        for _ in range(calls):
            client.list_workers()
        return time.perf_counter() - began


def _one_call_per_connection(addr: str, connections: int) -> float:
    began = time.perf_counter()
    for _ in range(connections):
        with Client(addr) as client:
            client.list_workers()
    return time.perf_counter() - began


def _median_pair(
    measure: Callable[[str], float], relay: str, direct: str, repeat: int
) -> tuple[float, float]:
    measure(relay), measure(direct)  # warm-up
    through, straight = [], []
    for _ in range(repeat):
        through.append(measure(relay))
        straight.append(measure(direct))
    return statistics.median(through), statistics.median(straight)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as work:
        state = open_state(Path(work) / "root", f"sqlite:///{work}/buildsvc.db")  # migrated on open
        engine = open_engine(state)
        servicer = ControlServicer(engine, SolveGate())
        serving = start_server(servicer, parse_address(f"unix://{work}/buildsvcd.sock"))
        try:
            assert serving.relay is not None
            relay, direct = f"unix://{work}/buildsvcd.sock", f"unix://{serving.relay.private_path}"
            rows = []
            through, straight = _median_pair(
                lambda a: _calls_on_one_connection(a, args.calls), relay, direct, args.repeat
            )
            rows.append((f"{args.calls} ListWorkers, one connection", through, straight, args.calls))
            through, straight = _median_pair(
                lambda a: _one_call_per_connection(a, args.connections), relay, direct, args.repeat
            )
            rows.append(
                (f"{args.connections} connections, one ListWorkers each", through, straight, args.connections)
            )
        finally:
            serving.stop(None).wait()
            servicer.close()
            engine.close()
            state.close()
    print("| figure | through the relay | straight to gRPC | relay/direct | cost per call |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, through, straight, n in rows:
        extra_us = (through - straight) / n * 1e6
        ratio = through / straight
        print(f"| {name} | {through:.3f} s | {straight:.3f} s | {ratio:.2f}x | {extra_us:+.0f} µs |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
