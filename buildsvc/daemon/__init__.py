"""Wiring: the state store, projections, engine and API put together for a daemon or the CLI."""
