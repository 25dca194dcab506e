"""File actions on real directories, with BuildKit's semantics and no path ever leaving its root."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from buildsvc.errors import BuildsvcError, InvalidInput
from buildsvc.executors.fileops import (
    CURRENT_ROOT,
    ActionResult,
    FileActionError,
    FileOpPlanError,
    OpInput,
    PlannedAction,
    SourceRef,
    apply_actions,
    plan_action_result,
    plan_file_op,
)
from buildsvc.solver.ops import (
    Action,
    CopyAction,
    FileAction,
    FileOp,
    MkdirAction,
    MkfileAction,
    Owner,
    RmAction,
    SymlinkAction,
)

TS = 1_600_000_000_123_456_789


def run(
    root: Path,
    *actions: Action,
    src: Path | None = None,
    same_root: bool = False,
    user_root: Path | None = None,
) -> None:
    """Apply actions in order; copies read ``src`` (input 1), or ``root`` itself with ``same_root``."""
    planned = [
        PlannedAction(
            index=i,
            action=a,
            source=(CURRENT_ROOT if same_root else OpInput(1)) if isinstance(a, CopyAction) else None,
        )
        for i, a in enumerate(actions)
    ]
    roots: dict[SourceRef, Path] = {OpInput(1): src} if src is not None else {}
    apply_actions(root, planned, roots, user_root=user_root)


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            p.mkdir(exist_ok=True)
        elif isinstance(content, str) and content.startswith("->"):
            p.symlink_to(content[2:])
        else:
            p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def dst(tmp_path: Path) -> Path:
    d = tmp_path / "dst"
    d.mkdir()
    return d


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write(
        tmp_path / "src",
        {
            "file.txt": "hello\n",
            "dir/a.py": "a\n",
            "dir/b.txt": "b\n",
            "dir/sub/c.py": "c\n",
            "dir/docs/guide.md": "guide\n",
            "dir/docs/keep.md": "keep\n",
            "link": "->file.txt",
            "dirlink": "->/dir",
        },
    )


@pytest.fixture
def host_probe() -> Iterator[Path]:
    """A path in the host's /tmp that an escaping action would create; it must never exist."""
    probe = Path("/tmp") / f"buildsvc-escape-{uuid.uuid4().hex}"
    yield probe
    assert not probe.exists(), f"an action escaped its root and wrote {probe}"


# ---------------------------------------------------------------------------------------------------
# Planning


def op(*actions: FileAction) -> FileOp:
    return FileOp(actions=actions)


def test_plan_follows_each_output_back_to_its_base() -> None:
    file_op = op(
        FileAction(action=MkdirAction(path="/a"), input=0),
        FileAction(action=MkfileAction(path="/a/f"), input=2, output=1),
        FileAction(action=CopyAction(src="/x", dest="/y"), input=None, secondary_input=1, output=0),
    )
    plans = plan_file_op(file_op, 2)
    assert [p.output for p in plans] == [0, 1]
    out0, out1 = plans
    assert out0.base is None and [a.index for a in out0.actions] == [2]
    assert out0.actions[0].source == OpInput(1)
    assert out0.sources == {OpInput(1)}
    assert out1.base == 0 and [a.index for a in out1.actions] == [0, 1]
    assert out1.result_of == 1 and out1.sources == frozenset()


