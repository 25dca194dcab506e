"""buildsvc.solver."""
