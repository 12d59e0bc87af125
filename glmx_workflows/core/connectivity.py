"""Resting-state connectivity on arrays: confound presets, denoising, region signals, matrices, seed maps.

Denoising follows ``nilearn.signal.clean`` (it is called, so the semantics are nilearn's): signals and
confounds are detrended and band-pass filtered (Butterworth) the same way, then the filtered confounds
are projected out, then the series are standardised. Confounds are filtered like the data, so
filtering cannot re-introduce the noise they removed. Volumes censored for framewise displacement are
interpolated before filtering and dropped afterwards (nilearn's ``sample_mask``); dummy scans are cut
off before anything else, as xcp_d does.

Region signals are computed here from arrays exactly as nilearn's maskers do (label means, least squares
on probabilistic maps, sphere means with the voxel nearest to the centre always included), then
cleaned: the tests check both against ``NiftiLabelsMasker``, ``NiftiMapsMasker`` and
``NiftiSpheresMasker`` with the same arguments.

Runs: ``run_combination`` 'average' (the default) writes one matrix per run and a subject-level matrix
that is the mean in Fisher-z space for correlations (mean of the matrices for covariance/precision);
'concatenate' joins the per-run denoised series into one (glm-express's ``run="ALL"``); 'separate'
writes only per-run matrices.
"""

import numpy as np
import pandas as pd

from .confounds import censoring, fill_nans, match_patterns  # noqa: F401 (censoring: the one rule, shared)
from .errors import GlmxError
from .group import fdr_qvalues

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
TISSUE = ["csf", "white_matter", "global_signal"]


def _expansions(names):
    """A parameter, its derivative, its square and its derivative's square (Satterthwaite 2013)."""
    return [f"{n}{s}" for n in names for s in ("", "_derivative1", "_power2", "_derivative1_power2")]


#: Named confound sets over fmriprep's column names.
CONFOUND_PRESETS = {
    "6P": list(MOTION),
    "24P": _expansions(MOTION),
    "36P": _expansions(MOTION) + _expansions(TISSUE),
    # motion with derivatives + the first five anatomical CompCor components (fmriprep's combined WM+CSF mask)
    "aCompCor": [f"{n}{s}" for n in MOTION for s in ("", "_derivative1")] + ["a_comp_cor_0[0-4]"],
}
KINDS = ("pearsoncorrelation", "partialcorrelation", "covariance", "precision")
CORRELATION_KINDS = ("pearsoncorrelation", "partialcorrelation")
RUN_COMBINATIONS = ("average", "concatenate", "separate")


def confound_patterns(preset=None, patterns=()):
    """The column patterns of a preset followed by the user's own.

    Parameters
    ----------
    preset : str or None
        A key of :data:`CONFOUND_PRESETS`.
    patterns : sequence of str
        fmriprep column names or shell wildcards.

    Returns
    -------
    list of str
        The preset's patterns, then the user's patterns not already in it.

    Raises
    ------
    GlmxError
        When ``preset`` is not a known preset.
    """
    if preset is not None and preset not in CONFOUND_PRESETS:
        raise GlmxError(f"unknown confound preset '{preset}'; expected one of {', '.join(CONFOUND_PRESETS)}",
                        field="confound_preset")
    out = list(CONFOUND_PRESETS[preset]) if preset else []
    return out + [p for p in patterns if p not in out]


def select_rest_confounds(frame, preset=None, patterns=(), source=None):
    """Confound columns of one run (preset + patterns), n/a filled with the column mean.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_scans, n_columns)
        fmriprep's confounds table.
    preset : str or None
        A key of :data:`CONFOUND_PRESETS`, or None.
    patterns : sequence of str
        Further fmriprep column names or shell wildcards.
    source : str, optional
        Confounds file (for messages).

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_selected)
        May have no column.

    Raises
    ------
    GlmxError
        A pattern (or a preset column) matching no column.
    """
    wanted = confound_patterns(preset, patterns)
    columns = [str(c) for c in frame.columns]
    chosen = match_patterns(columns, wanted, source, field="confound_preset" if preset else "confound_regressors")
    if not chosen:
        return pd.DataFrame(index=frame.index)
    return fill_nans(frame[chosen], source)


