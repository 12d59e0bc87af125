"""Keys of a task entry read by resting-state connectivity (``"analysis": "connectivity"``), merged into
``keys.TASK_KEYS``.

Same shape as ``TASK_KEYS``: ``name: (JSON schema, default, description, example)``. Connectivity also
reads the shared keys ``tr``, ``space``, ``excludes``, ``confound_regressors`` (added after the preset),
``dummy_scans`` and ``fd_threshold``.
"""

_EDGE = {"anyOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}]}
_ATLAS_OBJECT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        # a NIfTI labels image or CIFTI .dlabel.nii, or a GIfTI label file per hemisphere (fsaverage* runs)
        "labels_img": {"anyOf": [{"type": "string"}, {"type": "object", "additionalProperties": False,
                                                      "properties": {"L": {"type": "string"},
                                                                     "R": {"type": "string"}}}]},
        "maps_img": {"type": "string"},
        "labels_tsv": {"type": "string"},
        "coordinates": {"type": "string"},
        "radius": {"type": "number", "exclusiveMinimum": 0},
        "space": {"type": "string"},
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["labels_img"]}, {"required": ["maps_img"]}, {"required": ["coordinates"]}],
}

REST_KEYS = {
    "atlas": (
        {"anyOf": [{"enum": ["dosenbach_2010", "power_2011"]}, _ATLAS_OBJECT]}, "dosenbach_2010",
        "Regions (connectivity): a coordinate atlas packaged in nilearn ('dosenbach_2010', 'power_2011'; no "
        "download) or {name, labels_img + labels_tsv | maps_img [+ labels_tsv] | coordinates [+ radius]}; "
        "relative paths are read from the spec's folder; images must be on the BOLD grid. Surfaces: labels_img a "
        ".dlabel.nii on the fsLR run's grayordinates, or {\"L\": \"lh.label.gii\", \"R\": \"rh.label.gii\"} on "
        "fsaverage* GIfTI runs (names from the label tables).",
        {"name": "DMN", "coordinates": "dmn.tsv", "radius": 6}),
    "confound_preset": (
        {"anyOf": [{"type": "null"}, {"enum": ["6P", "24P", "36P", "aCompCor"]}]}, "36P",
        "Confound set of connectivity denoising: 6P motion; 24P motion + derivatives + squares; 36P 24P + csf, "
        "white_matter, global_signal expanded alike; aCompCor motion + derivatives + a_comp_cor_00-04. "
        "confound_regressors are added to it.", "24P"),
    "detrend": ({"type": "boolean"}, True, "Remove linear trends before connectivity (signals and confounds).",
                True),
    "band_pass": (
        {"type": "array", "items": _EDGE, "minItems": 2, "maxItems": 2}, [0.01, 0.08],
        "[high-pass, low-pass] edges in Hz of the Butterworth band-pass of connectivity (confounds filtered "
        "alike); null disables an edge.", [0.009, 0.1]),
    "standardize": ({"type": "boolean"}, True, "z-score each denoised connectivity series.", True),
    "min_volumes": ({"type": "integer", "minimum": 3}, 50,
                    "Connectivity runs keeping fewer volumes after dummy scans and FD scrubbing are refused.", 100),
    "connectivity_kinds": (
        {"type": "array", "items": {"enum": ["pearsoncorrelation", "partialcorrelation", "covariance",
                                             "precision"]}, "minItems": 1, "uniqueItems": True},
        ["pearsoncorrelation"],
        "Matrices written: Pearson r (averaged in Fisher z), partial correlation, covariance, precision (sparse "
        "inverse covariance, graphical lasso).", ["pearsoncorrelation", "precision"]),
    "run_combination": (
        {"enum": ["average", "concatenate", "separate"]}, "average",
        "Several runs: per-run matrices plus their average (Fisher z for correlations), the per-run denoised "
        "series concatenated into one matrix, or per-run matrices only.", "concatenate"),
    "seeds": (
        {"type": "object", "additionalProperties": {"anyOf": [
            {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
            {"type": "string", "minLength": 1}]}}, {},
        "Seed-based connectivity: {name: [x, y, z]} MNI mm (volumes), or {name: 'parcel name'} a parcel of a label "
        "atlas (surfaces: dlabel or GIfTI labels; volumes: labels images); each gives a Fisher-z map of every "
        "voxel/grayordinate/vertex (stat-z_desc-<name>_boldmap, in the run's own form).", {"PCC": [0, -52, 26]}),
    "seed_radius": ({"type": "number", "exclusiveMinimum": 0}, 6.0, "Radius (mm) of the seed spheres.", 8),
    "connectivity_group_column": (
        {"anyOf": [{"type": "null"}, {"type": "string"}]}, None,
        "participants.tsv column of two groups whose edges the group level compares (Welch t, FDR at "
        "group_alpha); null: no comparison.", "group"),
}
