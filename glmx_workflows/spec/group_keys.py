"""Keys of a task entry read by the group level (merged into ``keys.TASK_KEYS``).

Same shape as ``TASK_KEYS``: ``name: (JSON schema, default, description, example)``.
(``group_level_regressors`` lives in ``keys.py``.)
"""

from ..core.inference import INFERENCE_METHODS, PERMUTATION_METHODS

_P = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_METHODS = list(INFERENCE_METHODS)

GROUP_KEYS = {
    "group_model": (
        {"enum": ["ols", "mixed"]}, "ols",
        "Group model: 'ols' (least squares on the subjects' effects) or 'mixed' (mixed effects: each subject's "
        "first-level stat-variance map plus a between-subject variance tau2 by REML, written as stat-tau2).",
        "mixed"),
    "group_mixed_test": (
        {"enum": ["knapp-hartung", "wald"]}, "knapp-hartung",
        "How group_model 'mixed' tests its contrasts: 'knapp-hartung' (covariance q (X'WX)^-1, q the weighted "
        "residual dispersion; calibrated false positives, PyMARE's and metafor's default) or 'wald' (the "
        "model-based (X'WX)^-1 of FSL FLAME1; conservative when tau2 is near 0). Both on n - p degrees of freedom.",
        "wald"),
    "group_design": (
        {"anyOf": [{"type": "null"}, {"type": "object", "required": ["type", "contrasts"],
                                      "additionalProperties": False,
                                      "properties": {"type": {"enum": ["paired", "repeated"]},
                                                     "contrasts": {"type": "array", "items": {"type": "string"},
                                                                   "minItems": 2, "uniqueItems": True},
                                                     "name": {"type": "string"}}}]}, None,
        "Within-subject model over several first-level contrasts of the same subjects instead of one model per "
        "contrast: {'type': 'paired', 'contrasts': [A, B]} tests A - B (t) with a subject effect per subject; "
        "{'type': 'repeated', 'contrasts': [...]} tests 'no difference' (F). Outputs are named "
        "contrast-<name> (default: the contrasts joined, e.g. AVsB); group_contrasts are formulas over the "
        "contrast names. Not with group_level_regressors; permutations permute each subject's maps among themselves.",
        {"type": "paired", "contrasts": ["incongruent", "congruent"]}),
    "group_min_subjects": (
        {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 2}]}, None,
        "Per-voxel subject sets: model a voxel with the subjects whose map is defined there when at least this "
        "many are (its own degrees of freedom; count map stat-n). null: only voxels defined in every subject.", 10),
    "group_contrasts": (
        {"type": "object", "additionalProperties": {"anyOf": [
            {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}}, {},
        "Group contrasts besides the mean effect (always written, without desc): {name: formula} over the group "
        "design's columns ('intercept', covariates by name, '<column>_<level>' for groups); a negative weight tests "
        "the opposite direction; a list of formulas is an F contrast (stat-F, z, p). Maps carry desc-<name>.",
        {"patientVcontrol": "group_patient - group_control"}),
    "group_smoothing_fwhm": (
        {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0}]}, None,
        "Gaussian smoothing (mm FWHM) of the subject maps before the group fit.", 6),
    "group_inference": (
        {"type": "array", "items": {"enum": _METHODS}, "uniqueItems": True}, ["uncorrected", "fdr"],
        "Thresholded/corrected maps to write: 'uncorrected' (height), 'fdr' (Benjamini-Hochberg), 'bonferroni', "
        "'cluster' (height + cluster extent), 'perm_fwe' (max-t permutations), 'perm_cluster_mass', 'tfce'.",
        ["fdr", "tfce"]),
    "group_alpha": (
        _P, 0.05, "Significance level of the corrected methods (fdr, bonferroni, perm_fwe, perm_cluster_mass, tfce).",
        0.05),
    "group_p_threshold": (
        _P, 0.001, "Uncorrected one-sided p height: the 'uncorrected' and 'cluster' thresholds, the cluster-forming "
                   "height of 'perm_cluster_mass' and of the cluster tables.", 0.001),
    "group_z_threshold": (
        {"anyOf": [{"type": "null"}, {"type": "number"}]}, None,
        "Height in z instead of group_p_threshold (null: derived from group_p_threshold).", 3.1),
    "group_cluster_extent": (
        {"type": "integer", "minimum": 0}, 10,
        "Smallest cluster (voxels) kept by 'cluster' thresholding and listed in the cluster tables.", 20),
    "group_n_permutations": (
        {"type": "integer", "minimum": 1}, 5000,
        "Permutations (sign flips for a mean, row permutations otherwise) drawn for perm_* and tfce; when there are "
        "fewer distinct ones, all are enumerated (exact p-values).", 10000),
    "group_seed": ({"type": "integer", "minimum": 0}, 0,
                   "Seed of the permutations: the same seed gives the same maps.", 42),
    "surface_meshes": (
        {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"L": {"type": "string"}, "R": {"type": "string"}},
                                      "required": ["L", "R"], "additionalProperties": False}]}, None,
        "fsLR meshes (e.g. fMRIPrep's hemi-L/R_space-fsLR_den-32k_midthickness.surf.gii, relative to the spec) whose "
        "edges are the cortex neighbours of 'cluster', 'perm_cluster_mass' and 'tfce' on CIFTI maps (fsaverage5 "
        "needs none: nilearn ships it). null: the average of the group's fMRIPrep anat "
        "space-fsLR_den-32k_midthickness meshes, found through pybids.", {"L": "l.surf.gii", "R": "r.surf.gii"}),
}


