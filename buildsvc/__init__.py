"""buildsvc: a build service in the shape of BuildKit whose whole state is an append-only event log."""

__version__ = "0.1.0"
"""This package's version; pyproject.toml reads it from here (``[tool.hatch.version]``).

Kept in the package, not read back from the installed distribution's metadata: finding a
distribution imports ``importlib.metadata`` and scans ``sys.path``, a cost on every embedded build's
start (the engine records its version in ``DaemonStarted``).
"""