def denoise(signals, confounds=None, t_r=2.0, outliers=None, detrend=True, high_pass=0.01, low_pass=0.08,
            standardize=True):
    """Clean time series with ``nilearn.signal.clean`` after cutting dummy scans and scrubbing.

    Parameters
    ----------
    signals : numpy.ndarray of shape (n_scans, n_signals)
        Region or voxel series of the whole run; all-NaN columns (regions outside the mask) stay NaN.
    confounds : numpy.ndarray or DataFrame of shape (n_scans, n_confounds), optional
        Regressors projected out (whole run, dummy scans included).
    t_r : float
        Repetition time (s).
    outliers : DataFrame from :func:`censoring`, optional
        Dummy volumes are removed before cleaning; FD-censored ones are passed as nilearn's
        ``sample_mask`` (interpolated for the filter, then dropped).
    detrend : bool
        Remove a linear trend.
    high_pass, low_pass : float or None
        Band edges in Hz (Butterworth); None disables that edge.
    standardize : bool
        z-score each series (nilearn's 'zscore_sample').

    Returns
    -------
    numpy.ndarray of shape (n_kept, n_signals), float64
        Cleaned series of the kept volumes.
    """
    from nilearn.signal import clean

    signals = np.asarray(signals, dtype=np.float64)
    missing = np.isnan(signals).all(axis=0)
    if missing.any():  # regions outside the brain mask stay NaN, the others are cleaned
        out = denoise(signals[:, ~missing], confounds, t_r, outliers, detrend, high_pass, low_pass, standardize)
        full = np.full((out.shape[0], signals.shape[1]), np.nan)
        full[:, ~missing] = out
        return full
    n = signals.shape[0]
    conf = None
    if confounds is not None and np.asarray(confounds).size:
        conf = np.asarray(confounds, dtype=np.float64).reshape(n, -1)
    sample_mask = None
    if outliers is not None:
        reason = np.asarray(outliers["reason"])
        start = int((reason == "dummy").sum())
        if start and not (reason[:start] == "dummy").all():
            raise GlmxError("dummy volumes must be the leading ones", field="dummy_scans")
        signals = signals[start:]
        conf = conf[start:] if conf is not None else None
        keep = reason[start:] == "n/a"
        if not keep.all():
            sample_mask = np.flatnonzero(keep)
    nyquist = 0.5 / float(t_r)
    for name, edge in (("high_pass", high_pass), ("low_pass", low_pass)):
        if edge is not None and not 0 < edge < nyquist:
            raise GlmxError(f"{name} {edge} Hz is outside (0, {nyquist:g}) Hz, the band a TR of {t_r} s can "
                            "represent", field=name)
    try:
        return clean(signals, detrend=detrend, standardize="zscore_sample" if standardize else None,
                     sample_mask=sample_mask, confounds=conf, standardize_confounds=True, filter="butterworth",
                     low_pass=low_pass, high_pass=high_pass, t_r=float(t_r))
    except ValueError as exc:
        if "padlen" not in str(exc):
            raise
        raise GlmxError(f"the band-pass filter needs more volumes than the {signals.shape[0]} of this run "
                        f"({exc}); set high_pass/low_pass to null or use longer runs", field="low_pass") from None


def denoise_many(signals, confounds=None, t_r=2.0, outliers=None, detrend=True, high_pass=0.01, low_pass=0.08,
                 standardize=True):
    """:func:`denoise` for many series at once (every voxel of a run), through its linear operator.

    Detrending, the Butterworth filter (with nilearn's padding), the interpolation of censored volumes
    and the confound projection are all linear and the same for every series, so the cleaning is one
    matrix ``L`` of shape (n_kept, n_scans) obtained by cleaning the identity; ``L @ signals`` then
    replaces nilearn's per-series filter loop (thousands of voxels in a fraction of the time).
    Standardisation, the one non-linear step, is applied afterwards as nilearn does ('zscore_sample').

    Parameters
    ----------
    signals : numpy.ndarray of shape (n_scans, n_signals)
        Series of the whole run.
    confounds, t_r, outliers, detrend, high_pass, low_pass, standardize
        As for :func:`denoise`.

    Returns
    -------
    numpy.ndarray of shape (n_kept, n_signals), float64
        Cleaned series of the kept volumes, as :func:`denoise` gives them.
    """
    signals = np.asarray(signals, dtype=np.float64)
    operator = denoise(np.eye(signals.shape[0]), confounds, t_r, outliers, detrend, high_pass, low_pass,
                       standardize=False)
    out = operator @ signals
    if standardize:
        out -= out.mean(axis=0)
        std = out.std(axis=0, ddof=1)
        out /= np.where(std > np.finfo(np.float64).eps, std, 1.0)
    return out


