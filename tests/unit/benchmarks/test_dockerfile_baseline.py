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
    done = subprocess.run(
        [*PYTHON, "-c", "import buildsvc; print(buildsvc.__file__)"],
        cwd=CHECKOUT,
        env=baseline_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(tmp_path / "buildsvc" / "__init__.py")


def test_without_a_baseline_it_imports_this_checkout() -> None:
    done = subprocess.run(
        [*PYTHON, "-c", "import buildsvc; print(buildsvc.__file__)"],
        cwd=CHECKOUT,
        env=baseline_env(None),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(CHECKOUT / "buildsvc" / "__init__.py")
