"""An embedded engine on SQLite loads nothing of PostgreSQL: its dialect alone is ~40 ms of every
``buildsvc`` process that builds without a daemon. Checked in fresh interpreters, by module name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OPEN_AND_PROJECT = (
    "from pathlib import Path\n"
    "from buildsvc.daemon.state import open_state\n"
    "state = open_state(Path({root!r}))\n"
    "state.runner.run_once()\n"
    "state.close()\n"
)


def _loaded_after(statement: str) -> set[str]:
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_a_sqlite_state_opens_and_projects_without_the_postgresql_dialect(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    _loaded_after(OPEN_AND_PROJECT.format(root=root))  # creates and migrates the database
    loaded = _loaded_after(OPEN_AND_PROJECT.format(root=root) + "import buildsvc.projections.rows\n")
    assert "buildsvc.projections.rows" in loaded
    assert "sqlalchemy.dialects.postgresql" not in loaded


def test_the_engine_and_the_build_command_load_no_http_client_until_one_is_used() -> None:
    # httpx is ~20 ms of each embedded start; builds whose base images are held never use it, and
    # an export's or cache's modules load only for a build that has one.
    loaded = _loaded_after(
        "import buildsvc.daemon.engine, buildsvc.cli.build_cmd\n"
        "from buildsvc.sources import RegistryClient, RegistryOptions\n"
        "from buildsvc.solver.http_source import HttpDownloader\n"
        "RegistryClient(RegistryOptions()).close()\n"
    )
    assert "buildsvc.daemon.engine" in loaded
    assert sorted(m for m in loaded if m.partition(".")[0] in ("httpx", "httpcore")) == []
    assert sorted(loaded & {"buildsvc.daemon.cache_exports", "buildsvc.daemon.exporters"}) == []
    used = _loaded_after(
        "from buildsvc.sources import RegistryClient, RegistryOptions\n"
        "client = RegistryClient(RegistryOptions())\n"
        "assert client._http is not None\n"
        "client.close()\n"
    )
    assert {"httpx", "buildsvc.sources.registry_auth"} <= used