def test_plan_resolves_secondary_inputs_to_the_destination_or_to_earlier_results() -> None:
    file_op = op(
        FileAction(action=MkfileAction(path="/f"), input=None),
        FileAction(action=CopyAction(src="/f", dest="/g"), input=1, secondary_input=1),
        FileAction(action=CopyAction(src="/f", dest="/h"), input=2, secondary_input=1, output=0),
    )
    (plan,) = plan_file_op(file_op, 1)
    assert [a.source for a in plan.actions] == [None, CURRENT_ROOT, ActionResult(0)]
    assert plan.sources == {ActionResult(0)}
    sub = plan_action_result(file_op, 1, 0)
    assert sub.output is None and sub.base is None and [a.index for a in sub.actions] == [0]


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (
            (FileAction(action=MkdirAction(path="/a"), input=5, output=0),),
            "action 0: input 5 is out of range",
        ),
        (
            (
                FileAction(action=MkdirAction(path="/a"), input=3, output=0),
                FileAction(action=MkdirAction(path="/b"), input=None),
            ),
            "action 0: input 3 names action 1, which does not come before action 0",
        ),
        (
            (FileAction(action=MkdirAction(path="/a"), secondary_input=0, output=0),),
            "action 0: mkdir takes no secondary input",
        ),
        (
            (
                FileAction(action=MkdirAction(path="/a"), output=0),
                FileAction(action=MkdirAction(path="/b"), output=0),
            ),
            "action 1: output 0 is also produced by action 0",
        ),
        ((FileAction(action=MkdirAction(path="/a"), output=1),), "outputs must be numbered 0..0"),
    ],
)
def test_plan_refuses_bad_shapes_naming_the_action(actions: Sequence[FileAction], message: str) -> None:
    with pytest.raises(FileOpPlanError) as err:
        plan_file_op(op(*actions), 2)
    assert isinstance(err.value, InvalidInput)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------------
# mkdir, mkfile, symlink, rm


def test_mkdir_sets_exact_mode_and_time(dst: Path) -> None:
    old = os.umask(0o077)
    try:
        run(dst, MkdirAction(path="/d", mode=0o775, timestamp=TS))
    finally:
        os.umask(old)
    assert (dst / "d").is_dir() and mode(dst / "d") == 0o775
    assert os.stat(dst / "d").st_mtime_ns == TS


def test_mkdir_make_parents_and_existing(dst: Path) -> None:
    run(dst, MkdirAction(path="/a/b/c", mode=0o700, make_parents=True, timestamp=TS))
    for p in ("a", "a/b", "a/b/c"):
        assert mode(dst / p) == 0o700 and os.stat(dst / p).st_mtime_ns == TS
    run(dst, MkdirAction(path="/a/b", mode=0o755))  # exists: left alone
    assert mode(dst / "a/b") == 0o700


def test_mkdir_errors_name_the_action_and_path(dst: Path) -> None:
    with pytest.raises(FileActionError) as err:
        run(dst, MkdirAction(path="/missing/child"))
    assert str(err.value) == "mkdir /missing/child: /missing: no such directory"
    assert err.value.action == 0 and isinstance(err.value, BuildsvcError)
    (dst / "file").write_text("")
    with pytest.raises(FileActionError, match=r"^mkdir /file: /file: exists and is not a directory$"):
        run(dst, MkdirAction(path="/file"))


def test_mkfile_data_mode_time_and_overwrite(dst: Path) -> None:
    run(dst, MkfileAction(path="/f", data=b"\x00bin\xff", mode=0o4755, timestamp=TS))
    assert (dst / "f").read_bytes() == b"\x00bin\xff"
    assert mode(dst / "f") == 0o4755 and os.stat(dst / "f").st_mtime_ns == TS
    run(dst, MkfileAction(path="/f", data=b"new", mode=0o600))
    assert (dst / "f").read_bytes() == b"new" and mode(dst / "f") == 0o600
    with pytest.raises(FileActionError, match="mkfile /nodir/f: /nodir/f: parent directory does not exist"):
        run(dst, MkfileAction(path="/nodir/f"))
    os.mkdir(dst / "d")
    with pytest.raises(FileActionError, match="is a directory"):
        run(dst, MkfileAction(path="/d"))


def test_symlink_is_stored_verbatim(dst: Path) -> None:
    run(dst, SymlinkAction(oldpath="../anywhere/x", newpath="/l", timestamp=TS))
    assert os.readlink(dst / "l") == "../anywhere/x"
    assert os.lstat(dst / "l").st_mtime_ns == TS
    with pytest.raises(FileActionError, match=r"^symlink /l -> y: /l: file exists$"):
        run(dst, SymlinkAction(oldpath="y", newpath="/l"))


