"""Worlds: a generator and a segmenter trained together on a procedural world (the default run's)."""
