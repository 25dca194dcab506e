"""A small typed client of the Control service (what the command line uses to talk to a daemon).

Every call returns the API's model objects and raises the same buildsvc errors the daemon raised
(see :mod:`buildsvc.api.errors`), so callers never see gRPC or protobuf types.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from buildsvc.api import convert
from buildsvc.api.address import TlsFiles, parse_address
from buildsvc.api.content_client import sync_dir
from buildsvc.api.errors import DaemonUnavailable, error_from_rpc
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.gen import control_pb2_grpc as pb_grpc
from buildsvc.api.model import SolveOptions
from buildsvc.contexts import ContextTransfer, Scan
from buildsvc.errors import InvalidInput

if TYPE_CHECKING:
    # The client-side frontend (the Dockerfile parser, image config...) loads when a build uses it.
    from buildsvc.api.gateway_client import BuildOutcome, Gateway
    from buildsvc.api.model import StatusUpdate
    from buildsvc.api.records import DaemonInfo, HistoryEvent, WorkerRecord
    from buildsvc.daemon.usage import ContextsPruned, DiskUsage, PruneSkipped, UsageRecord
    from buildsvc.events.envelope import StoredEvent

__all__ = ["Client", "StatusStream", "connect"]


class StatusStream:
    """A build's status updates; :meth:`cancel` stops it from another thread."""

    def __init__(self, call: Any, addr: str) -> None:
        self._call = call
        self._addr = addr
        self._cancelled = False

    def cancel(self) -> None:
        """Stop the stream (the iteration ends quietly)."""
        self._cancelled = True
        self._call.cancel()

    def __iter__(self) -> Iterator[StatusUpdate]:
        try:
            for response in self._call:
                for update in response.updates:
                    yield convert.status_from_pb(update)
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise error_from_rpc(e, addr=self._addr) from None


