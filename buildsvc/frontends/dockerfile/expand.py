r"""Variable expansion and word splitting with BuildKit's shell-lexer rules (``shell/lex.go``).

Supported, as in BuildKit: ``$VAR``, ``${VAR}``, ``${VAR:-word}``/``${VAR-word}`` (default),
``${VAR:+word}``/``${VAR+word}`` (alternative), ``${VAR:?msg}``/``${VAR?msg}`` (required),
``${VAR#pat}``/``${VAR##pat}``/``${VAR%pat}``/``${VAR%%pat}`` (trim), ``${VAR/pat/repl}`` and
``${VAR//pat/repl}`` (substitute); single quotes keep everything literal, double quotes keep all but
``$`` and escapes of ``"``, ``$`` and the escape token; the escape token (backslash, or the backtick
the ``escape`` directive chooses) escapes any character outside quotes. This is not a shell: no
command substitution, no arithmetic, no globbing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ExpansionError", "ShellLex"]


class ExpansionError(ValueError):
    """A word cannot be expanded (unterminated quote, bad substitution, ``${X:?}`` of an unset X)."""


_EOF = ""
_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class _Scanner:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch


class _Words:
    """Splits on unquoted whitespace while the word is built (Go's ``wordsStruct``)."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.buf:
                self.words.append("".join(self.buf))
                self.buf.clear()
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, text: str) -> None:
        self.buf.append(text)
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def result(self) -> list[str]:
        if self.buf:
            self.words.append("".join(self.buf))
            self.buf.clear()
            self.in_word = False
        return self.words


