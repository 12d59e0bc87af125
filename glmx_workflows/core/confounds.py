"""Confound selection, NaN filling and volume censoring on fmriprep confounds tables.

NaN policy: fmriprep leaves the first row of every ``*_derivative1`` column, of
``framewise_displacement`` and of ``(std_)dvars`` undefined. Each NaN is replaced by the mean of the
column's defined values. With an intercept in the model a value equal to the column mean carries no
leverage on that regressor, so the filled row neither adds a spurious spike (as 0 would for DVARS,
whose values sit near 1) nor duplicates a neighbour's motion (as a back-fill would).
"""

import fnmatch

import numpy as np
import pandas as pd

from .errors import GlmxError

MIN_VOLUMES = 10  # fewest volumes a run may keep after dummy scans and censoring
MOTION_OUTLIER_PATTERN = "motion_outlier*"
NON_STEADY_PATTERN = "non_steady_state_outlier*"


def match_patterns(columns, patterns, source=None, field="confound_regressors"):
    """Expand shell-style patterns over the confounds columns.

    Parameters
    ----------
    columns : sequence of str
        Columns of the confounds table, in file order.
    patterns : sequence of str
        Column names or shell wildcards (``trans_*``, ``a_comp_cor_0[0-4]``).
    source : str, optional
        Confounds file (for messages).
    field : str
        Spec key the patterns come from (for messages).

    Returns
    -------
    list of str
        Matching columns, pattern by pattern, each in file order, without repeats.

    Raises
    ------
    GlmxError
        When a pattern matches no column.
    """
    out = []
    for pattern in patterns:
        hits = [c for c in columns if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise GlmxError(f"pattern '{pattern}' matches no column of the confounds file "
                            f"({len(columns)} columns, e.g. {', '.join(list(columns)[:6])})",
                            file=source, field=field)
        out.extend(h for h in hits if h not in out)
    return out


def fill_nans(frame, source=None):
    """Replace NaNs by the column mean of the defined values.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_scans, n_confounds)
        Selected confound columns (``n/a`` read as NaN, e.g. the first volume's derivatives).
    source : str, optional
        Confounds file (for messages).

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_confounds)
        float64, no NaN, same index and columns.

    Raises
    ------
    GlmxError
        When a column is entirely NaN or not numeric.
    """
    out = {}
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        if (values.isna() & frame[col].notna()).any():
            raise GlmxError("non-numeric values; expected numbers or n/a", file=source, field=f"column '{col}'")
        if values.isna().all():
            raise GlmxError("every value is n/a; a confound needs defined values", file=source,
                            field=f"column '{col}'")
        out[col] = values.fillna(values.mean()).to_numpy(float)
    return pd.DataFrame(out, index=frame.index)


def select_confounds(frame, patterns, include_motion_outliers=False, non_steady_state=False, source=None):
    """Pick and clean the confound regressors of one run.

    Parameters
    ----------
    frame : pandas.DataFrame of shape (n_scans, n_columns)
        fmriprep's confounds table.
    patterns : sequence of str
        ``confound_regressors`` of the spec.
    include_motion_outliers : bool
        Add fmriprep's ``motion_outlier*`` one-hot columns (none present is not an error).
    non_steady_state : bool
        Add fmriprep's ``non_steady_state_outlier*`` one-hot columns (none present is not an error).
    source : str, optional
        Confounds file (for messages).

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_selected)
        Selected columns with NaNs filled (see module docstring).
    """
    columns = [str(c) for c in frame.columns]
    chosen = match_patterns(columns, patterns, source)
    for flag, pattern in ((include_motion_outliers, MOTION_OUTLIER_PATTERN), (non_steady_state, NON_STEADY_PATTERN)):
        if flag:
            chosen.extend(c for c in columns if fnmatch.fnmatchcase(c, pattern) and c not in chosen)
    return fill_nans(frame[chosen], source)


def check_confounds_rows(table, n_scans, source=None, bold=None):
    """Refuse a confounds table that is not one row per volume of its BOLD run.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_rows, n_columns)
        fmriprep's confounds table.
    n_scans : int
        Volumes of the BOLD run.
    source : str, optional
        Confounds file (for messages).
    bold : str, optional
        The BOLD run (for messages).

    Raises
    ------
    GlmxError
        ``n_rows != n_scans``.
    """
    if len(table) != n_scans:
        raise GlmxError(f"confounds file has {len(table)} rows but the BOLD run {bold} has {n_scans} volumes; "
                        "expected one row per volume", file=source, field="rows")


def censor_mask(n_scans, dummy_scans=0, fd=None, fd_threshold=None):
    """Volumes kept for the fit (the one censoring rule; :func:`censoring` adds reasons and the floor).

    Parameters
    ----------
    n_scans : int
        Volumes in the run.
    dummy_scans : int
        Leading volumes dropped (scanner warm-up).
    fd : array of shape (n_scans,), optional
        Framewise displacement (NaN allowed: never censors).
    fd_threshold : float, optional
        Volumes with FD strictly above it are censored.

    Returns
    -------
    numpy.ndarray of shape (n_scans,), bool
        True where the volume is kept.
    """
    keep = np.ones(int(n_scans), dtype=bool)
    keep[: int(dummy_scans)] = False
    if fd_threshold is not None:
        fd = np.asarray(fd, dtype=float)
        keep &= ~(np.nan_to_num(fd, nan=0.0) > fd_threshold)
    return keep


def censoring(n_scans, dummy_scans=0, fd=None, fd_threshold=None, min_volumes=MIN_VOLUMES, source=None):
    """Which volumes survive dummy-scan removal and FD scrubbing, and why the others were dropped.

    One function for every analysis (task GLM, resting state): only the floor ``min_volumes`` is the
    caller's (the task GLM's :data:`MIN_VOLUMES`, under its own more-volumes-than-regressors check;
    connectivity's ``min_volumes`` spec key, as a correlation needs many more samples than a GLM).

    Parameters
    ----------
    n_scans : int
        Volumes of the run.
    dummy_scans : int
        Leading volumes cut off.
    fd : array of shape (n_scans,), optional
        Framewise displacement in mm (NaN never censors).
    fd_threshold : float or None
        Volumes with FD strictly above it are censored; None censors none.
    min_volumes : int
        Fewer remaining volumes refuse the run.
    source : str, optional
        Confounds file (for messages).

    Returns
    -------
    pandas.DataFrame of shape (n_scans, 4)
        ``volume``, ``framewise_displacement``, ``reason`` ('dummy', 'fd' or 'n/a' when kept) and
        ``censored`` (1 if dropped).

    Raises
    ------
    GlmxError
        Fewer than ``min_volumes`` volumes remain (the field is ``dummy_scans`` when the dummy scans
        alone leave too few, else ``fd_threshold``).
    """
    n_scans, dummy_scans = int(n_scans), int(dummy_scans)
    fd = np.full(n_scans, np.nan) if fd is None else np.asarray(fd, float)
    keep = censor_mask(n_scans, dummy_scans, fd, fd_threshold)
    reason = np.where(np.arange(n_scans) < dummy_scans, "dummy", np.where(keep, "n/a", "fd"))
    kept = int(keep.sum())
    if kept < min_volumes:
        field = "dummy_scans" if n_scans - dummy_scans < min_volumes else "fd_threshold"
        scrubbed = ("" if fd_threshold is None else
                    f" and FD scrubbing above {fd_threshold} mm ({int((reason == 'fd').sum())} censored)")
        raise GlmxError(f"only {kept} of {n_scans} volumes remain after {dummy_scans} dummy scan(s){scrubbed}; "
                        f"at least {min_volumes} are needed", file=source, field=field)
    return pd.DataFrame({"volume": np.arange(n_scans), "framewise_displacement": fd, "reason": reason,
                         "censored": (~keep).astype(int)})


def censor_table(table, n_scans, dummy_scans=0, fd_threshold=None, min_volumes=MIN_VOLUMES, source=None):
    """:func:`censoring` of a run from its fmriprep confounds table.

    Parameters
    ----------
    table : pandas.DataFrame of shape (n_scans, n_columns)
        fmriprep's confounds table (``framewise_displacement`` is read when present; it must be when
        ``fd_threshold`` is set).
    n_scans, dummy_scans, fd_threshold, min_volumes, source
        As :func:`censoring`.

    Returns
    -------
    pandas.DataFrame of shape (n_scans, 4)
        As :func:`censoring`.

    Raises
    ------
    GlmxError
        ``fd_threshold`` is set without a ``framewise_displacement`` column, or too few volumes remain.
    """
    if int(n_scans) - int(dummy_scans) < min_volumes:
        raise GlmxError(f"dummy_scans {dummy_scans} leaves {max(int(n_scans) - int(dummy_scans), 0)} of the run's "
                        f"{n_scans} volumes; at least {min_volumes} are needed", file=source, field="dummy_scans")
    fd = None
    if "framewise_displacement" in table.columns:
        fd = pd.to_numeric(table["framewise_displacement"], errors="coerce").to_numpy(float)
    elif fd_threshold is not None:
        raise GlmxError("fd_threshold is set but the file has no framewise_displacement column",
                        file=source, field="framewise_displacement")
    return censoring(n_scans, dummy_scans, fd, fd_threshold, min_volumes, source)
