"""``buildsvc build --client-side``: the Dockerfile frontend runs in this process, over the gateway.

The Dockerfile is read and lowered here; base images are resolved by the daemon through LLBBridge's
ResolveImageConfig (its registry client and settings, so the digest pinned here is the one its
solver pulls), and the definition is solved there. Progress shows the job's stream and, as each
solve the frontend asks for starts, that solve's stream too.

With no daemon the same frontend runs against the embedded engine's gateway, in this process
(:mod:`buildsvc.api.gateway_local`): the same job, solves, events and released refs.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from buildsvc.api.client import Client, StatusStream
from buildsvc.api.gateway_client import dockerfile_frontend
from buildsvc.api.gateway_local import run_local_build
from buildsvc.cli.progress import ProgressPrinter, make_printer, printing_progress
from buildsvc.contexts import ReceivedContexts
from buildsvc.daemon.cache_exports import CacheOptions
from buildsvc.daemon.engine import Engine
from buildsvc.errors import InvalidInput
from buildsvc.frontends.dockerfile.source import read_dockerfile

__all__ = ["run_client_side_build", "run_embedded_client_side_build"]


class _Follower:
    """Prints a job's updates and those of every solve it asks for, from their Status streams."""

    def __init__(self, client: Client, printer: ProgressPrinter | None) -> None:
        self.client = client
        self.printer = printer
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.streams: list[StatusStream] = []
        self.first = threading.Event()

    def follow(self, ref: str) -> None:
        stream = self.client.status(ref)
        thread = threading.Thread(target=self._show, args=(stream,), name=f"status-{ref}", daemon=True)
        with self.lock:
            self.streams.append(stream)
            self.threads.append(thread)
        thread.start()

    def _show(self, stream: StatusStream) -> None:
        try:
            for update in stream:
                self.first.set()
                with self.lock:
                    if self.printer is not None:
                        self.printer.feed(update)
                if update.type == "GatewaySolveRequested":
                    self.follow(str(update.payload["solve_ref"]))
        except Exception:  # progress is best effort; the build's own outcome is what is reported
            return

    def stop(self, wait: float) -> None:
        # A job refused before it began (bad options) has no stream to end: stop waiting for it.
        if not self.first.wait(0.5):
            wait = 0
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(wait)
        with self.lock:
            for stream in self.streams:
                stream.cancel()
        if self.printer is not None:
            self.printer.close()


def run_client_side_build(
    client: Client,
    *,
    local_dirs: Mapping[str, Path],
    local_contexts: Mapping[str, str],
    outputs: Sequence[Mapping[str, str]],
    progress: str,
    build_ref: str | None,
    frontend: str,
    frontend_attrs: Mapping[str, str],
    actor: str,
    cache_exports: Sequence[Mapping[str, str]] = (),
    cache_imports: Sequence[Mapping[str, str]] = (),
) -> tuple[str, Mapping[str, str]]:
    """Run ``dockerfile.v0`` here against the daemon's gateway; the build ref and exporters' response."""
    text = _dockerfile(frontend, frontend_attrs, local_dirs)
    ref = build_ref or uuid.uuid4().hex[:25]
    follower = _Follower(client, make_printer(progress))
    follower.follow(ref)
    try:
        outcome = client.build(
            dockerfile_frontend(text, frontend_attrs),
            build_ref=ref,
            outputs=[
                {**out, "dest": os.path.abspath(out["dest"])} if out.get("dest") else dict(out)
                for out in outputs
            ],
            local_contexts=local_contexts,
            frontend_attrs=frontend_attrs,
            actor=actor,
            cache_exports=cache_exports,
            cache_imports=cache_imports,
        )
    finally:
        follower.stop(30)
    return outcome.build_ref, outcome.exporter_response


def run_embedded_client_side_build(
    engine: Engine,
    *,
    contexts: ReceivedContexts,
    outputs: Sequence[Mapping[str, str]],
    progress: str,
    build_ref: str,
    frontend: str,
    frontend_attrs: Mapping[str, str],
    actor: str,
    cache: CacheOptions | None = None,
) -> tuple[str, Mapping[str, str]]:
    """Run ``dockerfile.v0`` here against the embedded engine's gateway (no daemon)."""
    text = _dockerfile(frontend, frontend_attrs, contexts.dirs)
    job_stream = f"build-{build_ref}"

    def shows(stream: str) -> bool:
        # The job's stream and its solves' (build-<job>-<n>), as the daemon's Status would send them.
        return stream == job_stream or stream.startswith(f"{job_stream}-")

    with printing_progress(engine.state.store, progress, shows):
        outcome = run_local_build(
            engine,
            dockerfile_frontend(text, frontend_attrs),
            build_ref=build_ref,
            outputs=outputs,
            contexts=contexts,
            frontend_attrs=frontend_attrs,
            actor=actor,
            cache=cache,
        )
    return outcome.build_ref, outcome.exporter_response


def _dockerfile(frontend: str, frontend_attrs: Mapping[str, str], local_dirs: Mapping[str, Path]) -> str:
    if frontend != "dockerfile.v0":
        raise InvalidInput(f"--client-side runs the dockerfile.v0 frontend, not {frontend!r}")
    if "dockerfile" not in local_dirs:
        raise InvalidInput("--client-side needs the Dockerfile's dir (CONTEXT, -f or --local dockerfile=DIR)")
    return read_dockerfile(local_dirs["dockerfile"], frontend_attrs.get("filename", "Dockerfile"))
