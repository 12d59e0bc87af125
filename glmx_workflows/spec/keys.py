"""Every key of a task entry in task_information.json: JSON-schema type, default and meaning.

This table is the single source for validation, defaults, ``glmx init`` and the README reference.
"""

_NUM = {"type": "number"}
_STRS = {"type": "array", "items": {"type": "string"}}
_NULL_OR = lambda s: {"anyOf": [{"type": "null"}, s]}  # noqa: E731

# name: (schema, default, description, example)
TASK_KEYS = {
    "description": ({"type": "string"}, "", "Free text explaining the entry (ignored by the model).",
                    "Flanker task, incongruent vs congruent"),
    "analysis": ({"enum": ["glm", "connectivity"]}, "glm",
                 "'glm' for a task GLM; 'connectivity' for resting-state connectivity.", "glm"),
    "tr": (_NULL_OR({"type": "number", "exclusiveMinimum": 0}), None,
           "Repetition time in seconds. Absent/null: the BOLD sidecar's RepetitionTime. Both given and "
           "different (by more than a millionth): an error naming both values and files; a per-subject "
           "'overrides' tr corrects the sidecars.", 2.0),
    "excludes": (_STRS, [], "Subjects left out of every model; '01' and 'sub-01' both work.", ["sub-03"]),
    "condition_identifier": ({"type": "string"}, "trial_type",
                             "Events column whose values are the conditions (used as trial_type).", "trial_type"),
    "conditions": (_NULL_OR(_STRS), None,
                   "Condition values to model (null: every value found in the events files).",
                   ["congruent", "incongruent"]),
    "drop_conditions": (_STRS, [], "Condition values left unmodelled (they become baseline).", ["fixation"]),
    "confound_regressors": (_STRS, [],
                            "fmriprep confounds columns added to the design; shell wildcards allowed. A pattern "
                            "matching no column is an error.", ["trans_?", "rot_?", "a_comp_cor_0[0-4]"]),
    "modulators": (_STRS, [],
                   "Events columns used as parametric modulators: each adds <condition>_x_<modulator>, "
                   "mean-centred within condition across the subject's runs.", ["response_time"]),
    "block_identifier": (_NULL_OR({"type": "string"}), None,
                         "Events column of block labels: conditions are split into <block>_<condition>.", "block"),
    "design_contrasts": ({"anyOf": [{"const": "default"}, {"type": "object", "additionalProperties": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}}]},
        "default",
        "{name: formula} over regressor names ('0.5*a + 0.5*b - c'); a list of formulas is an F contrast; "
        "'default' gives every pairwise difference of conditions.",
        {"incongruentVcongruent": "incongruent - congruent"}),
    "condition_maps": ({"type": "boolean"}, True,
                       "Also write each condition against baseline as a map named after the condition.", True),
    "hrf_model": ({"enum": ["glover", "spm", "glover + derivative", "spm + derivative",
                            "glover + derivative + dispersion", "spm + derivative + dispersion"]},
                  "glover", "Haemodynamic response model (nilearn's names).", "spm"),
    "drift_model": ({"enum": ["cosine", "polynomial", None]}, "cosine", "Slow-drift model.", "cosine"),
    "high_pass": ({"type": "number", "exclusiveMinimum": 0}, 0.01, "High-pass cut-off in Hz for cosine drifts.",
                  0.008),
    "drift_order": ({"type": "integer", "minimum": 0}, 1, "Order of polynomial drifts.", 2),
    "noise_model": ({"enum": ["ar1", "ols"]}, "ar1", "Temporal noise model.", "ols"),
    "estimator": ({"enum": ["glmx", "nilearn"]}, "glmx",
                  "GLM engine: glmx's own fit, or nilearn's FirstLevelModel as the reference.", "nilearn"),
    "smoothing_fwhm": (_NULL_OR({"type": "number", "minimum": 0}), None,
                       "Gaussian smoothing (mm FWHM) of the BOLD before the fit.", 6),
    "space": ({"type": "string"}, "MNI152NLin2009cAsym", "fmriprep output space of the BOLD and mask.", "T1w"),
    "dummy_scans": ({"type": "integer", "minimum": 0}, 0, "Leading volumes left out of the fit.", 4),
    "fd_threshold": (_NULL_OR({"type": "number", "exclusiveMinimum": 0}), None,
                     "Censor volumes whose framewise displacement (mm) is above it.", 0.5),
    "include_motion_outliers": ({"type": "boolean"}, False,
                                "Add fmriprep's motion_outlier* one-hot columns as regressors.", True),
    "non_steady_state": ({"type": "boolean"}, False,
                         "Add fmriprep's non_steady_state_outlier* columns as regressors.", True),
    "group_level_regressors": (_STRS, [],
                               "participants.tsv columns used as group-level covariates or groups.", ["age"]),
    "overrides": ({"type": "object", "additionalProperties": {"type": "object"}}, {},
                  "Per-subject values of any key above, e.g. {\"sub-03\": {\"tr\": 2.5, \"dummy_scans\": 4}}.",
                  {"sub-03": {"tr": 2.5}}),
}

from .group_keys import GROUP_KEYS  # noqa: E402
from .rest_keys import REST_KEYS  # noqa: E402

TASK_KEYS.update(GROUP_KEYS)
TASK_KEYS.update(REST_KEYS)

# Defaults of the fields of a ``single_trial`` object (see resolve_single_trial).
SINGLE_TRIAL_DEFAULTS = {"method": "lss", "conditions": None, "others": "condition", "atlas": None}
TASK_KEYS["single_trial"] = (
    _NULL_OR({"type": "object", "additionalProperties": False, "properties": {
        "method": {"enum": ["lss", "lsa"]},
        "conditions": _NULL_OR({"type": "array", "items": {"type": "string"}, "minItems": 1}),
        "others": {"enum": ["condition", "single"]},
        "atlas": _NULL_OR(REST_KEYS["atlas"][0])}}),
    None,
    "Single-trial estimates (beta series) per run: {method: 'lss' (one model per trial, Mumford 2012) | 'lsa' "
    "(one model, every trial its own regressor), conditions: trial-wise conditions (null: all modelled), "
    "others: 'condition' (LSS: the other trials grouped by condition) | 'single' (all other trial-wise trials "
    "as one regressor), atlas: optional regions as the connectivity 'atlas' key, for beta-series "
    "connectivity}. HRF, drifts, confounds, noise_model, dummy_scans, fd_threshold and smoothing come from "
    "the entry; modulators are not used. null: none.",
    {"method": "lss", "conditions": ["incongruent"], "others": "condition"})

# Keys that make no sense per subject.
# group keys act on the whole group, so a per-subject override of them would mean nothing
NOT_OVERRIDABLE = {"overrides", "excludes", "description", "analysis", "group_level_regressors",
                   "connectivity_group_column"} | {k for k in GROUP_KEYS}


def resolve_single_trial(value):
    """The ``single_trial`` key with its fields' defaults filled in.

    Parameters
    ----------
    value : dict or None
        The key as given (validated).

    Returns
    -------
    dict or None
        None when single-trial models are off, else ``method``, ``conditions``, ``others``, ``atlas``.
    """
    if value is None:
        return None
    return {**SINGLE_TRIAL_DEFAULTS, **value}


def defaults():
    """A fresh dict of every key's default value.

    Returns
    -------
    dict
        ``{key: default}`` for every key of ``TASK_KEYS``, deep-copied so callers may mutate it.
    """
    import copy

    return {k: copy.deepcopy(v[1]) for k, v in TASK_KEYS.items()}
