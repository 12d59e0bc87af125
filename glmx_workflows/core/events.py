"""Events tables → the (onset, duration, trial_type, modulation) rows a design is built from.

All runs of a subject are handled together because parametric modulators are mean-centred within
condition across the subject's runs (a per-run centring would change what the modulator regressor
measures from run to run).
"""

import numpy as np
import pandas as pd

from .errors import GlmxError
from .formula import sanitize_name

EVENT_COLUMNS = ["onset", "duration", "trial_type", "modulation"]


def _numeric(frame, column, source, allow_nan=False):
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & ~(frame[column].isna() if allow_nan else False)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = frame[column].iloc[row]
        shown = "n/a" if pd.isna(value) else repr(str(value))
        raise GlmxError(f"non-numeric value {shown} in row {row + 1}; expected numbers",
                        file=source, field=f"column '{column}'")
    return values.to_numpy(dtype=float)


def check_events(frame, source, condition_column, modulators=(), block_column=None):
    """Check that an events table has what the model needs.

    Parameters
    ----------
    frame : pandas.DataFrame
        The events table as read (``n/a`` already turned into NaN).
    source : str
        File name used in error messages.
    condition_column : str
        Column whose values label the conditions.
    modulators : sequence of str
        Parametric modulator columns.
    block_column : str or None
        Block column.

    Raises
    ------
    GlmxError
        Naming the file and the column that is missing or malformed.
    """
    for col in ["onset", "duration", condition_column, *modulators] + ([block_column] if block_column else []):
        if col not in frame.columns:
            raise GlmxError(f"column '{col}' not found (columns: {', '.join(map(str, frame.columns))})",
                            file=source, field=f"column '{col}'")
    onset = _numeric(frame, "onset", source)
    if np.isnan(onset).any():
        raise GlmxError("missing onset (n/a); every event needs a numeric onset", file=source, field="column 'onset'")
    duration = _numeric(frame, "duration", source)
    if np.isnan(duration).any():
        raise GlmxError("missing duration (n/a); expected a number of seconds >= 0",
                        file=source, field="column 'duration'")
    if (duration < 0).any():
        row = int(np.flatnonzero(duration < 0)[0])
        raise GlmxError(f"negative duration {duration[row]} in row {row + 1}; expected >= 0",
                        file=source, field="column 'duration'")


def modelled_rows(frame, condition_column, drop_conditions=()):
    """Rows of a raw events table that the model uses: a condition label that is not dropped.

    Parameters
    ----------
    frame : pandas.DataFrame
        Raw events table of one run.
    condition_column : str
        Column holding the condition.
    drop_conditions : iterable of str
        Conditions left unmodelled (from :func:`conditions_to_drop`).

    Returns
    -------
    numpy.ndarray of bool, shape (n_rows,)
        In row order; the condition rows of :func:`normalize_events` are these rows, in this order.
    """
    labels = frame[condition_column]
    drop = {str(d) for d in drop_conditions}
    return (labels.notna() & ~labels.astype(str).isin(drop)).to_numpy()


def normalize_events(frames, sources, condition_column, modulators=(), block_column=None,
                     drop_conditions=()):
    """Turn a subject's raw events tables into design events, one table per run.

    Parameters
    ----------
    frames : list of pandas.DataFrame
        Raw events tables, one per run.
    sources : list of str
        Their file names (for messages).
    condition_column : str
        Column used as trial_type.
    modulators : sequence of str
        Columns giving parametric modulators. Each adds, for every condition, a regressor named
        ``<condition>_x_<modulator>`` whose amplitudes are the modulator values mean-centred within
        that condition across all runs.
    block_column : str or None
        When set, conditions are split by block into ``<block>_<condition>``.
    drop_conditions : sequence of str
        Condition values left out of the model (e.g. ``["fixation"]``); they become baseline.

    Returns
    -------
    list of pandas.DataFrame
        Per run, columns ``onset, duration, trial_type, modulation``: condition rows with modulation
        1, then modulator rows with the centred values.

    Raises
    ------
    GlmxError
        When a column is missing or malformed, a modulator has n/a values for a modelled event, a
        modulator is constant within a condition (its regressor would be zero), or two labels (or
        modulators) become one regressor name.
    """
    for frame, src in zip(frames, sources):
        check_events(frame, src, condition_column, modulators, block_column)
    _check_modulator_names(modulators, condition_column, block_column, sources[0] if sources else None)
    kept = []
    origin = {}  # regressor name -> the (block, condition) values it was made from, across runs
    for frame, src in zip(frames, sources):
        sub = frame.loc[modelled_rows(frame, condition_column, drop_conditions)]
        raw = sub[condition_column].astype(str)
        cond = raw.map(sanitize_name)
        if block_column:
            blocks = sub[block_column]
            if blocks.isna().any():
                raise GlmxError("missing block label (n/a) for a modelled event", file=src,
                                field=f"column '{block_column}'")
            cond = blocks.astype(str).map(sanitize_name) + "_" + cond
            raw = blocks.astype(str) + " / " + raw
        for name, value in zip(cond, raw):
            seen = origin.setdefault(name, value)
            if seen != value:
                # two labels made one regressor: their events would be silently merged
                what = "block / condition values" if block_column else "condition values"
                raise GlmxError(f"{what} '{seen}' and '{value}' both become the regressor name '{name}'; rename one "
                                "in the events (or leave it out with drop_conditions)", file=src,
                                field=f"column '{condition_column}'")
        kept.append(pd.DataFrame({
            "onset": pd.to_numeric(sub["onset"]).to_numpy(float),
            "duration": pd.to_numeric(sub["duration"]).to_numpy(float),
            "trial_type": cond.to_numpy(),
            **{f"__mod_{m}": _numeric(sub, m, src, allow_nan=True) for m in modulators},
        }))

    out = [k[["onset", "duration", "trial_type"]].assign(modulation=1.0) for k in kept]
    made = sorted(f"{c}_x_{sanitize_name(m)}" for c in origin for m in modulators)
    taken = sorted(set(made) & set(origin))
    if taken:
        raise GlmxError(f"condition(s) {', '.join(taken)} have the name of a modulator regressor "
                        "(<condition>_x_<modulator>); rename the condition in the events", file=sources[0],
                        field=f"column '{condition_column}'")
    for mod in modulators:
        key = f"__mod_{mod}"
        for run, src in zip(kept, sources):
            if np.isnan(run[key]).any():
                row = int(np.flatnonzero(np.isnan(run[key].to_numpy()))[0])
                raise GlmxError(f"n/a value for a modelled event (trial {row + 1}); a modulator needs a value "
                                "for every modelled event", file=src, field=f"column '{mod}'")
        allrows = pd.concat(kept, ignore_index=True)
        means = allrows.groupby("trial_type")[key].mean()
        spread = allrows.groupby("trial_type")[key].agg(lambda v: np.ptp(v.to_numpy()))
        flat = sorted(spread.index[spread <= 1e-12 * (1 + means.abs().reindex(spread.index))])
        if flat:
            raise GlmxError(f"constant within condition(s) {', '.join(flat)}: its regressor would be zero after "
                            "mean-centring; expected values that vary across trials",
                            file=sources[0], field=f"column '{mod}'")
        mod_name = sanitize_name(mod)
        for i, run in enumerate(kept):
            rows = pd.DataFrame({
                "onset": run["onset"],
                "duration": run["duration"],
                "trial_type": run["trial_type"] + "_x_" + mod_name,
                "modulation": run[key] - run["trial_type"].map(means).to_numpy(float),
            })
            out[i] = pd.concat([out[i], rows], ignore_index=True)
    return [o.reset_index(drop=True) for o in out]


