"""The first-level report of one subject and task: what was modelled, how well it can be estimated,
and what came out.

For each run: the design matrix, the correlations between its regressors (high ones flagged), the
variance inflation factor of each task regressor, the contrast matrix, the confounds used and the
volumes censored. For each contrast: the thresholded subject-level z map as a glass brain and as
orthogonal slices over the mean BOLD, and its cluster table. Diagnostics are computed on the
volumes the fit keeps (censored volumes left out), as the fit sees the design.
"""

import re
import warnings

import numpy as np
import pandas as pd

from ..core.design import regressor_correlations, variance_inflation
from ..core.formula import contrast_matrix
from . import html as H
from .figures import plt

# z of a one-sided p of 0.001: the customary uncorrected height of a first-level map
Z_THRESHOLD = 3.090232306167813
CLUSTER_EXTENT = 5  # voxels: isolated noise voxels out, small true blobs (8 mm voxels) in
CORRELATION_FLAG = 0.8
VIF_FLAG = 5.0
_NUISANCE = re.compile(r"^(cosine\d+|drift_\d+|constant|intercept)$")


def task_regressors(columns, confound_columns=()):
    """The design's task regressors: neither confounds nor drift terms nor the constant.

    Parameters
    ----------
    columns : list of str
        Design-matrix columns.
    confound_columns : iterable of str
        Columns that came from the confounds table.

    Returns
    -------
    list of str
    """
    confounds = set(confound_columns)
    return [c for c in columns if c not in confounds and not _NUISANCE.match(str(c))]


def design_diagnostics(design, keep=None, confound_columns=(), flag=CORRELATION_FLAG):
    """Correlations between regressors and the variance inflation of each task regressor.

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_scans, n_regressors)
    keep : numpy.ndarray of bool, shape (n_scans,), optional
        Volumes the fit keeps (default: all).
    confound_columns : iterable of str
        Columns that came from the confounds table (not task regressors).
    flag : float
        Pairs with \\|r\\| at or above it are flagged.

    Returns
    -------
    dict
        ``correlations`` (DataFrame, non-constant regressors), ``task`` (list of str),
        ``flagged`` (DataFrame: ``regressor_a, regressor_b, r, involves_task`` sorted by \\|r\\|),
        ``vif`` (Series over the task regressors).
    """
    kept = design if keep is None else design.iloc[np.asarray(keep, bool)]
    corr = regressor_correlations(kept)
    task = [c for c in task_regressors(design.columns, confound_columns) if c in corr.columns]
    names = list(corr.columns)
    pairs = []
    values = corr.to_numpy()
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if abs(values[i, j]) >= flag:
                pairs.append((names[i], names[j], float(values[i, j]), names[i] in task or names[j] in task))
    flagged = pd.DataFrame(pairs, columns=["regressor_a", "regressor_b", "r", "involves_task"])
    flagged = flagged.reindex(flagged["r"].abs().sort_values(ascending=False).index).reset_index(drop=True)
    vif = variance_inflation(kept, task) if task else pd.Series(dtype=float)
    return {"correlations": corr, "task": task, "flagged": flagged, "vif": vif}


