"""Second-level (group) models on arrays: design, OLS fit, contrasts, thresholds, clusters, permutations.

* The design comes from participants.tsv columns: numeric columns are mean-centred covariates,
  text columns give one indicator regressor per level (cell-means coding, no intercept).
* The fit is the ordinary least-squares GLM of :mod:`glmx_workflows.core.glm` (nilearn's
  ``SecondLevelModel`` computes the same numbers through ``run_glm``).
* Parametric inference: uncorrected height, Benjamini-Hochberg FDR, Bonferroni, cluster extent.
* Non-parametric inference (:func:`permutation_inference`): Freedman-Lane on the contrast's
  reparametrised design, sign flips when the tested regressor is constant (one-sample: the
  errors are assumed symmetric) and row permutations otherwise (covariates, two-sample: the
  errors are assumed exchangeable). Every permutation of a chunk is fitted with one matrix
  product over all voxels; max-statistic FWE, cluster mass and TFCE come from the same statistic
  maps. Results are reproducible for a given seed; when the number of permutations asked for
  reaches the number of distinct ones, they are enumerated and the p-values are exact.

The only imports are numpy, scipy and pandas (no files, no nipype).
"""

import itertools
import math

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as sps

from .errors import GlmxError
from .formula import bids_label, contrast_matrix, parse_formula, sanitize_name, unknown_regressors
from .glm import contrast_statistics, estimate_contrast, fit_glm
from .tfce import cluster_measures, is_graph, label_clusters, tfce

INTERCEPT = "intercept"

#: Every inference method, with the ``desc`` value of its maps.
INFERENCE_DESC = {
    "uncorrected": "uncorrected",
    "fdr": "fdr",
    "bonferroni": "bonferroni",
    "cluster": "cluster",
    "perm_fwe": "permFWE",
    "perm_cluster_mass": "permClusterMass",
    "tfce": "tfce",
}
PERMUTATION_METHODS = ("perm_fwe", "perm_cluster_mass", "tfce")


# ----------------------------------------------------------------------------------------------
# design
# ----------------------------------------------------------------------------------------------


def _subject_label(value):
    label = str(value).strip()
    return label[4:] if label.startswith("sub-") else label


def is_numeric_column(values):
    """True when every defined value of a participants.tsv column reads as a number.

    Parameters
    ----------
    values : pandas.Series
        A participants.tsv column (n/a read as NaN).

    Returns
    -------
    bool
        True also for a column with no defined value.
    """
    defined = values.dropna()
    if defined.empty:
        return True
    return bool(pd.to_numeric(defined.astype(str).str.strip(), errors="coerce").notna().all())


