"""buildsvc.cli."""
