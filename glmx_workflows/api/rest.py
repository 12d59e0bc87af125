"""``RestingState``: connectivity of one subject; ``RestingStateDataset``: of every subject;
``RestingStateGroup``: the group step over OUTPUT_DIR's subject matrices.

validate the spec (the entry must say ``"analysis": "connectivity"``) → find the runs with pybids → build
the workflow → run it on the engine (same plugins and cache as the GLMs).
"""

import re
from dataclasses import dataclass

from ..core.errors import GlmxError
from ..io.bids import _one, _tr_from_metadata, parse_space
from ..reports.index import build_index
from ..spec.model import normalize_subject, subject_settings
from ..workflows.rest import init_rest_group_wf, init_rest_wf
from .base import Project
from .subject import check_output_dir, published_files, run_dataset, select_subjects

_RUN_ENTITIES = ("session", "task", "acquisition", "run", "echo")


@dataclass
class RestRun:
    """Files and facts of one preprocessed rest run.

    Parameters
    ----------
    bold : str
        Preprocessed BOLD run (4D NIfTI).
    mask : str
        Brain mask on the BOLD grid.
    confounds : str
        fmriprep confounds TSV of the run.
    tr : float
        Repetition time in seconds.
    entities : dict
        BIDS entities that tell the run apart (session, run).
    extra : dict
        Further entities kept in output names.
    """

    bold: str
    mask: str
    confounds: str
    tr: float
    entities: dict
    extra: dict


def _check_connectivity(entry, task, spec_path):
    if entry.get("analysis") != "connectivity":
        raise GlmxError(f"task '{task}' is not a connectivity analysis; add \"analysis\": \"connectivity\" to its "
                        "entry", file=spec_path, field=f"{task}.analysis")
    for name in entry.get("seeds", {}):
        if not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise GlmxError(f"seed name '{name}' must be letters and digits only (it becomes desc-{name})",
                            file=spec_path, field=f"{task}.seeds")


def find_rest_runs(layout, subject, task, space, tr=None):
    """Every preprocessed run of a subject for a connectivity task (no events needed).

    Parameters
    ----------
    layout : bids.BIDSLayout
        Layout of the raw dataset and its fmriprep derivatives.
    subject, task : str
        Subject label (without ``sub-``) and task name.
    space : str
        fmriprep space, optionally with modifiers.
    tr : float, optional
        The spec's TR (else the sidecar's).

    Returns
    -------
    list of RestRun
        Sorted by session and run.

    Raises
    ------
    GlmxError
        When the subject is unknown, no BOLD is found, a run misses its mask or confounds, the TR is
        unknown or disagrees with the sidecar, or the runs have different TRs.
    """
    from bids.layout import Query

    if subject not in layout.get_subjects():
        raise GlmxError(f"subject 'sub-{subject}' not found in the dataset", file=layout.root, field=f"sub-{subject}")
    from ..io.geometry import space_form

    space_name, extra = parse_space(space)
    cifti = space_form(space_name) == "cifti"  # fsLR: the dtseries, whose grayordinates are its own mask
    if space_form(space_name) == "gifti":
        raise GlmxError(f"connectivity on GIfTI pairs (space '{space}') is not available; use the fsLR CIFTI "
                        "outputs ('space': 'fsLR') with a .dlabel.nii atlas", field="space")
    bolds = layout.get(subject=subject, task=task, suffix="bold", space=space_name, scope="derivatives",
                       **({"extension": ".dtseries.nii"} if cifti else
                          {"desc": "preproc", "extension": [".nii.gz", ".nii"]}), **extra)
    if not bolds:
        raise GlmxError(f"no preprocessed BOLD for task '{task}' in space '{space}'", file=layout.root,
                        field=f"sub-{subject}")
    runs = []
    for bf in bolds:
        ent = bf.get_entities()
        run_ent = {k: ent[k] for k in _RUN_ENTITIES if k in ent}
        null = {k: Query.NONE for k in _RUN_ENTITIES if k not in run_ent}
        img_ent = {k: ent[k] for k in ("space", "res", "den", "cohort") if k in ent}
        mask = bf.path if cifti else _one(layout, "brain mask", bf.path, subject=subject, suffix="mask", desc="brain",
                                          extension=[".nii.gz", ".nii"], scope="derivatives", **run_ent, **img_ent,
                                          **null)
        confounds = _one(layout, "confounds", bf.path, subject=subject, desc="confounds",
                         suffix=["timeseries", "regressors"], extension=".tsv", scope="derivatives", **run_ent,
                         **null)
        for what, path in (("brain mask", mask), ("confounds", confounds)):
            if path is None:
                raise GlmxError(f"no {what} file for this run", file=bf.path, field=what)
        meta_tr, source = _tr_from_metadata(layout, bf.path, None)
        if cifti:  # the sidecar checked against the series axis (the axis when there is no sidecar)
            from ..io.bids import _cifti_tr

            meta_tr, source = _cifti_tr(bf.path, meta_tr, source)
        if tr is not None and meta_tr is not None and abs(float(tr) - meta_tr) > 1e-3:
            raise GlmxError(f"spec tr {tr} differs from RepetitionTime {meta_tr} of {source}", file=bf.path,
                            field="tr")
        use_tr = float(tr) if tr is not None else meta_tr
        if use_tr is None:
            raise GlmxError("no TR: set 'tr' in the spec or RepetitionTime in the sidecar", file=bf.path, field="tr")
        entities = {"ses": str(ent["session"]) if "session" in ent else None,
                    "run": str(ent["run"]) if "run" in ent else None}
        runs.append(RestRun(bold=bf.path, mask=mask, confounds=confounds, tr=use_tr,
                            entities={k: v for k, v in entities.items() if v is not None},
                            extra={k: str(ent[k]) for k in ("res", "den", "cohort") if k in ent}))
    runs.sort(key=lambda r: (r.entities.get("ses", ""), int(r.entities.get("run", "0"))
                             if r.entities.get("run", "0").isdigit() else 0, r.bold))
    if len({r.tr for r in runs}) > 1:
        raise GlmxError(f"runs have different TRs ({sorted({r.tr for r in runs})})", file=runs[0].bold, field="tr")
    return runs


