"""Workflow builders for the first level: one subject's runs → per-run fits → fixed effects."""

import json
import os

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from ..interfaces.confounds import SelectConfounds
from ..interfaces.design import BuildDesign
from ..interfaces.events import LoadEvents
from ..interfaces.glm import ComputeContrasts, FitGLM, FixedEffects
from ..interfaces.report import SubjectReport
from ..interfaces.sink import SubjectSink
from ..interfaces.single_trial import SingleTrial
from ..spec.keys import resolve_single_trial

INPUT_FIELDS = ["bold_files", "mask_files", "events_files", "confounds_files", "design_files",
                "run_map_entities", "run_design_entities", "subject_entities"]
OUTPUT_FIELDS = ["design_files", "fit_files", "run_manifests", "subject_manifest", "out_files",
                 "single_trial_manifests"]


# Nodes sent to the cluster as jobs by the SLURM/SGE plugins; every other node runs in the
# submitting process (see the end of init_first_level_wf).
SUBMITTED = ("fit_glm", "compute_contrasts", "fixed_effects", "report", "single_trial")

# Settings shown in the report of a BIDS Stats Model's subject (besides the model file).
MODEL_REPORTED_SETTINGS = ("tr", "space", "noise_model", "estimator")

# Settings shown in the subject's report (those that change the first-level model).
REPORTED_SETTINGS = ("tr", "space", "condition_identifier", "conditions", "drop_conditions", "modulators",
                     "block_identifier", "hrf_model", "drift_model", "high_pass", "drift_order", "noise_model",
                     "estimator", "smoothing_fwhm", "confound_regressors", "include_motion_outliers",
                     "non_steady_state", "dummy_scans", "fd_threshold", "single_trial")


