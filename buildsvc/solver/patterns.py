"""Path patterns: ``.dockerignore``-style matching and single-component globs (pure, no filesystem).

Two dialects, both after Go:

- :class:`PatternMatcher` follows ``moby/patternmatcher`` (what ``.dockerignore`` and BuildKit's
  include/exclude patterns use): patterns are cleaned (``a//b/`` is ``a/b``), ``*`` and ``?`` never
  match ``/``, ``**`` matches any number of whole path components (zero included), a leading ``!``
  re-includes what earlier patterns matched, later patterns win, and a pattern that matches a directory
  matches everything under it. One deliberate difference: a leading ``/`` is dropped, so ``/a`` and
  ``a`` both mean "``a`` at the top" (moby's ``ignorefile`` does this for ``.dockerignore``).
- :func:`match_component` is Go's ``filepath.Match`` for one path component, used to resolve copy
  sources such as ``/src/*.txt`` (see :func:`split_wildcards`).

:class:`Selector` combines include and exclude patterns into a walk decision per path, so the copy
action and the content checksum select exactly the same files.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from buildsvc.errors import InvalidInput

__all__ = [
    "PatternError",
    "PatternMatcher",
    "Selector",
    "Verdict",
    "clean_pattern",
    "has_wildcards",
    "match_component",
    "split_wildcards",
]

_REGEX_SPECIALS = frozenset(".+()|{}$^")


class PatternError(InvalidInput):
    """A pattern cannot be compiled (for example an unclosed ``[``, or a bare ``!``)."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid pattern {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason


def clean_pattern(pattern: str) -> str:
    """Normalize a pattern as Go's ``filepath.Clean`` does, and drop a leading ``/``."""
    cleaned = posixpath.normpath(pattern) if pattern else "."
    # posixpath keeps a leading '//' (POSIX allows it to mean something else); Go does not.
    cleaned = cleaned.lstrip("/")
    return cleaned or "."


def _translate(pattern: str, *, whole_path: bool) -> str:
    """Regex source for a pattern. ``whole_path``: the patternmatcher dialect (``**`` allowed)."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if whole_path and i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                # '**' at the end matches everything left; elsewhere any number of whole components.
                out.append(".*" if i >= n else "(?:.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                out.append(re.escape(pattern[i]))
            else:
                out.append(re.escape("\\"))
        elif ch == "[":
            end = _class_end(pattern, i)
            if end < 0:
                raise PatternError(pattern, "unclosed '['")
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            if negate:
                body = body[1:]
            if not body:
                raise PatternError(pattern, "empty character class")
            # A negated class never matches '/', as in Go, where classes match within one component.
            out.append(("[^/" if negate else "[") + _class_body(body) + "]")
            i = end
        elif ch in _REGEX_SPECIALS or ch == "]":
            out.append("\\" + ch)
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return "".join(out)


def _class_body(body: str) -> str:
    """A Go character class body as a Python one: ranges kept, escapes and brackets made literal."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            i += 1
            ch = body[i]
            out.append("\\" + ch if ch in "\\]-^[" else ch)
        elif ch in "[]^\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``start``, or -1."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return -1


@functools.lru_cache(maxsize=1024)
def _component_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(_translate(pattern, whole_path=False), re.DOTALL)


def match_component(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match(pattern, name)`` for a single path component."""
    return _component_regex(pattern).match(name) is not None


def has_wildcards(text: str) -> bool:
    """Whether ``text`` holds an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def split_wildcards(path: str) -> tuple[str, tuple[str, ...]]:
    """Split ``path`` at its first component holding a wildcard.

    Returns the literal prefix (absolute, cleaned) and the remaining components, each matched with
    :func:`match_component` against one level of the tree. No wildcard: ``(path, ())``.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for i, part in enumerate(parts):
        if has_wildcards(part):
            return "/" + "/".join(parts[:i]), tuple(parts[i:])
    return "/" + "/".join(parts), ()


@dataclass(frozen=True, slots=True)
class _Pattern:
    text: str
    exclusion: bool
    regex: re.Pattern[str]
    components: tuple[str, ...]

    def matches(self, path: str) -> bool:
        return self.regex.match(path) is not None

    def could_match_below(self, directory: str) -> bool:
        """Whether some path strictly below ``directory`` might match (used to prune walks)."""
        for i, part in enumerate(directory.split("/")):
            if i >= len(self.components):
                # The pattern is shorter than the directory: it can only match via a parent,
                # and parent matches are decided by the caller.
                return False
            comp = self.components[i]
            if "**" in comp:
                return True
            if not match_component(comp, part):
                return False
        return True


class PatternMatcher:
    """An ordered list of patterns with moby/patternmatcher semantics (see the module docstring)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        compiled: list[_Pattern] = []
        for raw in patterns:
            text = raw.strip()
            if not text:
                continue
            exclusion = text.startswith("!")
            if exclusion:
                text = text[1:].strip()
                if not text:
                    raise PatternError(raw, "'!' must be followed by a pattern")
            text = clean_pattern(text)
            regex = re.compile(_translate(text, whole_path=True), re.DOTALL)
            compiled.append(_Pattern(text, exclusion, regex, tuple(text.split("/"))))
        self._patterns = tuple(compiled)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    @property
    def has_exclusions(self) -> bool:
        """Whether some pattern starts with ``!`` (then an excluded directory may hide re-included files)."""
        return any(p.exclusion for p in self._patterns)

    def matches(self, path: str) -> bool:
        """Whether ``path`` (relative, ``/``-separated) or one of its parent directories is matched."""
        path = clean_pattern(path)
        parents = path.split("/")[:-1]
        prefixes = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        matched = False
        for pattern in self._patterns:
            # An inclusion cannot change a match, nor an exclusion a non-match: skip the work.
            if pattern.exclusion != matched:
                continue
            if pattern.matches(path) or any(pattern.matches(p) for p in prefixes):
                matched = not pattern.exclusion
        return matched

    def could_match_below(self, directory: str, *, exclusions: bool = False) -> bool:
        """Whether a path under ``directory`` may be matched by a pattern (``exclusions``: a ``!`` one)."""
        directory = clean_pattern(directory)
        return any(p.could_match_below(directory) for p in self._patterns if p.exclusion == exclusions)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a walk does with one entry."""

    keep: bool
    """Take the entry itself (a directory is taken even if nothing below it is)."""
    descend: bool
    """For a directory: look at its children. ``keep=False, descend=True`` means the directory is
    taken only if something below it is (and then with its own metadata)."""
    fully_included: bool = False
    """Everything below matched an include pattern already: children skip the include check."""


_SKIP = Verdict(keep=False, descend=False)


class Selector:
    """Include and exclude patterns applied to paths relative to a selected root (as BuildKit's copy).

    With include patterns, an entry is taken when it or a parent matches one; a directory that only
    leads towards a possible match is walked but created only when something under it is taken.
    Exclude patterns then drop entries; an excluded directory is still walked when a ``!`` pattern
    may re-include something below it.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = PatternMatcher(include)
        self._exclude = PatternMatcher(exclude)

    @property
    def selects_all(self) -> bool:
        """Whether no pattern was given (every entry is kept)."""
        return not self._include and not self._exclude

    def verdict(self, path: str, *, is_dir: bool, parent_included: bool = False) -> Verdict:
        """Decide for the entry at relative ``path``; ``parent_included`` from the parent's verdict."""
        included = parent_included or not self._include
        tentative = False
        if not included:
            if self._include.matches(path):
                included = True
            elif is_dir and self._include.could_match_below(path):
                tentative = True
            else:
                return _SKIP
        if self._exclude and self._exclude.matches(path):
            if (
                is_dir
                and self._exclude.has_exclusions
                and self._exclude.could_match_below(path, exclusions=True)
            ):
                return Verdict(keep=False, descend=True, fully_included=included)
            return _SKIP
        if tentative:
            return Verdict(keep=False, descend=True)
        return Verdict(keep=True, descend=is_dir, fully_included=True)