class RestingState(Project):
    """Resting-state connectivity of one subject.

    Parameters
    ----------
    sub_id : str
        Subject label, with or without 'sub-'.
    task : str
        Task name (default 'rest'); its spec entry must say ``"analysis": "connectivity"``.
    bids_root : str or Path
        The raw BIDS dataset.
    spec : str or Path, optional
        task_information.json (default ``bids_root/task_information.json``).
    derivatives : str or Path, optional
        fmriprep derivatives folder.
    output_dir : str or Path, optional
        OUTPUT_DIR (default ``bids_root/derivatives/glmx``).
    work_dir : str or Path, optional
        Nipype work directory (default ``OUTPUT_DIR`` + ``_work``).
    **overrides
        Spec keys for this subject: ``atlas``, ``confound_preset``, ``fd_threshold``, ``band_pass``, ...
    """

    def __init__(self, sub_id, task="rest", bids_root=None, spec=None, derivatives=None, output_dir=None,
                 work_dir=None, **overrides):
        if bids_root is None:
            raise GlmxError("bids_root is required", field="bids_root")
        self.sub_id = normalize_subject(sub_id)
        super().__init__(task, bids_root, spec, derivatives, output_dir, work_dir)
        _check_connectivity(self.entry, task, self.spec_path)
        self.settings = subject_settings(self.entry, self.sub_id, **overrides)

    def runs(self):
        """The subject's runs (:class:`RestRun`).

        Returns
        -------
        list of RestRun
            Sorted by session and run (see :func:`find_rest_runs`).
        """
        return find_rest_runs(self.layout, self.sub_id, self.task, self.settings["space"], self.settings["tr"])

    def workflow(self, runs=None, output_dir=True):
        """Build the subject's workflow with its inputs set (not run).

        Parameters
        ----------
        runs : list of RestRun, optional
            Runs to analyse (default: :meth:`runs`).
        output_dir : bool
            False builds no sinks and no report (for embedding).

        Returns
        -------
        nipype.pipeline.engine.Workflow
            The subject's workflow (see :func:`glmx_workflows.workflows.rest.init_rest_wf`).
        """
        runs = runs or self.runs()
        space, _ = parse_space(self.settings["space"])
        base = {"sub": self.sub_id, "task": self.task, "space": space, **runs[0].extra}
        wf = init_rest_wf(self.settings, runs[0].tr, self.sub_id, self.task,
                          output_dir=str(self.output_dir.resolve()) if output_dir else None, base_entities=base,
                          name=f"sub_{self.sub_id}_{self.task}")
        node = wf.inputs.inputnode
        node.bold_files = [r.bold for r in runs]
        node.mask_files = [r.mask for r in runs]
        node.confounds_files = [r.confounds for r in runs]
        node.run_entities = [dict(r.entities) for r in runs]
        node.subject = self.sub_id
        return wf

    def run(self, plugin="MultiProc", plugin_args=None, n_procs=None):
        """Denoise, extract, compute the matrices and write them (and the report) under OUTPUT_DIR.

        Parameters
        ----------
        plugin : str
            Nipype plugin.
        plugin_args : dict, optional
            Nipype plugin arguments.
        n_procs : int, optional
            Processes for MultiProc (when ``plugin_args`` does not set ``n_procs``).

        Returns
        -------
        list of str
            Files written.

        Raises
        ------
        GlmxError
            When OUTPUT_DIR is not usable or a node fails (with the first crash's reason).
        """
        check_output_dir(self.output_dir, self.bids_root)
        return published_files(self._execute(self.workflow(), plugin, plugin_args, n_procs))