def test_rm_file_dir_and_not_found(dst: Path) -> None:
    write(dst, {"f": "x", "d/sub/g": "y", "keep": "z"})
    run(dst, RmAction(path="/f"), RmAction(path="/d"))
    assert sorted(os.listdir(dst)) == ["keep"]
    with pytest.raises(FileActionError, match=r"^rm /gone: /gone: no such file or directory$"):
        run(dst, RmAction(path="/gone"))
    run(dst, RmAction(path="/gone/deeper", allow_not_found=True))
    with pytest.raises(FileActionError, match="cannot remove the root"):
        run(dst, RmAction(path="/x/.."))


def test_rm_wildcard(dst: Path) -> None:
    write(dst, {"a.log": "", "b.log": "", "c.txt": "", "logs/d.log": ""})
    run(dst, RmAction(path="/*.log", allow_wildcard=True))
    assert sorted(os.listdir(dst)) == ["c.txt", "logs"]
    run(dst, RmAction(path="/*.none", allow_wildcard=True))  # no match is fine


def test_rm_removes_a_symlink_not_its_target(dst: Path) -> None:
    write(dst, {"target/x": "x", "l": "->/target"})
    run(dst, RmAction(path="/l"))
    assert not os.path.lexists(dst / "l") and (dst / "target/x").exists()


# ---------------------------------------------------------------------------------------------------
# Escapes


def test_absolute_symlink_writes_stay_inside_root(dst: Path, host_probe: Path) -> None:
    os.mkdir(dst / "tmp")
    os.symlink(str(host_probe.parent), dst / "escape")  # /escape -> /tmp, i.e. <root>/tmp
    os.symlink(str(host_probe), dst / "direct")  # /direct -> /tmp/<probe>
    run(dst, MkfileAction(path=f"/escape/{host_probe.name}", data=b"x"))
    assert (dst / "tmp" / host_probe.name).read_bytes() == b"x"
    run(dst, MkfileAction(path="/direct", data=b"y"))
    assert (dst / "tmp" / host_probe.name).read_bytes() == b"y"
    assert os.readlink(dst / "direct") == str(host_probe)  # the link itself is untouched


def test_symlink_chains_and_dotdot_stay_inside_root(dst: Path, host_probe: Path, src: Path) -> None:
    os.symlink("/", dst / "rootlink")
    os.symlink("rootlink/../../../tmp", dst / "chain")  # relative, through an absolute one
    run(dst, MkdirAction(path=f"/chain/{host_probe.name}", make_parents=True))
    run(dst, MkdirAction(path=f"/a/../../../tmp/{host_probe.name}/x", make_parents=True))
    run(dst, CopyAction(src="/file.txt", dest=f"/chain/{host_probe.name}/copied"), src=src)
    run(dst, SymlinkAction(oldpath="/etc/passwd", newpath=f"/chain/{host_probe.name}/l"))
    inside = dst / "tmp" / host_probe.name
    assert sorted(os.listdir(inside)) == ["copied", "l", "x"]


def test_copy_source_cannot_escape_its_root(dst: Path, tmp_path: Path) -> None:
    secret = write(tmp_path / "s", {"etc/passwd": "inside\n", "abs": "->/etc", "rel": "->../../../../etc"})
    for source in ("/../../../../etc/passwd", "/abs/passwd", "/rel/passwd", "../etc/passwd"):
        run(dst, CopyAction(src=source, dest="/out"), src=secret)
        assert (dst / "out").read_text() == "inside\n", source


def test_rm_through_symlink_stays_inside_root(dst: Path, host_probe: Path) -> None:
    host_probe.write_text("host file")
    try:
        os.symlink(str(host_probe.parent), dst / "escape")
        os.mkdir(dst / "tmp")
        run(dst, RmAction(path=f"/escape/{host_probe.name}", allow_not_found=True))
        run(dst, RmAction(path="/escape/*", allow_wildcard=True))
        assert host_probe.exists()
        with pytest.raises(FileActionError, match="no such file"):
            run(dst, RmAction(path=f"/escape/{host_probe.name}"))
    finally:
        host_probe.unlink()