class Client:
    """A connection to a daemon at ``addr`` (``unix:///path`` or ``tcp://host:port``)."""

    def __init__(self, addr: str, *, tls: TlsFiles | None = None, server_name: str | None = None) -> None:
        address = parse_address(addr)
        self.addr = addr
        if tls is not None:
            ca, cert, key = tls.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            # The name the daemon's certificate must carry, when it differs from the address's host.
            options = (("grpc.ssl_target_name_override", server_name),) if server_name else ()
            self._channel = grpc.secure_channel(address.target, credentials, options=options)
        elif address.scheme == "tcp" and not address.loopback:
            raise InvalidInput(f"{addr}: a remote daemon needs TLS (--tlscacert, --tlscert, --tlskey)")
        else:
            self._channel = grpc.insecure_channel(address.target)
        self._control = pb_grpc.ControlStub(self._channel)  # type: ignore[no-untyped-call]  # generated
        self._probe: threading.Thread | None = None
        self._probe_lock = threading.Lock()
        self._answered = False

    @property
    def _stub(self) -> Any:
        self._wait_ready()
        return self._control

    @property
    def channel(self) -> grpc.Channel:
        """The connection, for the other services on the same socket (LLBBridge)."""
        self._wait_ready()
        return self._channel

    def ready_later(self, timeout: float) -> None:
        """Ask whether the daemon answers (as :meth:`ready`) in the background: the caller gets on
        with its own work (a build scans its contexts) while the connection comes up, and the first
        call waits for the answer, raising ``DaemonUnavailable`` if there was none.
        """

        def probe() -> None:
            self._answered = self.ready(timeout)

        with self._probe_lock:
            self._probe = threading.Thread(target=probe, name="daemon-ready", daemon=True)
            self._probe.start()

    def _wait_ready(self) -> None:
        with self._probe_lock:
            probe, self._probe = self._probe, None
            if probe is None:
                return
            probe.join()
            if not self._answered:
                raise DaemonUnavailable(f"no daemon answers at {self.addr}")

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self, timeout: float) -> bool:
        """Whether the daemon answers within ``timeout`` seconds."""
        # A call that waits for the connection, not grpc.channel_ready_future: that one leaves a
        # thread polling the channel's state every 0.2 s, and closing the channel waits for it
        # (0.1-0.2 s at the end of every command).
        try:
            self._control.Info(pb.InfoRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            # Any answer but "unreachable" or "no answer in time" is the daemon answering.
            return code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return True

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            raise error_from_rpc(e, addr=self.addr) from None

    def solve(self, options: SolveOptions) -> dict[str, str]:
        """Run a build to its end; returns the exporters' response (raises SolveError and the like)."""
        response: pb.SolveResponse = self._call("Solve", convert.solve_to_pb(options))
        return dict(response.exporter_response)

    def build(self, fn: Callable[[Gateway], object], **options: Any) -> BuildOutcome:
        """Run a client-side frontend: ``fn(gateway)`` here, its solves on the daemon.

        The options are :func:`buildsvc.api.gateway_client.run_client_build`'s.
        """
        from buildsvc.api.gateway_client import run_client_build

        return run_client_build(self, fn, **options)

    def sync_dir(self, scan: Scan) -> ContextTransfer:
        """Send a scanned dir to the daemon's context store (only the files it lacks); the result's
        ``manifest_digest`` is what ``SolveOptions.local_contexts`` names it by.
        """
        return sync_dir(self.channel, scan, addr=self.addr)

    def status(self, build_ref: str, *, after_position: int = 0) -> StatusStream:
        """The build's updates from its start (or after ``after_position``) until it ends."""
        call = self._stub.Status(pb.StatusRequest(ref=build_ref, after_position=after_position))
        return StatusStream(call, self.addr)

    def cancel(self, build_ref: str) -> None:
        """Cancel a running build (NotFound when it is not running there)."""
        self._call("Cancel", pb.CancelRequest(ref=build_ref), timeout=30)

    def list_workers(self) -> list[WorkerRecord]:
        """The daemon's workers."""
        response: pb.ListWorkersResponse = self._call("ListWorkers", pb.ListWorkersRequest(), timeout=30)
        return [convert.worker_from_pb(w) for w in response.workers]

    def info(self) -> DaemonInfo:
        """The daemon's version, id, root and database."""
        response: pb.InfoResponse = self._call("Info", pb.InfoRequest(), timeout=30)
        return convert.info_from_pb(response)

    def disk_usage(self) -> list[UsageRecord]:
        """The snapshots on the daemon's disk."""
        return list(self.disk_usage_report().snapshots)

    def disk_usage_report(self) -> DiskUsage:
        """The snapshots on the daemon's disk, and its context store."""
        response: pb.DiskUsageResponse = self._call("DiskUsage", pb.DiskUsageRequest(), timeout=60)
        return convert.disk_usage_from_pb(response)

    def prune(
        self,
        *,
        all: bool = False,
        keep_duration: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> Iterator[UsageRecord | PruneSkipped]:
        """Prune the daemon's cache: each snapshot removed (its usage record) or skipped, in order
        (:meth:`prune_results` says what went from the context store too).
        """
        from buildsvc.daemon.usage import ContextsPruned

        for result in self.prune_results(all=all, keep_duration=keep_duration, filters=filters):
            if not isinstance(result, ContextsPruned):
                yield result

    def prune_results(
        self,
        *,
        all: bool = False,
        keep_duration: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> Iterator[UsageRecord | PruneSkipped | ContextsPruned]:
        """Prune the daemon's cache and context store: each snapshot removed (its usage record) or
        skipped, in order, then what went from the context store (when anything did).
        """
        request = pb.PruneRequest(
            all=all, keep_duration_seconds=keep_duration or 0, filters=dict(filters or {})
        )
        call = self._stub.Prune(request)
        try:
            for response in call:
                yield convert.prune_result_from_pb(response)
        except grpc.RpcError as e:
            raise error_from_rpc(e, addr=self.addr) from None
        finally:
            call.cancel()

    def update_build_history(self, build_ref: str, *, pinned: bool = True, delete: bool = False) -> None:
        """Pin or unpin (``pinned``), or ``delete``, a build's history entry."""
        request = pb.UpdateBuildHistoryRequest(ref=build_ref, pinned=pinned, delete=delete)
        self._call("UpdateBuildHistory", request, timeout=30)

    def build_history(
        self, *, build_ref: str = "", active_only: bool = False, follow: bool = False
    ) -> Iterator[HistoryEvent]:
        """The builds in the history; with ``follow``, then each build that starts or ends."""
        request = pb.BuildHistoryRequest(ref=build_ref, active_only=active_only, early_exit=not follow)
        call = self._stub.ListenBuildHistory(request)
        try:
            for event in call:
                yield convert.history_event_from_pb(event)
        except grpc.RpcError as e:
            raise error_from_rpc(e, addr=self.addr) from None
        finally:
            call.cancel()

    def build_events(
        self, *, build_ref: str = "", stream_id: str = "", after_position: int = 0, until_position: int = 0
    ) -> Iterator[StoredEvent]:
        """The log's events as stored: ``build-<build_ref>``'s, or ``stream_id``'s, or (neither) the
        whole log; after ``after_position``, up to ``until_position`` (0: the end as it is now).
        """
        request = pb.BuildEventsRequest(
            ref=build_ref,
            stream_id=stream_id,
            after_position=after_position,
            until_position=until_position,
        )
        call = self._stub.BuildEvents(request)
        try:
            for response in call:
                for message in response.events:
                    yield convert.stored_event_from_pb(message)
        except grpc.RpcError as e:
            raise error_from_rpc(e, addr=self.addr) from None
        finally:
            call.cancel()

    def list_builds(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The builds projection's rows, newest first (times as text, as ``--format json`` has them)."""
        response: pb.ListBuildsResponse = self._call(
            "ListBuilds", pb.ListBuildsRequest(limit=limit), timeout=60
        )
        rows: list[dict[str, Any]] = json.loads(response.rows_json)
        return rows

    def leaks(self, *, build_ref: str = "") -> dict[str, Any]:
        """The daemon's leak report as JSON (see ``buildsvc.daemon.leaks.report_to_json``)."""
        response: pb.LeaksResponse = self._call("Leaks", pb.LeaksRequest(ref=build_ref), timeout=300)
        found: dict[str, Any] = json.loads(response.report_json)
        return found


def connect(
    addr: str,
    *,
    tls: TlsFiles | None = None,
    server_name: str | None = None,
    timeout: float = 5.0,
    later: bool = False,
) -> Client:
    """A client whose daemon answered within ``timeout`` (else DaemonUnavailable).

    With ``later``, the question is asked in the background and the first call waits for the
    answer (see :meth:`Client.ready_later`): the same error, raised by that call.
    """
    client = Client(addr, tls=tls, server_name=server_name)
    if later:
        client.ready_later(timeout)
        return client
    if not client.ready(timeout):
        client.close()
        raise DaemonUnavailable(f"no daemon answers at {addr}")
    return client
