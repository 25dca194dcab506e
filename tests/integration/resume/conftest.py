"""Fixtures for the resume tests: the API tests' daemons and busybox rootfs (see ../api/conftest.py)."""

from __future__ import annotations

from tests.integration.api.conftest import daemons, rootfs

__all__ = ["daemons", "rootfs"]
