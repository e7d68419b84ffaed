"""First-party gandid plugins (installed as ``gandid_plugins``), registered through the ``gandid``
entry-point group exactly as a third-party package would be."""
