"""Workflow builders for the group level: per first-level contrast, design → fit → contrasts → inference →
figures, then one HTML report per task."""

from nipype.interfaces.utility import IdentityInterface, Merge
from nipype.pipeline import engine as pe

from ..interfaces.group import (PARAMETRIC_METHODS, PERMUTATION_METHODS, BuildGroupDesign, ClusterTables,
                                ComputeGroupContrasts, FitGroup, GroupReport, LoadGroupMaps, PermuteGroup, PlotGroup,
                                ThresholdGroupMaps)
from ..interfaces.sink import DerivativesSink

INPUT_FIELDS = ["effect_files", "variance_files", "subjects", "conditions", "participants_file", "missing",
                "design_file"]
OUTPUT_FIELDS = ["maps_file", "section_file", "out_files"]


def init_group_contrast_wf(contrast, settings, z_threshold, output_dir=None, base_entities=None, name=None):
    """Group models of one first-level contrast.

    Parameters
    ----------
    contrast : str
        First-level contrast label (BIDS label of the subject maps).
    settings : dict
        Group keys of the spec: ``group_model``, ``group_design``, ``group_min_subjects``,
        ``group_level_regressors``, ``group_contrasts``, ``group_smoothing_fwhm``, ``group_inference``, ``group_alpha``, ``group_p_threshold``, ``group_cluster_extent``,
        ``group_n_permutations``, ``group_seed``.
    z_threshold : float
        Height in z for 'uncorrected', 'cluster' and the cluster tables.
    output_dir : str, optional
        ``OUTPUT_DIR/group``; None builds no sink (for embedding).
    base_entities : dict, optional
        Entities of every output (task, space, res/den).
    name : str, optional
        Workflow name (default ``contrast_<contrast>``).

    Returns
    -------
    nipype.pipeline.engine.Workflow
        Workflow with ``inputnode`` and ``outputnode`` (below); not run.

    Notes
    -----
    ``inputnode``: ``effect_files`` / ``variance_files`` (one per subject, variance may be None),
    ``subjects`` (labels, same order), ``conditions`` (the first-level contrast of each map, for a
    within-subject ``group_design``; else empty), ``participants_file`` (participants.tsv or None), ``missing``
    (subjects left out for lack of a map, for the report), ``design_file`` (None, or a design TSV used as
    is: a BIDS Stats Model's Dataset node).

    ``outputnode``: ``maps_file`` (JSON of group contrasts and their maps), ``section_file`` (the report
    section), ``out_files`` (published paths; empty without ``output_dir``).
    """
    wf = pe.Workflow(name=name or f"contrast_{contrast}")
    inputnode = pe.Node(IdentityInterface(fields=INPUT_FIELDS), name="inputnode")
    outputnode = pe.Node(IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")
    methods = list(settings["group_inference"])
    parametric = [m for m in methods if m in PARAMETRIC_METHODS]
    permutation = [m for m in methods if m in PERMUTATION_METHODS]

    model = settings.get("group_model", "ols")
    load_maps = pe.Node(LoadGroupMaps(smoothing_fwhm=settings["group_smoothing_fwhm"], model=model,
                                      min_subjects=settings.get("group_min_subjects")), name="load_maps")
    within = settings.get("group_design")
    build_design = pe.Node(BuildGroupDesign(regressors=list(settings["group_level_regressors"]),
                                            group_contrasts=dict(settings["group_contrasts"]), contrast=contrast,
                                            design_type=within["type"] if within else "between"),
                           name="build_design")
    mixed_test = settings.get("group_mixed_test") or "knapp-hartung"
    fit_group = pe.Node(FitGroup(model=model, mixed_test=mixed_test), name="fit_group")
    compute_contrasts = pe.Node(ComputeGroupContrasts(contrast=contrast), name="compute_contrasts")
    threshold_maps = pe.Node(ThresholdGroupMaps(
        contrast=contrast, methods=parametric, alpha=settings["group_alpha"], z_threshold=z_threshold,
        cluster_extent=settings["group_cluster_extent"], surface_meshes=settings.get("surface_meshes") or {}),
        name="threshold_maps")
    cluster_tables = pe.Node(ClusterTables(contrast=contrast, z_threshold=z_threshold,
                                           cluster_extent=settings["group_cluster_extent"],
                                           surface_meshes=settings.get("surface_meshes") or {}),
                             name="cluster_tables")
    plot_figures = pe.Node(PlotGroup(contrast=contrast, permutation_methods=permutation), name="plot_figures")
    n_inference = 2 if permutation else 1
    gather_inference = pe.Node(Merge(n_inference), name="gather_inference")
    for node in (build_design, compute_contrasts, threshold_maps, cluster_tables, plot_figures):
        # manifests point at files that are not traits of their own (see first_level.py)
        node.config = {"execution": {"remove_unnecessary_outputs": "false"}}

    wf.connect([
        (inputnode, load_maps, [("effect_files", "effect_files"), ("variance_files", "variance_files"),
                                ("subjects", "subjects")]),
        (inputnode, build_design, [("participants_file", "participants_file"), ("subjects", "subjects"),
                                   ("conditions", "conditions"), ("design_file", "user_design_file")]),
        (load_maps, fit_group, [("data_file", "data_file")]),
        (build_design, fit_group, [("design_file", "design_file")]),
        (fit_group, compute_contrasts, [("fit_file", "fit_file")]),
        (load_maps, compute_contrasts, [("data_file", "data_file")]),
        (build_design, compute_contrasts, [("contrasts_file", "contrasts_file")]),
        (compute_contrasts, threshold_maps, [("maps_file", "maps_file")]),
        (load_maps, threshold_maps, [("data_file", "data_file")]),
        (threshold_maps, gather_inference, [("inference_file", "in1")]),
        (gather_inference, cluster_tables, [("out", "inference_files")]),
        (compute_contrasts, cluster_tables, [("maps_file", "maps_file")]),
        (load_maps, cluster_tables, [("data_file", "data_file")]),
        (load_maps, plot_figures, [("data_file", "data_file")]),
        (build_design, plot_figures, [("design_file", "design_file")]),
        (compute_contrasts, plot_figures, [("maps_file", "maps_file")]),
        (gather_inference, plot_figures, [("out", "inference_files")]),
        (cluster_tables, plot_figures, [("tables_file", "tables_file")]),
        (inputnode, plot_figures, [("missing", "missing")]),
        (compute_contrasts, outputnode, [("maps_file", "maps_file")]),
        (plot_figures, outputnode, [("section_file", "section_file")]),
    ])
    if permutation:
        permute = pe.Node(PermuteGroup(contrast=contrast, methods=permutation,
                                       n_permutations=settings["group_n_permutations"], seed=settings["group_seed"],
                                       alpha=settings["group_alpha"], p_threshold=settings["group_p_threshold"],
                                       model=model, mixed_test=mixed_test,
                                       surface_meshes=settings.get("surface_meshes") or {}),
                          name="permute")
        permute.config = {"execution": {"remove_unnecessary_outputs": "false"}}
        wf.connect([
            (load_maps, permute, [("data_file", "data_file")]),
            (build_design, permute, [("design_file", "design_file")]),
            (compute_contrasts, permute, [("maps_file", "maps_file")]),
            (permute, gather_inference, [("inference_file", "in2")]),
        ])
    if output_dir is not None:
        sources = [(build_design, "manifest_file"), (compute_contrasts, "manifest_file"),
                   (threshold_maps, "manifest_file"), (cluster_tables, "manifest_file"),
                   (plot_figures, "manifest_file")]
        if permutation:
            sources.append((permute, "manifest_file"))
        gather_manifests = pe.Node(Merge(len(sources)), name="gather_manifests")
        for i, (node, field) in enumerate(sources, start=1):
            wf.connect(node, field, gather_manifests, f"in{i}")
        # sinks always run (they copy only what differs), so a deleted output is rewritten
        ds_group = pe.MapNode(DerivativesSink(out_dir=str(output_dir), entities=dict(base_entities or {})),
                              iterfield=["manifest_file"], name="ds_group", overwrite=True)
        wf.connect([
            (gather_manifests, ds_group, [("out", "manifest_file")]),
            (plot_figures, ds_group, [("section_file", "wait_for")]),
            (ds_group, outputnode, [("out_files", "out_files")]),
        ])
    return wf


def init_group_level_wf(task, contrasts, settings, z_threshold, output_dir=None, base_entities=None,
                        excluded=(), name=None):
    """Group level of a task: one sub-workflow per first-level contrast, then the HTML report.

    Parameters
    ----------
    task : str
        Task name.
    contrasts : list of str
        First-level contrast labels; each gets a sub-workflow ``contrast_<label>`` (see
        :func:`init_group_contrast_wf`) whose ``inputnode`` the caller fills.
    settings : dict
        Group keys of the spec (resolved).
    z_threshold : float
        Height in z.
    output_dir : str, optional
        ``OUTPUT_DIR/group``; None: no sinks and no report.
    base_entities : dict, optional
        task, space (and res/den) of every output.
    excluded : sequence of str
        Subjects excluded by the spec (listed in the report).
    name : str, optional
        Default ``group_<task>``.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        The task's group workflow; not run.
    """
    wf = pe.Workflow(name=name or f"group_{task}")
    subs = [init_group_contrast_wf(c, settings, z_threshold, output_dir, base_entities) for c in contrasts]
    wf.add_nodes(subs)
    if output_dir is None or not subs:
        return wf
    gather_sections = pe.Node(Merge(len(subs)), name="gather_sections")
    gather_published = pe.Node(Merge(len(subs)), name="gather_published")
    shown = {k: settings.get(k) for k in ("group_model", "group_mixed_test", "group_design", "group_min_subjects",
                                          "group_level_regressors", "group_contrasts", "group_smoothing_fwhm",
                                          "group_inference", "group_alpha", "group_p_threshold", "group_z_threshold",
                                          "group_cluster_extent", "group_n_permutations", "group_seed")}
    group_report = pe.Node(GroupReport(task=task, excluded=list(excluded), settings=shown), name="group_report")
    ds_report = pe.Node(DerivativesSink(out_dir=str(output_dir), entities={"task": task}), name="ds_report",
                        overwrite=True)
    for i, sub in enumerate(subs, start=1):
        wf.connect(sub, "outputnode.section_file", gather_sections, f"in{i}")
        wf.connect(sub, "outputnode.out_files", gather_published, f"in{i}")
    wf.connect([
        (gather_sections, group_report, [("out", "section_files")]),
        (gather_published, group_report, [("out", "wait_for")]),
        (group_report, ds_report, [("manifest_file", "manifest_file")]),
    ])
    return wf
