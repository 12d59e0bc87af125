"""``RestingState``: connectivity of one subject; ``RestingStateDataset``: of every subject;
``RestingStateGroup``: the group step over OUTPUT_DIR's subject matrices.

validate the spec (the entry must say ``"analysis": "connectivity"``) → find the runs with pybids → build
the workflow → run it on the engine (same plugins and cache as the GLMs).
"""

import re

from ..core.errors import GlmxError
from ..io.bids import RestRun, find_rest_runs, parse_space  # noqa: F401 -- re-exported
from ..io.derivatives import settle_group_outputs
from ..reports.index import build_index
from ..spec.model import normalize_subject, subject_settings
from ..workflows.rest import init_rest_group_wf, init_rest_wf
from .base import Project, writes
from ..engine.dataset import published_files, run_dataset
from .subject import select_subjects

def _check_connectivity(entry, task, spec_path):
    if entry.get("analysis") != "connectivity":
        raise GlmxError(f"task '{task}' is not a connectivity analysis; add \"analysis\": \"connectivity\" to its "
                        "entry", file=spec_path, field=f"{task}.analysis")
    for name in entry.get("seeds", {}):
        if not re.fullmatch(r"[A-Za-z0-9]+", name):
            raise GlmxError(f"seed name '{name}' must be letters and digits only (it becomes desc-{name})",
                            file=spec_path, field=f"{task}.seeds")


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
            Sorted by session and run (see :func:`find_rest_runs`), each checked as the workflow will
            (:func:`glmx_workflows.planning.plan_rest_subject`).
        """
        from ..planning import plan_rest_subject

        return plan_rest_subject(self.layout, self.entry, self.settings)

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

    @writes
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

    @writes
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
                if len(subjects) == 1 or self.is_spec_error(exc):
                    raise  # a spec error stops the run before any node: the same for every subject
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
        self.removed = []  # earlier group outputs the last run deleted

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
        from ..io.group_inputs import find_connectivity_outputs

        atlas = self.entry["atlas"]
        name = seg_label(PACKAGED[atlas]) if isinstance(atlas, str) else seg_label(atlas.get("name", "")) if \
            atlas.get("name") else None
        space, _ = parse_space(self.entry["space"])
        found, name = find_connectivity_outputs(self.output_dir, self.task, space, name)
        excluded = set(self.entry["excludes"])
        subjects = sorted(s for s, rec in found.items() if (rec["subject"] or rec["runs"]) and s not in excluded
                          and (not self.participant_label or s in self.participant_label))
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
            matrices.append(rec["subject"] or rec["runs"][0])
            series.append(rec["run_timeseries"] or rec["subject_timeseries"])
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

    @writes
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
            Files written. Earlier group outputs of the task that this run no longer produces are deleted
            (listed in ``self.removed``), as at the task group level.

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
        # the task group level's rule: what an earlier group run of the task published and this one no longer
        # does (another atlas or space, a group comparison no longer asked for) is deleted
        self.removed = settle_group_outputs(self.output_dir, self.task, {}, outputs)
        build_index(self.output_dir)  # the dataset index links the group outputs
        return outputs
