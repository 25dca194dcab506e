"""Benchmarks of buildsvc against raw baselines measured in the same run (see ``benchmarks/README.md``)."""
