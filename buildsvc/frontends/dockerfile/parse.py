"""Dockerfile text -> a flat list of typed instructions with their line numbers.

**Why the ``dockerfile`` package (asottile/dockerfile).** It is a thin binding over the parser that
moby/buildkit itself uses (``frontend/dockerfile/parser``, compiled from Go into an abi3 wheel, so
there is nothing to build here): line continuations, the ``escape`` directive, JSON (exec) form
detection, flag splitting, ``ENV``/``LABEL`` key-value splitting with quotes left for the shell
lexer, and heredocs all behave exactly as in BuildKit, with start and end lines per instruction. The
alternative, ``dockerfile-parse`` (containerbuildsystem), is a regex re-implementation: it mis-reads
heredoc bodies as instructions, leaves flags and the exec form for the caller to split, and would
have us re-derive BuildKit's rules by hand. What the binding does not give (its parse errors carry
no line; the escape token is not exposed) is small and is filled in below.

Everything after this module works on :class:`Instruction`, never on the binding's types, so the
binding could be swapped without touching the lowering.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import dockerfile as _gop  # type: ignore[import-not-found]  # compiled Go binding, ships no stubs

from buildsvc.frontends.dockerfile.errors import DockerfileError

__all__ = [
    "INSTRUCTIONS",
    "HeredocMarker",
    "chomp_heredoc",
    "heredoc_content",
    "Heredoc",
    "Instruction",
    "ParsedDockerfile",
    "parse_dockerfile",
    "parse_flags",
    "parse_heredoc_marker",
]

INSTRUCTIONS = frozenset(
    {
        "add",
        "arg",
        "cmd",
        "copy",
        "entrypoint",
        "env",
        "expose",
        "from",
        "healthcheck",
        "label",
        "maintainer",
        "onbuild",
        "run",
        "shell",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    }
)
"""Every instruction BuildKit's ``instructions.Parse`` knows (lowercase)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Heredoc:
    """A here-document attached to an instruction (``RUN <<EOF``)."""

    name: str
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """One instruction as written, after line continuations are joined."""

    name: str
    """Lowercase instruction name (``run``)."""
    keyword: str
    """The instruction name as written (``RUN``, ``run``), for messages."""
    original: str
    """The instruction's text with continuations joined, as BuildKit shows it."""
    start_line: int
    end_line: int
    flags: tuple[str, ...] = ()
    """``--name[=value]`` flags, unparsed (see :func:`parse_flags`)."""
    args: tuple[str, ...] = ()
    """Arguments: the exec form's list, the shell form's text as one item, or key/value pairs."""
    json: bool = False
    """Written in the exec (JSON array) form."""
    heredocs: tuple[Heredoc, ...] = ()
    sub: Instruction | None = None
    """For ``ONBUILD``: the trigger instruction."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedDockerfile:
    """The instructions of a Dockerfile and its escape token."""

    filename: str
    instructions: tuple[Instruction, ...]
    escape: str = "\\"


_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


def _escape_token(text: str, filename: str) -> str:
    # Parser directives are only read from the comment lines at the very top (as in BuildKit's
    # directive parser): the first line that is not a directive ends them.
    escape = "\\"
    for number, line in enumerate(text.splitlines(), start=1):
        match = _DIRECTIVE_RE.match(line.strip())
        if match is None:
            break
        if match.group(1).lower() == "escape":
            value = match.group(2)
            if value not in ("\\", "`"):
                raise DockerfileError(
                    f"invalid escape token '{value}' does not match ` or \\", filename=filename, line=number
                )
            escape = value
    return escape


def _instruction(cmd: object) -> Instruction:
    # Attributes of the binding's Command namedtuple; typed here once, used typed everywhere else.
    c: object = cmd
    name = str(getattr(c, "cmd"))  # noqa: B009
    sub_name = getattr(c, "sub_cmd")  # noqa: B009
    flags = tuple(str(f) for f in getattr(c, "flags"))  # noqa: B009
    args = tuple(str(v) for v in getattr(c, "value"))  # noqa: B009
    heredocs = tuple(
        Heredoc(name=str(h.name), content=str(h.content))
        for h in getattr(c, "heredocs")  # noqa: B009
    )
    original = str(getattr(c, "original"))  # noqa: B009
    start, end = int(getattr(c, "start_line")), int(getattr(c, "end_line"))  # noqa: B009
    is_json = bool(getattr(c, "json"))  # noqa: B009
    if sub_name:
        # ONBUILD's trigger: the binding puts the trigger's flags and args on the ONBUILD node.
        trigger = Instruction(
            name=str(sub_name).lower(),
            keyword=str(sub_name),
            original=re.sub(r"(?i)^\s*ONBUILD\s*", "", original),
            start_line=start,
            end_line=end,
            flags=flags,
            args=args,
            json=is_json,
            heredocs=heredocs,
        )
        return Instruction(
            name=name.lower(), keyword=name, original=original, start_line=start, end_line=end, sub=trigger
        )
    return Instruction(
        name=name.lower(),
        keyword=name,
        original=original,
        start_line=start,
        end_line=end,
        flags=flags,
        args=args,
        json=is_json,
        heredocs=heredocs,
    )


def _parse(text: str) -> list[Instruction]:
    return [_instruction(c) for c in _gop.parse_string(text)]


def _locate_error(text: str, message: str) -> int | None:
    """The first line at which BuildKit's parser fails with ``message``.

    The binding's errors carry no position, so parse ever longer prefixes: the first prefix that
    fails the same way ends at the offending line. Dockerfiles are short; this runs only on failure.
    """
    lines = text.splitlines(keepends=True)
    for n in range(1, len(lines) + 1):
        try:
            _gop.parse_string("".join(lines[:n]))
        except _gop.GoParseError as e:
            if str(e) == message:
                return n
    return None


def parse_dockerfile(text: str, *, filename: str = "Dockerfile") -> ParsedDockerfile:
    """Parse ``text``; a syntax error or an unknown instruction is a :class:`DockerfileError`."""
    if not text.strip():
        raise DockerfileError("the Dockerfile cannot be empty", filename=filename)
    if "\0" in text:
        raise DockerfileError("the Dockerfile contains a NUL byte", filename=filename)
    escape = _escape_token(text, filename)
    try:
        instructions = _parse(text)
    except _gop.GoParseError as e:
        raise DockerfileError(str(e), filename=filename, line=_locate_error(text, str(e))) from None
    for ins in instructions:
        for checked in (ins, ins.sub) if ins.sub else (ins,):
            if checked.name not in INSTRUCTIONS:
                raise DockerfileError(
                    f"unknown instruction: {checked.keyword.upper()}{_suggest(checked.name)}",
                    filename=filename,
                    line=ins.start_line,
                    end_line=ins.end_line,
                )
    return ParsedDockerfile(filename=filename, instructions=tuple(instructions), escape=escape)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(INSTRUCTIONS), n=1, cutoff=0.75)
    return f" (did you mean {close[0].upper()}?)" if close else ""


def _suggest_flag(key: str, spec: Mapping[str, type]) -> str:
    close = difflib.get_close_matches(key, sorted(spec), n=1, cutoff=0.6)
    return f" (did you mean --{close[0]}?)" if close else ""


FlagValue = str | bool | list[str]


def parse_flags(ins: Instruction, spec: Mapping[str, type]) -> dict[str, FlagValue]:
    """Parse ``ins.flags`` as BuildKit's ``BFlags``: ``spec`` maps a flag name to ``str``, ``bool``
    or ``list`` (repeatable). Unknown, duplicate or malformed flags raise ``ValueError``.
    """
    out: dict[str, FlagValue] = {}
    for raw in ins.flags:
        if raw == "--":
            break
        if not raw.startswith("--"):
            raise ValueError(f"arg should start with -- : {raw}")
        flag, has_value, value = raw.partition("=")
        key = flag[2:]
        kind = spec.get(key)
        if kind is None:
            raise ValueError(f"unknown flag: {flag}{_suggest_flag(key, spec)}")
        if key in out and kind is not list:
            raise ValueError(f"duplicate flag specified: {flag}")
        if kind is bool:
            if has_value and value == "":
                raise ValueError(f"missing a value on flag: {flag}")
            if value.lower() not in ("", "true", "false"):
                raise ValueError(f"expecting boolean value for flag {flag}, not: {value}")
            out[key] = value.lower() != "false"
        elif not has_value:
            raise ValueError(f"missing a value on flag: {flag}")
        elif kind is list:
            existing = out.setdefault(key, [])
            assert isinstance(existing, list)
            existing.append(value)
        else:
            out[key] = value
    return out


_HEREDOC_RE = re.compile(r"^<<(-?)\s*([\"']?)([^<\"'\s]+)\2$")


@dataclass(frozen=True, slots=True, kw_only=True)
class HeredocMarker:
    """A ``<<[-]["]NAME["]`` word: the name, whether tabs are stripped, whether it expands."""

    name: str
    chomp: bool
    expand: bool


def parse_heredoc_marker(word: str) -> HeredocMarker | None:
    """The heredoc a word like ``<<-"EOF"`` opens, or ``None`` when it is not one."""
    match = _HEREDOC_RE.match(word)
    if match is None:
        return None
    return HeredocMarker(name=match.group(3), chomp=match.group(1) == "-", expand=not match.group(2))


def chomp_heredoc(content: str) -> str:
    """Strip leading tabs from every line (``<<-``), as BuildKit's ``ChompHeredocContent``."""
    return "".join(line.lstrip("\t") for line in content.splitlines(keepends=True))


def heredoc_content(ins: Instruction, name: str) -> str | None:
    """The body of the heredoc called ``name`` on ``ins``."""
    for doc in ins.heredocs:
        if doc.name == name:
            return doc.content
    return None