def _check_modulator_names(modulators, condition_column, block_column, source):
    """Two modulators must not make one regressor name, nor be the condition or block column."""
    names = {}
    for mod in modulators:
        name = sanitize_name(mod)
        if name in names and names[name] != mod:
            raise GlmxError(f"modulators '{names[name]}' and '{mod}' both become the regressor suffix '_x_{name}'; "
                            "rename one column", file=source, field="modulators")
        names[name] = mod


def conditions_to_drop(frames, condition_column, conditions=None, drop_conditions=()):
    """Condition values left unmodelled: ``drop_conditions`` plus, when ``conditions`` lists the ones
    to model, every other value found in the events (sorted).

    Parameters
    ----------
    frames : list of pandas.DataFrame
        Raw events tables of the runs.
    condition_column : str
        Column holding the condition (``condition_identifier``).
    conditions : list of str, optional
        Conditions to model; None models every condition present.
    drop_conditions : iterable of str, optional
        Conditions never modelled.

    Returns
    -------
    list of str
        Condition values to leave out, sorted.
    """
    drop = set(map(str, drop_conditions))
    if conditions is not None:
        present = set()
        for frame in frames:
            if condition_column in frame.columns:
                present |= set(frame[condition_column].dropna().astype(str))
        drop |= present - set(map(str, conditions))
    return sorted(drop)


def regressor_names(events):
    """Task regressor names a design built from ``events`` will have (sorted, as nilearn orders them).

    Parameters
    ----------
    events : pandas.DataFrame
        Normalised events of one run (column ``trial_type``).

    Returns
    -------
    list of str
        Condition and modulator regressor names, sorted.
    """
    return sorted(pd.unique(events["trial_type"]).tolist())


def conditions_of(events, modulators=()):
    """Condition regressors (not modulator regressors) present in normalised ``events`` (sorted).

    Parameters
    ----------
    events : pandas.DataFrame
        Normalised events of one run (column ``trial_type``).
    modulators : iterable of str, optional
        Modulator columns; regressors ending in ``_x_<modulator>`` are left out.

    Returns
    -------
    list of str
        Condition regressor names, sorted.
    """
    suffixes = tuple(f"_x_{sanitize_name(m)}" for m in modulators)
    return sorted(t for t in pd.unique(events["trial_type"]) if not (suffixes and t.endswith(suffixes)))


def check_events_fit_run(events, n_scans, tr, source):
    """Error when an event starts at or after the end of the run.

    Parameters
    ----------
    events : pandas.DataFrame
        Normalised events.
    n_scans : int
        Volumes in the run.
    tr : float
        Repetition time in seconds.
    source : str
        Events file (for messages).

    Raises
    ------
    GlmxError
        An onset is at or after ``n_scans * tr`` seconds.
    """
    end = n_scans * tr
    late = events["onset"].to_numpy() >= end
    if late.any():
        onset = float(events["onset"].to_numpy()[late].max())
        raise GlmxError(f"event onset {onset:g} s is beyond the end of the run ({n_scans} volumes x TR {tr:g} s "
                        f"= {end:g} s); check the TR or the events file", file=source, field="column 'onset'")
