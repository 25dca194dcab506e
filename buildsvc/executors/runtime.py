"""``OciRuntimeExecutor``: runs build steps with an OCI runtime CLI (runc or crun).

Like BuildKit's ``runcexecutor``: one bundle directory per run holding ``config.json``, then
``<runtime> --root <our state dir> run --bundle DIR ID`` in the foreground, its stdout and stderr
piped to the caller as they arrive. The runtime's own errors go to a JSON log file in the bundle, so
a container that could not start (``RuntimeFailure``) is told apart from a process that exited
non-zero (``ProcessExitError``). Whatever happens, the container is gone afterwards (``run`` deletes
it when it ends by itself; after a cancel or an error we delete it) and the bundle removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Sequence
from typing import IO

from buildsvc.executors.errors import ProcessCancelled, ProcessExitError, RuntimeFailure
from buildsvc.executors.oci_spec import SpecOptions, build_spec
from buildsvc.executors.paths import resolve_in_root
from buildsvc.executors.users import resolve_user
from buildsvc.solver.worker import ExecResult, ExecSpec, OutputCallback

_POLL_SECONDS = 0.05
_KILL_RETRY_SECONDS = 0.1
# How long a cancel watcher outlives its run, at most (it reacts to the cancel itself at once).
_CANCEL_WATCH_SECONDS = 0.25
_READ_SIZE = 65536


class OciRuntimeExecutor:
    """An ``Executor`` over the runc/crun command line (both have the same one)."""

    def __init__(
        self,
        *,
        runtime: str,
        binary: str,
        root: str,
        launcher: Sequence[str] = (),
        spec_options: SpecOptions | None = None,
        cgroup_parent: str | None = "buildsvc",
        no_pivot: bool = False,
        kill_grace: float = 5.0,
    ) -> None:
        """Create an executor keeping its runtime state and bundles under ``root``.

        ``launcher`` prefixes every runtime command (see ``runtime_launcher``); ``cgroup_parent``
        puts containers at ``/<parent>/<id>`` in each cgroup hierarchy (``None``: runtime's choice);
        ``no_pivot`` is for roots on a ramdisk where ``pivot_root`` fails; ``kill_grace`` bounds how
        long a cancel waits for the runtime before killing it too.
        """
        self._runtime = runtime
        self._binary = binary
        self._root = os.path.abspath(root)
        self._state = os.path.join(self._root, "state")
        self._bundles = os.path.join(self._root, "bundles")
        self._launcher = tuple(launcher)
        self._spec_options = spec_options or SpecOptions()
        self._cgroup_parent = cgroup_parent
        self._no_pivot = no_pivot
        self._kill_grace = kill_grace
        os.makedirs(self._state, mode=0o700, exist_ok=True)
        os.makedirs(self._bundles, mode=0o700, exist_ok=True)

    @property
    def name(self) -> str:
        """The runtime's name: ``runc`` or ``crun``."""
        return self._runtime

    @property
    def state_root(self) -> str:
        """The directory passed as ``--root`` to the runtime."""
        return self._state

    def run(
        self,
        spec: ExecSpec,
        *,
        stdout: OutputCallback | None = None,
        stderr: OutputCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        """Run ``spec`` in a fresh container and wait for it; see ``Executor.run``."""
        container_id = "buildsvc-" + secrets.token_hex(8)
        options = self._spec_options
        if self._cgroup_parent is not None:
            options = SpecOptions(
                default_hostname=options.default_hostname,
                cgroups_path=f"/{self._cgroup_parent}/{container_id}",
                nofile=options.nofile,
            )
        # Everything that can be rejected as bad input is checked before anything is created.
        config = build_spec(spec, options)
        _ensure_cwd(spec.rootfs.path, spec.process.cwd, spec.process.user)
        bundle = os.path.join(self._bundles, container_id)
        os.makedirs(bundle, mode=0o700)
        try:
            with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f)
            return self._run_bundle(
                container_id, bundle, spec, on_stdout=stdout, on_stderr=stderr, cancel=cancel
            )
        finally:
            shutil.rmtree(bundle, ignore_errors=True)

    def sweep(self) -> list[str]:
        """Kill and delete every container under our state root and remove every bundle left.

        Only for a daemon's start after a crash (nothing of ours runs then): a SIGKILLed daemon
        leaves its ``run`` processes and their containers behind (they are in their own sessions).
        Returns the ids of the containers removed.
        """
        found = self.list_containers()
        for container_id in found:
            self._command("kill", container_id, "KILL")
            self._delete(container_id)
        for leftover in os.listdir(self._bundles):
            shutil.rmtree(os.path.join(self._bundles, leftover), ignore_errors=True)
        return found

    def list_containers(self) -> list[str]:
        """Ids of the containers the runtime knows under our state root (should be none when idle)."""
        done = self._command("list", "--quiet")
        return [line for line in done.stdout.decode().splitlines() if line.strip()]

    def _run_bundle(
        self,
        container_id: str,
        bundle: str,
        spec: ExecSpec,
        *,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        cancel: threading.Event | None,
    ) -> ExecResult:
        log = os.path.join(bundle, "runtime.log")
        args = ["run", "--bundle", bundle]
        if self._no_pivot:
            args.append("--no-pivot")
        pid_file = os.path.join(bundle, "init.pid")
        if spec.terminal is not None:
            args += ["--pid-file", pid_file]
        start = time.monotonic()
        terminal = spec.terminal
        # On a terminal, the runtime's stdio is the terminal's slave: in the foreground with
        # "terminal": true, runc and crun copy between it and the process's own pty.
        stdin: int = subprocess.DEVNULL if terminal is None else terminal.fd
        stdout: int = subprocess.PIPE if terminal is None else terminal.fd
        try:
            proc = subprocess.Popen(
                [*self._base_command(log), *args, container_id],
                stdin=stdin,
                stdout=stdout,
                stderr=stdout,
                # Its own session: a Ctrl-C meant for the daemon does not reach the runtime mid-setup.
                start_new_session=True,
            )
        except OSError as e:
            raise RuntimeFailure(self._runtime, container_id, str(e)) from e
        callback_errors: list[BaseException] = []
        readers = []
        if terminal is None:
            assert proc.stdout is not None
            assert proc.stderr is not None
            readers = [
                threading.Thread(target=_pump, args=(proc.stdout, on_stdout, callback_errors), daemon=True),
                threading.Thread(target=_pump, args=(proc.stderr, on_stderr, callback_errors), daemon=True),
            ]
        else:
            # The process's terminal is a pty the runtime made, not ours: a resize is set on it
            # directly. (runc follows a SIGWINCH sent to it; crun follows none.)
            terminal.on_resize(lambda: _pass_window_size(terminal.fd, pid_file))  # not once it exited
        for t in readers:
            t.start()
        cancelled = False
        exited = False  # the runtime ended by itself, not killed by us
        try:
            try:
                exited = _wait_for_exit(proc, cancel)
                if not exited:
                    cancelled = True
                    self._kill(container_id, proc)
            finally:
                if proc.poll() is None:
                    # Only reached when something above raised: leave no runtime process behind.
                    self._kill(container_id, proc)
                for t in readers:
                    t.join()
                if terminal is not None:
                    terminal.on_resize(None)
            duration = time.monotonic() - start
        finally:
            # A "run" that ended by itself has deleted its container (its state directory is gone),
            # and another "delete" would only cost a runtime start. After a cancel or an error,
            # always delete: the runtime may have been killed before it could.
            if not exited or os.path.lexists(os.path.join(self._state, container_id)):
                self._delete(container_id)
        if callback_errors:
            raise callback_errors[0]
        if cancelled:
            raise ProcessCancelled(container_id)
        exit_code = proc.returncode
        if exit_code != 0:
            failure = _runtime_error(log)
            if failure:
                raise RuntimeFailure(self._runtime, container_id, failure)
        if exit_code not in spec.process.valid_exit_codes:
            raise ProcessExitError(container_id, exit_code, spec.process.valid_exit_codes)
        return ExecResult(exit_code=exit_code, duration=duration)

    def _kill(self, container_id: str, proc: subprocess.Popen[bytes]) -> None:
        # The container may still be being created, when "kill" fails: retry until the runtime
        # process exits, and after the grace period kill the runtime itself ("delete --force"
        # then takes care of a container it left running).
        deadline = time.monotonic() + self._kill_grace
        while proc.poll() is None:
            self._command("kill", container_id, "KILL")
            try:
                proc.wait(timeout=_KILL_RETRY_SECONDS)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def _delete(self, container_id: str) -> None:
        self._command("delete", "--force", container_id)

    def _base_command(self, log: str | None = None) -> list[str]:
        cmd = [*self._launcher, self._binary, "--root", self._state]
        if log is not None:
            cmd += ["--log", log, "--log-format", "json"]
        return cmd

    def _command(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [*self._base_command(), *args]
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        except OSError as e:
            raise RuntimeFailure(self._runtime, args[-1], str(e)) from e


def runtime_launcher(runtime: str) -> tuple[str, ...]:
    """The command prefix ``runtime`` needs on this host; usually none.

    crun refuses a cgroup "hybrid" host (v1 controllers plus a cgroup2 hierarchy at
    ``/sys/fs/cgroup/unified`` that has controllers). There it runs in a private mount namespace
    without that cgroup2 mount, so it sees a plain v1 host, like runc does.
    """
    if runtime != "crun" or not _is_hybrid_with_v2_controllers():
        return ()
    script = 'umount /sys/fs/cgroup/unified && exec "$@"'
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh")


def _is_hybrid_with_v2_controllers() -> bool:
    unified = "/sys/fs/cgroup/unified/cgroup.controllers"
    try:
        with open(unified, encoding="ascii") as f:
            return bool(f.read().strip())
    except OSError:
        return False


def _pass_window_size(ours: int, pid_file: str) -> None:
    """Give the container process's terminal the window size of ``ours``.

    Its stdin is the slave of the pty the runtime made (``/proc/PID/fd/0``, PID from ``pid_file``);
    setting the size there signals the process as a terminal emulator's resize does. Nothing is
    done before the runtime wrote the pid file (the process starts with the spec's ``consoleSize``,
    the size when the spec was written: a resize in between is lost) or once the process is gone.
    """
    try:
        with open(pid_file, encoding="ascii") as f:
            pid = int(f.read().strip())
        size = fcntl.ioctl(ours, termios.TIOCGWINSZ, bytes(8))
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return
    try:
        if os.isatty(fd):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # the process closed or replaced its stdin meanwhile
    finally:
        os.close(fd)


def _ensure_cwd(rootfs: str, cwd: str, user: str) -> None:
    # BuildKit creates a missing working directory, owned by the process's user.
    path = resolve_in_root(rootfs, cwd)
    if os.path.lexists(path):
        return
    ids = resolve_user(rootfs, user)
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        os.mkdir(p, 0o755)
        os.chown(p, ids.uid, ids.gid)


def _wait_for_exit(proc: subprocess.Popen[bytes], cancel: threading.Event | None) -> bool:
    """Block until the runtime process exits (True) or ``cancel`` is set (False), reacting to either
    at once: ``select`` on a pidfd of the process and on an eventfd that a watcher sets on cancel.
    """
    if cancel is None:
        proc.wait()
        return True
    if cancel.is_set():
        return False
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        # No pidfd (a kernel before 5.3, or a seccomp filter refusing it): poll, as a last resort.
        while True:
            try:
                proc.wait(timeout=_POLL_SECONDS)
                return True
            except subprocess.TimeoutExpired:
                if cancel.is_set():
                    return False
    try:
        watcher = _CancelWatcher(cancel)
        try:
            readable, _, _ = select.select([pidfd, watcher.fd], [], [])
        finally:
            watcher.close()
    finally:
        os.close(pidfd)
    if pidfd in readable:
        # An exit wins over a cancel that came at the same time, as it did with polling.
        proc.wait()
        return True
    return False


class _CancelWatcher:
    """An eventfd that becomes readable when ``cancel`` is set, for ``select``.

    A ``threading.Event`` has no file descriptor, so a thread waits on it. After ``close`` the thread
    notices within ``_CANCEL_WATCH_SECONDS`` and ends; the lock keeps it from writing to the closed
    (and perhaps already reused) descriptor number.
    """

    def __init__(self, cancel: threading.Event) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._cancel = cancel
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._watch, name="cancel-watcher", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.fd)

    def _watch(self) -> None:
        while not self._cancel.wait(_CANCEL_WATCH_SECONDS):
            if self._closed:
                return
        with self._lock:
            if not self._closed:
                os.eventfd_write(self.fd, 1)


def _pump(stream: IO[bytes], callback: OutputCallback | None, errors: list[BaseException]) -> None:
    # os.read returns what is there as soon as there is something: output is not held back. A
    # failing callback is remembered and the pipe still drained, or the process would block on it.
    fd = stream.fileno()
    try:
        while chunk := os.read(fd, _READ_SIZE):
            if callback is not None:
                try:
                    callback(chunk)
                except Exception as e:
                    errors.append(e)
                    callback = None
    finally:
        stream.close()


def _runtime_error(log: str) -> str:
    """The runtime's own error messages from its JSON log (empty when it logged none)."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return ""
    messages = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            messages.append(str(entry.get("msg", "")))
    return "; ".join(m for m in messages if m)
