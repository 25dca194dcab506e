"""OciRuntimeExecutor on real runc and crun, over real overlay snapshots."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from buildsvc.executors import (
    OciRuntimeExecutor,
    OverlaySnapshotter,
    ProcessCancelled,
    ProcessExitError,
    RuntimeFailure,
    UnknownUser,
)
from buildsvc.executors.mounts import mounts_under
from buildsvc.solver.worker import (
    DEFAULT_PATH,
    ExecSpec,
    Mount,
    MountKind,
    NetworkMode,
    ProcessSpec,
)
from tests.integration.executors.conftest import Runner, commit_busybox, processes_running

pytestmark = pytest.mark.root


def interfaces(proc_net_dev: str) -> set[str]:
    return {line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:] if ":" in line}


def test_output_is_streamed_as_it_arrives(executor: OciRuntimeExecutor, overlay: OverlaySnapshotter) -> None:
    commit_busybox(overlay)
    overlay.prepare("a", "busybox")
    rootfs = overlay.mount("a")
    arrivals: list[tuple[float, bytes]] = []
    errs: list[bytes] = []
    try:
        start = time.monotonic()
        result = executor.run(
            ExecSpec(
                process=ProcessSpec(args=("sh", "-c", "echo hello; echo oops >&2; sleep 1; echo bye")),
                rootfs=rootfs,
            ),
            stdout=lambda b: arrivals.append((time.monotonic() - start, b)),
            stderr=errs.append,
        )
    finally:
        overlay.unmount("a")
    assert b"".join(b for _, b in arrivals) == b"hello\nbye\n"
    assert b"".join(errs) == b"oops\n"
    assert result.exit_code == 0
    assert result.duration >= 1.0
    # "hello" reached us while the process was still sleeping, not when it ended.
    assert arrivals[0][1].startswith(b"hello")
    assert arrivals[0][0] < result.duration - 0.5


def test_exit_codes(runner: Runner) -> None:
    with pytest.raises(ProcessExitError) as e:
        runner.run("sh", "-c", "exit 3")
    assert e.value.exit_code == 3
    assert runner.run("sh", "-c", "exit 3", valid_exit_codes=(0, 3)).result.exit_code == 3
    assert runner.run("true").result.exit_code == 0


def test_missing_command_is_a_runtime_failure(runner: Runner) -> None:
    with pytest.raises(RuntimeFailure) as e:
        runner.run("no-such-command")
    assert "no-such-command" in e.value.message


def test_env_cwd_default_path(runner: Runner) -> None:
    out = runner.run(
        "sh", "-c", 'echo "$FOO|$PATH"; pwd; hostname', env=("FOO=bar baz",), cwd="/work/dir"
    ).out
    assert out.splitlines() == [f"bar baz|{DEFAULT_PATH.removeprefix('PATH=')}", "/work/dir", "buildsvc"]


def test_user_by_name_and_by_uid_gid(runner: Runner) -> None:
    assert runner.run("id", user="nobody").out.strip() == "uid=65534(nobody) gid=65534(nobody)"
    out = runner.run("sh", "-c", "id -u; id -g; stat -c %u:%g .", user="1234:4321", cwd="/made/for/me").out
    # The missing working directory is created, owned by the process's user.
    assert out.split() == ["1234", "4321", "1234:4321"]
    assert runner.run("id", "-u").out.strip() == "0"
    with pytest.raises(UnknownUser):
        runner.run("id", user="mallory")


def test_network_none_has_only_loopback(runner: Runner) -> None:
    assert interfaces(runner.run("cat", "/proc/net/dev").out) == {"lo"}


def test_network_host_sees_host_interfaces(runner: Runner) -> None:
    with open("/proc/net/dev", encoding="ascii") as f:
        host = interfaces(f.read())
    assert len(host) > 1, "the host should have an interface besides lo"
    assert interfaces(runner.run("cat", "/proc/net/dev", network=NetworkMode.HOST).out) == host


def test_bind_and_tmpfs_mounts_honour_readonly(runner: Runner, tmp_path: Path) -> None:
    ro_dir = tmp_path / "ro"
    rw_dir = tmp_path / "rw"
    ro_dir.mkdir()
    rw_dir.mkdir()
    (ro_dir / "in").write_text("from host\n")
    mounts = (
        Mount(kind=MountKind.BIND, dest="/in", source=str(ro_dir), readonly=True),
        Mount(kind=MountKind.BIND, dest="/out", source=str(rw_dir)),
        Mount(kind=MountKind.TMPFS, dest="/scratch", tmpfs_size=1 << 20),
        Mount(kind=MountKind.TMPFS, dest="/frozen", readonly=True),
    )
    script = (
        "cat /in/in; touch /in/x 2>/dev/null && echo in-writable; echo result > /out/r;"
        " echo s > /scratch/s && cat /scratch/s; touch /frozen/x 2>/dev/null && echo frozen-writable;"
        " grep ' /scratch ' /proc/mounts | grep -o 'size=[0-9a-z]*'"
    )
    out = runner.run("sh", "-c", script, mounts=mounts).out
    assert out.splitlines() == ["from host", "s", "size=1024k"]
    assert (rw_dir / "r").read_text() == "result\n"
    assert not (ro_dir / "x").exists()


def test_readonly_root_without_proc_dir(executor: OciRuntimeExecutor, overlay: OverlaySnapshotter) -> None:
    # An image with no /proc, /dev or /sys: the runtime must still make its mount points, so the
    # snapshot stays writable and only the container sees "/" read-only.
    commit_busybox(overlay, "bare", system_dirs=False)
    runner = Runner(executor, overlay)
    out = runner.run(
        "sh",
        "-c",
        "ls /proc/self/status; echo t > /tmp2/t && cat /tmp2/t",
        base="bare",
        readonly_root=True,
        mounts=(Mount(kind=MountKind.TMPFS, dest="/tmp2"),),
    ).out
    assert out.splitlines() == ["/proc/self/status", "t"]
    with pytest.raises(ProcessExitError):
        runner.run("touch", "/x", base="bare", readonly_root=True)
    captured = runner.run("sh", "-c", "touch /x", base="bare", readonly_root=True, valid_exit_codes=(1,))
    assert b"Read-only file system" in captured.stderr


def test_cancel_kills_quickly_and_leaves_nothing(
    executor: OciRuntimeExecutor, overlay: OverlaySnapshotter, tmp_path: Path
) -> None:
    commit_busybox(overlay)
    overlay.prepare("a", "busybox")
    rootfs = overlay.mount("a")
    cancel = threading.Event()
    started = threading.Event()
    spec = ExecSpec(process=ProcessSpec(args=("sh", "-c", "echo up; exec sleep 100")), rootfs=rootfs)

    def cancel_once_started() -> None:
        if started.wait(10):
            cancel.set()

    timer = threading.Thread(target=cancel_once_started)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ProcessCancelled):
            executor.run(spec, stdout=lambda _: started.set(), cancel=cancel)
    finally:
        overlay.unmount("a")
        timer.join()
    assert started.is_set()
    assert time.monotonic() - t0 < 5
    assert processes_running("sleep", "100") == []
    assert executor.list_containers() == []
    listed = subprocess.run(
        [executor.name, "--root", executor.state_root, "list", "-q"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.strip() == ""
    assert mounts_under(str(tmp_path)) == []
    assert os.listdir(os.path.join(os.path.dirname(executor.state_root), "bundles")) == []


def test_exec_result_committed_as_a_layer(runner: Runner) -> None:
    runner.run("sh", "-c", "echo 1 > /one && rm /bin/ls", commit_as="layer1")
    changes = runner.snapshotter.changes("layer1")
    assert [(c.kind.value, c.path) for c in changes] == [
        ("modified", "/bin"),
        ("deleted", "/bin/ls"),
        ("added", "/one"),
    ]
    assert (
        runner.run("sh", "-c", "cat /one; ls /bin/ls 2>&1 || true", base="layer1").out.splitlines()[0] == "1"
    )


def test_cancel_before_start_and_failing_callback_leave_nothing(
    executor: OciRuntimeExecutor, overlay: OverlaySnapshotter
) -> None:
    commit_busybox(overlay)
    overlay.prepare("a", "busybox")
    rootfs = overlay.mount("a")
    try:
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(ProcessCancelled):
            executor.run(ExecSpec(process=ProcessSpec(args=("sleep", "100")), rootfs=rootfs), cancel=cancel)

        def broken(_: bytes) -> None:
            raise ValueError("callback broke")

        # 1 MiB of output: more than a pipe holds, so the pipe must be drained after the failure.
        spec = ExecSpec(process=ProcessSpec(args=("sh", "-c", "head -c 1048576 /dev/zero")), rootfs=rootfs)
        with pytest.raises(ValueError, match="callback broke"):
            executor.run(spec, stdout=broken)
    finally:
        overlay.unmount("a")
    assert processes_running("sleep", "100") == []
    assert executor.list_containers() == []
