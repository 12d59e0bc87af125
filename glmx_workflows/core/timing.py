"""The repetition time of a subject's runs: one rule for every analysis (task GLM, resting state, and
whatever else reads BOLD runs).

Rule
----
* A subject-level ``tr`` (a per-subject ``overrides`` entry or a keyword argument) is an explicit
  correction of the sidecars: it wins and is not compared with them.
* Otherwise a spec ``tr`` must agree with every run's ``RepetitionTime``, and is then the TR used.
* Without a spec ``tr``, the runs' ``RepetitionTime`` values must agree with each other.
* Two TRs agree when they differ by at most :data:`TR_RTOL` of the larger one: that absorbs the
  float32 rounding of TRs copied from NIfTI headers (``0.7200000286``), and nothing a scanner
  would call a different TR. A looser absolute tolerance (a millisecond) would let the design of a
  1000-volume run drift by a second.

A TR outside :data:`TR_RANGE` is refused by :func:`check_tr` wherever one is read (spec, sidecar).
Kept free of numpy/nilearn imports: the spec validation, run on every command, reads it.
"""

import math

from .errors import GlmxError

#: Relative tolerance under which two repetition times are the same (float32 rounding is ~6e-8).
TR_RTOL = 1e-6


def same_tr(a, b):
    """True when two repetition times agree within :data:`TR_RTOL`.

    Parameters
    ----------
    a, b : float
        Repetition times (s).

    Returns
    -------
    bool
    """
    a, b = float(a), float(b)
    return abs(a - b) <= TR_RTOL * max(abs(a), abs(b))


def resolve_tr(sidecar_trs, spec_tr=None, override_tr=None, sources=(), spec_file=None, spec_field="tr"):
    """The TR (s) of a subject's runs, checked against the spec.

    Parameters
    ----------
    sidecar_trs : sequence of float or None, length n_runs
        Each run's ``RepetitionTime`` (None when its sidecars have none).
    spec_tr : float, optional
        The spec's task-level ``tr``.
    override_tr : float, optional
        A subject-level ``tr`` that corrects the sidecars (wins without comparison).
    sources : sequence of str, length n_runs, optional
        Where each run's TR came from (sidecar or BOLD file), named in messages.
    spec_file : str, optional
        The spec file, named when the spec disagrees with a sidecar.
    spec_field : str
        The spec key named in that message (e.g. ``flanker.tr``).

    Returns
    -------
    float
        The TR in seconds.

    Raises
    ------
    GlmxError
        No TR anywhere for a run, the spec's TR disagrees with a sidecar, or (without a spec TR) the
        runs' TRs differ.
    """
    sidecar_trs = list(sidecar_trs)
    sources = list(sources) or [None] * len(sidecar_trs)
    if override_tr is not None:
        return float(override_tr)
    for tr, source in zip(sidecar_trs, sources):
        if tr is None and spec_tr is None:
            raise GlmxError("no RepetitionTime in the BOLD sidecars and no 'tr' in the spec", file=source,
                            field="RepetitionTime")
        if tr is not None and spec_tr is not None and not same_tr(tr, spec_tr):
            raise GlmxError(f"tr is {float(spec_tr):g} s in the spec but RepetitionTime is {float(tr):g} s in "
                            f"{source}; fix one, or set a per-subject value under 'overrides'",
                            file=spec_file or source, field=spec_field)
    if spec_tr is not None:
        return float(spec_tr)
    first = float(sidecar_trs[0]) if sidecar_trs else None
    if first is None:
        raise GlmxError("no run to take a RepetitionTime from", field="RepetitionTime")
    if any(not same_tr(tr, first) for tr in sidecar_trs):
        raise GlmxError(f"runs have different RepetitionTime values {sorted(set(map(float, sidecar_trs)))}; "
                        "set 'tr' per subject under 'overrides'", file=sources[0], field="RepetitionTime")
    return first


# A repetition time outside this range (seconds) is a unit mistake (milliseconds, a sidecar's 2000) or a typo:
# fast fMRI reaches ~0.1 s, sparse sampling ~30 s.
TR_RANGE = (0.05, 60.0)


def check_tr(tr, source=None, field="tr"):
    """Refuse a repetition time that cannot be seconds (a value in milliseconds, a typo).

    Parameters
    ----------
    tr : float
        Repetition time as given (spec ``tr`` or a sidecar's ``RepetitionTime``).
    source : str, optional
        File it came from (for messages).
    field : str
        Key it came from (for messages).

    Returns
    -------
    float
        ``tr`` as a float.

    Raises
    ------
    GlmxError
        ``tr`` is not a finite number within ``TR_RANGE`` seconds.
    """
    low, high = TR_RANGE
    try:
        value = float(tr)
    except (TypeError, ValueError):
        raise GlmxError(f"repetition time {tr!r} is not a number of seconds", file=source, field=field) from None
    if not math.isfinite(value) or not low <= value <= high:
        hint = f"; in milliseconds? {value:g} ms would be {value / 1000:g} s" if value > high else ""
        raise GlmxError(f"repetition time {value:g} s is outside {low:g}-{high:g} s, so it cannot be a TR in seconds "
                        f"(BIDS RepetitionTime and the spec's tr are in seconds){hint}", file=source, field=field)
    return value
