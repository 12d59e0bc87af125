"""Figures written beside the outputs (matplotlib, Agg backend, no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# Fixed SVG ids so that the same figure gives the same bytes on every engine and rerun.
matplotlib.rcParams["svg.hashsalt"] = "glmx"
import matplotlib.pyplot as plt  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402


def plot_design(design, path):
    """Draw a design matrix (nilearn's layout: regressors as columns, scans down) to ``path``.

    Parameters
    ----------
    design : pandas.DataFrame
        Design matrix, one row per scan and one column per regressor.
    path : str or Path
        Output figure; its suffix gives the format (SVG when it has none). Written atomically, with
        no date in SVG metadata so that reruns give identical files.

    Returns
    -------
    Path
        ``path``.
    """
    from nilearn.plotting import plot_design_matrix

    width = min(2 + 0.35 * design.shape[1], 24)
    fig, ax = plt.subplots(figsize=(width, 6))
    plot_design_matrix(design, axes=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fmt = Path(path).suffix.lstrip(".") or "svg"
        fig.savefig(tmp, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return Path(path)
