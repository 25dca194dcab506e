from __future__ import annotations

import pytest

from buildsvc.errors import InvalidInput
from buildsvc.solver.patterns import (
    PatternError,
    PatternMatcher,
    Selector,
    clean_pattern,
    has_wildcards,
    match_component,
    split_wildcards,
)


def matches(patterns: list[str], path: str) -> bool:
    return PatternMatcher(patterns).matches(path)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "dir/a.txt", False),  # '*' never crosses '/'
        ("*/a.txt", "dir/a.txt", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("**/a.txt", "a.txt", True),  # '**' matches zero components too
        ("**/a.txt", "x/y/a.txt", True),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "ab", False),
        ("a/**", "a/x/y", True),
        ("**", "anything/at/all", True),
        ("[a-c].go", "b.go", True),
        ("[a-c].go", "d.go", False),
        ("[^a-c].go", "d.go", True),
        ("[^a-c].go", "a.go", False),
        ("\\*.go", "*.go", True),
        ("\\*.go", "x.go", False),
        ("a.b", "axb", False),  # '.' is literal
        ("(x)|y", "(x)|y", True),
    ],
)
def test_pattern_semantics(pattern: str, path: str, expected: bool) -> None:
    assert matches([pattern], path) is expected


def test_a_pattern_matching_a_directory_matches_everything_below() -> None:
    assert matches(["build"], "build/out/app.o")
    assert matches(["build/"], "build/out/app.o")  # a trailing '/' is cleaned away
    assert not matches(["build"], "rebuild/app.o")


def test_exclusion_reincludes_and_later_patterns_win() -> None:
    patterns = ["*.md", "!README.md"]
    assert matches(patterns, "CHANGES.md")
    assert not matches(patterns, "README.md")
    assert matches([*patterns, "README*"], "README.md")


def test_reinclusion_inside_an_excluded_directory() -> None:
    patterns = ["docs", "!docs/keep.md"]
    assert matches(patterns, "docs/other.md")
    assert not matches(patterns, "docs/keep.md")


def test_patterns_are_cleaned_and_a_leading_slash_is_dropped() -> None:
    assert clean_pattern("a//b/./c/") == "a/b/c"
    assert clean_pattern("/a") == "a"
    assert matches(["/a/*.txt"], "a/x.txt")
    assert matches(["a/../b"], "b")


def test_empty_patterns_are_ignored() -> None:
    m = PatternMatcher(["", "   "])
    assert not m
    assert not m.matches("a")


@pytest.mark.parametrize("bad", ["[abc", "!", "a/[]"])
def test_bad_patterns_are_refused_with_the_pattern_named(bad: str) -> None:
    with pytest.raises(PatternError) as err:
        PatternMatcher([bad])
    assert isinstance(err.value, InvalidInput)
    assert repr(bad) in str(err.value)


def test_could_match_below_prunes_walks() -> None:
    m = PatternMatcher(["src/*/main.py", "!docs/keep"])
    assert m.could_match_below("src")
    assert m.could_match_below("src/app")
    assert not m.could_match_below("tests")
    assert m.could_match_below("docs", exclusions=True)
    assert not m.could_match_below("src", exclusions=True)
    assert PatternMatcher(["**/x"]).could_match_below("any/where")


def test_match_component_is_go_filepath_match() -> None:
    assert match_component("*.txt", ".hidden.txt")
    assert not match_component("*.txt", "a.txt.bak")
    assert match_component("[0-9]?", "7x")
    assert not match_component("*", "a/b")


def test_wildcard_detection_and_split() -> None:
    assert has_wildcards("a*")
    assert has_wildcards("[ab]")
    assert not has_wildcards("a\\*b")
    assert not has_wildcards("plain")
    assert split_wildcards("/src/app/*.py") == ("/src/app", ("*.py",))
    assert split_wildcards("/src/*/lib/?.c") == ("/src", ("*", "lib", "?.c"))
    assert split_wildcards("/plain/./path/") == ("/plain/path", ())
    assert split_wildcards("*") == ("/", ("*",))


def test_selector_with_include_patterns_walks_towards_matches_only() -> None:
    s = Selector(include=["src/*.py"])
    assert s.verdict("src", is_dir=True).descend
    assert not s.verdict("src", is_dir=True).keep  # created only if something below is taken
    assert s.verdict("src/a.py", is_dir=False).keep
    assert not s.verdict("src/a.txt", is_dir=False).keep
    assert not s.verdict("docs", is_dir=True).descend


def test_selector_include_of_a_directory_takes_all_below() -> None:
    s = Selector(include=["src"])
    v = s.verdict("src", is_dir=True)
    assert v.keep and v.descend and v.fully_included
    assert s.verdict("src/deep/x", is_dir=False, parent_included=True).keep


def test_selector_excluded_directory_is_walked_only_for_reinclusions() -> None:
    plain = Selector(exclude=["docs"])
    assert plain.verdict("docs", is_dir=True) == plain.verdict("docs/x", is_dir=False)
    assert not plain.verdict("docs", is_dir=True).descend
    reinclude = Selector(exclude=["docs", "!docs/keep.md"])
    v = reinclude.verdict("docs", is_dir=True)
    assert v.descend and not v.keep
    assert reinclude.verdict("docs/keep.md", is_dir=False).keep
    assert not reinclude.verdict("docs/other.md", is_dir=False).keep


def test_selector_without_patterns_takes_everything() -> None:
    s = Selector()
    assert s.selects_all
    assert s.verdict("any/thing", is_dir=False).keep
