"""The client's side of ``Debug`` (see ``debug_session.py``): keystrokes and sizes in, output out."""

from __future__ import annotations

import queue
from collections.abc import Iterator, Sequence

import grpc

from buildsvc.api.client import Client
from buildsvc.api.errors import error_from_rpc
from buildsvc.api.gen import control_pb2 as pb
from buildsvc.api.gen import control_pb2_grpc as pb_grpc

__all__ = ["DebugCall"]


class DebugCall:
    """One interactive debug session on a daemon.

    Iterate it for the terminal's output; when the iteration ends, ``exit_code`` is the process's
    exit status. :meth:`send`, :meth:`resize` and :meth:`close_input` may be called from any thread.
    """

    def __init__(
        self,
        client: Client,
        ref: str,
        command: Sequence[str] = (),
        *,
        debug_ref: str = "",
        rows: int = 0,
        cols: int = 0,
    ) -> None:
        self._addr = client.addr
        self._requests: queue.Queue[pb.DebugRequest | None] = queue.Queue()
        start = pb.DebugStart(
            ref=ref, debug_ref=debug_ref, command=list(command), size=pb.WindowSize(rows=rows, cols=cols)
        )
        self._requests.put(pb.DebugRequest(start=start))
        stub = pb_grpc.ControlStub(client.channel)  # type: ignore[no-untyped-call]  # generated
        self._call = stub.Debug(iter(self._requests.get, None))
        self.debug_ref = debug_ref
        """The debug build's ref (the daemon's pick when none was given, once it answered)."""
        self.exit_code: int | None = None

    def send(self, data: bytes) -> None:
        """What the user typed."""
        self._requests.put(pb.DebugRequest(stdin=data))

    def resize(self, rows: int, cols: int) -> None:
        """The terminal's new window size."""
        self._requests.put(pb.DebugRequest(resize=pb.WindowSize(rows=rows, cols=cols)))

    def close_input(self) -> None:
        """No more input (the stream half-closes)."""
        self._requests.put(None)

    def cancel(self) -> None:
        """End the session (the daemon cancels the debug build)."""
        self._call.cancel()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for response in self._call:
                kind = response.WhichOneof("response")
                if kind == "output":
                    yield response.output
                elif kind == "debug_ref":
                    self.debug_ref = response.debug_ref
                elif kind == "exit":
                    self.exit_code = response.exit.exit_code
        except grpc.RpcError as e:
            raise error_from_rpc(e, addr=self._addr) from None
        finally:
            self.close_input()