def init_first_level_wf(settings, contrasts, output_dir=None, fit_mem_gb=1.0, publish_run_maps=True,
                        report_cache=None, subject_output_dir=None, session_output_dir=None, name="first_level_wf",
                        contrast_cache=None):
    """Build the first-level workflow of one subject and task.

    Parameters
    ----------
    settings : dict
        Resolved model settings (keys of task_information.json; ``tr`` resolved to a number).
    contrasts : dict
        ``{name: {'label': str, 'rows': [{regressor: weight}, ...], 'type': 't' | 'F'}}``.
    output_dir : str or None
        OUTPUT_DIR for the ``ds_outputs`` sink node and the ``report`` node (the subject's HTML report,
        ``sub-<s>/sub-<s>_task-<t>_report.html``); None builds neither (for embedding).
    fit_mem_gb : float
        Memory the ``fit_glm`` node declares to the engine.
    publish_run_maps : bool
        Publish per-run maps (False when a subject's only run would get the subject-level names).
    report_cache : str, optional
        Folder where the ``report`` node keeps the parts it drew (see
        :mod:`glmx_workflows.reports.cache`): a rebuild after a contrast-only change draws only the new
        contrast's part. None draws the whole report every time.
    contrast_cache : str, optional
        Folder where ``compute_contrasts`` and ``fixed_effects`` keep each contrast's maps (see
        :mod:`glmx_workflows.io.parts`): a rerun after a contrast-only change computes only the new or
        changed contrasts. None computes every contrast whenever the nodes rerun.
    subject_output_dir : str, optional
        Where the subject-level (fixed-effects) maps are published when not in ``output_dir`` (a BIDS
        Stats Model's Subject node folder).
    session_output_dir : str, optional
        Where a BIDS Stats Model's Session node publishes its maps (``settings['subject_models']`` says
        which runs form each session); None publishes none.
    name : str
        Workflow name.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        Workflow with ``inputnode`` and ``outputnode`` (below); not run.

    Notes
    -----
    ``inputnode`` fields (lists have one item per run, in the same order):

    - ``bold_files``, ``mask_files``, ``events_files``, ``confounds_files``: fmriprep BOLD, brain mask,
      raw BIDS events and fmriprep confounds. On surfaces (see ``io.geometry``): the CIFTI dtseries twice,
      or the left and right hemispheres' GIfTI.
    - ``design_files``: None per run, or a user's design TSV that replaces the built design.
    - ``run_map_entities`` / ``run_design_entities``: BIDS entity dicts naming a run's maps
      (sub, ses, task, run, space) and its design (sub, ses, task, run).
    - ``subject_entities``: entities naming the subject-level maps (sub, [ses,] task, space).

    ``outputnode`` fields: ``design_files`` (per run), ``fit_files`` (per run NPZ), ``run_manifests``
    and ``subject_manifest`` (JSON lists of the maps with their entities), ``out_files`` (published
    paths; empty without ``output_dir``), ``single_trial_manifests`` (per run JSON lists of the beta
    series; connected only with ``single_trial``).

    With ``settings['single_trial']`` a ``single_trial`` node (one per run) fits the trial-wise models
    from the run, its built design and kept volumes; it takes nothing from ``fit_glm``, so changing
    only ``single_trial`` reruns only it, its sink and the report.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")

    load_events = pe.Node(LoadEvents(
        condition_identifier=settings["condition_identifier"], modulators=settings["modulators"],
        block_identifier=settings["block_identifier"], conditions=settings["conditions"],
        drop_conditions=settings["drop_conditions"]), name="load_events")
    select_confounds = pe.MapNode(SelectConfounds(
        confound_regressors=settings["confound_regressors"],
        include_motion_outliers=settings["include_motion_outliers"],
        non_steady_state=settings["non_steady_state"], dummy_scans=settings["dummy_scans"],
        fd_threshold=settings["fd_threshold"]), iterfield=["confounds_file", "bold_file"], name="select_confounds")
    build_design = pe.MapNode(BuildDesign(
        tr=settings["tr"], hrf_model=settings["hrf_model"], drift_model=settings["drift_model"],
        high_pass=settings["high_pass"], drift_order=settings["drift_order"]),
        iterfield=["events_file", "confounds_file", "censor_file", "bold_file", "user_design_file", "source_events"],
        name="build_design")
    fit_glm = pe.MapNode(FitGLM(noise_model=settings["noise_model"], estimator=settings["estimator"],
                                smoothing_fwhm=settings["smoothing_fwhm"]),
                         iterfield=["bold_file", "mask_file", "design_file", "censor_file"], name="fit_glm",
                         mem_gb=fit_mem_gb)
    # contrasts and fixed effects hold the fitted model or a few maps per contrast, not the BOLD run:
    # a third of the fit's need, never below nipype's usual half gigabyte for cluster jobs
    light_mem_gb = max(0.5, round(fit_mem_gb / 3, 2))
    compute_contrasts = pe.MapNode(ComputeContrasts(contrasts=contrasts, cache_dir=str(contrast_cache or "")),
                                   iterfield=["fit_file", "mask_file"], name="compute_contrasts", mem_gb=light_mem_gb)
    # a BIDS Stats Model's Subject node (glmx_workflows.bsm); empty for task_information.json
    fixed_effects = pe.Node(FixedEffects(run_models=settings.get("subject_models") or {},
                                         cache_dir=str(contrast_cache or "")), name="fixed_effects",
                            mem_gb=light_mem_gb)

    # Manifests point at files that are not traits of their own; when this workflow is embedded in
    # a pipeline that keeps nipype's default remove_unnecessary_outputs=True, those files would be
    # deleted. Node-level config wins over the enclosing workflow's.
    for node in (build_design, compute_contrasts, fixed_effects):
        node.config = {"execution": {"remove_unnecessary_outputs": "false"}}

    wf.connect([
        (inputnode, load_events, [("events_files", "events_files")]),
        (inputnode, select_confounds, [("confounds_files", "confounds_file"), ("bold_files", "bold_file")]),
        (load_events, build_design, [("events_files", "events_file")]),
        (select_confounds, build_design, [("confounds_file", "confounds_file"), ("censor_file", "censor_file")]),
        (inputnode, build_design, [("bold_files", "bold_file"), ("design_files", "user_design_file"),
                                   ("events_files", "source_events")]),
        (inputnode, fit_glm, [("bold_files", "bold_file"), ("mask_files", "mask_file")]),
        (build_design, fit_glm, [("design_file", "design_file")]),
        (select_confounds, fit_glm, [("censor_file", "censor_file")]),
        # the fit says where its locations are (a GIfTI pair's kept vertices are known only once read)
        (fit_glm, compute_contrasts, [("fit_file", "fit_file"), ("mask_file", "mask_file")]),
        (compute_contrasts, fixed_effects, [("estimates_file", "estimates_files")]),
        (build_design, outputnode, [("design_file", "design_files")]),
        (fit_glm, outputnode, [("fit_file", "fit_files")]),
        (compute_contrasts, outputnode, [("manifest_file", "run_manifests")]),
        (fixed_effects, outputnode, [("manifest_file", "subject_manifest")]),
    ])

    single = resolve_single_trial(settings.get("single_trial"))
    single_trial = None
    if single is not None:
        spec_file = settings.get("_spec_file")
        single_trial = pe.MapNode(SingleTrial(
            tr=settings["tr"], hrf_model=settings["hrf_model"], noise_model=settings["noise_model"],
            smoothing_fwhm=settings["smoothing_fwhm"], condition_identifier=settings["condition_identifier"],
            conditions=settings["conditions"], drop_conditions=settings["drop_conditions"],
            modulators=settings["modulators"], single_trial=json.dumps(single, sort_keys=True),
            space=str(settings.get("space") or ""),
            spec_dir=os.path.dirname(str(spec_file)) if spec_file else ""),
            iterfield=["bold_file", "mask_file", "events_file", "source_events", "design_file", "censor_file"],
            name="single_trial", mem_gb=fit_mem_gb)
        wf.connect([
            (inputnode, single_trial, [("bold_files", "bold_file"), ("mask_files", "mask_file"),
                                       ("events_files", "source_events")]),
            (load_events, single_trial, [("events_files", "events_file")]),
            (build_design, single_trial, [("design_file", "design_file")]),
            (select_confounds, single_trial, [("censor_file", "censor_file")]),
            (single_trial, outputnode, [("manifest_file", "single_trial_manifests")]),
        ])

    if output_dir is not None:
        reported = {k: settings.get(k) for k in REPORTED_SETTINGS}
        if settings.get("_model"):
            # a BIDS Stats Model gives the designs: the spec's design keys did not shape them
            reported = {"model": settings["_spec_file"], **{k: settings.get(k) for k in MODEL_REPORTED_SETTINGS}}
        report = pe.Node(SubjectReport(contrasts=contrasts, settings=json.dumps(reported, default=str),
                                         cache_dir=str(report_cache or "")),
                         name="report", mem_gb=light_mem_gb)
        # One sink publishes everything once the subject has succeeded (the report drawn last). It always
        # runs (cheap: it copies only what differs) so that a deleted output is rewritten on the next run
        # even though every node before it is cached; one node rather than one per kind of file and run,
        # since nipype's bookkeeping of each rerun node cost more than the copying.
        sink = SubjectSink(out_dir=str(output_dir))
        if subject_output_dir:
            sink.inputs.subject_out_dir = str(subject_output_dir)
        if session_output_dir:
            sink.inputs.session_out_dir = str(session_output_dir)
        ds_outputs = pe.Node(sink, name="ds_outputs", overwrite=True)
        wf.connect([
            (build_design, report, [("manifest_file", "design_manifests")]),
            (select_confounds, report, [("confounds_file", "confounds_files"), ("censor_file", "censor_files")]),
            (fixed_effects, report, [("manifest_file", "subject_manifest")]),
            (fit_glm, report, [("mean_file", "mean_files")]),
            (inputnode, report, [("run_design_entities", "run_entities"), ("subject_entities", "subject_entities")]),
            (inputnode, ds_outputs, [("run_design_entities", "run_design_entities"),
                                     ("run_map_entities", "run_map_entities"),
                                     ("subject_entities", "subject_entities")]),
            (build_design, ds_outputs, [("manifest_file", "design_manifests")]),
            # a single run's contrast maps would take the subject-level names; its model maps (stat-rSquare,
            # stat-logLikelihood) have no subject-level twin and are published
            (compute_contrasts, ds_outputs, [("manifest_file" if publish_run_maps else "fit_manifest_file",
                                              "run_manifests")]),
            (fixed_effects, ds_outputs, [("manifest_file", "subject_manifest")]),
            (report, ds_outputs, [("manifest_file", "report_manifest")]),
            (ds_outputs, outputnode, [("out_files", "out_files")]),
        ])
        if session_output_dir:
            wf.connect(fixed_effects, "session_manifest_file", ds_outputs, "session_manifest")
        if single_trial is not None:
            wf.connect([
                (single_trial, ds_outputs, [("manifest_file", "single_trial_manifests")]),
                (single_trial, report, [("summary_file", "single_trial_files")]),
            ])
    # On SLURM/SGE each submitted node pays a job's scheduling and a Python start (seconds); nodes
    # that read only small tables or copy files run in the submitting process instead. The fit and
    # the contrasts, which read the BOLD run or the fitted model, go to the cluster.
    for node in wf._graph.nodes():
        if node.name not in SUBMITTED:
            node.run_without_submitting = True
    return wf
