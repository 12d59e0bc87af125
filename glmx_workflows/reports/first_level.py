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
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.clusters import cluster_table as core_cluster_table
from ..core.design import regressor_correlations, variance_inflation
from ..core.formula import contrast_matrix
from ..core.group import z_threshold
from . import html as H
from .cache import PartCache, material_digest

# z of a one-sided p of 0.001 (the group level's p -> z rule): the customary uncorrected height of a
# first-level map
Z_THRESHOLD = z_threshold(0.001)
CLUSTER_EXTENT = 5  # voxels: isolated noise voxels out, small true blobs (8 mm voxels) in
MAX_CLUSTERS = 20  # per sign in a contrast's table: an unsmoothed 2 mm map can have thousands
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
    from .figures import plt  # pyplot only where a figure is drawn: a rebuild from kept parts never needs it

    n = len(corr)
    size = min(3 + 0.22 * n, 11)
    font = 8 if n <= 30 else 6
    # margins from the longest label instead of tight_layout, which lays every tick label out twice more
    label_in = max(len(str(c)) for c in corr.columns) * font * 0.62 / 72 + 0.15
    width, height = size + 1.5 + label_in, size + label_in
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((label_in / width, label_in / height, size / width, (size - 0.35) / height))
    m = corr.to_numpy(float)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), [str(c) for c in corr.columns], rotation=90, fontsize=font)
    ax.set_yticks(range(n), [str(c) for c in corr.index], fontsize=font)
    rows, cols = np.nonzero((np.abs(m) >= flag) & ~np.eye(n, dtype=bool))
    if rows.size:  # one collection instead of a patch per flagged cell
        from matplotlib.collections import PatchCollection

        ax.add_collection(PatchCollection([plt.Rectangle((j - 0.5, i - 0.5), 1, 1) for i, j in zip(rows, cols)],
                                          facecolor="none", edgecolor="k", linewidth=1.2))
    cax = fig.add_axes(((label_in + size + 0.3) / width, 0.25, 0.2 / width, 0.5))
    fig.colorbar(im, cax=cax, label="r")
    ax.set_title(title, fontsize=9)
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


