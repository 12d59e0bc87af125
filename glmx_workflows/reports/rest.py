"""Resting-state figures (matrix, glass-brain connectome, censoring) and the per-subject HTML report.

Images are PNGs embedded as base64 data URIs; the page uses no script, font or style sheet from the
network, so it opens offline.
"""

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, write_text
from .figures import plt

KIND_TITLES = {"pearsoncorrelation": "Pearson correlation", "partialcorrelation": "partial correlation",
               "covariance": "covariance", "precision": "precision (graphical lasso)"}


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)


def plot_matrix(matrix, labels, path, title=""):
    """Draw a connectivity matrix (symmetric colour scale, region labels when there are few).

    Parameters
    ----------
    matrix : numpy.ndarray of shape (n, n)
        NaN rows (regions without data) are shown blank.
    labels : list of str
        Region names, in matrix order.
    path : str or Path
        PNG file.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``path``.
    """
    m = np.array(matrix, dtype=float)
    off = m.copy()
    np.fill_diagonal(off, np.nan)
    vmax = float(np.nanmax(np.abs(off))) if np.isfinite(off).any() else 1.0
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(np.ma.masked_invalid(off), cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(n), labels, fontsize=6)
    else:
        ax.set_xlabel(f"{n} regions")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_connectome_glass(matrix, centres, path, title="", edge_threshold="98%"):
    """Edges between region centres on a glass brain (nilearn's plot_connectome).

    Parameters
    ----------
    matrix : numpy.ndarray of shape (n, n)
        NaN entries (regions without data) are drawn as no edge.
    centres : numpy.ndarray of shape (n, 3)
        MNI mm.
    path : str or Path
        PNG file.
    title : str
        Figure title.
    edge_threshold : str or float
        Edges kept (nilearn's syntax: a percentile string or a value).

    Returns
    -------
    Path
        ``path``.
    """
    from nilearn.plotting import plot_connectome

    m = np.nan_to_num(np.array(matrix, dtype=float))
    np.fill_diagonal(m, 0)
    edges = np.abs(m[np.triu_indices_from(m, 1)])
    if isinstance(edge_threshold, str) and edges.size:
        # the percentile over the edges themselves: nilearn's string form counts the whole matrix and keeps edges
        # strictly above it, which with a few regions (a 6-parcel surface atlas) leaves none, and then fails
        edge_threshold = float(np.percentile(edges, float(edge_threshold.rstrip("%"))))
    fig = plt.figure(figsize=(9, 3.2))
    plot_connectome(m, np.asarray(centres, float), edge_threshold=edge_threshold, node_size=8, figure=fig,
                    title=title, colorbar=bool(edges.size and edges.max() > 0))
    return _save(fig, path)


def plot_censoring(outliers, path):
    """Framewise displacement per run with censored volumes marked.

    Parameters
    ----------
    outliers : list of (str, pandas.DataFrame)
        Run tag and its outliers table (``framewise_displacement``, ``reason``).
    path : str or Path
        PNG file.

    Returns
    -------
    Path
        ``path``.
    """
    fig, axes = plt.subplots(len(outliers), 1, figsize=(8, 1.4 * len(outliers) + 0.4), squeeze=False)
    for ax, (tag, table) in zip(axes[:, 0], outliers):
        fd = table["framewise_displacement"].to_numpy(float)
        ax.plot(fd, lw=0.8, color="k")
        for v in table.index[table["reason"] == "fd"]:
            ax.axvline(v, color="tab:red", lw=0.6, alpha=0.6)
        for v in table.index[table["reason"] == "dummy"]:
            ax.axvline(v, color="tab:gray", lw=0.6, alpha=0.6)
        ax.set_ylabel("FD (mm)", fontsize=7)
        ax.set_title(f"{tag}: {int((table['reason'] == 'fd').sum())} censored (red), "
                     f"{int((table['reason'] == 'dummy').sum())} dummy (grey)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _img_tag(path, alt):
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def subject_report(path, subject, task, matrices, regions, outliers, settings, work_dir):
    """Write the self-contained HTML report of one subject's connectivity.

    Parameters
    ----------
    path : str or Path
        The HTML file.
    subject, task : str
        Subject label (without ``sub-``) and task name.
    matrices : list of (kind, level, matrix, labels)
        ``level`` is a run tag or 'subject'.
    regions : pandas.DataFrame
        ``name``, ``x``, ``y``, ``z`` of each region (order of the matrices).
    outliers : list of (str, pandas.DataFrame)
        Per run.
    settings : dict
        Denoising settings shown in the report.
    work_dir : str or Path
        Where the PNGs are drawn before being embedded.

    Returns
    -------
    Path
        The written report.
    """
    work_dir = Path(work_dir)
    parts = [f"<h1>sub-{html.escape(subject)} · task {html.escape(task)} · connectivity</h1>",
             "<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=1)) + "</pre>",
             "<h2>Censoring</h2>",
             _img_tag(plot_censoring(outliers, work_dir / "censoring.png"), "framewise displacement")]
    levels = sorted({lvl for _, lvl, _, _ in matrices}, key=lambda x: (x != "subject", x))
    shown = [lvl for lvl in levels if lvl == "subject"] or levels
    centres = regions[["x", "y", "z"]].to_numpy(float)
    for i, (kind, level, matrix, labels) in enumerate(matrices):
        if level not in shown:
            continue
        title = f"{KIND_TITLES.get(kind, kind)} ({level})"
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_img_tag(plot_matrix(matrix, labels, work_dir / f"matrix_{i}.png", title), title))
        if kind != "covariance":  # covariances are not comparable across edges; n/a edges are not drawn
            parts.append(_img_tag(plot_connectome_glass(matrix, centres, work_dir / f"connectome_{i}.png", title),
                                  title + " connectome"))
    body = "\n".join(parts)
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>sub-" + html.escape(subject) +
            " connectivity</title><style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
            "pre{background:#f4f4f4;padding:6px}</style></head><body>" + body + "</body></html>\n")
    return write_text(path, page)
