"""``buildsvc build --rerun REF [--from-failure]`` with the embedded engine (no daemon answers).

The same plan as a daemon's (``buildsvc.daemon.rerun``): the definition, options and local dirs
from the log, the dirs made again from the content-addressed context store under the root, what
completed before the failure reused with ``--from-failure``. Recorded outputs a daemon staged
for its client have no client here: they are left out (with a note); ``--output`` gives new ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import click

from buildsvc.cli.build_cmd import run_build
from buildsvc.contexts import ContextStore, receive_contexts
from buildsvc.daemon.cache_specs import check_cache_options
from buildsvc.daemon.engine import Engine
from buildsvc.daemon.outputs import is_client_output
from buildsvc.daemon.rerun import plan_rerun
from buildsvc.daemon.state import State
from buildsvc.solver.definition import Definition
from buildsvc.solver.engine import SolveResult

__all__ = ["run_embedded_rerun"]


def run_embedded_rerun(
    state: State,
    engine: Engine,
    rerun_of: str,
    *,
    build_ref: str,
    from_failure: bool,
    outputs: Sequence[Mapping[str, str]],
    progress: str,
) -> SolveResult:
    """Run build ``rerun_of`` again in this process, as ``build_ref``."""
    rerun = plan_rerun(
        state.store, rerun_of, from_failure=from_failure, contexts=ContextStore.under(state.root)
    )
    exporters = list(outputs)
    if not exporters:
        for recorded in rerun.exporters:
            if is_client_output(recorded):
                click.echo(
                    f"note: the recorded {recorded.get('type')} output went to the client of build "
                    f"{rerun_of}; give --output to have it here",
                    err=True,
                )
            else:
                exporters.append(dict(recorded))
    cache = check_cache_options(
        rerun.cache_exports, rerun.cache_imports, rerun.frontend_attrs, outputs=exporters
    )
    received = receive_contexts(ContextStore.under(state.root), build_ref, sent=rerun.local_contexts)
    return run_build(
        state,
        engine,
        Definition.from_json(rerun.definition_json),
        local_dirs=received.dirs,
        outputs=exporters,
        progress=progress,
        build_ref=build_ref,
        frontend=rerun.frontend,
        frontend_attrs=rerun.frontend_attrs,
        image_config=rerun.image_config,
        local_contexts=received.digests,
        received=received.events,
        cache=cache,
        rerun=rerun,
    )
