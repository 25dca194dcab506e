"""``buildsvc build``: solve a definition (``--llb FILE``) on a daemon or with the embedded engine.

With a daemon (``--addr``, or one answering at the default socket) the build runs there and its
progress comes from the Status stream; otherwise it runs in this process on the default root and
database, exactly as the daemon runs it: the same solver, workers and events. Either way the
progress printers read the same updates, made from the build's events.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from buildsvc.api.model import SolveOptions
from buildsvc.api.peercred import local_actor
from buildsvc.attrs import parse_kv
from buildsvc.cli import startup
from buildsvc.cli.common import open_from, root_from
from buildsvc.cli.local_contexts import send_local_dirs
from buildsvc.cli.progress import PROGRESS_CHOICES, ProgressPrinter, make_printer, printing_progress
from buildsvc.cli.remote import connect_from
from buildsvc.errors import Conflict, InvalidInput

if TYPE_CHECKING:
    from buildsvc.api.client import Client
    from buildsvc.daemon.cache_specs import CacheOptions
    from buildsvc.daemon.engine import Engine
    from buildsvc.daemon.rerun import Rerun
    from buildsvc.daemon.state import State
    from buildsvc.events.codec import Event
    from buildsvc.solver.definition import Definition
    from buildsvc.solver.engine import ResultRef, SolveResult

# What only the embedded engine needs (the engine, the solver, exporters, the frontend) is imported
# where it runs: a build through a daemon would otherwise pay for importing it all on every call.
# So are the definition model (for --llb), outputs (for -o) and re-attaching (for --ref): a no-op
# rebuild through a daemon, whose whole cost is this process, imports none of them.

__all__ = ["COMMANDS", "run_build", "run_remote_build"]


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
    if not specs:
        return []
    from buildsvc.daemon.exporter_specs import check_exporter

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
    local_contexts: Mapping[str, str] | None = None,
    received: Sequence[Event] = (),
    cache: CacheOptions | None = None,
    rerun: Rerun | None = None,
) -> SolveResult:
    """Solve ``definition``, print progress from its events, and export its result (``rerun``: as
    a rerun of a recorded build, see ``buildsvc.daemon.rerun``).
    """
    from buildsvc.solver.engine import SolveRequest

    # Everything the build needs is loaded and the engine is up: freeze what the start made and
    # collect as usual while it builds (see buildsvc.cli.startup).
    startup.done()
    ref = build_ref or uuid.uuid4().hex[:25]
    actor = local_actor()

    def export(result: ResultRef | None) -> Mapping[str, str]:
        # Loaded here, not with the engine: a build with no outputs and no cache options (a no-op
        # rebuild among them) never needs them (~20 ms of an embedded start).
        from buildsvc.daemon.cache_exports import export_caches, inline_cache_for
        from buildsvc.daemon.exporters import run_exporters

        exports = cache.exports if cache is not None else ()
        inline = inline_cache_for(result, definition, exports)
        response = dict(
            run_exporters(
                engine, result, ref, outputs, image_config=image_config, inline_cache=inline, actor=actor
            )
        )
        response.update(
            export_caches(engine, result, ref, definition, exports, exporter_response=response, actor=actor)
        )
        return response

    request = SolveRequest(
        definition=definition,
        build_ref=ref,
        local_dirs=local_dirs,
        actor=actor,
        frontend=frontend,
        frontend_attrs=dict(frontend_attrs or {}),
        local_contexts=dict(local_contexts or {}),
        received=(*received, *(rerun.events if rerun is not None else ())),
        rerun_of=rerun.rerun_of if rerun is not None else "",
        reuse=rerun.reuse if rerun is not None else {},
        # Recorded as a daemon records them, so `--rerun` (and a daemon resuming this build on the
        # same root) has the same outputs and cache options; paths absolute, the cwd is not recorded.
        exporters=tuple(_absolute(o, "dest") for o in outputs),
        cache_exports=tuple(_absolute(c.attrs, "dest", "store") for c in (cache.exports if cache else ())),
        cache_imports=tuple(_absolute(c.attrs, "src", "store") for c in (cache.imports if cache else ())),
        image_config=image_config,
    )
    with printing_progress(state.store, progress, lambda stream: stream == f"build-{ref}"):
        if cache is not None:
            from buildsvc.daemon.cache_exports import import_caches, watch_cache_exports

            if cache.exports:  # their layers are made as the steps commit
                watch_cache_exports(engine)
            import_caches(engine, ref, cache.imports, actor=actor)
        # Nothing to export: no export step (and no commit of its own before it).
        return engine.solver.solve(
            request, export=export if request.exporters or request.cache_exports else None
        )


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
    local_contexts: Mapping[str, str] | None = None,
    cache_exports: Sequence[Mapping[str, str]] = (),
    cache_imports: Sequence[Mapping[str, str]] = (),
    rerun_of: str = "",
    from_failure: bool = False,
) -> tuple[str, Mapping[str, str]]:
    """Solve ``definition`` on a daemon, printing progress from its Status stream.

    Returns the build ref and the exporters' response. ``local_contexts`` names dirs already sent
    (see :mod:`buildsvc.cli.local_contexts`); ``local_dirs`` are paths on the daemon host, made
    absolute here because the daemon's working directory is not ours. Outputs are written here from
    what the daemon staged (:mod:`buildsvc.api.output_client`), unless ``daemon-host=true``.
    """
    from buildsvc.api.errors import DaemonUnavailable

    ref = build_ref or uuid.uuid4().hex[:25]
    printer = make_printer(progress)
    # A quiet build shows none of its progress, so it does not ask for it: the daemon then reads
    # and sends no status, and this process takes in no stream while the build runs.
    watch = _StatusWatch(client, ref, printer) if printer is not None else None
    options = SolveOptions(
        build_ref=ref,
        definition_json=definition.to_json(indent=None).encode() if definition is not None else b"",
        frontend=frontend,
        frontend_attrs=dict(frontend_attrs or {}),
        exporters=tuple(_for_daemon(outputs)),  # written here from what the daemon stages
        local_dirs={name: path.resolve() for name, path in local_dirs.items()},
        actor=local_actor(),
        local_contexts=dict(local_contexts or {}),
        cache_exports=tuple(_absolute(c, "dest", "store") for c in cache_exports),
        cache_imports=tuple(_absolute(c, "src", "store") for c in cache_imports),
        rerun_of=rerun_of,
        from_failure=from_failure,
    )
    try:
        response = client.solve(options)
    except DaemonUnavailable as e:
        from buildsvc.cli.attach import connection_lost

        raise connection_lost(e, ref) from e
    finally:
        if watch is not None:
            watch.finish()
    if options.exporters:
        from buildsvc.api.output_client import fetch_outputs

        fetch_outputs(client.channel, ref, options.exporters, addr=client.addr)
    return ref, response


class _StatusWatch:
    """A build's Status stream, fed to ``printer`` from a thread while the Solve runs."""

    def __init__(self, client: Client, ref: str, printer: ProgressPrinter) -> None:
        # Asked for before the Solve: the daemon waits for the build to appear, then sends it all.
        self.stream = client.status(ref)
        self.printer = printer
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._show, name="status", daemon=True)
        self.thread.start()

    def _show(self) -> None:
        for update in self.stream:
            self.first.set()
            self.printer.feed(update)

    def finish(self) -> None:
        """The Solve returned: print the rest and close the printer."""
        # A build that was recorded ends its stream with its last event: wait for every line. One
        # refused before it began (a bad definition) has no stream to end: stop waiting for it.
        if self.first.wait(0.5):
            self.thread.join(30)
        self.stream.cancel()
        self.thread.join(5)
        self.printer.close()


