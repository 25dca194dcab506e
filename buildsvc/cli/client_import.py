"""Import the daemon client for a command without running imports it never uses.

grpc's package imports ``grpc.aio`` and its core (``cygrpc``) imports ``asyncio`` as they load, and
protobuf's descriptor pool imports its pure-Python message implementation (with ``text_format``,
``pickle``...) even where the compiled one (upb) is what runs. A client command uses none of them
(every channel here is grpc's synchronous API), and they were ~45 ms of its start: a third of a
no-op build through a daemon, measured beside BuildKit's (benchmarks/README.md, "A Dockerfile beside
Docker's BuildKit"). So :func:`import_client` imports :mod:`buildsvc.api.client` with those modules
made lazy by the standard library's :class:`importlib.util.LazyLoader`: they are in ``sys.modules``
but not run, and run in full the first time anything reads an attribute of one, so a later use
still works, only without the saving.

Only client commands do this, before anything imports grpc: the daemon is long-lived, so the saving
means nothing there, and a lazy module's first use is not thread-safe before Python 3.12.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["DEFERRED", "import_client"]

DEFERRED = frozenset({"asyncio", "grpc.aio", "google.protobuf.internal.python_message"})
"""The modules grpc and protobuf load at import and a synchronous client on upb never uses."""


class _DeferredFinder:
    """Finds the :data:`DEFERRED` modules where the import system would, with a lazy loader."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in DEFERRED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def import_client() -> None:
    """Import :mod:`buildsvc.api.client`, deferring :data:`DEFERRED` if grpc is not loaded yet."""
    if "grpc" in sys.modules:
        importlib.import_module("buildsvc.api.client")
        return
    sys.meta_path.insert(0, _DeferredFinder)
    try:
        importlib.import_module("buildsvc.api.client")
    finally:
        sys.meta_path.remove(_DeferredFinder)