# ----------------------------------------------------------------------------------------- region signals


def labels_signals(data, labels, mask=None, label_values=None):
    """Mean series of each label (nilearn's NiftiLabelsMasker, background 0).

    Parameters
    ----------
    data : numpy.ndarray of shape (x, y, z, n_scans)
        BOLD data.
    labels : numpy.ndarray of int, shape (x, y, z)
        Label image on the BOLD grid (0 is background).
    mask : numpy.ndarray of bool, shape (x, y, z), optional
        Voxels outside it are ignored.
    label_values : sequence of int, optional
        Labels to return, in this order (default: every non-zero label, sorted).

    Returns
    -------
    signals : numpy.ndarray of shape (n_scans, n_labels)
        Mean series of each label's voxels.
    label_values : list of int
        The labels, in column order.

    Raises
    ------
    GlmxError
        When a requested label has no voxel inside the mask.
    """
    labels = np.asarray(labels).astype(int)
    if mask is not None:
        labels = np.where(mask, labels, 0)
    values = sorted(int(v) for v in np.unique(labels) if v != 0) if label_values is None else list(label_values)
    present = set(np.unique(labels).tolist())
    empty = [v for v in values if v not in present]
    if empty:
        raise GlmxError(f"label(s) {', '.join(map(str, empty[:10]))} have no voxel inside the brain mask",
                        field="atlas")
    sel = labels != 0
    flat = np.asarray(data, dtype=np.float64)[sel]
    lab = labels[sel]
    index = {v: i for i, v in enumerate(values)}
    rows = np.array([index.get(v, -1) for v in lab])
    use = rows >= 0
    sums = np.zeros((len(values), flat.shape[1]))
    np.add.at(sums, rows[use], flat[use])
    counts = np.bincount(rows[use], minlength=len(values)).astype(float)
    return (sums / counts[:, None]).T, values


def maps_signals(data, maps, mask=None):
    """Least-squares region series of probabilistic maps (nilearn's NiftiMapsMasker).

    Parameters
    ----------
    data : numpy.ndarray of shape (x, y, z, n_scans)
        BOLD data.
    maps : numpy.ndarray of shape (x, y, z, n_maps)
        Region maps on the BOLD grid.
    mask : numpy.ndarray of bool, shape (x, y, z), optional
        Voxels outside it are ignored (default: every voxel).

    Returns
    -------
    signals : numpy.ndarray of shape (n_scans, n_kept_maps)
        Least-squares coefficients of the kept maps at each scan.
    kept : list of int
        Indices of the maps that overlap the mask (others are dropped, as nilearn does).
    """
    from scipy import linalg

    maps = np.asarray(maps, dtype=np.float64)
    mask = np.ones(maps.shape[:3], bool) if mask is None else np.asarray(mask, bool)
    inside = maps[mask]
    kept = [int(i) for i in np.flatnonzero(np.abs(inside).sum(axis=0) > 0)]
    if not kept:
        raise GlmxError("no map of the atlas overlaps the brain mask", field="atlas")
    trimmed = np.where(mask[..., None], maps[..., kept], 0)
    support = (trimmed != 0).any(axis=-1)
    region = linalg.lstsq(trimmed[support], np.asarray(data, dtype=np.float64)[support])[0]
    return region.T, kept


