"""buildsvc.executors."""
