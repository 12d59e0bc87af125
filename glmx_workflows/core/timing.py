"""Facts about acquisition timing that hold for every analysis (task GLM and connectivity alike).

Kept free of numpy/nilearn imports: the spec validation, run on every command, reads it.
"""

import math

from .errors import GlmxError

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
