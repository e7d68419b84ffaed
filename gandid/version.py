"""gandid's version (one place: the package, run.json and the packaging metadata read it)."""
__version__ = "0.1.0"
