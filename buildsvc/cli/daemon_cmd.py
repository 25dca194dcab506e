"""``buildsvc daemon``: serve the Control API on a unix socket or on TCP with mutual TLS.

Shutdown on SIGTERM (or SIGINT): new solves are refused at once (UNAVAILABLE, "daemon is shutting
down"), running ones get ``--shutdown-grace`` seconds to finish, what is left is cancelled (the
solver records each as cancelled), then ``DaemonStopped`` is recorded and the process exits 0. A
SIGKILL records nothing: the next start finds the unfinished builds in the log and resumes them
(``--no-resume``: records them cancelled instead), after removing the containers and mounts the
dead process left (see ``buildsvc.daemon.recovery``).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from buildsvc.api.serve import TlsFiles, check_listen, default_address, parse_address, start_server
from buildsvc.api.server import ControlServicer, SolveGate
from buildsvc.cli import startup
from buildsvc.cli.common import Options
from buildsvc.cli.remote import ADDR_KEY
from buildsvc.daemon.engine import open_engine
from buildsvc.daemon.recovery import take_up
from buildsvc.daemon.state import open_state
from buildsvc.errors import InvalidInput
from buildsvc.events.database import RetryPolicy
from buildsvc.solver.engine import DEFAULT_MAX_PARALLEL

__all__ = ["COMMANDS", "registry_host"]

# After the grace period, cancelled steps still need their containers killed and their end recorded.
_CANCEL_WAIT = 60.0


def registry_host(text: str) -> str:
    """``HOST[:PORT]`` as references write a registry (lowercase); a URL or a path is an error."""
    host = text.strip().lower()
    if not host or "://" in host or "/" in host or any(c.isspace() for c in host):
        raise InvalidInput(f"--insecure-registry {text!r}: expected HOST[:PORT], e.g. registry.local:5000")
    name, sep, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if sep and (not name or not port.isdigit() or not 0 < int(port) < 65536):
        raise InvalidInput(f"--insecure-registry {text!r}: bad port; expected HOST[:PORT]")
    return host


@click.command("daemon")
@click.option(
    "--root", type=click.Path(path_type=Path, file_okay=False), help="State directory (or global --root)."
)
@click.option("--db", "db_url", help="SQLAlchemy database URL (or global --db).")
@click.option(
    "--addr", help="unix:///PATH or tcp://HOST:PORT [default: unix:///run/buildsvc/buildsvcd.sock]."
)
@click.option("--worker", "workers", multiple=True, help="Enable only these workers (default: all found).")
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds running builds get to finish after SIGTERM before they are cancelled.",
)
@click.option(
    "--tlscacert", type=click.Path(path_type=Path, dir_okay=False), help="CA that signs client certs."
)
@click.option("--tlscert", type=click.Path(path_type=Path, dir_okay=False), help="The daemon's certificate.")
@click.option("--tlskey", type=click.Path(path_type=Path, dir_okay=False), help="The daemon's key.")
@click.option("--insecure-loopback", is_flag=True, help="Allow plaintext TCP on a loopback host.")
@click.option(
    "--insecure-registry",
    "insecure_registries",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Pull from and push to this registry over plain HTTP (repeatable; buildkitd's http = true).",
)
@click.option(
    "--max-parallelism",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PARALLEL,
    show_default=True,
    help="Build steps run at once, across all builds (buildkitd's max-parallelism).",
)
@click.option(
    "--no-resume",
    is_flag=True,
    help="Record the builds a dead daemon left unfinished as cancelled instead of resuming them.",
)
@click.pass_context
def daemon(
    ctx: click.Context,
    root: Path | None,
    db_url: str | None,
    addr: str | None,
    workers: tuple[str, ...],
    shutdown_grace: float,
    tlscacert: Path | None,
    tlscert: Path | None,
    tlskey: Path | None,
    insecure_loopback: bool,
    insecure_registries: tuple[str, ...],
    max_parallelism: int,
    no_resume: bool,
) -> None:
    """Run the build daemon until SIGTERM."""
    opts: Options = ctx.find_object(Options)  # type: ignore[assignment]
    address = parse_address(addr or ctx.meta.get(ADDR_KEY) or default_address())
    tls = TlsFiles.from_options(tlscacert, tlscert, tlskey)
    check_listen(address, tls, insecure_loopback)  # before anything is opened or recorded
    plain_http_hosts = [registry_host(h) for h in insecure_registries]
    stop = threading.Event()
    serving: list[SolveGate] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Close the gate here, not when the main loop next wakes (up to 0.5 s later): a Solve that
        # comes in after the signal is refused, never admitted into a shutdown already under way.
        for gate in serving:
            gate.stop_accepting()
        stop.set()

    # Installed first: a SIGTERM during startup still ends in an orderly stop.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    state = open_state(root or opts.root, db_url or opts.db_url, retry=RetryPolicy(max_delay=opts.db_timeout))
    try:
        engine = open_engine(
            state,
            worker_names=list(workers) or None,
            insecure_hosts=plain_http_hosts,
            max_parallel=max_parallelism,
        )
        stop_projections = threading.Event()
        projections = threading.Thread(
            target=state.runner.follow, args=(stop_projections,), name="projections", daemon=True
        )
        try:
            gate = SolveGate()
            # Before the server takes builds: the sweep removes every container and mount under
            # the root, which are only the dead process's at this moment.
            recovery = take_up(
                engine, gate, resume=not no_resume, log=lambda line: click.echo(line, err=True)
            )
            click.echo(recovery.describe(), err=True)
            servicer = ControlServicer(engine, gate)
            startup.done()  # set up: collect as usual while serving, never over the start's objects
            server = start_server(servicer, address, tls=tls, insecure_loopback=insecure_loopback)
            serving.append(gate)
            projections.start()
            click.echo(
                f"buildsvc daemon {engine.daemon_id} listening on {addr or address.target} "
                f"(workers: {', '.join(w.name for w in engine.workers)})",
                err=True,
            )
            while not stop.wait(0.5):
                pass
            gate.stop_accepting()
            click.echo(f"shutting down: no new builds; {shutdown_grace:g}s for running ones", err=True)
            running = gate.wait_idle(shutdown_grace)
            if running:
                click.echo(f"shutdown: cancelling {len(running)} build(s): {', '.join(running)}", err=True)
                gate.cancel_all()
                gate.wait_idle(_CANCEL_WAIT)
            server.stop(grace=2).wait()
            servicer.close()
        finally:
            stop_projections.set()
            if projections.is_alive():
                projections.join(10)
            engine.close(reason="shutdown")
    finally:
        state.close()
    click.echo("buildsvc daemon stopped", err=True)


COMMANDS = [daemon]
