"""Reading the Dockerfile a build names: only from inside its dir, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildsvc.errors import InvalidInput
from buildsvc.frontends.dockerfile import MAX_DOCKERFILE_BYTES, read_dockerfile


def test_reads_a_dockerfile_inside_the_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Build.df").write_text("FROM scratch\n")
    assert read_dockerfile(tmp_path, "sub/Build.df") == "FROM scratch\n"


def test_a_name_or_symlink_leading_out_of_the_dir_is_refused(tmp_path: Path) -> None:
    inside = tmp_path / "ctx"
    inside.mkdir()
    (tmp_path / "secret").write_text("FROM scratch\n")
    (inside / "link").symlink_to(tmp_path / "secret")
    for name in ("../secret", "link", str(tmp_path / "secret")):
        with pytest.raises(InvalidInput, match="is outside the dockerfile dir"):
            read_dockerfile(inside, name)


def test_missing_large_and_binary_dockerfiles_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no dockerfile 'Dockerfile' in"):
        read_dockerfile(tmp_path, "Dockerfile")
    (tmp_path / "big").write_bytes(b"#" * (MAX_DOCKERFILE_BYTES + 1))
    with pytest.raises(InvalidInput, match="'big' is larger than"):
        read_dockerfile(tmp_path, "big")
    (tmp_path / "bin").write_bytes(b"FROM \xff\xfe\n")
    with pytest.raises(InvalidInput, match="'bin' is not UTF-8 text"):
        read_dockerfile(tmp_path, "bin")