def sphere_members(coords, affine, mask, radius, allow_empty=False):
    """Voxels of each sphere, as nilearn's NiftiSpheresMasker chooses them.

    Parameters
    ----------
    coords : array of shape (n_spheres, 3)
        Centres in world (mm) coordinates of the image's space.
    affine : numpy.ndarray of shape (4, 4)
        Voxel-to-world transform of the image.
    mask : numpy.ndarray of bool, shape (x, y, z)
        Brain mask; only its voxels can belong to a sphere.
    radius : float or None
        Radius in mm; voxels whose centre is within it (inclusive) belong to the sphere, and the voxel
        nearest to the centre always does when it is in the mask. None: the nearest voxel only.
    allow_empty : bool
        Return an empty index array for a sphere outside the mask instead of raising.

    Returns
    -------
    list of numpy.ndarray of int
        Indices into ``np.argwhere(mask)`` (C order) per sphere.

    Raises
    ------
    GlmxError
        When a sphere holds no voxel of the mask (unless ``allow_empty``).
    """
    ijk = np.argwhere(mask)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    position = {tuple(v): i for i, v in enumerate(ijk.tolist())}
    inv = np.linalg.inv(affine)
    members, empty = [], []
    for n, c in enumerate(np.asarray(coords, dtype=float).reshape(-1, 3)):
        near = tuple(int(v) for v in np.round(inv[:3, :3] @ c + inv[:3, 3]).astype(int))
        hits = set()
        if radius:
            hits = set(np.flatnonzero(((world - c) ** 2).sum(axis=1) <= float(radius) ** 2).tolist())
        if near in position:
            hits.add(position[near])
        if not hits:
            empty.append(n)
        members.append(np.array(sorted(hits), dtype=int))
    if empty and not allow_empty:
        raise GlmxError(f"{len(empty)} sphere(s) hold no voxel of the brain mask (first: number {empty[0] + 1} at "
                        f"{list(np.asarray(coords, float).reshape(-1, 3)[empty[0]])} mm)", field="atlas")
    return members


def spheres_signals(data, coords, affine, mask, radius, allow_empty=False):
    """Mean series of each sphere (nilearn's NiftiSpheresMasker with ``allow_overlap=True``).

    Parameters
    ----------
    data : numpy.ndarray of shape (x, y, z, n_scans)
        BOLD data.
    coords : array of shape (n_spheres, 3), world mm
        Sphere centres.
    affine : numpy.ndarray of shape (4, 4)
        Voxel-to-world transform of ``data``.
    mask : numpy.ndarray of bool, shape (x, y, z)
        Brain mask; only its voxels are averaged.
    radius : float or None
        As for :func:`sphere_members`.
    allow_empty : bool
        A sphere outside the mask gives a column of NaN (instead of an error), so that an atlas keeps
        the same regions, in the same order, for every subject.

    Returns
    -------
    numpy.ndarray of shape (n_scans, n_spheres)
        Mean series of each sphere's voxels.

    Raises
    ------
    GlmxError
        When a sphere holds no voxel of the mask and ``allow_empty`` is False.
    """
    flat = np.asarray(data, dtype=np.float64)[np.asarray(mask, bool)]
    members = sphere_members(coords, affine, mask, radius, allow_empty)
    return np.stack([flat[m].mean(axis=0) if len(m) else np.full(flat.shape[1], np.nan) for m in members], axis=1)


# ----------------------------------------------------------------------------------------------- matrices


def fisher_z(r):
    """Fisher's z = arctanh(r); the diagonal (r = 1) becomes 0 rather than infinity.

    Parameters
    ----------
    r : numpy.ndarray of shape (n, n)
        Correlations (clipped just inside (-1, 1)).

    Returns
    -------
    numpy.ndarray of shape (n, n)
        z values, zero on the diagonal of a square matrix.
    """
    z = np.arctanh(np.clip(np.asarray(r, float), -1 + 1e-12, 1 - 1e-12))
    if z.ndim == 2 and z.shape[0] == z.shape[1]:
        np.fill_diagonal(z, 0.0)
    return z


def inverse_fisher_z(z):
    """tanh(z) with a unit diagonal (inverse of :func:`fisher_z`).

    Parameters
    ----------
    z : numpy.ndarray of shape (n, n)
        Fisher z values.

    Returns
    -------
    numpy.ndarray of shape (n, n)
        Correlations, one on the diagonal of a square matrix.
    """
    r = np.tanh(np.asarray(z, float))
    if r.ndim == 2 and r.shape[0] == r.shape[1]:
        np.fill_diagonal(r, 1.0)
    return r


