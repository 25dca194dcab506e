"""Names the gateway's client and server share, apart from :mod:`buildsvc.daemon.gateway` so that a
client imports them without the engine behind the server (about a second of start-up).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IMAGE_CONFIG_KEY", "FileStat"]

IMAGE_CONFIG_KEY = "containerimage.config"
"""Result metadata holding the image config an image exporter writes (as in BuildKit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileStat:
    """A file in a result, as ReadDir and StatFile describe it (``path``: relative to what was asked)."""

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    mod_time_ns: int
    linkname: str = ""