@dataclass(frozen=True, slots=True, kw_only=True)
class ShellLex:
    """A configured lexer; :meth:`process_word` and :meth:`process_words` are its two uses."""

    escape: str = "\\"
    raw_quotes: bool = False
    """Keep quote characters in the result (used for step names)."""
    raw_escapes: bool = False
    skip_process_quotes: bool = False
    """Treat quotes as ordinary characters (heredoc bodies)."""
    skip_unset_env: bool = False
    """Leave references to unset variables as written (step names)."""

    def specials(self) -> str:
        """The characters that make a word more than its own text."""
        return "$<" + self.escape + ("" if self.skip_process_quotes else "'\"")

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """Expand ``word`` into one string (quotes removed, spaces between words kept)."""
        return _Run(self, word, env).run()[0]

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expand ``word`` and split it into words on unquoted whitespace (``EXPOSE``)."""
        return _Run(self, word, env).run()[1]


class _Run:
    def __init__(self, lex: ShellLex, word: str, env: Mapping[str, str]) -> None:
        self.lex = lex
        self.env = env
        self.source = word
        self.s = _Scanner(word)
        self.raw_escapes = lex.raw_escapes

    def run(self) -> tuple[str, list[str]]:
        if not any(c in self.source for c in self.lex.specials()):
            # Nothing to expand, unquote or unescape (most RUN lines): the word as written, split
            # on whitespace as _Words splits it (str.isspace is str.split's rule).
            return self.source, self.source.split()
        try:
            return self.stop_on(_EOF, self.raw_escapes)
        except ExpansionError as e:
            raise ExpansionError(f"failed to process {self.source!r}: {e}") from None

    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        s = self.s
        while s.peek() != _EOF:
            ch = s.peek()
            if stop and ch == stop:
                s.next()
                return "".join(result), words.result()
            if ch == "$":
                text = self.dollar()
                result.append(text)
                words.add_string(text)
            elif ch == "<":
                text = self.possible_heredoc()
                result.append(text)
                words.add_raw(text)
            elif ch in "'\"" and not self.lex.skip_process_quotes:
                text = self.single_quote() if ch == "'" else self.double_quote()
                result.append(text)
                words.add_raw(text)
            else:
                ch = s.next()
                if ch == self.lex.escape:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = s.next()
                    if ch == _EOF:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.result()

    def single_quote(self) -> str:
        out: list[str] = []
        ch = self.s.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            ch = self.s.next()
            if ch == _EOF:
                raise ExpansionError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        out: list[str] = []
        ch = self.s.next()
        if self.lex.raw_quotes:
            out.append(ch)
        while True:
            peek = self.s.peek()
            if peek == _EOF:
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            if peek == '"':
                ch = self.s.next()
                if self.lex.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if peek == "$":
                out.append(self.dollar())
                continue
            ch = self.s.next()
            if ch == self.lex.escape:
                if self.raw_escapes:
                    out.append(ch)
                after = self.s.peek()
                if after == _EOF:
                    continue  # a trailing escape inside quotes is dropped, as in Go
                if after in ('"', "$", self.lex.escape):
                    ch = self.s.next()
            out.append(ch)

    def name(self) -> str:
        s = self.s
        chars: list[str] = []
        while s.peek() != _EOF:
            ch = s.peek()
            if not chars and ch.isdigit():
                while s.peek() != _EOF and s.peek().isdigit():
                    chars.append(s.next())
                return "".join(chars)
            if not chars and ch in _SPECIAL_PARAMS:
                return s.next()
            if not (ch.isalnum() or ch == "_"):
                break
            chars.append(s.next())
        return "".join(chars)

    def get(self, name: str) -> str | None:
        return self.env.get(name)

    def dollar(self) -> str:
        s = self.s
        s.next()
        if s.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value = self.get(name)
            if value is None:
                return "$" + name if self.lex.skip_unset_env else ""
            return value
        s.next()
        if s.peek() == _EOF:
            raise ExpansionError("syntax error: missing '}'")
        if s.peek() in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        ch = s.next()
        if ch == _EOF:
            raise ExpansionError("syntax error: missing '}'")
        modifier = ch
        null_is_unset = False
        if ch == "}":
            value = self.get(name)
            if value is None:
                return f"${{{name}}}" if self.lex.skip_unset_env else ""
            return value
        if ch == ":":
            null_is_unset = True
            ch = s.next()
            modifier += ch
        if ch in ("+", "-", "?", "#", "%"):
            raw = ch in "#%"
            if null_is_unset and raw:
                raise ExpansionError(f"unsupported modifier ({modifier}) in substitution")
            try:
                word, _ = self.stop_on("}", raw)
            except ExpansionError:
                if s.peek() == _EOF:
                    raise ExpansionError("syntax error: missing '}'") from None
                raise
            value = self.get(name)
            if value is None and self.lex.skip_unset_env:
                return f"${{{name}{modifier}{word}}}"
            unset = value is None or (null_is_unset and value == "")
            if ch == "-":
                return word if unset else (value or "")
            if ch == "+":
                return "" if unset else word
            if ch == "?":
                if value is None:
                    raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
                if null_is_unset and value == "":
                    raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            greedy = word[:1] == ch
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value or "", greedy)
            return _trim_prefix(word, value or "", greedy)
        if ch == "/":
            replace_all = s.peek() == "/"
            if replace_all:
                s.next()
            try:
                pattern, _ = self.stop_on("/", True)
            except ExpansionError:
                if s.peek() == _EOF:
                    raise ExpansionError("syntax error: missing '/' in ${}") from None
                raise
            try:
                replacement, _ = self.stop_on("}", True)
            except ExpansionError:
                if s.peek() == _EOF:
                    raise ExpansionError("syntax error: missing '}'") from None
                raise
            value = self.get(name)
            if value is None and self.lex.skip_unset_env:
                return f"${{{name}/{pattern}/{replacement}}}"
            regex = _pattern_regex(pattern, greedy=True, anchored=False)
            text = value or ""
            if replace_all:
                return regex.sub(lambda _: replacement, text)
            return regex.sub(lambda _: replacement, text, count=1)
        raise ExpansionError(f"unsupported modifier ({modifier}) in substitution")

    def possible_heredoc(self) -> str:
        s = self.s
        s.next()
        if s.peek() != "<":
            return "<"
        s.next()
        spaces: list[str] = []
        while s.peek() in (" ", "\t"):
            spaces.append(s.next())
        return "<<" + "".join(spaces)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell wildcard pattern (``*``, ``?``, backslash escapes; no brackets) as a regex."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            nxt = pattern[i] if i < len(pattern) else ""
            if nxt in ("}", "/"):
                continue
            if nxt not in ("*", "?", "\\"):
                raise ExpansionError(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'")
            out.append(re.escape(nxt))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    # Reverse, keeping each escape in front of the character it escapes (a\*c -> c\*a).
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so reverse both and trim a prefix (as Go).
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]
