"""``RUN --mount=...`` and the other small option grammars of instructions (after BuildKit's
``instructions/commands_runmount.go``, ``bflag.go`` and ``convert_expose.go``).
"""

from __future__ import annotations

import csv
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "MountSpec",
    "mount_from",
    "parse_duration",
    "parse_mount",
    "parse_ports",
    "parse_ram",
    "parse_signal",
]

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
_KEYS = (
    "type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro", "readwrite", "rw",
    "id", "sharing", "required", "size", "mode", "uid", "gid", "env",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class MountSpec:
    """One parsed ``--mount`` flag."""

    type: str = "bind"
    from_: str = ""
    source: str = ""
    target: str = ""
    readonly: bool = True
    size: int = 0
    id: str = ""
    sharing: str = ""
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


def _fields(value: str) -> list[str]:
    # BuildKit reads the flag as one CSV record (so "target=/a,b" needs quotes, as in Go).
    try:
        rows = list(csv.reader([value], strict=True))
    except csv.Error as e:
        raise ValueError(f"failed to parse csv mounts: {e}") from None
    return [f for f in (rows[0] if rows else []) if f != ""]


def mount_from(value: str) -> str:
    """The ``from=`` of a mount flag, read before expansion (it may not use variables)."""
    for item in _fields(value):
        key, _, val = item.partition("=")
        if key.lower() == "from":
            if "$" in val[:-1]:
                raise ValueError("'from' doesn't support variable expansion, define alias stage instead")
            return val
    return ""


def _bool(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid value for {key}: {value}")


def _uint(key: str, value: str, base: int) -> int:
    try:
        number = int(value, base)
    except ValueError:
        raise ValueError(f"invalid value {value} for {key}") from None
    if not 0 <= number < 2**32:
        raise ValueError(f"invalid value {value} for {key}")
    return number


def parse_mount(value: str, expand: Callable[[str], str]) -> MountSpec:
    """Parse one ``--mount`` value, expanding each option's value with ``expand``."""
    kind = "bind"
    opts: dict[str, object] = {}
    readonly: bool | None = None
    for item in _fields(value):
        key, has_value, val = item.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro"):
                readonly = True
            elif key in ("readwrite", "rw"):
                readonly = False
            elif key == "required":
                raise ValueError(f"unexpected key '{key}' for mount type '{kind}'")
            else:
                raise ValueError(f"invalid field '{item}' must be a key=value pair")
            continue
        val = expand(val)
        if key == "type":
            kind = val.lower()
            if kind not in MOUNT_TYPES:
                raise ValueError(f"unsupported mount type {val!r} (expected one of {', '.join(MOUNT_TYPES)})")
        elif key == "from":
            opts["from_"] = val
        elif key in ("source", "src"):
            opts["source"] = val
        elif key in ("target", "dst", "destination"):
            opts["target"] = val
        elif key in ("readonly", "ro"):
            readonly = _bool(key, val)
        elif key in ("readwrite", "rw"):
            readonly = not _bool(key, val)
        elif key == "size":
            if kind != "tmpfs":
                raise ValueError(f"unexpected key '{key}' for mount type '{kind}'")
            opts["size"] = parse_ram(val)
        elif key == "id":
            opts["id"] = val
        elif key == "sharing":
            if val.lower() not in SHARING_MODES:
                raise ValueError(
                    f"unsupported sharing value {val!r} (expected one of {', '.join(SHARING_MODES)})"
                )
            opts["sharing"] = val.lower()
        elif key == "mode":
            opts["mode"] = _uint("mode", val, 8)
        elif key in ("uid", "gid"):
            opts[key] = _uint(key, val, 10)
        elif key in ("required", "env"):
            raise ValueError(f"unexpected key '{key}' for mount type '{kind}'")
        else:
            raise ValueError(f"unexpected key '{key}' in '{item}' (expected one of {', '.join(_KEYS)})")
    if kind not in ("cache", "secret", "ssh"):
        for key in ("mode", "uid", "gid"):
            if key in opts:
                raise ValueError(f"{key} not allowed for {kind!r} type mounts")
    if "sharing" in opts and kind != "cache":
        raise ValueError(f"invalid cache sharing set for {kind} mount")
    if readonly is None:
        readonly = kind not in ("cache", "tmpfs")
    if not opts.get("target"):
        raise ValueError(f"the {kind} mount needs a target")
    return MountSpec(type=kind, readonly=readonly, **opts)  # type: ignore[arg-type]


_RAM_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_RAM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


def parse_ram(text: str) -> int:
    """A size like ``64m`` or ``1GiB`` in bytes (binary units, as go-units' ``RAMInBytes``)."""
    match = _RAM_RE.match(text.strip())
    if match is None:
        raise ValueError(f"invalid value for size: {text}")
    return int(float(match.group(1)) * _RAM_UNITS[match.group(2).lower()])


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in nanoseconds."""
    if text in ("0", ""):
        return 0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return int(total)


def parse_signal(text: str) -> str:
    """Check a ``STOPSIGNAL`` value (``SIGTERM``, ``TERM``, ``9``, ``SIGRTMIN+3``); return it as written."""
    upper = text.upper()
    if text.isdigit():
        if 0 < int(text) <= 64:
            return text
    else:
        name = upper if upper.startswith("SIG") else "SIG" + upper
        if hasattr(signal.Signals, name) or re.fullmatch(r"SIGRT(MIN|MAX)([+-]\d+)?", name):
            return text
    raise ValueError(f"Invalid signal: {text}")


_PORT_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_ports(spec: str) -> list[str]:
    """``[ip:][host:]port[-end][/proto]`` as the ``port/proto`` entries an image exposes."""
    rest, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid proto: {proto}")
    port = rest.rsplit(":", 1)[-1]
    match = _PORT_RE.match(port)
    if match is None:
        raise ValueError(f"invalid containerPort: {port}")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else start
    if not 0 < start <= end <= 65535:
        raise ValueError(f"invalid port range: {port}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]
