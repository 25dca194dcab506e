"""``buildsvc demo``: a real build on the embedded default, then what the log says about it.

It makes a busybox root filesystem (from Debian's busybox-static), builds a small definition on it
with the default worker (runc on overlayfs), rebuilds it (every step cached), and shows the build
history, the leak report, the verified hash chains and the projection digests before and after a
rebuild from the log. Nothing but this machine is needed: no server, no registry, no network.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from buildsvc.cli.build_cmd import run_build
from buildsvc.cli.common import console, open_from, print_table
from buildsvc.daemon.engine import open_engine
from buildsvc.events.verify import verify_events
from buildsvc.executors.rootfs import make_busybox_rootfs
from buildsvc.projections import find_leaks
from buildsvc.projections.builds import get_build
from buildsvc.solver import llb
from buildsvc.solver.definition import Definition

__all__ = ["COMMANDS"]


def demo_definition() -> Definition:
    """Three steps on a local busybox root: a command, a file written by the engine, a copy."""
    base = llb.local("rootfs")
    built = base.run(
        ["sh", "-c", "echo compiling...; mkdir -p /app && echo 'hello from buildsvc' > /app/greeting"],
        name="[1/3] RUN build the app",
    ).root()
    configured = built.file(llb.mkfile("/app/config", b"mode=demo\n", 0o644), name="[2/3] write config")
    final = configured.run(["sh", "-c", "cat /app/greeting /app/config"], name="[3/3] RUN check").root()
    return final.marshal()


@click.command("demo")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="Also export the result here.")
@click.pass_context
def demo(ctx: click.Context, keep: Path | None) -> None:
    """Run a real build and its cached rebuild, then read them back from the log."""
    if shutil.which("busybox") is None:
        raise click.UsageError("the demo needs busybox (Debian: busybox-static); ./scripts/demo installs it")
    state = open_from(ctx)
    console.print(f"[bold]state store:[/] {state.db.safe_url}   [bold]root:[/] {state.root}")
    rootfs = state.root / "demo" / "rootfs"
    if not (rootfs / "bin" / "busybox").exists():
        make_busybox_rootfs(str(rootfs))
    definition = demo_definition()
    refs = []
    with open_engine(state) as engine, tempfile.TemporaryDirectory() as scratch:
        console.print(f"[bold]workers:[/] {', '.join(w.info.name for w in engine.workers)}")
        for attempt in ("first build", "rebuild (every step cached)"):
            console.print(f"\n[bold]{attempt}[/]")
            out = keep if keep is not None and attempt == "first build" else Path(scratch) / "out"
            result = run_build(
                state,
                engine,
                definition,
                local_dirs={"rootfs": rootfs},
                outputs=[{"type": "local", "dest": str(out)}],
                progress="plain",
            )
            refs.append(result.build_ref)
            console.print(f"result: {(out / 'app' / 'greeting').read_text().strip()!r} in {out}")
    state.runner.run_once()
    with state.db.read() as conn:
        builds = [get_build(conn, ref) for ref in refs]
        leaks = find_leaks(conn)
    print_table(
        "\nbuild history (from the builds projection)",
        ["REF", "STATUS", "BY", "VERTICES", "RAN", "CACHED"],
        [
            [
                b["build_ref"],
                b["status"],
                b["actor"],
                b["vertices_total"],
                b["vertices_completed"],
                b["vertices_cached"],
            ]
            for b in builds
            if b is not None
        ],
    )
    console.print(f"leaks: {len(leaks.refs)} leaked refs, {len(leaks.snapshots)} unreferenced snapshots")
    report = verify_events(state.store.read_all(batch_size=5000))
    console.print(
        f"verify: {report.events} events in {report.streams} streams, {len(report.problems)} problems"
    )
    same = True
    for name in state.runner.projections:
        before = state.runner.digest(name)
        state.runner.rebuild(name)
        after = state.runner.digest(name)
        same = same and before == after
        label = "same" if before == after else "DIFFERENT"
        console.print(
            f"projection {name}: digest {before[:16]} before a rebuild from the log, "
            f"{after[:16]} after ({label})"
        )
    console.print(
        "\ntry: buildsvc history ls | buildsvc history inspect REF | buildsvc events tail --no-follow"
    )
    if not report.ok or not same or not leaks.empty:
        raise SystemExit(1)


COMMANDS = [demo]
