"""Second-level (group) models on arrays: design, OLS fit, contrasts, thresholds, clusters, permutations.

* The design comes from participants.tsv columns: numeric columns are mean-centred covariates,
  text columns give one indicator regressor per level (cell-means coding, no intercept).
* Within-subject designs (:func:`within_subject_design`): paired and one-way repeated measures over
  several first-level contrasts, with sum-to-zero subject effects.
* The fit is the ordinary least-squares GLM of :mod:`glmx_workflows.core.glm` (nilearn's
  ``SecondLevelModel`` computes the same numbers through ``run_glm``), or the mixed-effects model of
  :mod:`glmx_workflows.core.mixed` (``group_model`` 'mixed': the subjects' first-level variances plus a
  REML between-subject variance); per-voxel subject sets go through the latter (with zero variances
  for OLS). t and F contrasts; z and p from each voxel's degrees of freedom.
* Parametric inference: uncorrected height, Benjamini-Hochberg FDR, Bonferroni, cluster extent.
* Non-parametric inference (:func:`permutation_inference`): Freedman-Lane on the contrast's
  reparametrised design, sign flips when the tested regressor is constant (one-sample: the
  errors are assumed symmetric) and row permutations otherwise (covariates, two-sample: the
  errors are assumed exchangeable), or, for within-subject designs, row permutations within each
  subject's maps (exchangeability blocks). Every permutation of a chunk is fitted with one matrix
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
from scipy import special as sps_special  # stdtrit: scipy.stats' t.isf without importing scipy.stats

from .errors import GlmxError
from .formula import bids_label, contrast_matrix, parse_formula, sanitize_name, unknown_regressors
from .glm import ContrastEstimate, contrast_statistics, estimate_contrast, fit_glm, z_from_p
from .inference import INFERENCE_METHODS, PARAMETRIC_METHODS, PERMUTATION_METHODS  # noqa: F401 -- the one list
from .mixed import MixedFit, fit_mixed_effects, mixed_contrast
from .tfce import cluster_measures, is_graph, label_clusters, tfce

INTERCEPT = "intercept"

#: The group models (spec key ``group_model``), with the words the report and the sidecars use.
GROUP_MODELS = {
    "ols": "ordinary least squares on the subjects' effects (summary-statistics random effects)",
    "mixed": "mixed effects: weighted least squares with each subject's first-level variance plus a "
             "between-subject variance tau2 estimated by REML (FSL FLAME1's model)",
}


#: The key of each permutation method's corrected p-values in :func:`permutation_inference`'s result.
PERMUTATION_P = {"perm_fwe": "p_fwe", "perm_cluster_mass": "p_cluster_mass", "tfce": "p_tfce"}
#: The ``desc`` value of each method's maps.
INFERENCE_DESC = {
    "uncorrected": "uncorrected",
    "fdr": "fdr",
    "bonferroni": "bonferroni",
    "cluster": "cluster",
    "perm_fwe": "permFWE",
    "perm_cluster_mass": "permClusterMass",
    "tfce": "tfce",
}


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


#: Within-subject designs of the spec key ``group_design`` (besides the default between-subject models).
WITHIN_DESIGNS = ("paired", "repeated")


def within_subject_design(subjects, conditions, kind, source=None):
    """Design of a paired or one-way repeated-measures model over several first-level contrasts.

    One row per (subject, first-level contrast) map. Columns: one indicator per first-level contrast
    (named after it), then subject effects in sum-to-zero coding (``sub_<label>`` for every subject but
    the first: +1 on the subject's rows, -1 on the first subject's), so that each contrast column's
    coefficient is that contrast's mean over subjects and the model removes each subject's own level
    (nilearn's explicit design with subject indicator columns spans the same space).

    Parameters
    ----------
    subjects : list of str
        Subject label of each row.
    conditions : list of str
        First-level contrast label of each row (every subject must have every one exactly once).
    kind : {'paired', 'repeated'}
        'paired' (two contrasts; the main test is the t of the first minus the second) or 'repeated'
        (two or more; the main test is the F of "no difference").
    source : str, optional
        Spec file named in errors.

    Returns
    -------
    design : pandas.DataFrame, shape (n_rows, n_conditions + n_subjects - 1)
    main : list of dict
        The main test's weight rows over the columns: one row (t) for 'paired', the successive
        differences (F) for 'repeated'.

    Raises
    ------
    GlmxError
        An unknown kind, a wrong number of contrasts, a subject lacking a contrast or having one twice,
        or fewer than two subjects.
    """
    if kind not in WITHIN_DESIGNS:
        raise GlmxError(f"unknown group_design type {kind!r}; expected one of {', '.join(WITHIN_DESIGNS)}",
                        file=source, field="group_design.type")
    subjects = [_subject_label(s) for s in subjects]
    levels = list(dict.fromkeys(conditions))
    if (kind == "paired" and len(levels) != 2) or len(levels) < 2:
        raise GlmxError(f"a {kind} group design needs {'two' if kind == 'paired' else 'two or more'} first-level "
                        f"contrasts, got {len(levels)} ({', '.join(levels)})", file=source,
                        field="group_design.contrasts")
    rows = list(zip(subjects, conditions))
    if len(set(rows)) != len(rows):
        raise GlmxError("a subject has the same first-level contrast twice in a within-subject design", file=source,
                        field="group_design.contrasts")
    subs = list(dict.fromkeys(subjects))
    for sub in subs:
        have = {c for s, c in rows if s == sub}
        if have != set(levels):
            raise GlmxError(f"sub-{sub} lacks the first-level contrast(s) {', '.join(sorted(set(levels) - have))} "
                            f"of the {kind} design", file=source, field="group_design.contrasts")
    if len(subs) < 2:
        raise GlmxError(f"a {kind} group design needs at least two subjects", file=source, field="group_design")
    columns = {sanitize_name(c): np.array([float(c == cond) for cond in conditions]) for c in levels}
    first = subs[0]
    for sub in subs[1:]:
        columns[sanitize_name(f"sub_{sub}")] = np.array([float(s == sub) - float(s == first) for s in subjects])
    index = pd.Index([f"{s}" for s in subjects], name="participant_id")
    design = pd.DataFrame(columns, index=index)
    names = [sanitize_name(c) for c in levels]
    main = [{names[i]: 1.0, names[i + 1]: -1.0} for i in range(len(names) - 1)]
    check_design(design, source)
    return design, main


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
    from .design import collinear_sets  # (nilearn's design module: imported only when a group design is checked)

    X = design.to_numpy(float)
    n, p = X.shape
    for name in design.columns:
        if name != INTERCEPT and np.allclose(design[name].to_numpy(float), 0):
            raise GlmxError(f"group regressor '{name}' is constant over the {n} subject(s) modelled "
                            "(after mean-centring it is zero)", file=source, field=name)
    groups = collinear_sets(design)  # the first level's rank rule: scale-free, names the culprits
    if groups:
        desc = "; ".join("{" + ", ".join(g) + "}" for g in groups)
        raise GlmxError(f"the group design is rank-deficient: collinear regressors {desc}", file=source,
                        field="group_level_regressors")
    if n <= p:
        raise GlmxError(f"the group model needs more subjects than design columns: {n} subject(s), {p} column(s) "
                        f"({', '.join(design.columns)})", file=source, field="group_level_regressors")


def permutation_applies(contrast):
    """Whether the permutation methods test a group contrast of :func:`group_contrasts`: t contrasts only (an
    F test gets parametric inference).

    Parameters
    ----------
    contrast : dict
        With ``stat`` ('t' or 'F'; absent means 't').

    Returns
    -------
    bool
    """
    return contrast.get("stat", "t") == "t"


def group_contrasts(design_columns, mean_weights, formulas=None, source=None, field="group_contrasts"):
    """The group contrasts of a design: the mean effect, then each formula (t) or list of formulas (F).

    Parameters
    ----------
    design_columns : list of str
        Column names of the design, in order.
    mean_weights : dict or list of dict
        From :func:`group_design` (the mean), or the main test of :func:`within_subject_design` (a list:
        one row is a t contrast, several an F contrast); it is written without desc.
    formulas : dict, optional
        ``{name: formula}`` over design columns (``"-intercept"``, ``"group_patient - group_control"``);
        a list of formulas is an F contrast (one row each, as in the first level).
    source : str, optional
        Spec file named in errors.
    field : str
        The formulas' place in that file (``<task>.group_contrasts``); errors name ``<field>.<name>``.

    Returns
    -------
    list of dict
        ``{'name', 'desc' (None for the mean, else the BIDS label of the name), 'stat' ('t' or 'F'),
        'weights' (list of float, one per column; a list of such rows for F)}``.
    """
    columns = list(design_columns)
    if isinstance(mean_weights, (list, tuple)) and len(mean_weights) > 1:  # within-subject 'repeated': F
        out = [{"name": "mean", "desc": None, "stat": "F",
                "weights": contrast_matrix(list(mean_weights), columns).tolist()}]
    else:
        mean = mean_weights[0] if isinstance(mean_weights, (list, tuple)) else mean_weights
        out = [{"name": "mean", "desc": None, "stat": "t", "weights": contrast_matrix([mean], columns)[0].tolist()}]
    for name, formula in (formulas or {}).items():
        rows = [parse_formula(f) for f in (formula if isinstance(formula, (list, tuple)) else [formula])]
        missing = unknown_regressors(rows, columns)
        if missing:
            raise GlmxError(f"group contrast '{name}' uses {', '.join(repr(m) for m in missing)}, not a column of "
                            f"the group design (columns: {', '.join(columns)})", file=source,
                            field=f"{field}.{name}")
        matrix = contrast_matrix(rows, columns)
        if isinstance(formula, (list, tuple)):
            if np.linalg.matrix_rank(matrix) < len(rows):
                raise GlmxError(f"the rows of F contrast '{name}' are linearly dependent", file=source,
                                field=f"{field}.{name}")
            out.append({"name": name, "desc": bids_label(name), "stat": "F", "weights": matrix.tolist()})
        else:
            out.append({"name": name, "desc": bids_label(name), "stat": "t", "weights": matrix[0].tolist()})
    return out


# ----------------------------------------------------------------------------------------------
# fit and parametric inference
# ----------------------------------------------------------------------------------------------


def fit_group_model(Y, X, model="ols", variances=None, present=None, mixed_test="knapp-hartung"):
    """Fit the group model of subject maps on the group design.

    Parameters
    ----------
    Y : numpy.ndarray, shape (n_subjects, n_voxels)
        Subject maps, in-mask voxels.
    X : numpy.ndarray, shape (n_subjects, n_columns)
        Group design.
    model : {'ols', 'mixed'}
        'ols': ordinary least squares (nilearn's SecondLevelModel fit); 'mixed': the mixed-effects
        model of :mod:`glmx_workflows.core.mixed` (needs ``variances``).
    variances : numpy.ndarray, shape (n_subjects, n_voxels), optional
        The subjects' first-level variances (``model='mixed'``).
    present : numpy.ndarray of bool, shape (n_subjects, n_voxels), optional
        Per-voxel subject sets (``group_min_subjects``): each voxel is fitted on its present subjects
        alone, with its own degrees of freedom. OLS is then the mixed-effects fit with zero
        first-level variances (REML's tau2 is the OLS residual variance), a MixedFit.
    mixed_test : {'knapp-hartung', 'wald'}
        How 'mixed' contrasts are tested (spec key ``group_mixed_test``, :data:`MIXED_TESTS`).

    Returns
    -------
    GLMFit or MixedFit
        Betas, residual variance and degrees of freedom of the OLS fit, or the mixed-effects fit.

    Raises
    ------
    GlmxError
        An unknown model, or 'mixed' without variances.
    """
    if model == "ols" and present is not None:
        return fit_mixed_effects(Y, np.zeros(np.shape(Y)), X, present=present)
    if model == "ols":
        return fit_glm(np.asarray(Y, dtype=np.float64), np.asarray(X, dtype=np.float64), noise_model="ols")
    if model != "mixed":
        raise GlmxError(f"unknown group model {model!r}; expected one of {', '.join(GROUP_MODELS)}",
                        field="group_model")
    if variances is None:
        raise GlmxError("the mixed-effects group model needs the subjects' variance maps", field="group_model")
    return fit_mixed_effects(Y, variances, X, present=present, test=mixed_test)


def contrast_maps(fit, weights):
    """Effect, variance, t (or F), z and p (one-sided, upper tail) of a group contrast.

    Parameters
    ----------
    fit : GLMFit or MixedFit
        From :func:`fit_group_model`.
    weights : array-like, shape (n_columns,) or (q, n_columns)
        Contrast weights over the design columns; several rows make an F contrast.

    Returns
    -------
    dict
        ``effect``, ``variance``, ``t`` (t contrasts) or ``F`` (F contrasts), ``z``, ``p``: arrays of
        shape (n_voxels,) (``effect`` of an F contrast is (q, n_voxels)); ``dof``: float.
    """
    weights = np.asarray(weights, float)
    if not isinstance(fit, MixedFit):
        est = estimate_contrast(fit, weights)
        stats = contrast_statistics(est)
    else:
        est = mixed_contrast(fit, weights)
        dofs = np.unique(fit.dof[fit.dof > 0])
        if dofs.size <= 1:
            stats = contrast_statistics(est)
        else:  # per-voxel subject sets: each voxel on its own degrees of freedom
            stats = _statistics_by_dof(est, fit.dof, dofs)
    stat = "t" if est.stat_type == "t" else "F"
    return {"effect": stats["effect"], "variance": stats["variance"], stat: stats["stat"], "z": stats["z"],
            "p": stats["p"], "dof": stats["dof"]}


def _statistics_by_dof(est, dof, dofs):
    """contrast_statistics of the voxels of each degrees of freedom; NaN where not estimable (dof 0)."""
    k = est.effect.shape[1]
    out = {"stat": np.full(k, np.nan), "p": np.full(k, np.nan), "z": np.full(k, np.nan),
           "effect": est.effect[0] if est.stat_type == "t" else est.effect, "variance": est.variance,
           "dof": float(dofs.max())}
    for d in dofs:
        sel = dof == d
        sub = contrast_statistics(ContrastEstimate(effect=est.effect[:, sel], variance=est.variance[sel],
                                                   dof=float(d), stat_type=est.stat_type))
        for key in ("stat", "p", "z"):
            out[key][sel] = sub[key]
    return out


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
    return float(z_from_p(np.array([p_threshold]))[0])  # the maps' own p -> z


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


def _block_transforms(blocks, n_permutations, seed):
    """Row orders that permute rows only within their block (exchangeability blocks), identity excluded."""
    blocks = np.asarray(blocks)
    groups = [np.flatnonzero(blocks == b) for b in dict.fromkeys(blocks.tolist())]
    distinct = math.prod(math.factorial(len(g)) for g in groups) - 1
    n = blocks.size
    if distinct <= min(int(n_permutations), 5_000_000):
        per_block = [list(itertools.permutations(g)) for g in groups]
        out = np.empty((distinct + 1, n), np.int32)
        for i, combo in enumerate(itertools.product(*per_block)):
            for g, order in zip(groups, combo):
                out[i, g] = order
        return out[1:], True  # the first combination is the identity
    rng = np.random.default_rng(seed)
    out = np.broadcast_to(np.arange(n, dtype=np.int32), (int(n_permutations), n)).copy()
    for g in groups:
        out[:, g] = rng.permuted(np.broadcast_to(g.astype(np.int32), (int(n_permutations), g.size)), axis=1)
    return out, False


def draw_transforms(n, n_permutations, sign_flip, seed, blocks=None):
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
    blocks : array-like, shape (n,), optional
        Exchangeability blocks (e.g. the subject of each row of a paired or repeated-measures design): row
        orders then permute rows within their block only (``sign_flip`` is ignored); there are
        ``prod(b_i!) - 1`` distinct ones.

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
    if blocks is not None:
        return _block_transforms(blocks, n_permutations, seed)
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
        self.width = self.A.shape[1]  # float64 work values per transform and voxel

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


class _PermutedMixedT:
    """Mixed-effects t statistics of x in [x, Z] for transformed data, many transforms at once.

    Freedman-Lane as for OLS: the data's OLS residuals ``R`` on Z are sign-flipped or permuted, and the
    variances travel with their subjects (a row permutation moves a subject's variances with its
    residuals; a sign flip leaves them). Adding ``Z g`` to the data changes neither the REML tau2 nor the
    weighted estimate of x, so each transformed data set is refitted as ``[x, Z]`` on ``T R`` directly;
    the transformed data sets of a chunk are fitted together as extra columns of one mixed-effects fit
    (tau2 is re-estimated for every transform and voxel).
    """

    def __init__(self, Y, V, x, Z, present=None, test="knapp-hartung"):
        Y = np.asarray(Y, dtype=np.float64)
        self.test = test
        self.n = Y.shape[0]
        self.V = np.zeros_like(Y) if V is None else np.asarray(V, dtype=np.float64)
        self.present = None if present is None else np.asarray(present, bool)
        if self.present is not None and Z.shape[1]:
            raise GlmxError("permutations with per-voxel subject sets (group_min_subjects) are implemented for "
                            "contrasts without nuisance columns (one-sample tests, sign flips) only",
                            field="group_min_subjects")
        self.M = np.column_stack([x, Z]) if Z.shape[1] else x[:, None]
        self.R = Y - Z @ (Z.T @ Y) if Z.shape[1] else Y.copy()
        self.rank = int(np.linalg.matrix_rank(self.M))
        self.dof = self.n - self.rank
        if self.dof < 1:
            raise GlmxError(f"no residual degrees of freedom: {self.n} subjects for a design of rank {self.rank}")
        self.width = 6 * self.n + 2 * self.M.shape[1] ** 2  # float64 work values per transform and voxel
        self.single_regressor = False

    def stats(self, transforms, sign_flip):
        """t maps of shape (len(transforms), n_voxels) for sign vectors or row orders."""
        k, n_vox = len(transforms), self.R.shape[1]
        if sign_flip:
            Yp = (transforms.T.astype(np.float64)[:, :, None] * self.R[:, None, :]).reshape(self.n, -1)
            Vp = np.broadcast_to(self.V[:, None, :], (self.n, k, n_vox)).reshape(self.n, -1)
        else:
            Yp = self.R[transforms.T].reshape(self.n, -1)
            Vp = self.V[transforms.T].reshape(self.n, -1)
        Pp = None
        if self.present is not None:
            Pp = (np.broadcast_to(self.present[:, None, :], (self.n, k, n_vox)) if sign_flip
                  else self.present[transforms.T]).reshape(self.n, -1)
        fit = fit_mixed_effects(Yp, Vp, self.M, present=Pp, test=self.test)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = fit.beta[0] / np.sqrt(fit.scale * fit.cov[:, 0, 0])  # the maps' t
        if Pp is not None:
            # voxels have their own degrees of freedom: compare them on the z scale
            t = _statistics_by_dof(ContrastEstimate(effect=t[None], variance=np.ones(t.size), dof=1.0,
                                                    stat_type="t"), fit.dof, np.unique(fit.dof[fit.dof > 0]))["z"]
        return t.reshape(k, n_vox)

    def observed(self):
        return self.stats(np.ones((1, self.n), np.int8), True)[0]


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
                          max_chunk_bytes=64 * 2 ** 20, variances=None, present=None, blocks=None,
                          mixed_test="knapp-hartung"):
    """Non-parametric inference on a group contrast (Freedman-Lane; sign flips or permutations).

    With ``variances`` the statistic is the mixed-effects t (:class:`_PermutedMixedT`: each subject's
    variances travel with it), refitted for every transform; without, the OLS t.

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
    variances : numpy.ndarray, shape (n_subjects, n_voxels), optional
        The subjects' first-level variances: permute the mixed-effects model instead of OLS.
    present : numpy.ndarray of bool, shape (n_subjects, n_voxels), optional
        Per-voxel subject sets (``group_min_subjects``): a subject's absence at a voxel travels with it
        like its data (sign flips leave it, row permutations move it); every transform is refitted on
        each voxel's present subjects, and the statistic is the z of each voxel's t on its own degrees of
        freedom (``t`` in the result is then that z, and ``cluster_threshold`` a z height). One-sample
        tests only (no nuisance columns).
    blocks : array-like, shape (n_subjects,), optional
        Exchangeability blocks of a within-subject design (the subject of each map of a paired or
        repeated-measures model): the reparametrised residuals are permuted within blocks only (for a paired
        design, swapping a subject's two maps: the sign flip of its difference; for a repeated-measures
        design, permuting a subject's condition labels). The contrast must compare maps within subjects (its
        regressor ``X c`` sums to zero within every block).
    mixed_test : {'knapp-hartung', 'wald'}
        With ``variances``: the mixed-effects t permuted (the maps' own, ``group_mixed_test``).

    Returns
    -------
    dict
        ``t`` (n_voxels,) observed t; ``p_fwe`` (n_voxels,); with cluster mass ``p_cluster_mass``
        (n_voxels,: the p of the voxel's cluster, 1 outside clusters) and ``cluster_mass`` (n_voxels,);
        with TFCE ``tfce`` and ``p_tfce`` (n_voxels,); ``h0_max_t`` / ``h0_max_mass`` /
        ``h0_max_tfce`` (K,) null maxima; ``n_permutations`` K (non-identity transforms used),
        ``exhaustive`` (bool), ``scheme`` ('sign_flip', 'permutation' or 'within_subject').
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
    if blocks is not None:
        blocks = np.asarray(blocks)
        if blocks.shape != (Y.shape[0],):
            raise GlmxError(f"{blocks.size} exchangeability block labels for {Y.shape[0]} maps")
        sums = np.array([x[blocks == b].sum() for b in np.unique(blocks)])
        if np.abs(sums).max() > 1e-10 * max(np.abs(x).max(), 1.0):
            raise GlmxError("within-subject permutations test differences between each subject's maps; this "
                            "contrast also compares subjects (its weights on the conditions do not sum to zero)",
                            field="group_contrasts")
        sign_flip = False
    if variances is None and present is None:
        model = _PermutedT(Y, x, Z)
    else:
        model = _PermutedMixedT(Y, variances, x, Z, present, mixed_test if variances is not None else "knapp-hartung")
    transforms, exhaustive = draw_transforms(Y.shape[0], n_permutations, sign_flip, seed, blocks)
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
    per_perm = Y.shape[1] * 8 * (model.width + 2 + (mask.size / Y.shape[1] * 3 if spatial else 0)
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
           "scheme": "sign_flip" if sign_flip else ("within_subject" if blocks is not None else "permutation"),
           "dof": model.dof}
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
    return float(-sps_special.stdtrit(dof, p_threshold))  # scipy.stats' t.isf, bitwise