class _MapFigures:
    """Glass brains and orthogonal slices of the contrasts' z maps, drawn as pixels.

    nilearn's ``plot_glass_brain`` and ``plot_stat_map`` build a matplotlib figure per map (brain
    schematics of hundreds of patches, three axes, tick and annotation texts): about a second per
    contrast. Here the three views are composed with numpy on the map's own grid (RAS orientation,
    voxels repeated to a displayable size; slices through the map's peak over the mean BOLD, glass
    brains as signed maximum-intensity projections inside the outline of the brain), with the shared
    colour bar as a strip on the right, and written as PNG directly (titles and the colour scale's
    numbers are the page's text, not rendered glyphs).
    """

    HEIGHT = 200  # pixels of the views

    def __init__(self, vmax, threshold, background=None):
        self.set_scale(vmax)
        self.threshold = threshold
        self.background = background
        self._cache = {}

    @property
    def cmap(self):
        """The colour map (matplotlib's, imported when a figure is drawn: a rebuild that reads every part
        back draws none)."""
        import matplotlib

        return matplotlib.colormaps["RdBu_r"]  # not pyplot: these figures are composed as pixels

    @property
    def norm(self):
        """z from -vmax to vmax onto [0, 1]."""
        from matplotlib.colors import Normalize

        return Normalize(-self.vmax, self.vmax)

    def set_scale(self, vmax):
        """Colour scale of the next figures: z from -vmax to vmax.

        Parameters
        ----------
        vmax : float
        """
        self.vmax = vmax

    def _grids(self, z_img):
        """(z, background, zooms, affine) on the RAS grid; the background is reoriented once per grid."""
        import nibabel as nb

        img = nb.as_closest_canonical(nb.squeeze_image(z_img))
        z = np.nan_to_num(np.asanyarray(img.dataobj, dtype=np.float32))
        key = (z_img.shape[:3], np.round(np.asarray(z_img.affine), 3).tobytes())
        if key not in self._cache:
            bg = None
            if self.background is not None:
                back = nb.squeeze_image(self.background)
                if back.shape[:3] != z_img.shape[:3] or not np.allclose(back.affine, z_img.affine, atol=1e-3):
                    from nilearn.image import resample_to_img

                    back = resample_to_img(back, z_img, interpolation="continuous", force_resample=True,
                                           copy_header=True)
                bg = np.nan_to_num(np.asanyarray(nb.as_closest_canonical(back).dataobj, dtype=np.float32))
            self._cache[key] = bg
        zooms = np.asarray(img.header.get_zooms()[:3], float)
        return z, self._cache[key], zooms, img.affine

    def _compose(self, views, zooms):
        """Three (x|y|z-plane) RGB arrays of the RAS grid -> one image, voxels repeated to square mm."""
        pairs = ((1, 2), (0, 2), (0, 1))  # sagittal (y, z), coronal (x, z), axial (x, y)
        scale = max(1, int(round(self.HEIGHT / max(v.shape[1] * zooms[b] / zooms.min()
                                                   for v, (_, b) in zip(views, pairs)))))
        panels = []
        for view, (a, b) in zip(views, pairs):
            ra, rb = (max(1, int(round(scale * zooms[k] / zooms.min()))) for k in (a, b))
            panel = np.repeat(np.repeat(view, ra, axis=0), rb, axis=1)
            panels.append(np.transpose(panel, (1, 0, 2))[::-1])  # rows: superior (or anterior) on top
        height = max(p.shape[0] for p in panels)
        gap = np.ones((height, 6, 3), np.float32)
        out = []
        for p in panels:
            pad = height - p.shape[0]
            p = np.pad(p, ((pad // 2, pad - pad // 2), (0, 0), (0, 0)), constant_values=1.0)
            out += [p, gap]
        return np.concatenate(out[:-1], axis=1)

    def _overlay(self, rgb, values):
        above = np.abs(values) >= self.threshold
        rgb[above] = self.cmap(self.norm(values[above]))[:, :3]
        return rgb

    def _render(self, rgb, alt):
        import io

        from PIL import Image

        # the colour bar: a strip beside the views, -vmax at the bottom, +vmax at the top
        height = rgb.shape[0]
        ramp = self.cmap(np.linspace(1, 0, height))[:, None, :3]
        bar = np.concatenate([np.ones((height, 12, 3)), np.repeat(ramp, 14, axis=1)], axis=1)
        pixels = np.concatenate([rgb, bar.astype(np.float32)], axis=1)
        buf = io.BytesIO()
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buf, format="png", compress_level=1)
        return H.png_tag(buf.getvalue(), alt)

    def scale(self):
        """The colour bar's legend (page text).

        Returns
        -------
        str
        """
        return (f"Colour bar (right): z from −{self.vmax:.1f} (blue, bottom) to {self.vmax:.1f} (red, top); "
                f"|z| < {self.threshold:.2f} not shown.")

    def glass(self, z_img, title):
        """Signed maximum-intensity projections (the largest \\|z\\| along each axis) in the brain outline.

        Parameters
        ----------
        z_img : nibabel image
        title : str

        Returns
        -------
        Raw
            The ``<img>`` tag.
        """
        from scipy import ndimage

        z, bg, zooms, _ = self._grids(z_img)
        brain = (z != 0) if bg is None else (bg != 0) | (z != 0)
        views = []
        for axis in (0, 1, 2):
            idx = np.expand_dims(np.abs(z).argmax(axis=axis), axis)
            proj = np.take_along_axis(z, idx, axis=axis).squeeze(axis)
            inside = brain.any(axis=axis)
            edge = inside & ~ndimage.binary_erosion(inside)
            rgb = np.ones(proj.shape + (3,), np.float32)
            rgb[inside] = 0.93
            rgb[edge] = 0.45
            views.append(self._overlay(rgb, proj))
        return self._render(self._compose(views, zooms), f"glass brain: {title}")

    def slices(self, z_img, title, at=None):
        """Sagittal, coronal and axial slices through a point (default the largest \\|z\\|), over the background.

        Parameters
        ----------
        z_img : nibabel image
        title : str
        at : array-like of 3 float, optional
            The point (mm) the slices go through, e.g. the top cluster's peak.

        Returns
        -------
        (Raw, list of 3 float)
            The ``<img>`` tag and the peak's position (mm).
        """
        z, bg, zooms, affine = self._grids(z_img)
        if at is None:
            peak = np.unravel_index(np.abs(z).argmax(), z.shape)
        else:
            ijk = np.rint(np.linalg.solve(affine, [*np.asarray(at, float), 1.0])[:3]).astype(int)
            peak = tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(ijk, z.shape))
        if bg is not None and bg.any():
            inside = bg[bg != 0]
            lo, hi = np.percentile(inside, (2, 99))
            gray = np.clip((bg - lo) / max(hi - lo, 1e-12), 0, 1) * 0.8 + 0.1
            gray[bg == 0] = 0.0
        else:
            gray = np.where(z != 0, 0.5, 0.0).astype(np.float32)
        views = []
        for axis in (0, 1, 2):
            cut = [slice(None)] * 3
            cut[axis] = peak[axis]
            g = gray[tuple(cut)]
            views.append(self._overlay(np.repeat(g[..., None], 3, axis=-1).astype(np.float32), z[tuple(cut)]))
        mm = [float(v) for v in np.asarray(affine @ [*peak, 1])[:3]]
        return self._render(self._compose(views, zooms), f"slices: {title}"), mm

    def close(self):
        """Forget the cached background."""
        self._cache.clear()


def cluster_table(z_img, threshold=Z_THRESHOLD, extent=CLUSTER_EXTENT, two_sided=True, min_distance=8.0,
                  max_clusters=None):
    """The report's cluster table: :func:`glmx_workflows.core.clusters.cluster_table` (the one cluster
    rule, nilearn's) in the layout of nilearn's ``get_clusters_table``.

    ``tests/test_reports.py`` checks the result against nilearn's, value for value.

    Parameters
    ----------
    z_img : nibabel image
    threshold : float
        Height (\|z\| for two-sided maps); > 0.
    extent : int
        Smallest cluster listed (voxels).
    two_sided : bool
        Negative clusters too (t contrasts); F contrasts give positive z only.
    min_distance : float
        Minimum distance between a cluster's listed peaks (mm).
    max_clusters : int, optional
        List only the clusters with the highest peaks, this many per sign (all by default).

    Returns
    -------
    pandas.DataFrame
        ``Cluster ID, X, Y, Z, Peak Stat, Cluster Size (mm3)`` (mm), empty when nothing survives; its
        ``attrs['n_clusters']`` is the number of clusters before ``max_clusters``.
    """
    data = np.asanyarray(z_img.dataobj)  # nilearn works in the image's own dtype
    table = core_cluster_table(data, z_img.affine, threshold, min_size=extent, two_sided=two_sided,
                               min_distance=min_distance, max_clusters=max_clusters)
    cols = ["Cluster ID", "X", "Y", "Z", "Peak Stat", "Cluster Size (mm3)"]
    rows = [[int(r.cluster_id) if r.cluster_id.isdigit() else r.cluster_id, r.x, r.y, r.z,
             table["peak_stat"].dtype.type(r.peak_stat), "" if pd.isna(r.size_mm3) else int(r.size_mm3)]
            for r in table.itertuples()]
    out = pd.DataFrame(rows, columns=cols)
    out.attrs["n_clusters"] = table.attrs["n_clusters"]
    return out


def _table_material(table):
    """A table as report-part material: its column names and dtypes, and the hashes of its rows."""
    import pandas as pd

    return [[str(c) for c in table.columns], [str(t) for t in table.dtypes],
            pd.util.hash_pandas_object(table, index=True).to_numpy().tobytes()]


def _run_section(i, run, contrasts, cache=None):
    """A run's part of the report: the diagnostics (kept in ``cache``, they do not depend on the
    contrasts), then its contrast matrix, confounds and censoring."""
    cache = cache or PartCache()
    label = run["label"]
    design = run["design"]
    censor = run["censor"]
    keep = censor["kept"].to_numpy(bool)
    figure = run.get("design_figure")
    # the tables by pandas' own stable row hashes (writing them out as CSV took most of a rebuild's time)
    material = ["run", i, label, *(_table_material(t) for t in (design, censor)), list(run["confounds"]),
                Path(figure).read_bytes() if figure else None]
    parts = [cache.part("run", label, material, lambda: H.join(*_run_diagnostics(i, run, keep)))]
    parts += _run_contrasts_and_censoring(run, contrasts, keep)
    return parts


def _run_diagnostics(i, run, keep):
    label = run["label"]
    design = run["design"]
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

        from .figures import plt

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

    return parts


def _run_contrasts_and_censoring(run, contrasts, keep):
    design = run["design"]
    censor = run["censor"]
    parts = [H.tag("h3", "Contrast matrix")]
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


def _single_trial_section(summaries, runs):
    """The trial-wise design (LSA, or the first trial's LSS model), beta distributions and outlier trials."""
    from nilearn.plotting import plot_design_matrix

    from ..io.tables import read_tsv
    from .figures import plt

    parts = [H.tag("h2", "Single-trial models", id="single-trial")]
    for run, summary in zip(runs, summaries):
        method = summary["method"].upper()
        parts.append(H.tag("h3", f"Run {run['label']}: {method}"))
        design = read_tsv(summary["design_file"], "single-trial design")
        what = ("the LSA design: every trial its own regressor" if summary["method"] == "lsa" else
                "the LSS design of the first trial (one such model per trial; other trials grouped by "
                + ("condition" if summary["others"] == "condition" else "one regressor") + ")")
        fig, ax = plt.subplots(figsize=(min(2 + 0.3 * design.shape[1], 24), 5))
        plot_design_matrix(design, axes=ax)
        fig.tight_layout()
        parts.append(H.figure(fig, f"{what}, run {run['label']}"))
        parts.append(H.tag("p", f"Shown: {what}; all {len(design)} volumes (censored ones are left out of the fit)."))
        conds = summary["conditions"]
        fig, ax = plt.subplots(figsize=(min(3 + 0.25 * sum(len(c["rms"]) for c in conds.values()), 14), 3.5))
        pos = 0
        for ci, (name, c) in enumerate(conds.items()):
            q = np.asarray(c["quantiles"])  # (n_trials, 5): 1, 25, 50, 75, 99 %
            x = pos + np.arange(len(q))
            ax.vlines(x, q[:, 0], q[:, 4], color="0.6", lw=1)
            ax.vlines(x, q[:, 1], q[:, 3], lw=4, color=f"C{ci % 10}", label=name)
            ax.plot(x, q[:, 2], "k_", ms=6)
            bad = np.asarray(c["outlier"], bool)
            if bad.any():
                ax.plot(x[bad], q[bad, 4], "rv", ms=7)
            pos += len(q) + 1
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("trial (by condition, onset order)")
        ax.set_ylabel("beta (% signal change)")
        ax.legend(fontsize="small", frameon=False)
        fig.tight_layout()
        parts.append(H.figure(fig, f"trial beta distributions, run {run['label']}"))
        parts.append(H.tag("p", "Each trial's betas across the brain mask: 1-99 % (thin), 25-75 % (thick) and the "
                                "median; red marks a trial flagged as an outlier."))
        rows = []
        for name, c in conds.items():
            for i in np.flatnonzero(c["outlier"]):
                rows.append([name, int(i) + 1, float(c["onset"][i]), float(c["rms"][i]), float(c["robust_z"][i])])
        if rows:
            parts.append(H.tag("p", f"{len(rows)} trial(s) flagged (kept in the beta series): robust z of the "
                                    "beta map's root mean square > 3.5 within its condition.", cls="warn"))
            parts.append(H.table(rows, header=["condition", "trial", "onset (s)", "RMS beta", "robust z"],
                                 cell_classes=[[None, None, None, None, "flag"]] * len(rows)))
        else:
            parts.append(H.tag("p", "No outlier trial (robust z of the beta map's root mean square > 3.5 within its "
                                    "condition).", cls="none"))
    return parts


def build_subject_report(path, subject, task, runs, contrasts, z_maps, background=None, settings=None,
                         threshold=Z_THRESHOLD, extent=CLUSTER_EXTENT, session=None, cache=None, single_trial=None):
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
        ``{contrast name: subject-level z map (path or nibabel image)}``; surface maps (a ``.dscalar.nii``, or the
        list of a GIfTI pair's two ``.func.gii``) are drawn by :mod:`glmx_workflows.reports.surface`.
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
    cache : PartCache or str or Path, optional
        Where the drawn parts are kept (a folder, or a :class:`~glmx_workflows.reports.cache.PartCache`):
        each run's diagnostics and each contrast's section are drawn only when what they show changed
        (each contrast has its own colour scale, so one added map redraws nothing else). None draws all.
    single_trial : list of dict, optional
        Per run, the summary JSON of the ``single_trial`` node (adds the single-trial section).

    Returns
    -------
    Path
    """
    import nibabel as nb

    if not isinstance(cache, PartCache):
        cache = PartCache(cache)

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
        parts += _run_section(i, run, contrasts, cache)
    if single_trial:
        parts += _single_trial_section(single_trial, runs)

    parts.append(H.tag("h2", "Contrasts (subject level)", id="contrasts"))
    parts.append(H.tag("p", f"z maps of the runs combined by fixed effects, shown where |z| ≥ {threshold:.2f} "
                            f"(p < {_p_of(threshold):.2g} one-sided, uncorrected); cluster tables list clusters of at "
                            f"least {extent} voxels (coordinates in mm)."))
    from .surface import is_surface_map, load_surface_map, surface_contrast_section

    if z_maps and all(is_surface_map(p) for p in z_maps.values()):
        peaks = [max(float(np.nanmax(np.abs(v))) if v.size else 0.0 for v, _ in load_surface_map(p).values())
                 for p in z_maps.values()]
        vmax = max([threshold + 1.0, *[p for p in peaks if np.isfinite(p)]])
        for name, spec in sorted(contrasts.items()):
            if name in z_maps:
                parts += surface_contrast_section(name, spec, z_maps[name], threshold, vmax)
        missing = sorted(set(contrasts) - set(z_maps))
        if missing:
            parts.append(H.tag("p", "No subject-level map (no run carries the contrast): " + ", ".join(missing) + ".",
                               cls="warn"))
        return H.write_page(path, title, parts)
    imgs = {name: nb.load(str(p)) if not hasattr(p, "affine") else p for name, p in z_maps.items()}
    # read each map once (figures, counts, the cluster table and the part's key all use it)
    imgs = {name: nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header) for name, img in imgs.items()}
    if background is not None and not hasattr(background, "affine"):
        background = nb.load(str(background))
    back_key = None
    if background is not None:
        back_key = material_digest([np.ascontiguousarray(np.asanyarray(background.dataobj, dtype=np.float32)).tobytes(),
                                    np.asarray(background.affine, float).tobytes()])
    figures = _MapFigures(threshold + 1.0, threshold, background) if imgs else None
    try:
        for name, spec in sorted(contrasts.items()):
            if name not in imgs:
                continue
            img = imgs[name]
            material = ["contrast", name, spec["label"], spec["type"], threshold, extent, back_key,
                        np.ascontiguousarray(np.asanyarray(img.dataobj, dtype=np.float32)).tobytes(),
                        list(img.shape), np.asarray(img.affine, float).tobytes()]
            draw = (lambda name=name, spec=spec, img=img: H.join(*_contrast_section(
                name, spec, img, figures, threshold, extent, background is not None)))
            parts.append(cache.part("contrast", name, material, draw))
    finally:
        if figures is not None:
            figures.close()
    missing = sorted(set(contrasts) - set(imgs))
    if missing:
        parts.append(H.tag("p", "No subject-level map (no run carries the contrast): " + ", ".join(missing) + ".",
                           cls="warn"))
    return H.write_page(path, title, parts)


def _contrast_section(name, spec, img, figures, threshold, extent, has_background):
    """One contrast's heading, counts, glass brain, slices and cluster table; the colour scale runs to the
    map's own peak |z| (at least ``threshold + 1``)."""
    label = spec["label"]
    kind = "F" if spec["type"] == "F" else "t"
    parts = [H.tag("h3", H.join(f"Contrast {name} ", H.tag("small", f"({kind}, label {label})")),
                   id=f"contrast-{H.anchor(label)}")]
    data = np.nan_to_num(np.asanyarray(img.dataobj, dtype=np.float64))
    figures.set_scale(max(threshold + 1.0, float(np.abs(data).max())))
    n_above = int((np.abs(data) >= threshold).sum())
    parts.append(H.tag("p", f"{n_above} voxel(s) at |z| ≥ {threshold:.2f}; peak |z| = "
                            f"{np.abs(data).max():.2f}.", cls=None if n_above else "none"))
    parts.append(H.tag("figure", H.join(figures.glass(img, f"{name}: z, |z| ≥ {threshold:.2f}"),
                                        H.tag("figcaption", "Glass brain: maximum-intensity projections of "
                                              "the signed z (sagittal, coronal, axial; left on the left). "
                                              + figures.scale()))))
    table = cluster_table(img, threshold, extent, two_sided=kind == "t", max_clusters=MAX_CLUSTERS)
    # through the peak of the strongest cluster (not an isolated voxel), else the largest |z|
    at = table[["X", "Y", "Z"]].to_numpy(float)[0] if len(table) else None
    tag, mm = figures.slices(img, name, at)
    where = "the peak of the top cluster" if at is not None else "the largest |z|"
    parts.append(H.tag("figure", H.join(tag, H.tag(
        "figcaption", f"Slices through {where} (x={mm[0]:.0f}, y={mm[1]:.0f}, z={mm[2]:.0f} mm) over the "
        + ("mean BOLD. " if has_background else "map's own support. ") + figures.scale()))))
    if len(table):
        parts.append(H.table(table))
        listed = (table["Cluster Size (mm3)"] != "").sum()
        if table.attrs["n_clusters"] > listed:
            parts.append(H.tag("p", f"{table.attrs['n_clusters']} clusters in all; the {MAX_CLUSTERS} with "
                                    "the highest peaks of each sign are listed.", cls="warn"))
    else:
        parts.append(H.tag("p", f"No cluster of at least {extent} voxels above the threshold.", cls="none"))
    return parts


def _show(value):
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value)
    return "null" if value is None else value


def _p_of(z):
    from scipy.special import ndtr  # scipy.stats' norm.sf, without importing scipy.stats

    return float(ndtr(-z))
