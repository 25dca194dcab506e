"""The collector while a command starts (buildsvc.cli.startup): rare collections during the imports,
the usual ones (over a frozen start) once the command is set up (issue 4: 60-120 ms of an embedded
build went to collections that freed next to nothing).
"""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from buildsvc.cli import startup


@pytest.fixture
def restored() -> object:
    """Leave the test process's collector as it was found."""
    before = gc.get_threshold()
    yield None
    startup._saved.clear()
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_entry_point_collects_rarely_until_the_command_is_set_up() -> None:
    # What the thresholds are while a command runs (here `--help`, which sets nothing up).
    script = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('threshold', gc.get_threshold()[0]))\n"
        "sys.argv = ['buildsvc', '--help']\n"
        "from buildsvc.cli.main import main\n"
        "main()"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert int(done.stdout.rpartition("threshold ")[2]) == startup.STARTUP_THRESHOLD


def test_importing_the_cli_leaves_the_collector_alone() -> None:
    # Tests and other callers of `cli` (not the entry point) keep their own collector settings.
    script = (
        "import gc\ndefault = gc.get_threshold()\n"
        "import buildsvc.cli.main\nprint(gc.get_threshold() == default)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


@pytest.mark.usefixtures("restored")
def test_done_freezes_the_start_and_restores_the_thresholds() -> None:
    gc.set_threshold(700, 10, 10)
    startup.begin()
    assert gc.get_threshold() == (startup.STARTUP_THRESHOLD, 10, 10)
    startup.begin()  # a second call changes nothing (and forgets nothing)
    frozen_before = gc.get_freeze_count()
    startup.done()
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > frozen_before


@pytest.mark.usefixtures("restored")
def test_done_without_begin_does_nothing() -> None:
    gc.set_threshold(700, 10, 10)
    frozen_before = gc.get_freeze_count()
    startup.done()
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == frozen_before
