"""The OCI spec builder: pure, no root needed (the rootfs is a plain temp directory)."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from pathlib import Path
from typing import Any

import pytest

from buildsvc.executors import InvalidPath, InvalidProcessSpec, SpecOptions, UnknownUser, build_spec
from buildsvc.executors.oci_spec import DEFAULT_CAPABILITIES
from buildsvc.executors.paths import clean_container_path, resolve_in_root
from buildsvc.solver.worker import (
    DEFAULT_PATH,
    ExecSpec,
    Mount,
    MountKind,
    NetworkMode,
    ProcessSpec,
    SnapshotMount,
    Terminal,
)

PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def spec_for(rootfs: Path, **kw: Any) -> ExecSpec:
    process = ProcessSpec(
        args=kw.pop("args", ("/bin/true",)),
        env=kw.pop("env", ()),
        cwd=kw.pop("cwd", "/"),
        user=kw.pop("user", ""),
    )
    return ExecSpec(process=process, rootfs=SnapshotMount(key="k", path=str(rootfs), readonly=False), **kw)


def by_dest(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in config["mounts"]}


def test_default_spec_has_buildkit_namespaces_mounts_and_caps(rootfs: Path) -> None:
    config = build_spec(spec_for(rootfs), SpecOptions(nofile=(1024, 4096)))
    assert [n["type"] for n in config["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    mounts = by_dest(config)
    assert list(mounts)[:7] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/dev"]["type"] == "tmpfs"
    assert {"ro", "nosuid", "noexec", "nodev"} <= set(mounts["/sys"]["options"])
    caps = config["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert config["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]
    assert "/proc/kcore" in config["linux"]["maskedPaths"]
    assert "/proc/sys" in config["linux"]["readonlyPaths"]
    assert config["root"] == {"path": str(rootfs), "readonly": False}
    assert config["process"]["env"] == [DEFAULT_PATH]
    assert config["hostname"] == "buildsvc"
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert "cgroupsPath" not in config["linux"]


def test_nofile_defaults_to_the_daemons_own_limits(rootfs: Path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert build_spec(spec_for(rootfs))["process"]["rlimits"][0] == {
        "type": "RLIMIT_NOFILE",
        "soft": soft,
        "hard": hard,
    }


def test_host_network_keeps_the_host_namespace(rootfs: Path) -> None:
    config = build_spec(spec_for(rootfs, network=NetworkMode.HOST))
    assert "network" not in [n["type"] for n in config["linux"]["namespaces"]]


def test_readonly_root_hostname_cgroups_path(rootfs: Path) -> None:
    config = build_spec(
        spec_for(rootfs, readonly_root=True, hostname="box"), SpecOptions(cgroups_path="/buildsvc/x")
    )
    assert config["root"]["readonly"] is True
    assert config["hostname"] == "box"
    assert config["linux"]["cgroupsPath"] == "/buildsvc/x"


def test_env_keeps_a_given_path_and_rejects_entries_without_equals(rootfs: Path) -> None:
    config = build_spec(spec_for(rootfs, env=("PATH=/bin", "A=1")))
    assert config["process"]["env"] == ["PATH=/bin", "A=1"]
    with pytest.raises(InvalidProcessSpec, match="'NOVALUE' is not KEY=VALUE"):
        build_spec(spec_for(rootfs, env=("NOVALUE",)))


def test_empty_args_rejected(rootfs: Path) -> None:
    with pytest.raises(InvalidProcessSpec) as e:
        build_spec(spec_for(rootfs, args=()))
    assert e.value.field == "args"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", {"uid": 0, "gid": 0}),
        ("alice", {"uid": 1000, "gid": 1000, "additionalGids": [10]}),
        ("1000", {"uid": 1000, "gid": 1000, "additionalGids": [10]}),
        ("1234", {"uid": 1234, "gid": 0}),
        ("1234:5678", {"uid": 1234, "gid": 5678}),
        ("alice:staff", {"uid": 1000, "gid": 50}),
        ("alice:7", {"uid": 1000, "gid": 7}),
    ],
)
def test_user_resolution(rootfs: Path, user: str, expected: dict[str, Any]) -> None:
    assert build_spec(spec_for(rootfs, user=user))["process"]["user"] == expected


def test_unknown_user_and_group_name_the_problem(rootfs: Path) -> None:
    with pytest.raises(UnknownUser, match="no 'mallory' in /etc/passwd"):
        build_spec(spec_for(rootfs, user="mallory"))
    with pytest.raises(UnknownUser, match="no 'nogroup' in /etc/group"):
        build_spec(spec_for(rootfs, user="alice:nogroup"))


def test_passwd_symlinked_out_of_the_rootfs_is_read_inside_it(tmp_path: Path) -> None:
    # An image whose /etc/passwd points at /etc/passwd-host: that must be the image's file, never the host's.
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd-host").write_text("eve:x:4242:4242::/:/bin/sh\n")
    os.symlink("/etc/passwd-host", root / "etc" / "passwd")
    (root / "etc" / "group").symlink_to("../../../../../../etc/group.d/../group-host")
    config = build_spec(spec_for(root, user="eve"))
    assert config["process"]["user"] == {"uid": 4242, "gid": 4242}
    # Inside the rootfs the group link leads nowhere, so "root" is unknown (the host knows it).
    with pytest.raises(UnknownUser):
        build_spec(spec_for(root, user="eve:root"))


def test_user_mounts_bind_tmpfs_cache(rootfs: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    snap = SnapshotMount(key="v", path=str(host), readonly=True)
    config = build_spec(
        spec_for(
            rootfs,
            mounts=(
                Mount(kind=MountKind.BIND, dest="/src/./a/", source=str(host), readonly=True),
                Mount(kind=MountKind.BIND, dest="/snap", source=snap, selector="/sub"),
                Mount(kind=MountKind.CACHE, dest="/root/.cache", source=str(host)),
                Mount(kind=MountKind.TMPFS, dest="/tmp", tmpfs_size=1 << 20, readonly=True),
                Mount(kind=MountKind.TMPFS, dest="/dev/shm"),
            ),
        )
    )
    mounts = by_dest(config)
    assert mounts["/src/a"] == {
        "destination": "/src/a",
        "type": "bind",
        "source": str(host),
        "options": ["rbind", "ro"],
    }
    # A read-only snapshot is bound read-only even when the mount does not ask for it.
    assert mounts["/snap"]["source"] == str(host / "sub")
    assert mounts["/snap"]["options"] == ["rbind", "ro"]
    assert mounts["/root/.cache"]["options"] == ["rbind", "rw"]
    assert mounts["/tmp"]["type"] == "tmpfs"
    assert {"size=1048576", "ro"} <= set(mounts["/tmp"]["options"])
    # The build's /dev/shm replaces the default one, in its place.
    dests = [m["destination"] for m in config["mounts"]]
    assert dests.count("/dev/shm") == 1
    assert mounts["/dev/shm"]["source"] == "tmpfs"
    # Parents before children.
    assert dests.index("/tmp") < dests.index("/src/a") < dests.index("/root/.cache")


@pytest.mark.parametrize("dest", ["relative", "/a/../../etc", "/", "", "/a\x00b"])
def test_bad_mount_destinations_rejected(rootfs: Path, tmp_path: Path, dest: str) -> None:
    with pytest.raises(InvalidPath):
        build_spec(spec_for(rootfs, mounts=(Mount(kind=MountKind.BIND, dest=dest, source=str(tmp_path)),)))


def test_missing_source_and_sourceless_bind_rejected(rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidPath, match="does not exist"):
        build_spec(
            spec_for(rootfs, mounts=(Mount(kind=MountKind.BIND, dest="/x", source=str(tmp_path / "no")),))
        )
    with pytest.raises(InvalidProcessSpec, match="needs a source"):
        build_spec(spec_for(rootfs, mounts=(Mount(kind=MountKind.CACHE, dest="/x"),)))


def test_selector_cannot_leave_its_source(rootfs: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "escape").symlink_to("/etc")
    mount = Mount(kind=MountKind.BIND, dest="/x", source=str(src), selector="/escape")
    # The link means <src>/etc, which does not exist: never the host's /etc.
    with pytest.raises(InvalidPath, match="does not exist"):
        build_spec(spec_for(rootfs, mounts=(mount,)))
    (src / "etc").mkdir()
    assert by_dest(build_spec(spec_for(rootfs, mounts=(mount,))))["/x"]["source"] == str(src / "etc")


def test_cwd_is_cleaned_and_dotdot_rejected(rootfs: Path) -> None:
    assert build_spec(spec_for(rootfs, cwd="/work//a/."))["process"]["cwd"] == "/work/a"
    with pytest.raises(InvalidPath):
        build_spec(spec_for(rootfs, cwd="/work/../.."))


def test_clean_container_path() -> None:
    assert clean_container_path("/a/./b//c/") == "/a/b/c"
    with pytest.raises(InvalidPath):
        clean_container_path("/a/../b")


def test_resolve_in_root_keeps_symlinks_inside(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "real").mkdir(parents=True)
    (root / "abs").symlink_to("/real")
    (root / "rel").symlink_to("../../../../real")
    (root / "chain").symlink_to("abs")
    (root / "loop").symlink_to("loop")
    for link in ("abs", "rel", "chain"):
        assert resolve_in_root(str(root), f"/{link}/file") == str(root / "real" / "file")
    assert resolve_in_root(str(root), "/../../etc/passwd") == str(root / "etc" / "passwd")
    with pytest.raises(InvalidPath, match="too many levels"):
        resolve_in_root(str(root), "/loop")


def test_a_terminal_asks_the_runtime_for_a_pty_of_its_size(rootfs: Path) -> None:
    assert build_spec(spec_for(rootfs))["process"]["terminal"] is False
    assert "consoleSize" not in build_spec(spec_for(rootfs))["process"]
    master, slave = os.openpty()
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        process = build_spec(spec_for(rootfs, terminal=Terminal(slave)))["process"]
        assert process["terminal"] is True
        assert process["consoleSize"] == {"height": 33, "width": 101}
    finally:
        os.close(master)
        os.close(slave)
