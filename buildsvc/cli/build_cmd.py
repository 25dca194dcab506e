"""``buildsvc build``: solve a definition (``--llb FILE``) on a daemon or with the embedded engine.

With a daemon (``--addr``, or one answering at the default socket) the build runs there and its
progress comes from the Status stream; otherwise it runs in this process on the default root and
database, exactly as the daemon runs it: the same solver, workers and events. Either way the
progress printers read the same updates, made from the build's events.
"""

from __future__ import annotations

import getpass
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from buildsvc.api.client import Client
from buildsvc.api.model import SolveOptions, status_update
from buildsvc.cli.common import open_from
from buildsvc.cli.progress import make_printer
from buildsvc.cli.remote import connect_from
from buildsvc.daemon.engine import Engine, open_engine
from buildsvc.daemon.exporters import check_exporter, run_exporters
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
        try:
            check_exporter(attrs)
        except InvalidInput as e:
            raise InvalidInput(f"--output {spec}: {e}") from e
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
    image_config: Mapping[str, Any] | None = None,
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
        return run_exporters(engine, result, ref, outputs, image_config=image_config)

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
        exporters=tuple(
            {**out, "dest": os.path.abspath(out["dest"])} if out.get("dest") else dict(out) for out in outputs
        ),
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
@click.option(
    "--output",
    "-o",
    "outputs",
    multiple=True,
    metavar="type=local|tar|oci,dest=PATH[,name=REF] | type=image,name=REF,push=true",
    help="Where the result goes (repeatable).",
)
@click.option(
    "--metadata-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the build ref and the exporters' response here as JSON.",
)
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
    metadata_file: Path | None,
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
        ref, response = run_remote_build(
            client,
            definition,
            local_dirs=local_dirs,
            outputs=parsed_outputs,
            progress=progress,
            build_ref=build_ref,
            frontend=frontend,
            frontend_attrs=frontend_attrs,
        )
        _write_metadata(metadata_file, ref, response)
        click.echo(f"build {ref} completed", err=True)
        return
    state = open_from(ctx)
    with open_engine(state, worker_names=list(workers) or None) as engine:
        image_config: dict[str, Any] | None = None
        if definition is None:
            made = run_frontend(frontend, frontend_attrs, local_dirs, engine.images)
            definition, image_config = made.definition, made.image_config
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
            image_config=image_config,
        )
    _write_metadata(metadata_file, result.build_ref, result.exporter_response)
    click.echo(f"build {result.build_ref} completed", err=True)


def _write_metadata(path: Path | None, build_ref: str, response: Mapping[str, str]) -> None:
    """``--metadata-file``: the build ref and the exporters' response, as BuildKit's buildctl writes."""
    if path is None:
        return
    doc = {"buildsvc.build.ref": build_ref, **dict(response)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


COMMANDS = [build]