# ---------------------------------------------------------------------------------------------------
# Copy


def test_copy_file_as_new_name_and_into_directory(dst: Path, src: Path) -> None:
    os.utime(src / "file.txt", ns=(TS, TS))
    os.chmod(src / "file.txt", 0o640)
    run(dst, CopyAction(src="/file.txt", dest="/renamed"), src=src)
    assert (dst / "renamed").read_text() == "hello\n"
    assert mode(dst / "renamed") == 0o640 and os.stat(dst / "renamed").st_mtime_ns == TS
    os.mkdir(dst / "into")
    run(dst, CopyAction(src="file.txt", dest="/into"), src=src)
    assert (dst / "into/file.txt").read_text() == "hello\n"


def test_copy_directory_as_and_into(dst: Path, src: Path) -> None:
    run(dst, CopyAction(src="/dir", dest="/new"), src=src)  # dest missing: the dir becomes /new
    assert (dst / "new/sub/c.py").read_text() == "c\n"
    run(dst, CopyAction(src="/dir", dest="/new"), src=src)  # dest exists: copied into it
    assert (dst / "new/dir/sub/c.py").read_text() == "c\n"


def test_copy_dir_contents_only(dst: Path, src: Path) -> None:
    os.mkdir(dst / "existing")
    run(dst, CopyAction(src="/dir", dest="/existing", dir_contents_only=True), src=src)
    assert sorted(os.listdir(dst / "existing")) == ["a.py", "b.txt", "docs", "sub"]
    run(dst, CopyAction(src="/dir/.", dest="/dot"), src=src)  # "/." means the contents too
    assert sorted(os.listdir(dst / "dot")) == ["a.py", "b.txt", "docs", "sub"]


def test_copy_create_dest_path(dst: Path, src: Path) -> None:
    with pytest.raises(FileActionError) as err:
        run(dst, CopyAction(src="/file.txt", dest="/a/b/f"), src=src)
    assert str(err.value) == (
        "copy /file.txt -> /a/b/f: /a/b: no such directory (and create_dest_path is off)"
    )
    run(dst, CopyAction(src="/file.txt", dest="/a/b/f", create_dest_path=True, timestamp=TS), src=src)
    assert (dst / "a/b/f").read_text() == "hello\n" and mode(dst / "a") == 0o755
    assert os.stat(dst / "a").st_mtime_ns == TS  # a created parent gets the time
    run(dst, CopyAction(src="/file.txt", dest="/a/c/"), src=src)  # trailing '/': dest is a directory
    assert (dst / "a/c/file.txt").exists()


def test_copy_missing_source_error(dst: Path, src: Path) -> None:
    with pytest.raises(FileActionError) as err:
        run(dst, CopyAction(src="/src/x", dest="/dst"), src=src)
    assert str(err.value) == "copy /src/x -> /dst: /src/x: no such file or directory"


def test_copy_from_scratch_and_unprovided_roots(dst: Path) -> None:
    scratch = [PlannedAction(index=0, action=CopyAction(src="/x", dest="/y"), source=None)]
    with pytest.raises(FileActionError, match="/x: no such file"):
        apply_actions(dst, scratch, {})
    empty_ok = CopyAction(src="/*", dest="/y", allow_wildcard=True, allow_empty_wildcard=True)
    apply_actions(dst, [PlannedAction(index=0, action=empty_ok, source=None)], {})
    with pytest.raises(FileActionError, match="no directory was provided"):
        apply_actions(
            dst, [PlannedAction(index=3, action=CopyAction(src="/x", dest="/y"), source=OpInput(2))], {}
        )


