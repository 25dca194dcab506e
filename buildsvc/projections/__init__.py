"""buildsvc.projections."""
