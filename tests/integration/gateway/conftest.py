"""The api suite's real daemon fixtures; ``daemons`` runs ``check_all_releasable`` after every test."""

from __future__ import annotations

from tests.integration.api.conftest import daemon, daemons, rootfs

__all__ = ["daemon", "daemons", "rootfs"]
