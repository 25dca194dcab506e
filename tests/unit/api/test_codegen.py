"""The committed generated code is what ``python -m buildsvc.api.codegen`` makes from the .proto files."""

from __future__ import annotations

from pathlib import Path

from buildsvc.api import codegen


def test_committed_code_matches_the_proto_files(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(["__init__.py", *codegen.GENERATED])
    stale = [p.name for p in written if p.read_text() != (codegen.GEN / p.name).read_text()]
    assert stale == [], f"stale generated code: {stale}; run python -m buildsvc.api.codegen and commit"


def test_the_generated_client_imports_the_generated_messages_where_they_live() -> None:
    # protoc would write "from buildsvc.control.v1 import", a package that does not exist.
    text = (codegen.GEN / "control_pb2_grpc.py").read_text()
    assert "from buildsvc.api.gen import control_pb2" in text
    assert "from buildsvc.control" not in text