def test_copy_symlinks_kept_or_followed(dst: Path, src: Path) -> None:
    run(dst, CopyAction(src="/link", dest="/kept"), src=src)
    assert os.readlink(dst / "kept") == "file.txt"
    run(dst, CopyAction(src="/link", dest="/followed", follow_symlinks=True), src=src)
    assert not (dst / "followed").is_symlink() and (dst / "followed").read_text() == "hello\n"
    # An absolute link is followed inside the source root, not on the host.
    run(dst, CopyAction(src="/dirlink", dest="/viadir", follow_symlinks=True), src=src)
    assert (dst / "viadir/a.py").read_text() == "a\n"


def test_copy_wildcards(dst: Path, src: Path) -> None:
    os.mkdir(dst / "out")
    run(dst, CopyAction(src="/dir/*.py", dest="/out/", allow_wildcard=True), src=src)
    assert sorted(os.listdir(dst / "out")) == ["a.py"]
    run(dst, CopyAction(src="/dir/*/*.py", dest="/out2/", allow_wildcard=True), src=src)
    assert sorted(os.listdir(dst / "out2")) == ["c.py"]
    with pytest.raises(FileActionError, match="matched nothing"):
        run(dst, CopyAction(src="/dir/*.rs", dest="/out/", allow_wildcard=True), src=src)
    run(
        dst,
        CopyAction(src="/dir/*.rs", dest="/never/", allow_wildcard=True, allow_empty_wildcard=True),
        src=src,
    )
    assert not (dst / "never").exists()


def test_copy_include_and_exclude(dst: Path, src: Path) -> None:
    run(dst, CopyAction(src="/dir", dest="/inc", include_patterns=("**/*.py",)), src=src)
    found = sorted(str(p.relative_to(dst / "inc")) for p in (dst / "inc").rglob("*"))
    assert found == ["a.py", "sub", "sub/c.py"]  # docs/ leads to no match: not created
    run(
        dst, CopyAction(src="/dir", dest="/exc", exclude_patterns=("*.txt", "docs", "!docs/keep.md")), src=src
    )
    found = sorted(str(p.relative_to(dst / "exc")) for p in (dst / "exc").rglob("*"))
    assert found == ["a.py", "docs", "docs/keep.md", "sub", "sub/c.py"]


def test_copy_mode_and_timestamp(dst: Path, src: Path) -> None:
    run(dst, CopyAction(src="/dir", dest="/m", mode=0o700, timestamp=TS), src=src)
    assert mode(dst / "m/a.py") == 0o700 and mode(dst / "m/sub") == 0o700
    assert os.stat(dst / "m/sub").st_mtime_ns == TS and os.stat(dst / "m/a.py").st_mtime_ns == TS


def test_copy_replacing_existing_paths(dst: Path, src: Path) -> None:
    os.makedirs(dst / "clash/a.py")
    with pytest.raises(FileActionError, match="cannot replace a directory with a file"):
        run(dst, CopyAction(src="/dir", dest="/clash", dir_contents_only=True), src=src)
    write(dst, {"clash2/sub": "a file where a directory comes"})
    with pytest.raises(FileActionError, match="cannot replace a non-directory with a directory"):
        run(dst, CopyAction(src="/dir", dest="/clash2", dir_contents_only=True), src=src)
    run(
        dst,
        CopyAction(src="/dir", dest="/clash2", dir_contents_only=True, always_replace_existing=True),
        src=src,
    )
    assert (dst / "clash2/sub/c.py").read_text() == "c\n"
    (dst / "plain").write_text("old")
    run(dst, CopyAction(src="/file.txt", dest="/plain"), src=src)
    assert (dst / "plain").read_text() == "hello\n"


def test_copy_onto_an_absolute_symlink_writes_inside_root(dst: Path, src: Path) -> None:
    host_passwd = Path("/etc/passwd").read_bytes()
    os.mkdir(dst / "etc")
    os.symlink("/etc/passwd", dst / "lnk")
    run(dst, CopyAction(src="/file.txt", dest="/lnk"), src=src)
    assert (dst / "etc/passwd").read_text() == "hello\n"
    assert Path("/etc/passwd").read_bytes() == host_passwd