def group_design(participants, subjects, regressors, source=None):
    """Build the group design matrix of the given subjects.

    Parameters
    ----------
    participants : pandas.DataFrame
        participants.tsv with a ``participant_id`` column ('sub-01' or '01'); missing values NaN.
    subjects : list of str
        Subject labels (without 'sub-'), one design row each, in this order.
    regressors : list of str
        participants.tsv columns. Numeric columns become mean-centred covariates (named after the
        column); text columns give one indicator per level named ``<column>_<level>`` (the first such
        column in cell-means coding without intercept; the levels of any further text column except
        its first are added as mean-centred indicators).
    source : str, optional
        The participants file, named in errors.

    Returns
    -------
    design : pandas.DataFrame, shape (n_subjects, n_columns)
        Indexed by subject label; ``intercept`` first when there is no text column.
    mean_weights : dict
        ``{column: weight}`` of the mean effect over subjects (the intercept, or the average of the
        first text column's group means).

    Raises
    ------
    GlmxError
        A column missing from the table, a subject not listed or lacking a value (one line naming
        subject and column), a constant or collinear regressor, or no more subjects than columns.
    """
    subjects = [_subject_label(s) for s in subjects]
    if not subjects:
        raise GlmxError("no subject to model at the group level")
    regressors = list(regressors or [])
    table = None
    if regressors:
        if "participant_id" not in participants.columns:
            raise GlmxError("participants table has no participant_id column", file=source, field="participant_id")
        table = participants.copy()
        table.index = [_subject_label(s) for s in table["participant_id"]]
        dupes = table.index[table.index.duplicated()].unique().tolist()
        if dupes:
            raise GlmxError(f"sub-{dupes[0]} is listed more than once", file=source, field="participant_id")
        for col in regressors:
            if col not in table.columns:
                raise GlmxError(f"group_level_regressors names column '{col}', which is not in the participants "
                                f"table (columns: {', '.join(c for c in table.columns if c != 'participant_id')})",
                                file=source, field=col)
        for sub in subjects:
            if sub not in table.index:
                raise GlmxError(f"sub-{sub} is not listed in the participants table", file=source,
                                field="participant_id")
            for col in regressors:
                if pd.isna(table.loc[sub, col]):
                    raise GlmxError(f"sub-{sub} has no value for '{col}' (n/a)", file=source, field=col)
    columns = {}
    kinds = {}
    first_categorical = None
    for col in regressors:
        values = table.loc[subjects, col]
        if is_numeric_column(table[col]):
            x = pd.to_numeric(values.astype(str).str.strip()).to_numpy(float)
            name = sanitize_name(col)
            columns[name] = x - x.mean()
            kinds[name] = "covariate"
        else:
            levels = sorted(values.astype(str).str.strip().unique())
            if first_categorical is None:
                first_categorical = []
                for level in levels:
                    name = sanitize_name(f"{col}_{level}")
                    columns[name] = (values.astype(str).str.strip() == level).to_numpy(float)
                    kinds[name] = "group"
                    first_categorical.append(name)
            else:
                for level in levels[1:]:
                    name = sanitize_name(f"{col}_{level}")
                    ind = (values.astype(str).str.strip() == level).to_numpy(float)
                    columns[name] = ind - ind.mean()
                    kinds[name] = "covariate"
    if first_categorical is None:
        columns = {INTERCEPT: np.ones(len(subjects)), **columns}
        mean_weights = {INTERCEPT: 1.0}
    else:
        mean_weights = {name: 1.0 / len(first_categorical) for name in first_categorical}
    design = pd.DataFrame(columns, index=pd.Index(subjects, name="participant_id"))
    check_design(design, source)
    return design, mean_weights


def check_design(design, source=None):
    """Refuse a design the OLS fit cannot estimate (constant or collinear columns, too few subjects).

    Parameters
    ----------
    design : pandas.DataFrame, shape (n_subjects, n_columns)
        Group design (columns named after the regressors).
    source : str, optional
        File named in errors.

    Raises
    ------
    GlmxError
        When a regressor other than the intercept is zero after centring, the design is
        rank-deficient, or there are no more subjects than columns.
    """
    X = design.to_numpy(float)
    n, p = X.shape
    for name in design.columns:
        if name != INTERCEPT and np.allclose(design[name].to_numpy(float), 0):
            raise GlmxError(f"group regressor '{name}' is constant over the {n} subject(s) modelled "
                            "(after mean-centring it is zero)", file=source, field=name)
    rank = np.linalg.matrix_rank(X)
    if rank < p:
        raise GlmxError(f"the group design is rank-deficient (rank {rank} for columns {', '.join(design.columns)})",
                        file=source, field="group_level_regressors")
    if n <= p:
        raise GlmxError(f"the group model needs more subjects than design columns: {n} subject(s), {p} column(s) "
                        f"({', '.join(design.columns)})", file=source, field="group_level_regressors")