class RestingStateDataset(Project):
    """Connectivity of every subject of a task as one workflow (a failing subject does not stop the others).

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    task : str
        Task name (default 'rest'); its spec entry must say ``"analysis": "connectivity"``.
    spec, derivatives, output_dir, work_dir
        As for :class:`RestingState`.
    participant_label : list of str, optional
        Subjects to run (default: every subject not in ``excludes``).
    """

    def __init__(self, bids_root, task="rest", spec=None, derivatives=None, output_dir=None, work_dir=None,
                 participant_label=None):
        super().__init__(task, bids_root, spec, derivatives, output_dir, work_dir)
        self.participant_label = participant_label
        _check_connectivity(self.entry, task, self.spec_path)
        self.layout  # noqa: B018 -- index now: a dataset that cannot be indexed fails here, as before

    def subjects(self):
        """(subjects to run, subjects excluded by the spec).

        Returns
        -------
        tuple of (list of str, list of str)
            Subjects to run and subjects the spec's ``excludes`` removed.
        """
        return select_subjects(self.layout, self.participant_label, self.entry["excludes"], self.bids_root)

    def run(self, plugin="MultiProc", plugin_args=None, n_procs=None, progress=True):
        """Run every subject.

        Parameters
        ----------
        plugin : str
            Nipype plugin.
        plugin_args : dict, optional
            Nipype plugin arguments.
        n_procs : int, optional
            Processes for MultiProc (when ``plugin_args`` does not set ``n_procs``).
        progress : bool
            Show progress on stderr.

        Returns
        -------
        RunReport
            Per subject: done, failed (with reason and crash file) or excluded; a subject whose
            workflow cannot be built is reported failed.

        Raises
        ------
        GlmxError
            When OUTPUT_DIR is not usable, or the only subject's workflow cannot be built.
        """
        from nipype.pipeline import engine as pe

        check_output_dir(self.output_dir, self.bids_root)
        subjects, excluded = self.subjects()
        parent = pe.Workflow(name=f"glmx_{self.task}")
        failed = {}
        for sub in subjects:
            try:
                rs = RestingState(sub, self.task, self.bids_root, spec=self.spec_path, derivatives=self.derivatives,
                                  output_dir=self.output_dir, work_dir=self.work_dir)
                rs._layout = self.layout
                parent.add_nodes([rs.workflow()])
            except GlmxError as exc:
                if len(subjects) == 1:
                    raise
                failed[sub] = (exc.one_line(), None)
        report, self.progress = run_dataset(parent, subjects, excluded, failed, self.task, self.bids_root,
                                            self.output_dir, self.work_dir, plugin, plugin_args, n_procs, progress)
        return report


