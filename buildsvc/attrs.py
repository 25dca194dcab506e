"""buildctl-style attribute lists: ``KEY=VALUE[,KEY=VALUE...]`` (``--output``, ``--export-cache``...)."""

from __future__ import annotations

from buildsvc.errors import InvalidInput

__all__ = ["parse_kv"]


def parse_kv(text: str, what: str) -> dict[str, str]:
    """``a=b,c=d`` as a dict; a malformed pair is an error naming ``what`` (the flag it came from)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"{what}: expected KEY=VALUE[,KEY=VALUE...], got {text!r}")
        out[key.strip()] = value.strip()
    return out
