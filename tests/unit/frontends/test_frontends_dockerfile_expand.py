"""BuildKit's shell-lexer rules for variable expansion (cases after shell/lex_test.go)."""

from __future__ import annotations

import pytest

from buildsvc.frontends.dockerfile.expand import ExpansionError, ShellLex

ENV = {"A": "a", "EMPTY": "", "PATHV": "/usr/local/bin/tool.tar.gz", "SP": "x y"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$A", "a"),
        ("${A}", "a"),
        ("pre$A-post", "prea-post"),
        ("$UNSET", ""),
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${A:-dflt}", "a"),
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${UNSET:-$A}", "a"),
        ("'$A'", "$A"),
        ('"$A"', "a"),
        ('"${A}  b"', "a  b"),
        ("\\$A", "$A"),
        ('"\\$A"', "$A"),
        ('"a\\b"', "a\\b"),
        ("a\\ b", "a b"),
        ("$", "$"),
        ("${PATHV#*/}", "usr/local/bin/tool.tar.gz"),
        ("${PATHV##*/}", "tool.tar.gz"),
        ("${PATHV%.*}", "/usr/local/bin/tool.tar"),
        ("${PATHV%%.*}", "/usr/local/bin/tool"),
        ("${PATHV/local/opt}", "/usr/opt/bin/tool.tar.gz"),
        ("${PATHV//o/0}", "/usr/l0cal/bin/t00l.tar.gz"),
        ("$1abc", "abc"),
    ],
)
def test_process_word(word: str, expected: str) -> None:
    assert ShellLex().process_word(word, ENV) == expected


def test_backtick_escape_token() -> None:
    lex = ShellLex(escape="`")
    assert lex.process_word("`$A", ENV) == "$A"
    assert lex.process_word("C:\\dir", ENV) == "C:\\dir"


def test_process_words_splits_after_expansion_but_not_inside_quotes() -> None:
    assert ShellLex().process_words('$SP "q r" s', ENV) == ["x", "y", "q r", "s"]


def test_raw_quotes_and_skip_unset_keep_text_for_step_names() -> None:
    lex = ShellLex(raw_quotes=True, skip_unset_env=True)
    assert lex.process_word('echo "$A" $NOPE ${NOPE:-x}', ENV) == 'echo "a" $NOPE ${NOPE:-x}'


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("'open", "matching single-quote"),
        ('"open', "matching double-quote"),
        ("${A", "missing '}'"),
        ("${}", "bad substitution"),
        ("${UNSET:?must be set}", "UNSET: must be set"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${UNSET?}", "UNSET: is not allowed to be unset"),
        ("${A:#x}", "unsupported modifier"),
        ("${A!x}", "unsupported modifier"),
    ],
)
def test_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError, match=message):
        ShellLex().process_word(word, ENV)


@pytest.mark.parametrize(
    "word",
    [
        "echo step 1 > /step1",
        "  leading and\ttrailing  ",
        "a\u00a0b\u2003c",  # whitespace beyond ASCII splits words in both paths
        "",
        "plain",
        "x=1 y=2 && make -j4",
    ],
)
@pytest.mark.parametrize(
    "lex",
    [
        ShellLex(),
        ShellLex(escape="`"),
        ShellLex(raw_quotes=True, raw_escapes=True),
        ShellLex(skip_process_quotes=True),
    ],
)
def test_a_word_with_nothing_to_expand_comes_out_as_the_full_lexer_makes_it(word: str, lex: ShellLex) -> None:
    from buildsvc.frontends.dockerfile.expand import _EOF, _Run

    full = _Run(lex, word, ENV)
    assert (lex.process_word(word, ENV), lex.process_words(word, ENV)) == full.stop_on(_EOF, lex.raw_escapes)


@pytest.mark.parametrize(
    ("lex", "word", "expected"),
    [
        (ShellLex(escape="`"), "a`$b", "a$b"),
        (ShellLex(), "it's", None),  # an unterminated quote is still an error
        (ShellLex(skip_process_quotes=True), "'$A'", "'a'"),
        (ShellLex(), "a\\ b", "a b"),
    ],
)
def test_words_with_specials_still_go_through_the_lexer(
    lex: ShellLex, word: str, expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(ExpansionError):
            lex.process_word(word, ENV)
    else:
        assert lex.process_word(word, ENV) == expected