def plot_correlations(corr, flag=CORRELATION_FLAG, title=""):
    """The regressor correlation matrix, cells with \\|r\\| ≥ ``flag`` outlined.

    Parameters
    ----------
    corr : pandas.DataFrame of shape (n, n)
    flag : float
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = len(corr)
    size = min(3 + 0.22 * n, 11)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    m = corr.to_numpy(float)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    font = 8 if n <= 30 else 6
    ax.set_xticks(range(n), [str(c) for c in corr.columns], rotation=90, fontsize=font)
    ax.set_yticks(range(n), [str(c) for c in corr.index], fontsize=font)
    rows, cols = np.nonzero((np.abs(m) >= flag) & ~np.eye(n, dtype=bool))
    for i, j in zip(rows, cols):
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="k", lw=1.2))
    fig.colorbar(im, ax=ax, shrink=0.7, label="r")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def contrast_rows(contrasts, columns):
    """The contrast matrix of one run over its design columns.

    Parameters
    ----------
    contrasts : dict
        ``{name: {'label', 'rows': [{regressor: weight}], 'type'}}``.
    columns : list of str
        The run's design columns.

    Returns
    -------
    (pandas.DataFrame, list of str)
        Weights, one row per contrast row (F contrasts give several, named ``name[i]``), over the
        columns that any contrast uses; and the contrasts this run cannot carry (a regressor absent).
    """
    rows, index, absent = [], [], []
    for name, spec in sorted(contrasts.items()):
        mat = contrast_matrix(spec["rows"], list(columns))
        if mat is None:
            absent.append(name)
            continue
        for i, row in enumerate(mat):
            rows.append(row)
            index.append(name if len(mat) == 1 else f"{name}[{i + 1}]")
    frame = pd.DataFrame(rows, index=index, columns=list(columns)) if rows else pd.DataFrame(columns=list(columns))
    used = [c for c in frame.columns if (frame[c] != 0).any()]
    return frame[used], absent


class _GlassBrains:
    """nilearn glass brains sharing one drawn schematic.

    Drawing the brain outlines takes most of ``plot_glass_brain``'s time (hundreds of patches per
    view, 60 % of a render). The outlines are drawn once, into a layer kept as pixels; each map is
    drawn as an overlay with the outlines hidden, the outline pixels are laid over it (where
    matplotlib would draw them too: patches lie above images), and the overlay is removed.
    """

    DPI = 90

    def __init__(self, vmax, threshold):
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from nilearn import plotting

        self.cmap = plt.get_cmap("RdBu_r")
        self.vmax, self.threshold = vmax, threshold
        self.fig = plt.figure(figsize=(8, 2.8))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.display = plotting.plot_glass_brain(None, display_mode="ortho", figure=self.fig, plot_abs=False,
                                                     colorbar=False, axes=(0, 0, 0.9, 0.9))
        cax = self.fig.add_axes((0.92, 0.12, 0.015, 0.7))
        bar = self.fig.colorbar(ScalarMappable(Normalize(-vmax, vmax), self.cmap), cax=cax)
        bar.ax.tick_params(labelsize=9)
        bar.set_label("z", fontsize=10)
        self.title = self.fig.text(0.01, 0.94, "", fontsize=11)
        self.fig.set_dpi(self.DPI)
        outlines = [patch for ax in self.display.axes.values() for patch in ax.ax.patches]
        with_outlines = self._pixels()
        for patch in outlines:
            patch.set_visible(False)
        # pixels the outlines change on the bare figure (white there): drawn over every map
        self.outline_mask = (with_outlines != self._pixels()).any(axis=-1)
        self.outline_pixels = with_outlines[self.outline_mask]

    def _pixels(self):
        self.fig.canvas.draw()
        return np.array(self.fig.canvas.buffer_rgba())

    def render(self, z_img, title):
        """The glass brain of one map as an embedded PNG; the overlay is removed afterwards.

        Parameters
        ----------
        z_img : nibabel image
            The z map (thresholded at the display's height when drawn).
        title : str
            Shown above the projections and used in the image's alt text.

        Returns
        -------
        Raw
            The ``<img>`` tag.
        """
        before = {ax: set(ax.get_children()) for ax in self.fig.axes}
        self.title.set_text(title)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.display.add_overlay(z_img, threshold=self.threshold, cmap=self.cmap, vmin=-self.vmax,
                                     vmax=self.vmax, colorbar=False)
        try:
            import io

            from PIL import Image

            pixels = self._pixels()
            pixels[self.outline_mask] = self.outline_pixels
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="png")
            return H.png_tag(buf.getvalue(), f"glass brain: {title}")
        finally:
            for ax, old in before.items():
                for artist in set(ax.get_children()) - old:
                    artist.remove()

    def close(self):
        """Release the figure."""
        plt.close(self.fig)


def _ortho(z_img, background, threshold, vmax, title):
    from nilearn import plotting

    fig = plt.figure(figsize=(8, 2.8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plotting.plot_stat_map(z_img, bg_img=background, threshold=threshold, vmax=vmax, display_mode="ortho",
                               figure=fig, colorbar=True, cmap="RdBu_r", title=title, draw_cross=False,
                               dim=-0.3 if background is not None else "auto")
    return H.figure(fig, f"slices: {title}", dpi=90)


def cluster_table(z_img, threshold=Z_THRESHOLD, extent=CLUSTER_EXTENT, two_sided=True):
    """Clusters of the thresholded map (nilearn's ``get_clusters_table``).

    Parameters
    ----------
    z_img : nibabel image
    threshold : float
        Height (\\|z\\| for two-sided maps).
    extent : int
        Smallest cluster listed (voxels).
    two_sided : bool
        Negative clusters too (t contrasts); F contrasts give positive z only.

    Returns
    -------
    pandas.DataFrame
        ``Cluster ID, X, Y, Z, Peak Stat, Cluster Size (mm3)`` (mm), empty when nothing survives.
    """
    from nilearn.reporting import get_clusters_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_clusters_table(z_img, stat_threshold=threshold, cluster_threshold=extent, two_sided=two_sided)


def _run_section(i, run, contrasts):
    label = run["label"]
    design = run["design"]
    censor = run["censor"]
    keep = censor["kept"].to_numpy(bool)
    diag = design_diagnostics(design, keep, run["confounds"])
    parts = [H.tag("h2", f"Run {label}", id=f"run-{H.anchor(label)}")]  # label: '1', 'ses-a run-2'...
    parts.append(H.tag("p", f"{len(design)} volumes, {int(keep.sum())} kept for the fit; {design.shape[1]} "
                            f"regressors ({len(diag['task'])} task, {len(run['confounds'])} confounds, the rest drift "
                            "and constant)."))

    parts.append(H.tag("h3", "Design matrix"))
    if run.get("design_figure"):
        parts.append(H.image(run["design_figure"], f"design matrix of run {label}", prefix=f"design-{i}"))
    else:
        from nilearn.plotting import plot_design_matrix

        fig, ax = plt.subplots(figsize=(min(2 + 0.35 * design.shape[1], 24), 6))
        plot_design_matrix(design, axes=ax)
        fig.tight_layout()
        parts.append(H.figure(fig, f"design matrix of run {label}"))

    parts.append(H.tag("h3", "Correlations between regressors"))
    corr = diag["correlations"]
    if len(corr) >= 2:
        parts.append(H.figure(plot_correlations(corr, title=f"run {label}: Pearson r over the kept volumes"),
                              f"regressor correlations of run {label}"))
    flagged = diag["flagged"]
    task_pairs = flagged[flagged["involves_task"]]
    if len(task_pairs):
        parts.append(H.tag("p", f"{len(task_pairs)} pair(s) involving a task regressor with |r| ≥ "
                                f"{CORRELATION_FLAG:g}: their effects are hard to tell apart.", cls="warn"))
        parts.append(H.table([[a, b, r] for a, b, r, _ in task_pairs.itertuples(index=False)],
                             header=["regressor", "regressor", "r"],
                             cell_classes=[[None, None, "flag"]] * len(task_pairs)))
    else:
        parts.append(H.tag("p", f"No task regressor correlates with another regressor at |r| ≥ {CORRELATION_FLAG:g}.",
                           cls="none"))
    others = len(flagged) - len(task_pairs)
    if others:
        parts.append(H.tag("p", f"{others} pair(s) of confound/drift regressors have |r| ≥ {CORRELATION_FLAG:g} "
                                "(collinearity among nuisance regressors does not inflate the variance of task "
                                "effects)."))

    parts.append(H.tag("h3", "Variance inflation of the task regressors"))
    vif = diag["vif"]
    if len(vif):
        rows = [[name, float(v)] for name, v in vif.items()]
        classes = [[None, "flag" if not np.isfinite(v) or v >= VIF_FLAG else None] for _, v in rows]
        parts.append(H.table(rows, header=["regressor", "VIF"], cell_classes=classes))
        parts.append(H.tag("p", f"VIF = 1 / (1 − R²) of each task regressor regressed on all other columns; "
                                f"values ≥ {VIF_FLAG:g} are flagged."))
    else:
        parts.append(H.tag("p", "No task regressor in this design.", cls="none"))

    parts.append(H.tag("h3", "Contrast matrix"))
    weights, absent = contrast_rows(contrasts, design.columns)
    if len(weights):
        rows = [[name, *[float(w) for w in row]] for name, row in zip(weights.index, weights.to_numpy())]
        classes = [[None, *["ok" if w else None for w in row[1:]]] for row in rows]
        parts.append(H.table(rows, header=["contrast", *weights.columns], cell_classes=classes))
        parts.append(H.tag("p", f"Columns not shown have weight 0 in every contrast ({design.shape[1] - weights.shape[1]}"
                                " of them).", cls="none"))
    if absent:
        parts.append(H.tag("p", "Not estimable in this run (a regressor is absent): " + ", ".join(absent) + ".",
                           cls="warn"))

    parts.append(H.tag("h3", "Confounds and censoring"))
    parts.append(H.join("Confound regressors: ",
                        H.Raw(", ".join(str(H.tag("code", c)) for c in run["confounds"]) or "none"), "."))
    reasons = censor.loc[~keep, "reason"].fillna("").astype(str) if "reason" in censor else pd.Series([""] * (~keep).sum())
    if (~keep).any():
        rows = []
        for reason, vols in censor.loc[~keep].groupby(reasons.to_numpy()):
            rows.append([reason or "censored", len(vols), _ranges(vols["volume"].to_numpy(int))])
        parts.append(H.tag("p", f"{int((~keep).sum())} of {len(censor)} volumes censored (left out of the fit):"))
        parts.append(H.table(rows, header=["reason", "volumes", "indices (0-based)"]))
    else:
        parts.append(H.tag("p", "No volume censored.", cls="none"))
    return parts


def _ranges(values):
    """[0, 1, 2, 5, 7, 8] → '0–2, 5, 7–8'."""
    out, start, prev = [], None, None
    for v in list(values) + [None]:
        if start is None:
            start = prev = v
        elif v is not None and v == prev + 1:
            prev = v
        else:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = v
    return ", ".join(out)


def build_subject_report(path, subject, task, runs, contrasts, z_maps, background=None, settings=None,
                         threshold=Z_THRESHOLD, extent=CLUSTER_EXTENT, session=None):
    """Write the first-level HTML report of one subject and task.

    Parameters
    ----------
    path : str or Path
        The HTML file.
    subject, task : str
        Labels (without ``sub-``/``task-``).
    runs : list of dict
        One per run: ``label`` (str), ``design`` (DataFrame, all volumes), ``design_figure`` (SVG or
        PNG path, or None to draw it), ``confounds`` (list of str: the confound columns in the
        design), ``censor`` (DataFrame with ``volume``, ``kept`` (1/0) and ``reason``).
    contrasts : dict
        ``{name: {'label', 'rows': [{regressor: weight}], 'type': 't' | 'F'}}``.
    z_maps : dict
        ``{contrast name: subject-level z map (path or nibabel image)}``.
    background : path or nibabel image, optional
        Underlay of the slices (the mean BOLD); None uses nilearn's MNI template.
    settings : dict, optional
        Model settings shown in a table.
    threshold : float
        Height of the thresholded maps and cluster tables (\\|z\\|).
    extent : int
        Smallest cluster in the tables (voxels).
    session : str, optional
        Session label shown in the title.

    Returns
    -------
    Path
    """
    import nibabel as nb

    who = f"sub-{subject}" + (f" ses-{session}" if session else "")
    title = f"{who} · task {task} · first level"
    parts = [H.tag("h1", title)]
    nav = [H.tag("li", H.tag("a", f"Run {r['label']}", href=f"#run-{H.anchor(r['label'])}")) for r in runs]
    nav += [H.tag("li", H.tag("a", f"Contrast {name}", href=f"#contrast-{H.anchor(c['label'])}"))
            for name, c in sorted(contrasts.items()) if name in z_maps]
    parts.append(H.tag("nav", H.tag("ul", H.join(*nav))))
    if settings:
        parts.append(H.tag("h2", "Model"))
        parts.append(H.table([[k, _show(v)] for k, v in settings.items()], header=["setting", "value"]))

    for i, run in enumerate(runs):
        parts += _run_section(i, run, contrasts)

    parts.append(H.tag("h2", "Contrasts (subject level)", id="contrasts"))
    parts.append(H.tag("p", f"z maps of the runs combined by fixed effects, shown where |z| ≥ {threshold:.2f} "
                            f"(p < {_p_of(threshold):.2g} one-sided, uncorrected); cluster tables list clusters of at "
                            f"least {extent} voxels (coordinates in mm)."))
    imgs = {name: nb.load(str(p)) if not hasattr(p, "affine") else p for name, p in z_maps.items()}
    peaks = [float(np.nanmax(np.abs(np.asanyarray(img.dataobj)))) for img in imgs.values()]
    vmax = max([threshold + 1.0, *[p for p in peaks if np.isfinite(p)]])
    if background is not None and not hasattr(background, "affine"):
        background = nb.load(str(background))
    glass = _GlassBrains(vmax, threshold) if imgs else None
    try:
        for name, spec in sorted(contrasts.items()):
            if name not in imgs:
                continue
            img = imgs[name]
            label = spec["label"]
            kind = "F" if spec["type"] == "F" else "t"
            parts.append(H.tag("h3", H.join(f"Contrast {name} ", H.tag("small", f"({kind}, label {label})")),
                               id=f"contrast-{H.anchor(label)}"))
            data = np.nan_to_num(np.asanyarray(img.dataobj, dtype=np.float64))
            n_above = int((np.abs(data) >= threshold).sum())
            parts.append(H.tag("p", f"{n_above} voxel(s) at |z| ≥ {threshold:.2f}; peak |z| = "
                                    f"{np.abs(data).max():.2f}.", cls=None if n_above else "none"))
            parts.append(H.tag("figure", H.join(glass.render(img, f"{name}: z, |z| ≥ {threshold:.2f}"),
                                                H.tag("figcaption", "Glass brain (maximum-intensity projections; "
                                                      "the outline assumes MNI space)."))))
            parts.append(H.tag("figure", H.join(_ortho(img, background, threshold, vmax, name),
                                                H.tag("figcaption", "Orthogonal slices through the peak over the "
                                                      + ("mean BOLD." if background is not None else
                                                         "MNI template.")))))
            table = cluster_table(img, threshold, extent, two_sided=kind == "t")
            if len(table):
                parts.append(H.table(table))
            else:
                parts.append(H.tag("p", f"No cluster of at least {extent} voxels above the threshold.", cls="none"))
    finally:
        if glass is not None:
            glass.close()
    missing = sorted(set(contrasts) - set(imgs))
    if missing:
        parts.append(H.tag("p", "No subject-level map (no run carries the contrast): " + ", ".join(missing) + ".",
                           cls="warn"))
    return H.write_page(path, title, parts)


def _show(value):
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return "null" if value is None else value


def _p_of(z):
    from scipy.stats import norm

    return float(norm.sf(z))