def _for_daemon(outputs: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if not outputs:
        return []
    from buildsvc.api.output_client import for_daemon

    return for_daemon(outputs)


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
    metavar="type=local|tar|oci,dest=PATH|-[,name=REF][,daemon-host=true] | type=image,name=REF,push=true",
    help="Where the result goes (repeatable).",
)
@click.option(
    "--metadata-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the build ref and the exporters' response here as JSON.",
)
@click.option(
    "--progress",
    type=click.Choice(PROGRESS_CHOICES),
    default="auto",
    show_default=True,
    help="tty: a live view; plain: #N lines; rawjson: one JSON event a line; auto: tty on a terminal.",
)
@click.option(
    "--export-cache",
    "export_cache",
    multiple=True,
    metavar="type=local,dest=DIR | type=registry,ref=REF [,mode=min|max,...]",
    help="Export the build cache (repeatable); a bare REF is the deprecated registry form.",
)
@click.option(
    "--export-cache-opt", "export_cache_opts", multiple=True, metavar="KEY=VALUE", help="Deprecated."
)
@click.option(
    "--import-cache",
    "import_cache",
    multiple=True,
    metavar="type=local,src=DIR | type=registry,ref=REF",
    help="Import a build cache before building (repeatable); a bare REF is the deprecated form.",
)
@click.option("--ref", "build_ref", help="The build ref to use (default: a new one).")
@click.option("--worker", "workers", multiple=True, help="Enable only these workers (default: all found).")
@click.option(
    "--client-side",
    is_flag=True,
    help="Run the Dockerfile frontend in this process over the gateway (a daemon's LLBBridge, or the "
    "embedded engine's).",
)
@click.option(
    "--rerun",
    "rerun_of",
    metavar="REF",
    help="Run the recorded build REF again: its definition, options and local dirs from the log.",
)
@click.option(
    "--from-failure", is_flag=True, help="With --rerun: start at REF's failed step, reusing what came before."
)
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
    client_side: bool,
    export_cache: tuple[str, ...],
    export_cache_opts: tuple[str, ...],
    import_cache: tuple[str, ...],
    rerun_of: str | None,
    from_failure: bool,
) -> None:
    """Build a definition (--llb) or a Dockerfile (CONTEXT, or --frontend dockerfile.v0 with
    --local context=DIR --local dockerfile=DIR) on a daemon or with the embedded engine.

    Exits 1 when the build fails, 2 on bad input.
    """
    local_dirs = _locals(locals_)
    frontend_attrs = dict(_opt(o) for o in opts)
    if rerun_of or from_failure:
        if context or llb_file or frontend or dockerfile or locals_ or opts or client_side or workers:
            raise click.UsageError("--rerun takes the build from the log: give no inputs, only --output")
        if not rerun_of:
            raise click.UsageError("--from-failure goes with --rerun REF")
        client = connect_from(ctx)
        if client is None:
            _embedded_rerun(
                ctx, rerun_of, build_ref, from_failure, _outputs(outputs), progress, metadata_file
            )
            return
        ref, response = run_remote_build(
            client,
            None,
            local_dirs={},
            outputs=_outputs(outputs),
            progress=progress,
            build_ref=build_ref,
            rerun_of=rerun_of,
            from_failure=from_failure,
        )
        _write_metadata(metadata_file, ref, response)
        click.echo(f"build {ref} completed (a rerun of {rerun_of})", err=True)
        return
    if build_ref and not (context or llb_file or frontend or dockerfile or locals_ or outputs or opts):
        # --ref alone: re-attach to a build that runs (or ran) on the daemon, e.g. a resumed one.
        from buildsvc.api.output_client import fetch_outputs, recorded_exporters
        from buildsvc.cli.attach import attach_build

        attached = connect_from(ctx)
        if attached is None:
            raise click.UsageError("--ref alone re-attaches to a daemon's build: no daemon answers")
        response = attach_build(attached, build_ref, progress)
        # Its outputs for the client, staged again if the build was resumed, go where it asked.
        exporters = recorded_exporters(attached, build_ref)
        skipped: list[str] = []  # fetched already by its own client, or never staged
        fetch_outputs(attached.channel, build_ref, exporters, addr=attached.addr, skipped=skipped)
        for note in skipped:
            click.echo(f"note: {note}", err=True)
        _write_metadata(metadata_file, build_ref, response)
        click.echo(f"build {build_ref} completed", err=True)
        return
    if llb_file is not None:
        if context is not None or frontend:
            raise click.UsageError("--llb takes a definition: give no CONTEXT or --frontend with it")
        from buildsvc.solver.definition import Definition

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
    if client_side and definition is not None:
        raise click.UsageError("--client-side runs the Dockerfile frontend: give CONTEXT or -f, not --llb")
    parsed_outputs = _outputs(outputs)
    if progress == "rawjson" and any(o.get("dest") == "-" for o in parsed_outputs):
        raise InvalidInput("--progress rawjson prints to stdout: no output can go to stdout (dest=-) with it")
    cache_exports, cache_imports, cache = _cache_options(
        export_cache, export_cache_opts, import_cache, frontend_attrs, parsed_outputs
    )
    # The daemon's first answer (the connection coming up) overlaps the scan of the contexts.
    client = connect_from(ctx, ready_later=True)
    if client is not None:
        if workers:
            raise click.UsageError("--worker chooses the embedded engine's workers; a daemon has its own")

        def send() -> dict[str, str]:
            sent = send_local_dirs(
                client, local_dirs, frontend=frontend or "", frontend_attrs=frontend_attrs, progress=progress
            )
            return {name: t.manifest_digest for name, t in sent.items()}

        local_contexts = send()
        if client_side:
            from buildsvc.api.output_client import fetch_outputs, for_daemon
            from buildsvc.cli.client_side import run_client_side_build

            sent_outputs = for_daemon(parsed_outputs)
            ref, response = run_client_side_build(
                client,
                local_dirs=local_dirs,
                local_contexts=local_contexts,
                outputs=sent_outputs,
                progress=progress,
                build_ref=build_ref,
                frontend=frontend or "",
                frontend_attrs=frontend_attrs,
                actor=local_actor(),
                cache_exports=[_absolute(c, "dest", "store") for c in cache_exports],
                cache_imports=[_absolute(c, "src", "store") for c in cache_imports],
            )
            fetch_outputs(client.channel, ref, sent_outputs, addr=client.addr)
            _write_metadata(metadata_file, ref, response)
            click.echo(f"build {ref} completed", err=True)
            return

        def solve(contexts: Mapping[str, str]) -> tuple[str, Mapping[str, str]]:
            return run_remote_build(
                client,
                definition,
                local_dirs={},
                local_contexts=contexts,
                outputs=parsed_outputs,
                progress=progress,
                build_ref=build_ref,
                frontend=frontend,
                frontend_attrs=frontend_attrs,
                cache_exports=cache_exports,
                cache_imports=cache_imports,
            )

        try:
            ref, response = solve(local_contexts)
        except Conflict as e:
            from buildsvc.contexts import MissingBlobs

            if not isinstance(e, MissingBlobs) or e.manifest_digest not in local_contexts.values():
                raise
            # A prune removed a file the daemon held when we sent the dir, before the Solve came (which
            # then recorded nothing): send the dirs again, once.
            ref, response = solve(send())
        _write_metadata(metadata_file, ref, response)
        click.echo(f"build {ref} completed", err=True)
        return
    if any(o.get("dest") == "-" for o in parsed_outputs):
        raise InvalidInput("--output dest=- (stdout) needs a daemon; the embedded engine writes files")
    from buildsvc.cli.local_contexts import embedded_contexts
    from buildsvc.daemon.engine import detect_workers_soon, open_engine
    from buildsvc.daemon.frontend import run_frontend

    found = detect_workers_soon(root_from(ctx))  # while the state and the contexts open
    state = open_from(ctx)
    build_ref = build_ref or uuid.uuid4().hex[:25]
    contexts = embedded_contexts(
        state.root,
        build_ref,
        local_dirs,
        frontend=frontend or "",
        frontend_attrs=frontend_attrs,
        progress=progress,
    )
    local_dirs = contexts.dirs
    with open_engine(state, worker_names=list(workers) or None, found=found) as engine:
        if client_side:  # the frontend runs here, over the embedded engine's gateway
            from buildsvc.cli.client_side import run_embedded_client_side_build

            startup.done()  # set up: see run_build

            ref, response = run_embedded_client_side_build(
                engine,
                contexts=contexts,
                outputs=parsed_outputs,
                progress=progress,
                build_ref=build_ref,
                frontend=frontend or "",
                frontend_attrs=frontend_attrs,
                actor=local_actor(),
                cache=cache,
            )
            _write_metadata(metadata_file, ref, response)
            click.echo(f"build {ref} completed", err=True)
            return
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
            local_contexts=contexts.digests,
            received=contexts.events,
            cache=cache,
        )
    _write_metadata(metadata_file, result.build_ref, result.exporter_response)
    click.echo(f"build {result.build_ref} completed", err=True)