def group_contrasts(design_columns, mean_weights, formulas=None, source=None):
    """The group contrasts of a design: the mean effect, then each formula.

    Parameters
    ----------
    design_columns : list of str
        Column names of the design, in order.
    mean_weights : dict
        From :func:`group_design`.
    formulas : dict, optional
        ``{name: formula}`` over design columns (``"-intercept"``, ``"group_patient - group_control"``).
    source : str, optional
        Spec file named in errors.

    Returns
    -------
    list of dict
        ``{'name', 'desc' (None for the mean, else the BIDS label of the name), 'weights' (list of
        float, one per column)}``.
    """
    columns = list(design_columns)
    out = [{"name": "mean", "desc": None,
            "weights": contrast_matrix([mean_weights], columns)[0].tolist()}]
    for name, formula in (formulas or {}).items():
        weights = parse_formula(formula)
        missing = unknown_regressors([weights], columns)
        if missing:
            raise GlmxError(f"group contrast '{name}' uses {', '.join(repr(m) for m in missing)}, not a column of "
                            f"the group design (columns: {', '.join(columns)})", file=source,
                            field=f"group_contrasts.{name}")
        out.append({"name": name, "desc": bids_label(name),
                    "weights": contrast_matrix([weights], columns)[0].tolist()})
    return out


# ----------------------------------------------------------------------------------------------
# fit and parametric inference
# ----------------------------------------------------------------------------------------------


def fit_group_model(Y, X):
    """Ordinary least squares of subject maps on the group design (nilearn's SecondLevelModel fit).

    Parameters
    ----------
    Y : numpy.ndarray, shape (n_subjects, n_voxels)
        Subject maps, in-mask voxels.
    X : numpy.ndarray, shape (n_subjects, n_columns)
        Group design.

    Returns
    -------
    GLMFit
        Betas, residual variance and degrees of freedom of the OLS fit.
    """
    return fit_glm(np.asarray(Y, dtype=np.float64), np.asarray(X, dtype=np.float64), noise_model="ols")


def contrast_maps(fit, weights):
    """Effect, variance, t, z and p (one-sided, upper tail) of a group t contrast.

    Parameters
    ----------
    fit : GLMFit
        From :func:`fit_group_model`.
    weights : array-like, shape (n_columns,)
        Contrast weights over the design columns.

    Returns
    -------
    dict
        ``effect``, ``variance``, ``t``, ``z``, ``p``: arrays of shape (n_voxels,); ``dof``: float.
    """
    stats = contrast_statistics(estimate_contrast(fit, np.asarray(weights, float)))
    return {"effect": stats["effect"], "variance": stats["variance"], "t": stats["stat"], "z": stats["z"],
            "p": stats["p"], "dof": stats["dof"]}