def connectivity(timeseries, kind):
    """One connectivity matrix from region time series.

    Parameters
    ----------
    timeseries : numpy.ndarray of shape (n_scans, n_regions)
        All-NaN columns give NaN rows and columns.
    kind : str
        'pearsoncorrelation' (Pearson r), 'partialcorrelation' (from the inverse of the empirical
        covariance), 'covariance' (empirical, maximum likelihood: divided by n_scans) or 'precision'
        (sparse inverse covariance of the z-scored series by sklearn's GraphicalLassoCV).

    Returns
    -------
    numpy.ndarray of shape (n_regions, n_regions)
        The matrix (unit diagonal for the correlation kinds).

    Raises
    ------
    GlmxError
        When ``kind`` is unknown, or a partial correlation is asked with no more volumes than regions.
    """
    X = np.asarray(timeseries, dtype=np.float64)
    missing = np.isnan(X).all(axis=0)
    if missing.any():  # regions without data get NaN rows and columns; the rest is computed without them
        full = np.full((X.shape[1], X.shape[1]), np.nan)
        full[np.ix_(~missing, ~missing)] = connectivity(X[:, ~missing], kind)
        return full
    if X.shape[0] < 3:
        raise GlmxError(f"{X.shape[0]} volumes are too few for a connectivity matrix", field="timeseries")
    Xc = X - X.mean(axis=0)
    cov = Xc.T @ Xc / X.shape[0]
    if kind == "covariance":
        return cov
    if kind == "pearsoncorrelation":
        d = np.sqrt(np.diag(cov))
        if np.any(d == 0):
            raise GlmxError(f"region(s) {np.flatnonzero(d == 0).tolist()} have a constant time series",
                            field="timeseries")
        r = cov / np.outer(d, d)
        np.fill_diagonal(r, 1.0)
        return r
    if kind == "partialcorrelation":
        if X.shape[0] <= X.shape[1]:
            raise GlmxError(f"partial correlation needs more volumes ({X.shape[0]}) than regions ({X.shape[1]}); "
                            "use 'precision' (graphical lasso) or fewer regions", field="connectivity_kinds")
        return precision_to_partial(np.linalg.inv(cov))
    if kind == "precision":
        from sklearn.covariance import GraphicalLassoCV

        std = Xc / Xc.std(axis=0)
        return GraphicalLassoCV().fit(std).precision_
    raise GlmxError(f"unknown connectivity kind '{kind}'; expected one of {', '.join(KINDS)}",
                    field="connectivity_kinds")


def precision_to_partial(precision):
    """Partial correlations -P_ij / sqrt(P_ii P_jj) with a unit diagonal.

    Parameters
    ----------
    precision : numpy.ndarray of shape (n, n)
        Inverse covariance.

    Returns
    -------
    numpy.ndarray of shape (n, n)
        Partial correlations.
    """
    d = np.sqrt(np.diag(precision))
    partial = -precision / np.outer(d, d)
    np.fill_diagonal(partial, 1.0)
    return partial


def average_matrices(matrices, kind):
    """Subject-level matrix of several runs: mean in Fisher-z space for correlations, plain mean otherwise.

    Parameters
    ----------
    matrices : sequence of numpy.ndarray of shape (n, n)
        One matrix per run, same regions.
    kind : str
        Connectivity kind of the matrices (see :func:`connectivity`).

    Returns
    -------
    numpy.ndarray of shape (n, n)
        The averaged matrix.
    """
    stack = np.stack([np.asarray(m, float) for m in matrices])
    if kind in CORRELATION_KINDS:
        return inverse_fisher_z(np.mean([fisher_z(m) for m in stack], axis=0))
    return stack.mean(axis=0)


def seed_map(voxel_series, seed_series):
    """Voxelwise Fisher-z of the Pearson correlation with a seed series.

    Parameters
    ----------
    voxel_series : numpy.ndarray of shape (n_scans, n_voxels)
        Denoised voxel series.
    seed_series : numpy.ndarray of shape (n_scans,)
        Denoised seed series.

    Returns
    -------
    numpy.ndarray of shape (n_voxels,)
        arctanh(r), clipped away from +-1; 0 where a voxel is constant.
    """
    Y = np.asarray(voxel_series, float)
    s = np.asarray(seed_series, float).ravel()
    Y = Y - Y.mean(axis=0)
    s = s - s.mean()
    norm = np.sqrt((Y ** 2).sum(axis=0)) * np.sqrt((s ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(norm > 0, (s @ Y) / np.where(norm > 0, norm, 1), 0.0)
    return np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7))