class RestingStateGroup(Project):
    """Group step of a connectivity task over OUTPUT_DIR's subject-level matrices.

    Parameters
    ----------
    task : str
        Connectivity task name.
    bids_root : str or Path
        The raw dataset (participants.tsv gives the groups).
    spec, output_dir, work_dir
        As for :class:`RestingState`.
    participant_label : list of str, optional
        Subjects to include (with or without ``sub-``; default: every subject with a matrix).
    """

    def __init__(self, task, bids_root, spec=None, output_dir=None, work_dir=None, participant_label=None):
        super().__init__(task, bids_root, spec, output_dir=output_dir, work_dir=work_dir)
        self.participant_label = [normalize_subject(s) for s in participant_label] if participant_label else None
        _check_connectivity(self.entry, task, self.spec_path)

    def inputs(self):
        """Subjects with a Pearson matrix, their matrices, time series and groups; and the atlas name.

        Returns
        -------
        dict
            ``subjects``, ``matrix_files``, ``timeseries_files`` (list per subject), ``groups`` (empty
            without ``connectivity_group_column``), ``atlas`` (seg label) and ``space``.

        Raises
        ------
        GlmxError
            When fewer than two subjects have a subject-level matrix, a subject has only per-run
            matrices, or the group column is missing or has no value for a subject.
        """
        from ..io.atlases import PACKAGED, seg_label

        atlas = self.entry["atlas"]
        name = seg_label(PACKAGED[atlas]) if isinstance(atlas, str) else seg_label(atlas.get("name", "")) if \
            atlas.get("name") else None
        space, _ = parse_space(self.entry["space"])
        pattern = f"sub-*/**/sub-*_task-{self.task}*_space-{space}*_seg-*_stat-pearsoncorrelation_relmat.tsv"
        found = {}
        for path in sorted(self.output_dir.glob(pattern)):
            ent = dict(part.split("-", 1) for part in path.name.split("_")[:-1] if "-" in part)
            if name and ent.get("seg") != name:
                continue
            name = name or ent.get("seg")
            found.setdefault(ent["sub"], {"runs": [], "subject": None})
            if "run" in ent:
                found[ent["sub"]]["runs"].append(path)
            else:
                found[ent["sub"]]["subject"] = path
        excluded = set(self.entry["excludes"])
        subjects = sorted(s for s in found if s not in excluded and (not self.participant_label or
                                                                     s in self.participant_label))
        if len(subjects) < 2:
            raise GlmxError(f"the group step needs subject-level stat-pearsoncorrelation matrices (connectivity_kinds) "
                            f"of at least two subjects; found {len(subjects)} under {self.output_dir} (run the "
                            "participant level first)",
                            file=self.output_dir, field=self.task)
        matrices, series = [], []
        for s in subjects:
            rec = found[s]
            if rec["subject"] is None and len(rec["runs"]) != 1:
                raise GlmxError(f"sub-{s} has per-run matrices but no subject-level one (run_combination "
                                "'separate'); the group step needs 'average' or 'concatenate'", file=self.output_dir)
            mat = rec["subject"] or rec["runs"][0]
            matrices.append(str(mat))
            ts = sorted(str(p) for p in mat.parent.glob(f"sub-{s}_task-{self.task}*_run-*_space-{space}*"
                                                        f"_seg-{name}_stat-mean_timeseries.tsv"))
            if not ts:
                ts = sorted(str(p) for p in mat.parent.glob(f"sub-{s}_task-{self.task}*_space-{space}*_seg-{name}"
                                                            "_stat-mean_timeseries.tsv"))
            series.append(ts)
        groups = []
        column = self.entry["connectivity_group_column"]
        if column:
            from ..io.group_inputs import read_participants

            table, source = read_participants(self.bids_root, required=True)
            if column not in table.columns:
                raise GlmxError(f"column '{column}' not in participants.tsv", file=source,
                                field="connectivity_group_column")
            lookup = {normalize_subject(p): v for p, v in zip(table["participant_id"], table[column])}
            missing = [s for s in subjects if s not in lookup or str(lookup[s]) in ("nan", "n/a", "")]
            if missing:
                raise GlmxError(f"no '{column}' value for {', '.join('sub-' + s for s in missing)}", file=source,
                                field="connectivity_group_column")
            groups = [str(lookup[s]) for s in subjects]
        return {"subjects": subjects, "matrix_files": matrices, "timeseries_files": series, "groups": groups,
                "atlas": name, "space": space}

    def run(self, plugin="MultiProc", plugin_args=None, n_procs=None):
        """Write the group matrices under ``OUTPUT_DIR/group``.

        Parameters
        ----------
        plugin : str
            Nipype plugin.
        plugin_args : dict, optional
            Nipype plugin arguments.
        n_procs : int, optional
            Processes for MultiProc (when ``plugin_args`` does not set ``n_procs``).

        Returns
        -------
        list of str
            Files written.

        Raises
        ------
        GlmxError
            As :meth:`inputs`, or when a node fails.
        """
        inputs = self.inputs()
        wf = init_rest_group_wf(self.task, inputs["atlas"], str((self.output_dir / "group").resolve()),
                                {"task": self.task, "space": inputs["space"]}, alpha=self.entry["group_alpha"],
                                name=f"group_{self.task}")
        for key in ("matrix_files", "timeseries_files", "subjects", "groups"):
            setattr(wf.inputs.inputnode, key, inputs[key])
        outputs = published_files(self._execute(wf, plugin, plugin_args, n_procs,
                                                publish_dir=self.output_dir / "group"))
        build_index(self.output_dir)  # the dataset index links the group outputs
        return outputs