def fdr_qvalues(p):
    """Benjamini-Hochberg adjusted p-values (q-values).

    Parameters
    ----------
    p : numpy.ndarray, shape (n,)
        Uncorrected p-values.

    Returns
    -------
    numpy.ndarray, shape (n,)
        ``min_{k >= rank} p_(k) n / k``, at most 1.
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * n / np.arange(1, n + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(n)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def bonferroni(p):
    """Bonferroni-corrected p-values: ``min(p * n, 1)``.

    Parameters
    ----------
    p : numpy.ndarray, shape (n,)
        Uncorrected p-values.

    Returns
    -------
    numpy.ndarray, shape (n,)
        Corrected p-values.
    """
    p = np.asarray(p, dtype=np.float64)
    return np.minimum(p * p.size, 1.0)


def z_threshold(p_threshold=None, z=None):
    """The height threshold in z: given directly, or the upper-tail z of an uncorrected p.

    Parameters
    ----------
    p_threshold : float, optional
        Uncorrected one-sided p (used when ``z`` is None).
    z : float, optional
        Height in z, returned as given.

    Returns
    -------
    float
        The height in z.

    Raises
    ------
    GlmxError
        When ``z`` is None and ``p_threshold`` is not strictly between 0 and 1.
    """
    if z is not None:
        return float(z)
    if p_threshold is None or not 0 < p_threshold < 1:
        raise GlmxError(f"an uncorrected p threshold must be between 0 and 1, got {p_threshold!r}",
                        field="group_p_threshold")
    return float(sps.norm.isf(p_threshold))


def cluster_extent_mask(stat_map, threshold, min_size, connectivity=1):
    """Voxels above a height that belong to a cluster of at least ``min_size`` voxels.

    Parameters
    ----------
    stat_map : numpy.ndarray, shape (x, y, z)
        Statistic map.
    threshold : float
        Height: voxels strictly above it form clusters.
    min_size : int
        Smallest cluster kept, in voxels.
    connectivity : {1, 2, 3}
        1: faces (6 neighbours), 2: + edges (18), 3: + corners (26).

    Returns
    -------
    numpy.ndarray of bool, shape (x, y, z)
        True in the kept clusters.
    """
    labels, sizes, _ = label_clusters(stat_map, threshold, connectivity)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    return keep[labels]


# ----------------------------------------------------------------------------------------------
# cluster tables
# ----------------------------------------------------------------------------------------------


def _local_maxima(values, cluster):
    data = np.where(cluster, values, -np.inf)
    peaks = cluster & (data == ndimage.maximum_filter(data, size=3, mode="constant", cval=-np.inf))
    ijk = np.argwhere(peaks)
    vals = values[peaks]
    order = np.argsort(-vals, kind="stable")
    return ijk[order], vals[order]


def cluster_table(stat_map, affine, threshold, min_size=0, min_distance=8.0, n_subpeaks=3, connectivity=1,
                  values=None):
    """Clusters of a statistic map above a height, with peaks and sub-peaks (nilearn's layout).

    Parameters
    ----------
    stat_map : numpy.ndarray, shape (x, y, z)
        z (or t) map, zero outside the mask.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world transform (peak coordinates are reported in mm).
    threshold : float
        Cluster-forming height (voxels strictly above it).
    min_size : int
        Clusters smaller than this (in voxels) are left out.
    min_distance : float
        Sub-peaks closer than this (mm) to a higher peak of the cluster are left out.
    n_subpeaks : int
        Sub-peaks reported per cluster at most.
    connectivity : {1, 2, 3}
        1: faces, as nilearn's ``get_clusters_table``.
    values : dict, optional
        ``{column: array (x, y, z)}`` read at each row's voxel (e.g. corrected p-values).

    Returns
    -------
    pandas.DataFrame
        Columns ``cluster_id`` ('1', '1a', ...), ``x``, ``y``, ``z`` (mm), ``i``, ``j``, ``k`` (voxel),
        ``peak_stat``, ``size_voxels``, ``size_mm3`` (n/a on sub-peak rows), then ``values``'s
        columns. Clusters in descending order of their peak.
    """
    stat_map = np.nan_to_num(np.asarray(stat_map, dtype=np.float64), nan=0.0)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0)))  # the header zooms, as nilearn
    labels, sizes, _ = label_clusters(stat_map, threshold, connectivity)
    values = values or {}
    ids = [c for c in range(1, len(sizes)) if sizes[c] >= max(int(min_size), 1)]
    peaks = {c: stat_map[labels == c].max() for c in ids}
    ids.sort(key=lambda c: -peaks[c])
    rows = []
    for number, c in enumerate(ids, start=1):
        ijk, vals = _local_maxima(stat_map, labels == c)
        xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
        kept = []
        for m in range(len(vals)):
            if all(np.linalg.norm(xyz[m] - xyz[k]) > min_distance for k in kept):
                kept.append(m)
            if len(kept) > n_subpeaks:
                break
        for rank, m in enumerate(kept):
            row = {"cluster_id": str(number) if rank == 0 else f"{number}{chr(ord('a') + rank - 1)}",
                   "x": float(xyz[m, 0]), "y": float(xyz[m, 1]), "z": float(xyz[m, 2]),
                   "i": int(ijk[m, 0]), "j": int(ijk[m, 1]), "k": int(ijk[m, 2]),
                   "peak_stat": float(vals[m]),
                   "size_voxels": int(sizes[c]) if rank == 0 else None,
                   "size_mm3": float(sizes[c] * voxel_mm3) if rank == 0 else None}
            for name, arr in values.items():
                row[name] = float(np.asarray(arr)[tuple(ijk[m])])
            rows.append(row)
    columns = ["cluster_id", "x", "y", "z", "i", "j", "k", "peak_stat", "size_voxels", "size_mm3", *values]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"size_voxels": "Int64"})


# ----------------------------------------------------------------------------------------------
# permutations
# ----------------------------------------------------------------------------------------------


def partition_design(X, weights, tol=1e-10):
    """Reparametrise a design so that the contrast is the coefficient of one regressor.

    ``X b = x (c'b) + Z b`` with ``x = X c / (c'c)`` and ``Z = X (I - c c' / c'c)``: the t statistic of
    ``x`` in the model ``[x, Z]`` equals that of ``c'b`` in the original model.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
        Design.
    weights : numpy.ndarray, shape (p,)
        Contrast weights ``c``.
    tol : float
        Relative tolerance for the rank of Z and for "x is constant".

    Returns
    -------
    x : numpy.ndarray, shape (n,)
        The regressor of interest, ``X c / (c'c)``.
    Z : numpy.ndarray, shape (n, q)
        Orthonormal basis of the nuisance space (q may be 0).
    sign_flip : bool
        True when x is constant: the test is on a mean (sign flips), otherwise rows are permuted.

    Raises
    ------
    GlmxError
        When ``weights`` does not have one value per column, or is all zero.
    """
    X = np.asarray(X, dtype=np.float64)
    c = np.asarray(weights, dtype=np.float64).ravel()
    if c.shape != (X.shape[1],) or not np.any(c):
        raise GlmxError(f"a group contrast needs {X.shape[1]} weights, not all zero; got {c.tolist()}")
    cc = float(c @ c)
    x = X @ c / cc
    Zfull = X - np.outer(X @ c, c) / cc
    u, s, _ = np.linalg.svd(Zfull, full_matrices=False)
    Z = u[:, s > tol * max(s.max(initial=0.0), 1.0)]
    sign_flip = bool(np.ptp(x) <= tol * max(np.abs(x).max(), 1.0))
    return x, Z, sign_flip


def _all_transforms(n, sign_flip):
    """Every non-identity sign-flip vector or permutation of n rows."""
    if sign_flip:
        codes = np.arange(1, 2 ** n, dtype=np.int64)
        bits = (codes[:, None] >> np.arange(n)) & 1
        return (1 - 2 * bits).astype(np.int8)
    perms = itertools.permutations(range(n))
    next(perms)  # the identity comes first
    return np.array(list(perms), dtype=np.int32)


def draw_transforms(n, n_permutations, sign_flip, seed):
    """The sign flips or row permutations to evaluate.

    Parameters
    ----------
    n : int
        Subjects.
    n_permutations : int
        How many to draw; when it reaches the number of distinct non-identity ones
        (``2**n - 1`` sign flips, ``n! - 1`` permutations), all of them are enumerated instead.
    sign_flip : bool
        Draw sign flips (True) or row permutations (False).
    seed : int
        Seed of the random generator (unused when enumerating).

    Returns
    -------
    transforms : numpy.ndarray, shape (K, n)
        Sign vectors (int8, +1/-1) or row orders (int32).
    exhaustive : bool
        True when every distinct transform was enumerated.

    Raises
    ------
    GlmxError
        When ``n_permutations`` is less than 1.
    """
    n_permutations = int(n_permutations)
    if n_permutations < 1:
        raise GlmxError(f"the number of permutations must be at least 1, got {n_permutations}",
                        field="group_n_permutations")
    distinct = 2 ** n - 1 if sign_flip else (math.factorial(n) - 1 if n <= 12 else None)
    if distinct is not None and n_permutations >= distinct and distinct <= 5_000_000:
        return _all_transforms(n, sign_flip), True
    rng = np.random.default_rng(seed)
    if sign_flip:
        return (1 - 2 * rng.integers(0, 2, size=(n_permutations, n))).astype(np.int8), False
    base = np.broadcast_to(np.arange(n, dtype=np.int32), (n_permutations, n))
    return rng.permuted(base, axis=1).astype(np.int32), False


class _PermutedT:
    """t statistics of x in [x, Z] for transformed residuals, many transforms at once.

    With R the residuals of Y on Z, a permuted data set is ``P R``; its t statistic only needs
    ``a' P R`` and ``U' P R`` (a: the row of pinv([x, Z]) for x, U: an orthonormal basis of [x, Z])
    and ``|| P R ||^2 = || R ||^2``. Applying P to the small matrix ``[a, U]`` instead of to the data
    turns a chunk of permutations into one matrix product.
    """

    def __init__(self, Y, x, Z):
        Y = np.asarray(Y, dtype=np.float64)
        self.n = Y.shape[0]
        M = np.column_stack([x, Z]) if Z.shape[1] else x[:, None]
        self.R = Y - Z @ (Z.T @ Y) if Z.shape[1] else Y.copy()
        pinv = np.linalg.pinv(M)
        u, s, _ = np.linalg.svd(M, full_matrices=False)
        U = u[:, s > 1e-10 * s.max()]
        self.rank = U.shape[1]
        self.dof = self.n - self.rank
        if self.dof < 1:
            raise GlmxError(f"no residual degrees of freedom: {self.n} subjects for a design of rank {self.rank}")
        self.A = np.column_stack([pinv[0], U])  # (n, 1 + rank)
        self.aa = float(pinv[0] @ pinv[0])
        self.norm2 = np.einsum("ij,ij->j", self.R, self.R)
        self.single_regressor = Z.shape[1] == 0 and self.rank == 1

    def stats(self, transforms, sign_flip):
        """t maps of shape (len(transforms), n_voxels) for sign vectors or row orders."""
        if sign_flip:
            W = transforms[:, :, None].astype(np.float64) * self.A[None]
        else:
            W = self.A[transforms]
        k = W.shape[2]
        B = (W.transpose(0, 2, 1).reshape(-1, self.n) @ self.R).reshape(len(transforms), k, -1)
        sse = self.norm2 - np.einsum("pkv,pkv->pv", B[:, 1:], B[:, 1:])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = B[:, 0] / np.sqrt(self.aa * np.maximum(sse, 0.0) / self.dof)
        return t

    def observed(self):
        return self.stats(np.ones((1, self.n), np.int8), True)[0]

    def max_stats(self, transforms, sign_flip, two_sided, max_bytes=64 * 2 ** 20):
        """The maximum over voxels of t (or |t|) for each transform, without forming the t maps.

        Only for ``single_regressor`` models. With no nuisance columns (one-sample tests and any single-regressor design), ``t`` of a voxel is
        ``sqrt(dof) w / sqrt(1 - w**2)`` with ``w = (T x)' r / sqrt(x'x r'r)``: one increasing function of
        ``w`` for every voxel. So the largest t is that function of the largest ``w``, and each transform
        costs one product with the normalised residuals and a running maximum (the t maps' other passes
        over permutations x voxels were most of the time).

        Parameters
        ----------
        transforms : numpy.ndarray, shape (K, n)
            Sign vectors (int8) or row orders (int).
        sign_flip : bool
        two_sided : bool
            Maximum of |t| instead of t.
        max_bytes : int
            Memory for the normalised effects computed at once.

        Returns
        -------
        numpy.ndarray of float64, shape (K,)
        """
        K = len(transforms)
        x = self.A[:, 0] / self.aa  # pinv(x) = x' / x'x
        live = self.norm2 > 0  # all-zero residuals give t = 0/0 (nan), which the maximum ignores
        Rn = self.R[:, live] / np.sqrt(self.norm2[live] * (x @ x))
        V = transforms.astype(np.float64) * x if sign_flip else x[transforms]
        block = int(max(256, max_bytes // (8 * K)))
        best = np.full(K, -np.inf)
        for start in range(0, Rn.shape[1], block):
            w = V @ Rn[:, start:start + block]
            if two_sided:
                np.abs(w, out=w)
            np.maximum(best, w.max(axis=1), out=best)
        if not live.any():
            best[:] = np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sqrt(self.dof) * best / np.sqrt(np.maximum(1.0 - best * best, 0.0))


def _volume(values, mask):
    out = np.zeros((values.shape[0],) + mask.shape)
    out[:, mask] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _fwe_p(null_max, observed, n_null):
    """(1 + #{null >= observed}) / (n_null + 1), with a relative tolerance for ties in exact arithmetic."""
    null_sorted = np.sort(null_max)
    obs = np.asarray(observed, dtype=np.float64)
    tol = 1e-10 * np.maximum(np.abs(obs), 1e-12)
    count = n_null - np.searchsorted(null_sorted, obs - tol, side="left")
    return (1.0 + count) / (n_null + 1.0)


def permutation_inference(Y, X, weights, mask=None, n_permutations=5000, seed=0, methods=("perm_fwe",),
                          cluster_threshold=None, two_sided=False, tfce_steps=100, connectivity=1,
                          max_chunk_bytes=64 * 2 ** 20):
    """Non-parametric inference on a group contrast (Freedman-Lane; sign flips or permutations).

    Parameters
    ----------
    Y : numpy.ndarray, shape (n_subjects, n_voxels)
        Subject maps in the mask.
    X : numpy.ndarray, shape (n_subjects, n_columns)
        Group design.
    weights : numpy.ndarray, shape (n_columns,)
        The contrast (one-sided: large positive values are significant).
    mask : numpy.ndarray of bool, shape (x, y, z), optional
        Where the voxels lie; needed for cluster mass and TFCE on a grid (not with a neighbour list).
    n_permutations : int
        Random transforms to draw (all of them when there are fewer distinct ones).
    seed : int
        Seed of numpy's default generator: the same seed gives the same results.
    methods : sequence of str
        Any of ``perm_fwe`` (max-t voxel-wise FWE), ``perm_cluster_mass`` (max cluster mass FWE),
        ``tfce`` (max TFCE FWE).
    cluster_threshold : float, optional
        Cluster-forming height in t (needed for ``perm_cluster_mass``).
    two_sided : bool
        Test both signs (|t|); default one-sided.
    tfce_steps : int
        Heights per map for TFCE.
    connectivity : {1, 2, 3} or array of shape (n_edges, 2)
        Neighbourhood for clusters and TFCE (1: faces, as nilearn), or neighbour pairs of the columns of ``Y``
        (mesh edges of surface vertices, see :func:`glmx_workflows.core.tfce.mask_edges`).
    max_chunk_bytes : int
        Memory for the permuted statistics of one chunk.

    Returns
    -------
    dict
        ``t`` (n_voxels,) observed t; ``p_fwe`` (n_voxels,); with cluster mass ``p_cluster_mass``
        (n_voxels,: the p of the voxel's cluster, 1 outside clusters) and ``cluster_mass`` (n_voxels,);
        with TFCE ``tfce`` and ``p_tfce`` (n_voxels,); ``h0_max_t`` / ``h0_max_mass`` /
        ``h0_max_tfce`` (K,) null maxima; ``n_permutations`` K (non-identity transforms used),
        ``exhaustive`` (bool), ``scheme`` ('sign_flip' or 'permutation').
    """
    methods = tuple(methods)
    bad = [m for m in methods if m not in PERMUTATION_METHODS]
    if bad:
        raise GlmxError(f"unknown permutation method(s) {bad}; expected {', '.join(PERMUTATION_METHODS)}")
    Y = np.asarray(Y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if Y.ndim != 2 or X.ndim != 2 or Y.shape[0] != X.shape[0]:
        raise GlmxError(f"data of shape {Y.shape} do not match a design of shape {X.shape}")
    spatial = "perm_cluster_mass" in methods or "tfce" in methods
    graph = is_graph(connectivity)
    if graph:  # locations are the columns of Y: maps need no grid
        mask = np.ones(Y.shape[1], bool)
    elif spatial:
        if mask is None or int(np.count_nonzero(mask)) != Y.shape[1]:
            raise GlmxError("cluster mass and TFCE need the mask of the voxels")
        mask = np.asarray(mask, bool)
        # clusters never reach outside the mask's bounding box: label only that box
        mask = mask[ndimage.find_objects(mask.astype(np.int8))[0]]
    if "perm_cluster_mass" in methods and cluster_threshold is None:
        raise GlmxError("cluster-mass inference needs a cluster-forming threshold")
    x, Z, sign_flip = partition_design(X, weights)
    model = _PermutedT(Y, x, Z)
    transforms, exhaustive = draw_transforms(Y.shape[0], n_permutations, sign_flip, seed)
    K = len(transforms)
    t_obs = model.observed()

    def score(t):
        return np.abs(t) if two_sided else t

    obs_vol = _volume(t_obs[None], mask)[0] if spatial else None
    obs_tfce = tfce(obs_vol, n_steps=tfce_steps, two_sided=two_sided, connectivity=connectivity) \
        if "tfce" in methods else None
    h0_t = np.empty(K)
    h0_mass = np.empty(K) if "perm_cluster_mass" in methods else None
    h0_tfce = np.empty(K) if "tfce" in methods else None
    per_perm = Y.shape[1] * 8 * (model.A.shape[1] + 2 + (mask.size / Y.shape[1] * 3 if spatial else 0)
                                 + (len(connectivity) / Y.shape[1] if graph and spatial else 0))
    chunk = int(max(1, min(K, max_chunk_bytes // max(per_perm, 1))))
    fast_max = not spatial and model.single_regressor  # no t maps needed
    if fast_max:
        h0_t[:] = model.max_stats(transforms, sign_flip, two_sided, max_chunk_bytes)
    for start in range(0, 0 if fast_max else K, chunk):
        stop = min(K, start + chunk)
        t = model.stats(transforms[start:stop], sign_flip)
        h0_t[start:stop] = np.nanmax(score(t), axis=1)
        if spatial:
            vol = _volume(t, mask)
            if h0_tfce is not None:
                h0_tfce[start:stop] = np.abs(tfce(vol, n_steps=tfce_steps, two_sided=two_sided,
                                                  connectivity=connectivity)).reshape(len(vol), -1).max(axis=1)
            if h0_mass is not None:
                h0_mass[start:stop] = cluster_measures(vol, cluster_threshold, connectivity, two_sided)[1]
    out = {"t": t_obs, "h0_max_t": h0_t, "n_permutations": K, "exhaustive": exhaustive,
           "scheme": "sign_flip" if sign_flip else "permutation", "dof": model.dof}
    out["p_fwe"] = _fwe_p(h0_t, np.nan_to_num(score(t_obs), nan=-np.inf), K)
    if h0_tfce is not None:
        values = np.abs(obs_tfce[mask]) if two_sided else obs_tfce[mask]
        out.update(tfce=obs_tfce[mask], p_tfce=_fwe_p(h0_tfce, values, K), h0_max_tfce=h0_tfce)
    if h0_mass is not None:
        p_vox = np.ones(Y.shape[1])
        mass_vox = np.zeros(Y.shape[1])
        for sign in (1.0, -1.0) if two_sided else (1.0,):
            labels, _, mass = label_clusters(sign * obs_vol, cluster_threshold, connectivity)
            p_cluster = _fwe_p(h0_mass, mass, K)
            lab = labels[mask]
            inside = lab > 0
            p_vox[inside] = p_cluster[lab[inside]]
            mass_vox[inside] = mass[lab[inside]]
        out.update(p_cluster_mass=p_vox, cluster_mass=mass_vox, h0_max_mass=h0_mass)
    return out


def t_threshold(p_threshold, dof):
    """Upper-tail t of an uncorrected p-value (the cluster-forming height for cluster mass).

    Parameters
    ----------
    p_threshold : float
        Uncorrected one-sided p.
    dof : float
        Degrees of freedom of the t statistic.

    Returns
    -------
    float
        The t value whose upper-tail probability is ``p_threshold``.
    """
    return float(sps.t.isf(p_threshold, dof))