def group_settings(entry, **overrides):
    """The group-level settings of a task entry, with keyword overrides validated like spec values.

    Parameters
    ----------
    entry : dict
        A loaded task entry (``spec.model.load_spec``).
    **overrides
        Group keys given in Python or on the command line (None means "not given").

    Returns
    -------
    dict
        Every key of the entry, overrides applied.
    """
    import copy

    from ..core.errors import GlmxError
    from ..core.formula import parse_formula
    from .model import _check_keys, _check_types

    out = copy.deepcopy(entry)
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        where = f"{entry['_task']} (group-level arguments)"
        allowed = {k: v for k, v in GROUP_KEYS.items()}
        allowed["group_level_regressors"] = None
        _check_keys(given, where, entry["_spec_file"], allowed)
        _check_types(given, where, entry["_spec_file"])
        out.update(copy.deepcopy(given))
    design = out.get("group_design")
    if design:
        field = f"{entry['_task']}.group_design"
        if out["group_level_regressors"]:
            raise GlmxError("group_design (a within-subject model) cannot be combined with group_level_regressors",
                            file=entry["_spec_file"], field=field)
        if design["type"] == "paired" and len(design["contrasts"]) != 2:
            raise GlmxError(f"a paired group_design takes two contrasts, got {len(design['contrasts'])}",
                            file=entry["_spec_file"], field=field + ".contrasts")
    perm = [m for m in out["group_inference"] if m in PERMUTATION_METHODS]
    if out.get("group_min_subjects") and perm and out["group_level_regressors"]:
        raise GlmxError("permutations with group_min_subjects are implemented for one-sample models only (no "
                        f"group_level_regressors); drop {', '.join(perm)} or the regressors", file=entry["_spec_file"],
                        field=f"{entry['_task']}.group_min_subjects")
    for name, formula in out["group_contrasts"].items():
        if not name.strip():
            raise GlmxError("group contrast name is empty", file=entry["_spec_file"],
                            field=f"{entry['_task']}.group_contrasts")
        try:
            for row in formula if isinstance(formula, list) else [formula]:
                parse_formula(row)
        except GlmxError as exc:
            raise GlmxError(exc.message, file=entry["_spec_file"],
                            field=f"{entry['_task']}.group_contrasts.{name}") from None
    return out
