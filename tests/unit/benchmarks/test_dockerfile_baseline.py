"""``benchmarks.dockerfile --baseline DIR``: every side said to be the baseline's runs DIR's buildsvc.

The embedded side is a ``python -c`` process started from the checkout; without ``-P`` the working
directory comes first on ``sys.path`` and the checkout's package was measured as the baseline.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.dockerfile import PYTHON, baseline_env

CHECKOUT = Path(__file__).resolve().parents[3]


def test_a_python_process_of_the_baseline_imports_the_baseline_tree_even_from_the_checkout(
    tmp_path: Path,
) -> None:
    (tmp_path / "buildsvc").mkdir()
    (tmp_path / "buildsvc" / "__init__.py").write_text("")
    assert (CHECKOUT / "buildsvc" / "__init__.py").exists()
    assert _imported_buildsvc(tmp_path) == str(tmp_path / "buildsvc" / "__init__.py")


def test_without_a_baseline_it_imports_this_checkout() -> None:
    assert _imported_buildsvc(None) == str(CHECKOUT / "buildsvc" / "__init__.py")


def _imported_buildsvc(baseline: Path | None) -> str:
    """The ``buildsvc`` a benchmark's Python process started from the checkout imports."""
    done = subprocess.run(
        [*PYTHON, "-c", "import buildsvc; print(buildsvc.__file__)"],
        cwd=CHECKOUT,
        env=baseline_env(baseline),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()
