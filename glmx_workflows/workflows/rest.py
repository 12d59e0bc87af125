"""Workflow builders for resting-state connectivity: per subject (denoise_run per run →
compute_connectivity → rest_report → ds_rest) and the group step (rest_group → ds_rest_group)."""

import json

from nipype.interfaces.utility import IdentityInterface, Merge
from nipype.pipeline import engine as pe

from ..interfaces.connectivity import ComputeConnectivity, DenoiseRun, RestGroup, RestReport
from ..interfaces.sink import DerivativesSink

INPUT_FIELDS = ["bold_files", "mask_files", "confounds_files", "run_entities", "subject"]
OUTPUT_FIELDS = ["matrices_file", "out_files"]


def _first(items):
    """The first of a MapNode's outputs (every run has the same regions)."""
    return items[0]


def denoise_parameters(settings):
    """The DenoiseRun inputs of resolved spec settings (also shown in the report).

    Parameters
    ----------
    settings : dict
        A subject's settings (``spec.model.subject_settings``) with ``_spec_file``.

    Returns
    -------
    dict
        Keyword inputs of :class:`DenoiseRun` (atlas as JSON, band-pass split into high/low pass).
    """
    from pathlib import Path

    return {
        "atlas": json.dumps(settings["atlas"], sort_keys=True),
        "atlas_base_dir": str(Path(settings["_spec_file"]).resolve().parent),
        "space": settings["space"],
        "dummy_scans": int(settings["dummy_scans"]),
        "fd_threshold": settings["fd_threshold"],
        "min_volumes": int(settings["min_volumes"]),
        "confound_preset": settings["confound_preset"],
        "confound_regressors": list(settings["confound_regressors"]),
        "detrend": bool(settings["detrend"]),
        "high_pass": settings["band_pass"][0],
        "low_pass": settings["band_pass"][1],
        "standardize": bool(settings["standardize"]),
        # MNI coordinates, or (surfaces) the name of a parcel of the atlas
        "seeds": {k: v if isinstance(v, str) else [float(x) for x in v] for k, v in settings["seeds"].items()},
        "seed_radius": float(settings["seed_radius"]),
    }


