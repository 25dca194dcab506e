"""buildsvc.frontends: turn what users write (a Dockerfile) into build definitions.

A frontend is a pure function from source text, options and image metadata to a
:class:`~buildsvc.solver.definition.Definition`; it does no I/O of its own, so the daemon decides
where image metadata comes from (see :mod:`buildsvc.frontends.dockerfile`).
"""
