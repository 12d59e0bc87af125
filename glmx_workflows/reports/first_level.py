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
        from matplotlib.colors import Normalize

        self.cmap = plt.get_cmap("RdBu_r")
        self.vmax = vmax
        self.norm = Normalize(-vmax, vmax)
        self.threshold = threshold
        self.background = background
        self._cache = {}

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
    """Clusters of the thresholded map: the table of nilearn's ``get_clusters_table``, computed per cluster.

    nilearn's function scans the whole volume once per cluster (extent filter, peak, sub-peaks), which
    takes minutes on an unsmoothed 2 mm map with thousands of supra-threshold clusters. Here the map is
    labelled once, cluster sizes and peaks come from one pass each, and the sub-peaks of a cluster are
    searched in its bounding box only, with nilearn's rules (3x3x3 local maxima, plateaus by centre of
    mass, peaks at least ``min_distance`` mm apart as nilearn pares them, at most 3 sub-peaks).
    ``tests/test_reports.py`` checks the result against nilearn's.

    Parameters
    ----------
    z_img : nibabel image
    threshold : float
        Height (\\|z\\| for two-sided maps); > 0.
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
    import nibabel as nb
    from scipy import ndimage

    cols = ["Cluster ID", "X", "Y", "Z", "Peak Stat", "Cluster Size (mm3)"]
    data = np.array(np.asanyarray(z_img.dataobj))  # nilearn works in the image's own dtype
    data[~np.isfinite(data)] = 0
    # nilearn's threshold_img: below the height -> 0, then clusters smaller than the extent -> 0
    if two_sided:
        data[(-threshold < data) & (data < threshold)] = 0.0
    else:
        data[data < threshold] = 0.0
    voxel_mm3 = np.prod(nb.Nifti1Image(np.zeros((1, 1, 1), np.uint8), z_img.affine).header.get_zooms())
    # the rest works in the box around the surviving voxels (a voxel of margin: the 3x3x3 filters of the
    # sub-peak search see what they would see in the whole volume); labels keep their raster order
    survivors = np.nonzero(data)
    if not survivors[0].size:
        return _empty_table(cols)
    corner = np.array([max(int(ax.min()) - 1, 0) for ax in survivors])
    data = data[tuple(slice(c, int(ax.max()) + 2) for c, ax in zip(corner, survivors))]
    faces = ndimage.generate_binary_structure(3, 1)
    if extent > 0:
        for sign in (-1, 1):
            labels, _ = ndimage.label(data * sign > 0, faces)
            small = np.bincount(labels.ravel()) < extent
            small[0] = False
            data[small[labels]] = 0.0
    rows, n_clusters = [], 0
    for sign in ((1, -1) if two_sided else (1,)):
        offset = len(rows)  # nilearn numbers the negative clusters after the rows (peaks and sub-peaks) so far
        signed = data * sign
        labels, n = ndimage.label(signed > threshold, faces)
        if not n:
            continue
        n_clusters += n
        ids = np.arange(1, n + 1)
        flat = labels.ravel()
        inside = np.flatnonzero(flat)
        lab, val = flat[inside], signed.ravel()[inside]
        by = np.lexsort((val, lab))  # by cluster, then value: each cluster's maximum comes last
        ends = np.append(np.flatnonzero(np.diff(lab[by])), by.size - 1)
        peaks = val[by][ends]  # clusters 1..n in order (labels are consecutive)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        boxes = ndimage.find_objects(labels)
        order = ids[(-peaks).argsort()]
        for rank, c in enumerate(order[:max_clusters]):
            lo = [max(s.start - 1, 0) for s in boxes[c - 1]]
            crop = tuple(slice(a, min(s.stop + 1, dim)) for a, s, dim in zip(lo, boxes[c - 1], data.shape))
            masked = np.where(labels[crop] == c, signed[crop], 0.0).astype(signed.dtype)
            ijk, vals = _cluster_peaks(masked, np.array(lo) + corner, z_img.affine, min_distance)
            xyz = nb.affines.apply_affine(z_img.affine, ijk)
            cid = rank + offset + 1
            for k in range(len(vals)):
                rows.append([cid if k == 0 else f"{cid}{'abc'[k - 1]}", *xyz[k], vals[k] * sign,
                             int(sizes[c] * voxel_mm3) if k == 0 else ""])
    table = pd.DataFrame(rows, columns=cols)
    table.attrs["n_clusters"] = n_clusters
    return table


def _empty_table(cols):
    table = pd.DataFrame([], columns=cols)
    table.attrs["n_clusters"] = 0
    return table


def _cluster_peaks(masked, origin, affine, min_distance, n_peaks=4):
    """Peak and sub-peaks of one cluster (values > 0 inside it, 0 around) as nilearn finds them."""
    import nibabel as nb
    from scipy import ndimage

    data_max = ndimage.maximum_filter(masked, 3)
    maxima = masked == data_max
    nonzero = masked != 0
    maxima[~nonzero] = False
    if not np.isclose(masked[nonzero].max(), masked[nonzero].min()):
        maxima[(data_max - ndimage.minimum_filter(masked, 3)) <= 0] = False  # flat patches are no maxima
    labeled, n = ndimage.label(maxima)
    index = np.arange(1, n + 1)
    ijk = np.round(np.array(ndimage.center_of_mass(masked, labeled, index)) + origin).astype(int) - origin
    outside = labeled[ijk[:, 0], ijk[:, 1], ijk[:, 2]] != index
    if outside.any():  # a plateau's centre of mass off the plateau: its nearest voxel (nilearn's rule)
        points = np.argwhere(labeled > 0)
        which = labeled[labeled > 0]
        for i in np.flatnonzero(outside):
            cand = points[which == index[i]]
            ijk[i] = cand[np.argmin(np.linalg.norm(cand - ijk[i], axis=1))]
    vals = masked[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    order = (-vals).argsort()
    ijk, vals = ijk[order] + origin, vals[order]
    xyz = nb.affines.apply_affine(affine, ijk)
    # nilearn's pairwise paring keeps a peak when it is farther than min_distance from the last kept one
    kept, last = [0], 0
    for j in range(1, len(vals)):
        if len(kept) == n_peaks:
            break
        if np.linalg.norm(xyz[last] - xyz[j]) > min_distance:
            kept.append(j)
            last = j
    return ijk[kept], vals[kept]


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
    # read each map once (figures, counts and the cluster table all use it)
    imgs = {name: nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header) for name, img in imgs.items()}
    peaks = [float(np.nanmax(np.abs(np.asanyarray(img.dataobj)))) for img in imgs.values()]
    vmax = max([threshold + 1.0, *[p for p in peaks if np.isfinite(p)]])
    if background is not None and not hasattr(background, "affine"):
        background = nb.load(str(background))
    figures = _MapFigures(vmax, threshold, background) if imgs else None
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
                + ("mean BOLD. " if background is not None else "map's own support. ") + figures.scale()))))
            if len(table):
                parts.append(H.table(table))
                listed = (table["Cluster Size (mm3)"] != "").sum()
                if table.attrs["n_clusters"] > listed:
                    parts.append(H.tag("p", f"{table.attrs['n_clusters']} clusters in all; the {MAX_CLUSTERS} with "
                                            "the highest peaks of each sign are listed.", cls="warn"))
            else:
                parts.append(H.tag("p", f"No cluster of at least {extent} voxels above the threshold.", cls="none"))
    finally:
        if figures is not None:
            figures.close()
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