def init_rest_wf(settings, tr, subject, task, output_dir=None, base_entities=None, name=None):
    """Connectivity of one subject.

    Parameters
    ----------
    settings : dict
        The subject's resolved spec settings (connectivity keys).
    tr : float
        Repetition time (s) of the runs.
    subject, task : str
        Subject label (without ``sub-``) and task name.
    output_dir : str, optional
        OUTPUT_DIR; None builds no sinks and no report (for embedding).
    base_entities : dict, optional
        sub, task, space (+ res/den) of every output.
    name : str, optional
        Default ``sub_<subject>_<task>``.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        Workflow with ``inputnode`` and ``outputnode`` (below); not run.

    Notes
    -----
    ``inputnode``: ``bold_files``, ``mask_files``, ``confounds_files`` (one per run, same order),
    ``run_entities`` (per run: ``{"run": "1"}``, ``{"ses": "a", "run": "2"}`` or ``{}``), ``subject``.

    ``outputnode``: ``matrices_file`` (JSON list of matrices and their levels), ``out_files`` (published
    paths; empty without ``output_dir``).
    """
    wf = pe.Workflow(name=name or f"sub_{subject}_{task}")
    inputnode = pe.Node(IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")
    params = denoise_parameters(settings)
    denoise_run = pe.MapNode(DenoiseRun(tr=float(tr), **params),
                             iterfield=["bold_file", "mask_file", "confounds_file", "run_entities"],
                             name="denoise_run", mem_gb=2.0)
    compute_connectivity = pe.Node(ComputeConnectivity(kinds=list(settings["connectivity_kinds"]),
                                                       run_combination=settings["run_combination"]),
                                   name="compute_connectivity")
    for node in (denoise_run, compute_connectivity):
        # manifests point at files that are not traits of their own
        node.config = {"execution": {"remove_unnecessary_outputs": "false"}}
    wf.connect([
        (inputnode, denoise_run, [("bold_files", "bold_file"), ("mask_files", "mask_file"),
                                  ("confounds_files", "confounds_file"), ("run_entities", "run_entities")]),
        (denoise_run, compute_connectivity, [("timeseries_file", "timeseries_files"),
                                             ("seeds_file", "seeds_files")]),
        (inputnode, compute_connectivity, [("run_entities", "run_entities")]),
        (compute_connectivity, outputnode, [("matrices_file", "matrices_file")]),
    ])
    if output_dir is None:
        return wf
    shown = {k: settings[k] for k in ("atlas", "confound_preset", "confound_regressors", "dummy_scans",
                                      "fd_threshold", "min_volumes", "detrend", "band_pass", "standardize",
                                      "connectivity_kinds", "run_combination", "seeds", "seed_radius")}
    shown["tr"] = float(tr)
    rest_report = pe.Node(RestReport(task=task, settings=json.dumps(shown)), name="rest_report")
    gather_manifests = pe.Node(Merge(3), name="gather_manifests")
    ds_rest = pe.MapNode(DerivativesSink(out_dir=str(output_dir), entities=dict(base_entities or {})),
                         iterfield=["manifest_file"], name="ds_rest", overwrite=True)
    wf.connect([
        (denoise_run, rest_report, [(("regions_file", _first), "regions_file")]),
        (compute_connectivity, rest_report, [("matrices_file", "matrices_file")]),
        (denoise_run, rest_report, [("outliers_file", "outliers_files")]),
        (inputnode, rest_report, [("run_entities", "run_entities"), ("subject", "subject")]),
        (denoise_run, gather_manifests, [("manifest_file", "in1")]),
        (compute_connectivity, gather_manifests, [("manifest_file", "in2")]),
        (rest_report, gather_manifests, [("manifest_file", "in3")]),
        (gather_manifests, ds_rest, [("out", "manifest_file")]),
        (rest_report, ds_rest, [("manifest_file", "wait_for")]),
        (ds_rest, outputnode, [("out_files", "out_files")]),
    ])
    return wf


def init_rest_group_wf(task, atlas, output_dir, base_entities, alpha=0.05, name=None):
    """Group step of connectivity: mean matrix, tangent space, edge comparison.

    Parameters
    ----------
    task, atlas : str
        Task name and the atlas's seg label (names the outputs).
    output_dir : str
        ``OUTPUT_DIR/group``.
    base_entities : dict
        task, space (+ res/den).
    alpha : float
        FDR level of the edge comparison.
    name : str, optional
        Default ``group_<task>``.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        Workflow with ``inputnode`` and ``outputnode`` (below); not run.

    Notes
    -----
    ``inputnode``: ``matrix_files`` (subject-level Pearson relmats), ``timeseries_files`` (per subject, a
    list), ``subjects``, ``groups`` (per subject, or empty). ``outputnode``: ``out_files``.
    """
    wf = pe.Workflow(name=name or f"group_{task}")
    inputnode = pe.Node(IdentityInterface(fields=["matrix_files", "timeseries_files", "subjects", "groups"]),
                        name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=["out_files"]), name="outputnode")
    rest_group = pe.Node(RestGroup(atlas=atlas, alpha=float(alpha)), name="rest_group")
    rest_group.config = {"execution": {"remove_unnecessary_outputs": "false"}}
    ds_rest_group = pe.Node(DerivativesSink(out_dir=str(output_dir), entities=dict(base_entities)),
                            name="ds_rest_group", overwrite=True)
    wf.connect([
        (inputnode, rest_group, [("matrix_files", "matrix_files"), ("timeseries_files", "timeseries_files"),
                                 ("subjects", "subjects"), ("groups", "groups")]),
        (rest_group, ds_rest_group, [("manifest_file", "manifest_file")]),
        (ds_rest_group, outputnode, [("out_files", "out_files")]),
    ])
    return wf
