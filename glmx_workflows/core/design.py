"""First-level design matrices (nilearn's HRF and drift code) and their diagnostics."""

import contextlib
import io

import numpy as np
import pandas as pd

from .errors import GlmxError


def frame_times(n_scans, tr, slice_time_ref=0.0):
    """Acquisition times of the volumes, as nilearn's FirstLevelModel computes them.

    Parameters
    ----------
    n_scans : int
        Volumes in the run.
    tr : float
        Repetition time in seconds.
    slice_time_ref : float
        Reference slice time as a fraction of the TR (0: start of the volume).

    Returns
    -------
    numpy.ndarray of shape (n_scans,)
    """
    start = slice_time_ref * tr
    return np.linspace(start, (n_scans - 1 + slice_time_ref) * tr, n_scans)


def build_design(events, confounds, n_scans, tr, hrf_model="glover", drift_model="cosine", high_pass=0.01,
                 drift_order=1, slice_time_ref=0.0):
    """Build one run's design matrix.

    Parameters
    ----------
    events : pandas.DataFrame
        Normalised events (``onset, duration, trial_type, modulation``).
    confounds : pandas.DataFrame of shape (n_scans, n_confounds) or None
        Cleaned confound regressors; their row i is volume i, so the alignment holds at any TR.
    n_scans : int
        Volumes in the run.
    tr : float
        Repetition time in seconds.
    hrf_model, drift_model, high_pass, drift_order, slice_time_ref
        As nilearn's ``make_first_level_design_matrix`` / FirstLevelModel.

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_regressors)
        Task regressors (sorted), confounds, then drift terms and the constant.
    """
    # imported here: nilearn.glm brings scikit-learn (a second or more of imports), which a process that
    # only reads designs (a rerun after a contrast-only change, the report) never needs
    from nilearn.glm.first_level import make_first_level_design_matrix

    add_regs = add_names = None
    if confounds is not None and confounds.shape[1]:
        if len(confounds) != n_scans:
            raise GlmxError(f"confounds have {len(confounds)} rows but the BOLD run has {n_scans} volumes",
                            field="confounds")
        add_regs = confounds.to_numpy(float)
        add_names = [str(c) for c in confounds.columns]
    times = frame_times(n_scans, tr, slice_time_ref)
    if len(events) and "modulation" in events and (events["modulation"] == 1).all():
        # nilearn's default: without the column it skips a log call that walks the interpreter stack
        # (inspect.stack, ~0.2 s per design)
        events = events.drop(columns="modulation")
    # nilearn announces, for every run, that it found the 'modulation' column we always write
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        design = make_first_level_design_matrix(
            times, events if len(events) else None, hrf_model=hrf_model, drift_model=drift_model,
            high_pass=high_pass, drift_order=drift_order, add_regs=add_regs, add_reg_names=add_names)
    return design


def collinear_sets(design, tol=1e-8):
    """Groups of regressors that are linearly dependent.

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_scans, n_regressors)

    Returns
    -------
    list of list of str
        One group per null-space direction of the (column-normalised) design; empty when the design
        has full column rank.
    """
    x = design.to_numpy(float)
    norms = np.linalg.norm(x, axis=0)
    zero = norms == 0
    groups = [[design.columns[i]] for i in np.flatnonzero(zero)]
    xn = x[:, ~zero] / norms[~zero]
    names = list(design.columns[~zero])
    if xn.shape[1] == 0:
        return groups
    # thin SVD unless there are fewer rows than columns (then the null space needs the full vt)
    _, s, vt = np.linalg.svd(xn, full_matrices=xn.shape[0] < xn.shape[1])
    rank = int((s > tol * s[0]).sum()) if s.size else 0
    for vec in vt[rank:xn.shape[1]]:
        weight = np.abs(vec)
        groups.append([names[i] for i in np.flatnonzero(weight > 1e-3 * weight.max())])
    return groups


def check_design(design, n_kept=None, source=None):
    """Refuse designs that cannot be estimated.

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_scans, n_regressors)
    n_kept : int, optional
        Volumes left after censoring (defaults to all rows).
    source : str, optional
        Run the design belongs to (for messages).

    Raises
    ------
    GlmxError
        When there are no more volumes than regressors, or the design is rank-deficient (the message
        names the collinear regressors).
    """
    n = len(design) if n_kept is None else int(n_kept)
    p = design.shape[1]
    if n <= p:
        raise GlmxError(f"the run has {n} usable volumes for {p} regressors; expected more volumes than regressors",
                        file=source, field="design")
    groups = collinear_sets(design)
    if groups:
        desc = "; ".join("{" + ", ".join(g) + "}" for g in groups)
        raise GlmxError(f"design is rank-deficient: collinear regressors {desc}", file=source, field="design")


def regressor_correlations(design):
    """Pearson correlations between the non-constant regressors.

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_scans, n_regressors)

    Returns
    -------
    pandas.DataFrame of shape (n_nonconstant, n_nonconstant)
    """
    x = design.loc[:, design.std(axis=0) > 0]
    return x.corr()


def variance_inflation(design, columns=None):
    """Variance inflation factor of each regressor in ``columns`` against all others.

    VIF_j = 1 / (1 - R_j^2), with R_j^2 from regressing column j on the others (constant included).

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_scans, n_regressors)
    columns : list of str, optional
        Regressors whose VIF is computed (default: all).

    Returns
    -------
    pandas.Series indexed by regressor name.
    """
    x = design.to_numpy(float)
    names = list(design.columns)
    columns = names if columns is None else list(columns)
    out = {}
    for name in columns:
        j = names.index(name)
        y = x[:, j]
        others = np.delete(x, j, axis=1)
        beta, *_ = np.linalg.lstsq(others, y, rcond=None)
        resid = y - others @ beta
        ss_tot = ((y - y.mean()) ** 2).sum()
        r2 = 1 - (resid @ resid) / ss_tot if ss_tot > 0 else 1.0
        out[name] = np.inf if r2 >= 1 else 1.0 / (1.0 - r2)
    return pd.Series(out, dtype=float)