def _cache_options(
    export_cache: Sequence[str],
    export_cache_opts: Sequence[str],
    import_cache: Sequence[str],
    frontend_attrs: Mapping[str, str],
    outputs: Sequence[Mapping[str, str]],
) -> tuple[list[dict[str, str]], list[dict[str, str]], CacheOptions | None]:
    """The cache exports and imports asked for, checked (None: the build names no cache at all)."""
    if not (
        export_cache
        or export_cache_opts
        or import_cache
        or any(k.startswith("cache") for k in frontend_attrs)
    ):
        # Most builds: the cache specs' modules are not loaded (a no-op rebuild's cost is imports).
        return [], [], None
    from buildsvc.cache.options import legacy_export, legacy_import
    from buildsvc.daemon.cache_specs import check_cache_options

    exports, export_warnings = legacy_export(export_cache, export_cache_opts)
    imports, import_warnings = legacy_import(import_cache)
    for warning in (*export_warnings, *import_warnings):
        click.echo(f"warning: {warning}", err=True)
    return exports, imports, check_cache_options(exports, imports, frontend_attrs, outputs=outputs)


def _embedded_rerun(
    ctx: click.Context,
    rerun_of: str,
    build_ref: str | None,
    from_failure: bool,
    outputs: Sequence[Mapping[str, str]],
    progress: str,
    metadata_file: Path | None,
) -> None:
    from buildsvc.cli.rerun_embedded import run_embedded_rerun
    from buildsvc.daemon.engine import open_engine

    state = open_from(ctx)
    ref = build_ref or uuid.uuid4().hex[:25]
    with open_engine(state) as engine:
        result = run_embedded_rerun(
            state,
            engine,
            rerun_of,
            build_ref=ref,
            from_failure=from_failure,
            outputs=outputs,
            progress=progress,
        )
    _write_metadata(metadata_file, result.build_ref, result.exporter_response)
    click.echo(f"build {result.build_ref} completed (a rerun of {rerun_of})", err=True)


def _absolute(attrs: Mapping[str, str], *keys: str) -> dict[str, str]:
    """``attrs`` with its local paths made absolute: the daemon's working directory is not ours."""
    return {k: os.path.abspath(v) if k in keys and v else v for k, v in attrs.items()}


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
