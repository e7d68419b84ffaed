"""A plugin that fails at import: gandid must report it and keep the others working."""
raise ImportError("gandid_testkit.broken is broken on purpose")
