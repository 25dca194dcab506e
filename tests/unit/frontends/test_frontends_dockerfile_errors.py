"""Bad Dockerfiles and options: a DockerfileError naming the file and the line, like BuildKit's."""

from __future__ import annotations

import pickle

import pytest

from buildsvc.errors import InvalidInput, NotFound
from buildsvc.frontends.dockerfile import DockerfileError, build_definition
from buildsvc.frontends.dockerfile.parse import parse_dockerfile
from tests.unit.frontends.fakes import FakeResolver, build


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("FROM busybox\nRUN true\n\n# c\nRUNN x\n", 5, "unknown instruction: RUNN (did you mean RUN?)"),
        ("FROM busybox\nCOPY --form=a b c\n", 2, "unknown flag: --form (did you mean --from?)"),
        (
            "FROM busybox\nRUN --mout=type=cache,target=/x true\n",
            2,
            "unknown flag: --mout (did you mean --mount?)",
        ),
        ("FROM busybox\nRUN --network=bridge true\n", 2, 'invalid network mode "bridge"'),
        ("FROM busybox\nRUN --mount=type=nfs,target=/x true\n", 2, "unsupported mount type 'nfs'"),
        ("FROM busybox\nRUN --mount=type=cache true\n", 2, "the cache mount needs a target"),
        ("FROM busybox\nRUN --mount=type=bind,target=/x,uid=1 true\n", 2, "uid not allowed for 'bind'"),
        (
            "FROM busybox\nRUN --mount=type=secret,id=x,target=/s true\n",
            2,
            "type=secret is not supported yet",
        ),
        ("FROM busybox\nLABEL a\n", 2, "LABEL must have two arguments"),
        ("FROM busybox\nCOPY onlyone\n", 2, "COPY requires at least two arguments"),
        ("FROM busybox\nCOPY a b c\n", 2, "the destination must be a directory and end with a /"),
        (
            "FROM busybox\nCOPY --from=later /a /b\nFROM busybox AS later\n"
            "FROM scratch\nCOPY --from=0 /b /b\n",
            2,
            "cannot copy from stage 'later'",
        ),
        ("FROM busybox\nCOPY --from=$X /a /b\n", 2, "variable expansion is not supported for --from"),
        ("FROM busybox\nCOPY --from=7 /a /b\n", 2, "invalid stage index 7"),
        ("FROM busybox\nCOPY --chmod=u+x a /b\n", 2, "only octal modes are supported yet"),
        ("FROM busybox\nCOPY --chmod=99999 a /b\n", 2, "should be octal string and between 0 and 07777"),
        ("FROM busybox\nCOPY https://x.org/a /b\n", 2, "source can't be a URL for COPY"),
        ("FROM busybox\nADD https://github.com/a/b.git /src\n", 2, "git sources are not supported yet"),
        ("FROM busybox\nONBUILD RUN x\n", 2, "ONBUILD is not supported yet"),
        ("FROM busybox\nENV A=${B\n", 2, "missing '}'"),
        ("FROM busybox\nENV A=${B:?required}\n", 2, "B: required"),
        ("FROM busybox\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
        ("FROM busybox\nSTOPSIGNAL SIGNOPE\n", 2, "Invalid signal: SIGNOPE"),
        ("FROM busybox\nEXPOSE 99999\n", 2, "invalid port range"),
        ("FROM busybox\nSHELL /bin/bash -c\n", 2, "SHELL requires the arguments to be in JSON form"),
        ("FROM busybox\nHEALTHCHECK --interval=soon CMD true\n", 2, "invalid duration"),
        ("FROM busybox\nHEALTHCHECK WAIT x\n", 2, 'Unknown type "WAIT" in HEALTHCHECK'),
        ("FROM busybox\nRUN\n", 2, "RUN requires at least one argument"),
        ("FROM busybox\nUSER --x=1 root\n", 2, "unknown flag: --x"),
        ("RUN true\nFROM busybox\n", 1, "no build stage in current context"),
        ("FROM busybox AS 1st\n", 1, "invalid name for build stage: '1st'"),
        ("FROM busybox AS a\nFROM busybox AS a\n", 2, "duplicate stage name 'a'"),
        ("FROM busybox as\n", 1, "FROM requires either one or three arguments"),
        ("ARG B\nFROM $B\n", 2, "base name ($B) should not be blank"),
        ("FROM --platform=linux/s390x busybox\n", 1, "platform linux/s390x is not supported"),
        ("FROM Busy_Box\n", 1, "failed to parse stage name"),
        ("FROM busybox\nRUN <<EOF\necho\n", 2, "unterminated heredoc"),
    ],
)
def test_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        build_definition(text, options={}, resolver=FakeResolver())
    err = info.value
    assert err.line == line, str(err)
    assert str(err).startswith(f"Dockerfile:{line}: ")
    assert message in err.reason
    assert isinstance(err, InvalidInput)


def test_the_filename_option_names_the_file() -> None:
    with pytest.raises(DockerfileError, match=r"^build/App\.dockerfile:2: unknown instruction: FORM"):
        build_definition(
            "FROM busybox\nFORM x\n", options={"filename": "build/App.dockerfile"}, resolver=FakeResolver()
        )


def test_multiline_instruction_error_covers_its_lines() -> None:
    with pytest.raises(DockerfileError) as info:
        build("FROM busybox\nRUN --network=nope \\\n  true\n")
    assert (info.value.line, info.value.end_line) == (2, 3)


def test_unknown_target() -> None:
    with pytest.raises(DockerfileError, match="target stage 'nope' could not be found \\(stages: a\\)"):
        build("FROM busybox AS a\n", target="nope")


def test_empty_dockerfile_and_no_stage() -> None:
    with pytest.raises(DockerfileError, match="cannot be empty"):
        build_definition("  \n", options={}, resolver=FakeResolver())
    with pytest.raises(DockerfileError, match="no stages to build"):
        build_definition("ARG A=1\n", options={}, resolver=FakeResolver())


def test_platform_option_other_than_host_is_refused() -> None:
    with pytest.raises(DockerfileError, match="builds for linux/"):
        build("FROM busybox\n", platform="windows/arm64")
    with pytest.raises(DockerfileError, match="invalid platform"):
        build("FROM busybox\n", platform="linux")


def test_resolver_errors_pass_through_unchanged() -> None:
    with pytest.raises(NotFound, match=r"docker\.io/library/missing:latest"):
        build("FROM missing\n")


def test_error_survives_pickling() -> None:
    err = DockerfileError("bad", filename="D", line=3, end_line=4)
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.line, copy.end_line, copy.filename) == ("D:3: bad", 3, 4, "D")


def test_escape_directive_and_bad_escape() -> None:
    parsed = parse_dockerfile("# escape=`\nFROM busybox\nRUN echo `\n  done\n")
    assert parsed.escape == "`"
    assert parsed.instructions[1].args == ("echo   done",)
    assert (parsed.instructions[1].start_line, parsed.instructions[1].end_line) == (3, 4)
    with pytest.raises(DockerfileError, match="Dockerfile:1: invalid escape token"):
        parse_dockerfile("# escape=x\nFROM busybox\n")