def test_copy_keeps_hard_links(dst: Path, tmp_path: Path) -> None:
    s = write(tmp_path / "hl", {"d/one": "same"})
    os.link(s / "d/one", s / "d/two")
    run(dst, CopyAction(src="/d", dest="/d"), src=s)
    assert os.stat(dst / "d/one").st_ino == os.stat(dst / "d/two").st_ino


def test_copy_within_the_same_root_into_itself(dst: Path) -> None:
    write(dst, {"a/x": "x", "a/y/z": "z"})
    run(dst, CopyAction(src="/a", dest="/a/y/"), same_root=True)
    assert (dst / "a/y/a/y/z").read_text() == "z"
    assert not (dst / "a/y/a/y/a").exists()  # the copy never reads its own output
    run(dst, CopyAction(src="/a/x", dest="/a/x", mode=0o600), same_root=True)
    assert (dst / "a/x").read_text() == "x" and mode(dst / "a/x") == 0o600


def test_copy_attempt_unpack(dst: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inner")
        info.size, info.mode, info.uid = 1, 0o4711, 7
        tar.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo("abs-link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    escaping = io.BytesIO()
    with tarfile.open(fileobj=escaping, mode="w") as tar:
        link = tarfile.TarInfo("up")
        link.type, link.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        tar.addfile(link)
    s = write(
        tmp_path / "arch",
        {
            "a.tar.gz": gzip.compress(buf.getvalue()),
            "plain.txt": "not an archive",
            "text.gz": gzip.compress(b"compressed, not a tar"),
            "escape.tar": escaping.getvalue(),
        },
    )
    # Extracted into dest (a directory), modes and owners from the archive, symlinks as they are.
    run(dst, CopyAction(src="/a.tar.gz", dest="/out", attempt_unpack=True), src=s)
    assert (dst / "out" / "inner").read_text() == "x" and mode(dst / "out" / "inner") == 0o4711
    assert (dst / "out" / "inner").stat().st_uid == 7
    assert os.readlink(dst / "out" / "abs-link") == "/etc/passwd"
    run(dst, CopyAction(src="/plain.txt", dest="/p", attempt_unpack=True), src=s)
    assert (dst / "p").read_text() == "not an archive"
    run(dst, CopyAction(src="/text.gz", dest="/t.gz", attempt_unpack=True), src=s)
    assert (dst / "t.gz").read_bytes() == gzip.compress(b"compressed, not a tar")
    with pytest.raises(FileActionError, match=r"unpacking escape\.tar"):
        run(dst, CopyAction(src="/escape.tar", dest="/e", attempt_unpack=True), src=s)


# ---------------------------------------------------------------------------------------------------
# Ownership (needs root for chown)


def passwd_root(root: Path, passwd: str, group: str) -> Path:
    return write(root, {"etc/passwd": passwd, "etc/group": group})


@pytest.mark.root
def test_copy_chown_by_name_uses_the_destination_passwd(dst: Path, tmp_path: Path) -> None:
    passwd_root(dst, "root:x:0:0::/:/bin/sh\napp:x:1234:2345::/:/bin/sh\n", "root:x:0:\nstaff:x:3456:\n")
    s = passwd_root(tmp_path / "s", "app:x:999:999::/:/bin/sh\n", "staff:x:998:\n")
    write(s, {"d/f": "x"})
    run(dst, CopyAction(src="/d", dest="/out", owner=Owner(user="app")), src=s)
    for p in ("out", "out/f"):
        st = os.lstat(dst / p)
        assert (st.st_uid, st.st_gid) == (1234, 2345), p
    run(dst, CopyAction(src="/d/f", dest="/g", owner=Owner(user="app", group="staff")), src=s)
    assert (os.stat(dst / "g").st_uid, os.stat(dst / "g").st_gid) == (1234, 3456)
    run(dst, CopyAction(src="/d/f", dest="/n", owner=Owner(user=42)), src=s)
    assert (os.stat(dst / "n").st_uid, os.stat(dst / "n").st_gid) == (42, 42)  # by id: gid = uid
    run(dst, CopyAction(src="/d/f", dest="/o", owner=Owner(group=7)), src=s)
    assert (os.stat(dst / "o").st_uid, os.stat(dst / "o").st_gid) == (0, 7)


@pytest.mark.root
def test_chown_with_an_unknown_name_fails_clearly(dst: Path, src: Path) -> None:
    passwd_root(dst, "root:x:0:0::/:/bin/sh\n", "root:x:0:\n")
    with pytest.raises(FileActionError) as err:
        run(dst, MkdirAction(path="/d", owner=Owner(user="nobody-here")))
    assert (
        "mkdir /d" in str(err.value) and "nobody-here" in str(err.value) and "/etc/passwd" in str(err.value)
    )
    with pytest.raises(FileActionError, match="no 'nogroup' in /etc/group"):
        run(dst, CopyAction(src="/file.txt", dest="/f", owner=Owner(user=1, group="nogroup")), src=src)


@pytest.mark.root
def test_copied_files_keep_their_xattrs_mode_times_and_setuid_past_a_chown(dst: Path, tmp_path: Path) -> None:
    # Files are written through their open descriptors: the owner first, then the mode (a chown
    # clears setuid), the xattrs and the times; an empty file's source is never opened.
    s = write(tmp_path / "x", {"tool": "#!/bin/sh\n", "empty": "", "plain": "p"})
    for name in ("tool", "empty"):
        os.setxattr(s / name, "user.note", name.encode())
    os.setxattr(s / "tool", "trusted.overlay.origin", b"layer bookkeeping")
    os.chmod(s / "tool", 0o4755)
    os.utime(s / "tool", ns=(TS, TS))
    run(dst, CopyAction(src="/", dest="/out/", owner=Owner(user=7, group=8)), src=s)
    tool = os.stat(dst / "out/tool")
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode), tool.st_mtime_ns) == (7, 8, 0o4755, TS)
    assert os.getxattr(dst / "out/tool", "user.note") == b"tool"
    assert "trusted.overlay.origin" not in os.listxattr(dst / "out/tool")
    assert os.getxattr(dst / "out/empty", "user.note") == b"empty"
    assert (dst / "out/empty").read_bytes() == b"" and (dst / "out/plain").read_text() == "p"


