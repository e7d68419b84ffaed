"""Figures without a screen: every plot in gandid and its plugins is drawn through :func:`pyplot`."""


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (files only, works on a headless server)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
