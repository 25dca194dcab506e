"""``buildsvc build``: solve a definition (``--llb FILE``) on a daemon or with the embedded engine.

With a daemon (``--addr``, or one answering at the default socket) the build runs there and its
progress comes from the Status stream; otherwise it runs in this process on the default root and
database, exactly as the daemon runs it: the same solver, workers and events. Either way the
progress printers read the same updates, made from the build's events.
"""

from __future__ import annotations

import getpass
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions, status_update
from buildsvc.cli.common import open_from
from buildsvc.cli.progress import make_printer
from buildsvc.cli.remote import connect_from
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.frontend import run_frontend
from buildsvc.daemon.state import State
from buildsvc.errors import InvalidInput
from buildsvc.events.subscription import Subscription
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import ResultRef, SolveRequest, SolveResult

__all__ = ["COMMANDS", "parse_kv", "run_build", "run_remote_build"]


def parse_kv(text: str, what: str) -> dict[str, str]:
    """``a=b,c=d`` as a dict; a malformed pair is an error naming ``what``."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{what}: expected KEY=VALUE[,KEY=VALUE...], got {text!r}")
        out[key.strip()] = value.strip()
    return out


def _opt(text: str) -> tuple[str, str]:
    # One KEY=VALUE each: a build arg's value may itself hold commas or '='.
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidInput(f"--opt: expected KEY=VALUE, got {text!r}")
    return key, value


def _locals(pairs: Sequence[str]) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for pair in pairs:
        name, sep, directory = pair.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--local: expected NAME=DIR, got {pair!r}")
        path = Path(directory).resolve()
        if not path.is_dir():
            raise InvalidInput(f"--local {name}: {directory} is not a directory")
        dirs[name] = path
    return dirs


def _outputs(specs: Sequence[str]) -> list[dict[str, str]]:
    outputs = []
    for spec in specs:
        attrs = parse_kv(spec, "--output")
        kind = attrs.get("type")
        if kind not in ("local", "tar"):
            raise InvalidInput(
                f"--output: type must be local or tar (others come with the daemon), got {kind!r}"
            )
        if not attrs.get("dest"):
            raise InvalidInput(f"--output type={kind}: dest= is required")
        outputs.append(attrs)
    return outputs


def run_build(
    state: State,
    engine: Engine,
    definition: Definition,
    *,
    local_dirs: Mapping[str, Path],
    outputs: Sequence[Mapping[str, str]],
    progress: str,
    build_ref: str | None = None,
    frontend: str = "",
    frontend_attrs: Mapping[str, str] | None = None,
) -> SolveResult:
    """Solve ``definition``, print progress from its events, and export its result."""
    ref = build_ref or uuid.uuid4().hex[:25]
    printer = make_printer(progress)
    follow = Subscription(state.store, after=state.store.head(), poll_interval=0.05)
    stream = f"build-{ref}"

    def show() -> None:
        for stored in follow:
            if stored.stream_id == stream and printer is not None:
                printer.feed(status_update(stored))

    watcher = threading.Thread(target=show, name="progress", daemon=True)
    watcher.start()

    def export(result: ResultRef | None) -> Mapping[str, str]:
        response: dict[str, str] = {}
        for out in outputs:
            dest = Path(out["dest"])
            if out["type"] == "local":
                engine.export_local(result, dest, build_ref=ref)
            else:
                engine.export_tar(result, dest, build_ref=ref)
            response[f"{out['type']}.dest"] = str(dest)
        return response

    request = SolveRequest(
        definition=definition,
        build_ref=ref,
        local_dirs=local_dirs,
        actor=_actor(),
        frontend=frontend,
        frontend_attrs=dict(frontend_attrs or {}),
    )
    try:
        return engine.solver.solve(request, export=export)
    finally:
        # Print everything the build recorded before returning (or raising).
        last = state.store.head()
        deadline = time.monotonic() + 10
        while follow.position < last and watcher.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        follow.close()
        watcher.join(5)


def _actor() -> str:
    return os.environ.get("USER") or getpass.getuser()


def run_remote_build(
    client: Client,
    definition: Definition | None,
    *,
    local_dirs: Mapping[str, Path],
    outputs: Sequence[Mapping[str, str]],
    progress: str,
    build_ref: str | None = None,
    frontend: str = "",
    frontend_attrs: Mapping[str, str] | None = None,
) -> tuple[str, Mapping[str, str]]:
    """Solve ``definition`` on a daemon, printing progress from its Status stream.

    Returns the build ref and the exporters' response. Local dirs and destinations are paths on the
    daemon host (the content-transfer protocol comes later), made absolute here because the
    daemon's working directory is not ours.
    """
    ref = build_ref or uuid.uuid4().hex[:25]
    printer = make_printer(progress)
    # Asked for before the Solve: the daemon waits for the build to appear, then sends it all.
    stream = client.status(ref)
    first = threading.Event()

    def show() -> None:
        for update in stream:
            first.set()
            if printer is not None:
                printer.feed(update)

    watcher = threading.Thread(target=show, name="status", daemon=True)
    watcher.start()
    options = SolveOptions(
        build_ref=ref,
        definition_json=definition.to_json(indent=None).encode() if definition is not None else b"",
        frontend=frontend,
        frontend_attrs=dict(frontend_attrs or {}),
        exporters=tuple({**out, "dest": os.path.abspath(out["dest"])} for out in outputs),
        local_dirs={name: path.resolve() for name, path in local_dirs.items()},
        actor=_actor(),
    )
    try:
        response = client.solve(options)
    finally:
        # A build that was recorded ends its stream with its last event: wait for every line. One
        # refused before it began (a bad definition) has no stream to end: stop waiting for it.
        if first.wait(0.5):
            watcher.join(30)
        stream.cancel()
        watcher.join(5)
    return ref, response


@click.command("build")
@click.argument("context", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--llb",
    "llb_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A definition in its JSON form (see buildsvc.solver.definition).",
)
@click.option("--frontend", help="A frontend the daemon runs, e.g. dockerfile.v0.")
@click.option(
    "-f",
    "--file",
    "dockerfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The Dockerfile (default: CONTEXT/Dockerfile).",
)
@click.option(
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Frontend option: target=, build-arg:NAME=, filename=, platform=.",
)
@click.option("--local", "locals_", multiple=True, metavar="NAME=DIR", help="A local source's directory.")
@click.option("--output", "-o", "outputs", multiple=True, metavar="type=local|tar,dest=PATH")
@click.option("--progress", type=click.Choice(["auto", "plain", "rawjson", "quiet"]), default="auto")
@click.option("--ref", "build_ref", help="The build ref to use (default: a new one).")
@click.option("--worker", "workers", multiple=True, help="Enable only these workers (default: all found).")
@click.pass_context
def build(
    ctx: click.Context,
    context: Path | None,
    llb_file: Path | None,
    frontend: str | None,
    dockerfile: Path | None,
    opts: tuple[str, ...],
    locals_: tuple[str, ...],
    outputs: tuple[str, ...],
    progress: str,
    build_ref: str | None,
    workers: tuple[str, ...],
) -> None:
    """Build a definition (--llb) or a Dockerfile (CONTEXT, or --frontend dockerfile.v0 with
    --local context=DIR --local dockerfile=DIR) on a daemon or with the embedded engine.

    Exits 1 when the build fails, 2 on bad input.
    """
    local_dirs = _locals(locals_)
    frontend_attrs = dict(_opt(o) for o in opts)
    if llb_file is not None:
        if context is not None or frontend:
            raise click.UsageError("--llb takes a definition: give no CONTEXT or --frontend with it")
        definition: Definition | None = Definition.from_json(llb_file.read_text())
        frontend = ""
    else:
        if context is not None:
            # The short form, as `docker build`: CONTEXT, with the Dockerfile in it unless -f says.
            local_dirs.setdefault("context", context.resolve())
            dockerfile = dockerfile or context / "Dockerfile"
        if dockerfile is not None:
            local_dirs.setdefault("dockerfile", dockerfile.resolve().parent)
            frontend_attrs.setdefault("filename", dockerfile.name)
        frontend = frontend or ("dockerfile.v0" if "dockerfile" in local_dirs else "")
        if not frontend:
            raise click.UsageError(
                "nothing to build: give CONTEXT, --llb FILE or --frontend with --local dirs"
            )
        definition = None
    parsed_outputs = _outputs(outputs)
    client = connect_from(ctx)
    if client is not None:
        if workers:
            raise click.UsageError("--worker chooses the embedded engine's workers; a daemon has its own")
        ref, _ = run_remote_build(
            client,
            definition,
            local_dirs=local_dirs,
            outputs=parsed_outputs,
            progress=progress,
            build_ref=build_ref,
            frontend=frontend,
            frontend_attrs=frontend_attrs,
        )
        click.echo(f"build {ref} completed", err=True)
        return
    state = open_from(ctx)
    with open_engine(state, worker_names=list(workers) or None) as engine:
        if definition is None:
            definition = run_frontend(frontend, frontend_attrs, local_dirs, engine.images).definition
        result = run_build(
            state,
            engine,
            definition,
            local_dirs=local_dirs,
            outputs=parsed_outputs,
            progress=progress,
            build_ref=build_ref,
            frontend=frontend,
            frontend_attrs=frontend_attrs,
        )
    click.echo(f"build {result.build_ref} completed", err=True)


COMMANDS = [build]