# ----------------------------------------------------------------------------------------------- group level


def tangent_matrices(timeseries):
    """Tangent-space embedding of subjects' Ledoit-Wolf covariances around their geometric mean (nilearn's
    'tangent').

    Parameters
    ----------
    timeseries : list of numpy.ndarray of shape (n_scans_s, n_regions)
        One per subject.

    Returns
    -------
    tangents : numpy.ndarray of shape (n_subjects, n_regions, n_regions)
        Each subject's tangent-space matrix.
    mean : numpy.ndarray of shape (n_regions, n_regions)
        The geometric-mean covariance the tangents are taken at.

    Raises
    ------
    GlmxError
        When fewer than two subjects are given.
    """
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import LedoitWolf

    if len(timeseries) < 2:
        raise GlmxError("the tangent embedding needs at least two subjects", field="subjects")
    # Ledoit-Wolf shrinkage (nilearn's default): band-passed, censored series have fewer effective samples
    # than regions, so their empirical covariance is singular and has no tangent space
    measure = ConnectivityMeasure(kind="tangent", cov_estimator=LedoitWolf(store_precision=False), standardize=False)
    tangents = measure.fit_transform([np.asarray(t, float) for t in timeseries])
    return tangents, measure.mean_


def edge_group_comparison(z_matrices, groups, alpha=0.05):
    """Two-sample t-test of every edge (Welch), FDR (Benjamini-Hochberg) over the upper triangle.

    Parameters
    ----------
    z_matrices : numpy.ndarray of shape (n_subjects, n, n)
        Fisher-z connectivity per subject.
    groups : sequence of str, length n_subjects
        Exactly two distinct values; the first in sorted order is group A, the contrast is A - B.
    alpha : float
        FDR level.

    Returns
    -------
    dict
        ``levels`` (A, B), ``t``, ``p``, ``q`` (FDR-adjusted p over the finite edges) and ``significant``
        (bool), each (n, n) symmetric with a zero/one diagonal; NaN where an edge has no data.
    """
    from scipy import stats

    z = np.asarray(z_matrices, float)
    groups = np.asarray([str(g) for g in groups])
    levels = sorted(set(groups.tolist()))
    if len(levels) != 2:
        raise GlmxError(f"a group comparison needs exactly two groups, got {len(levels)}: {', '.join(levels)}",
                        field="connectivity_group_column")
    a, b = z[groups == levels[0]], z[groups == levels[1]]
    if len(a) < 2 or len(b) < 2:
        raise GlmxError(f"each group needs at least two subjects ({levels[0]}: {len(a)}, {levels[1]}: {len(b)})",
                        field="connectivity_group_column")
    n = z.shape[1]
    iu = np.triu_indices(n, 1)
    ea, eb = a[:, iu[0], iu[1]], b[:, iu[0], iu[1]]
    # edges of regions without data (n/a) are left out of the test and of the FDR family; scipy's NaN
    # handling would also fall back to a slow per-edge loop
    finite = np.isfinite(ea).all(axis=0) & np.isfinite(eb).all(axis=0)
    t = np.full(finite.shape, np.nan)
    p = np.full(finite.shape, np.nan)
    q = np.full(finite.shape, np.nan)
    if finite.any():
        t[finite], p[finite] = stats.ttest_ind(ea[:, finite], eb[:, finite], axis=0, equal_var=False)
        q[finite] = fdr_qvalues(np.nan_to_num(p[finite], nan=1.0))  # the group level's BH, one function

    def square(values, diag):
        out = np.full((n, n), diag, float)
        out[iu] = values
        out[(iu[1], iu[0])] = values
        return out

    return {"levels": levels, "t": square(t, 0.0), "p": square(p, 1.0), "q": square(q, 1.0),
            "significant": square(np.nan_to_num(q, nan=1.0) <= alpha, False).astype(bool)}
