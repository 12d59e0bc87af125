"""First-level design matrices (nilearn's HRF and drift code) and their diagnostics."""

import contextlib
import io

import numpy as np
import pandas as pd

from .errors import GlmxError
from .events import check_events_fit_run


def check_regressor_names(task_regressors, other_columns, source=None, field=None):
    """Refuse task regressors named like another column of the design.

    nilearn names the constant ``constant`` and the drift terms ``drift_<k>``; confounds keep their
    column names. A condition with one of those names would make two design columns of one name.

    Parameters
    ----------
    task_regressors : iterable of str
        Condition and modulator regressor names.
    other_columns : iterable of str
        Confound column names of the run.
    source : str, optional
        Events file (for messages).
    field : str, optional
        The events column the conditions come from (for messages).

    Raises
    ------
    GlmxError
        A task regressor is ``constant``, ``drift_<k>`` or the name of a confound.
    """
    import re

    others = {str(c) for c in other_columns}
    clash = sorted(r for r in set(task_regressors)
                   if r == "constant" or re.fullmatch(r"drift_\d+", str(r)) or r in others)
    if clash:
        raise GlmxError(f"condition regressor(s) {', '.join(clash)} would have the name of another design column "
                        "(the constant, a drift term or a confound); rename the condition in the events or leave it "
                        "out with drop_conditions", file=source, field=field)


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
                 drift_order=1, slice_time_ref=0.0, source=None, field=None):
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
    source, field : str, optional
        Events file and condition column, named when a condition collides with another column.

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_regressors)
        Task regressors (sorted), confounds, then drift terms and the constant.

    Raises
    ------
    GlmxError
        The confounds do not have one row per volume, or a condition is named like another column.
    """
    # imported here: nilearn.glm brings scikit-learn (a second or more of imports), which a process that
    # only reads designs (a rerun after a contrast-only change, the report) never needs
    from nilearn.glm.first_level import make_first_level_design_matrix

    check_regressor_names(events["trial_type"] if len(events) else (),
                          () if confounds is None else confounds.columns, source, field)
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


def check_user_design(design, n_scans, source=None, bold=None):
    """Refuse a user's design matrix that is not one row of numbers per volume.

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_rows, n_regressors)
        The design as read from the user's TSV.
    n_scans : int
        Volumes in the run.
    source : str, optional
        The design file (for messages).
    bold : str, optional
        The BOLD run (for messages).

    Raises
    ------
    GlmxError
        The row count differs from ``n_scans``, or a column holds a non-number or n/a.
    """
    if len(design) != n_scans:
        raise GlmxError(f"design matrix has {len(design)} rows but the BOLD run {bold} has {n_scans} volumes",
                        file=source, field="rows")
    bad = [c for c in design.columns if not pd.api.types.is_numeric_dtype(design[c]) or design[c].isna().any()]
    if bad:
        raise GlmxError("non-numeric or n/a values; a design matrix holds numbers only", file=source,
                        field=f"column '{bad[0]}'")


def run_design(n_scans, tr, keep=None, events=None, confounds=None, user_design=None, hrf_model="glover",
               drift_model="cosine", high_pass=0.01, drift_order=1, events_source=None, design_source=None,
               bold=None, events_field=None):
    """One run's design, built (or the user's, checked) and refused when the fit could not estimate it.

    The one design check: the plan (before any node runs) and the ``build_design`` node call it with
    the same arguments, so a design the plan accepts is one the workflow accepts.

    Parameters
    ----------
    n_scans : int
        Volumes in the run.
    tr : float
        Repetition time in seconds.
    keep : numpy.ndarray of bool, shape (n_scans,), optional
        Volumes the fit keeps (after censoring); all by default.
    events : pandas.DataFrame, optional
        Normalised events (needed unless ``user_design`` is given).
    confounds : pandas.DataFrame of shape (n_scans, n_confounds), optional
        Selected, cleaned confounds.
    user_design : pandas.DataFrame of shape (n_scans, n_regressors), optional
        A user's design replacing the built one.
    hrf_model, drift_model, high_pass, drift_order
        As :func:`build_design`.
    events_source, design_source, bold : str, optional
        The events file, the user's design file and the BOLD run (for messages).
    events_field : str, optional
        The events column the condition names come from (for messages).

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_regressors)

    Raises
    ------
    GlmxError
        A user design of the wrong shape or with non-numbers, an event after the end of the run, too
        few kept volumes for the regressors, or collinear regressors.
    """
    if user_design is not None:
        check_user_design(user_design, n_scans, design_source, bold)
        design = user_design
    else:
        check_events_fit_run(events, n_scans, tr, events_source)
        design = build_design(events, confounds, n_scans, tr, hrf_model, drift_model, high_pass, drift_order,
                              source=events_source, field=events_field)
    check_design(design if keep is None else design.iloc[np.asarray(keep, bool)], source=bold)
    return design


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