def test_a_copy_across_filesystems_has_every_file_whole(dst: Path) -> None:
    # From tmpfs to the test's disk copy_file_range fails (EXDEV) or works by the kernel: either
    # way each file, of every size, arrives whole (after a first EXDEV the rest are read and written).
    sizes = {f"f{n}": n for n in (1, 4095, 4096, 70_000, 1 << 20, (1 << 20) + 3, 3 << 20)}
    shm = Path("/dev/shm") / f"buildsvc-copy-{uuid.uuid4().hex}"
    try:
        src = write(shm, {name: os.urandom(size) for name, size in sizes.items()})
        run(dst, CopyAction(src="/", dest="/out/"), src=src)
        for name in sizes:
            assert (dst / "out" / name).read_bytes() == (src / name).read_bytes(), name
    finally:
        shutil.rmtree(shm, ignore_errors=True)


@pytest.mark.root
def test_owner_on_mkdir_mkfile_symlink_and_copy_preserving(dst: Path, tmp_path: Path) -> None:
    run(
        dst,
        MkdirAction(path="/p/q", make_parents=True, owner=Owner(user=5, group=6)),
        MkfileAction(path="/p/f", owner=Owner(user=7), mode=0o4755),
        SymlinkAction(oldpath="f", newpath="/p/l", owner=Owner(user=8, group=9)),
    )
    assert (os.stat(dst / "p").st_uid, os.stat(dst / "p/q").st_gid) == (5, 6)
    st = os.stat(dst / "p/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 7, 0o4755)  # setuid survives chown
    assert (os.lstat(dst / "p/l").st_uid, os.lstat(dst / "p/l").st_gid) == (8, 9)
    s = write(tmp_path / "own", {"f": "x"})
    os.chown(s / "f", 321, 654)
    run(dst, CopyAction(src="/f", dest="/kept"), src=s)
    assert (os.stat(dst / "kept").st_uid, os.stat(dst / "kept").st_gid) == (321, 654)


@pytest.mark.root
def test_user_root_overrides_where_names_are_looked_up(dst: Path, tmp_path: Path) -> None:
    other = passwd_root(tmp_path / "users", "svc:x:77:88::/:/bin/sh\n", "")
    run(dst, MkfileAction(path="/f", owner=Owner(user="svc")), user_root=other)
    assert (os.stat(dst / "f").st_uid, os.stat(dst / "f").st_gid) == (77, 88)


def test_errors_are_buildsvc_errors_with_the_action_index(dst: Path) -> None:
    with pytest.raises(FileActionError) as err:
        run(dst, MkdirAction(path="/ok"), RmAction(path="/missing"))
    assert err.value.action == 1 and err.value.path == "/missing" and err.value.description == "rm /missing"
    assert (dst / "ok").is_dir()  # earlier actions did run


def test_chained_actions_see_each_other(dst: Path) -> None:
    run(
        dst,
        MkdirAction(path="/a"),
        MkfileAction(path="/a/f", data=b"1"),
        CopyAction(src="/a", dest="/b"),
        RmAction(path="/a"),
        same_root=True,
    )
    assert sorted(os.listdir(dst)) == ["b"] and (dst / "b/f").read_bytes() == b"1"


@pytest.mark.root
def test_copy_into_new_dirs_keeps_every_owner_and_mode(dst: Path, tmp_path: Path) -> None:
    # A copy skips the lookup and the chown of an entry born in a directory it made, when the entry
    # is born with the owner it wants; these are the cases where it is not.
    s = write(tmp_path / "own", {"d/mine": "m", "d/theirs": "t", "d/empty": "", "g/sub/f": "f", "g/f": "f"})
    os.chown(s / "d/theirs", 321, 654)
    os.chmod(s / "d/mine", 0o4711)
    os.chown(s / "g", 0, 50)
    os.chmod(s / "g", 0o2775)  # setgid: what is made in it is born with group 50, not ours
    os.chown(s / "g/sub", 0, 0)
    run(dst, CopyAction(src="/", dest="/out", dir_contents_only=True, create_dest_path=True), src=s)

    def owner_mode(rel: str) -> tuple[int, int, int]:
        st = os.lstat(dst / "out" / rel)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode("d/mine") == (0, 0, 0o4711)
    assert owner_mode("d/theirs") == (321, 654, 0o644)
    assert owner_mode("g") == (0, 50, 0o2775)
    assert owner_mode("g/f") == (0, 0, 0o644)
    assert owner_mode("g/sub") == (0, 0, 0o755)
    assert owner_mode("g/sub/f") == (0, 0, 0o644)
    assert (dst / "out/d/empty").read_bytes() == b"" and (dst / "out/g/sub/f").read_text() == "f"


def test_copy_of_two_sources_into_the_same_new_directories(dst: Path, tmp_path: Path) -> None:
    # The second source writes into directories the first one made: what is there is replaced.
    s = write(tmp_path / "two", {"a/x/same": "from a", "a/x/only-a": "a", "b/x/same": "from b"})
    run(dst, CopyAction(src="/*", dest="/out/", allow_wildcard=True, dir_contents_only=True), src=s)
    assert (dst / "out/x/same").read_text() == "from b"
    assert (dst / "out/x/only-a").read_text() == "a"


def test_copy_of_a_file_larger_than_one_copy_call(dst: Path, tmp_path: Path) -> None:
    big = os.urandom(3 << 20)  # several copy_file_range calls
    s = write(tmp_path / "big", {"blob": big, "small": "s"})
    run(dst, CopyAction(src="/", dest="/out", dir_contents_only=True, create_dest_path=True), src=s)
    assert (dst / "out/blob").read_bytes() == big and (dst / "out/small").read_text() == "s"
