"""The Python facades: validate → find inputs → build → run.

``Subject`` is the first level of one subject; ``Aggregator``, ``GroupLevel`` and ``RestingState``
follow the same shape.
"""

import os
from pathlib import Path

from ..core.errors import GlmxError
from ..engine.dataset import RunReport, published_files, run_dataset  # noqa: F401 -- RunReport: api's name
from ..io.derivatives import record_outputs
from ..spec.model import normalize_subject, subject_settings
from .base import Project, writes

# planning, the workflow builders and the reports import nilearn, nipype, pandas and matplotlib (seconds):
# they are imported where used, so that a rerun with nothing to do (see Aggregator.run) never loads them.


class Subject(Project):
    """First-level task GLM of one subject.

    Parameters
    ----------
    sub_id : str
        Subject label, with or without 'sub-'.
    task : str
        Task name (a key of the spec).
    bids_root : str or Path
        The raw BIDS dataset.
    spec : str or Path, optional
        task_information.json (default ``bids_root/task_information.json``).
    derivatives : str or Path, optional
        fmriprep derivatives folder (default ``bids_root/derivatives/fmriprep`` or any fmriprep
        dataset under ``bids_root/derivatives``).
    output_dir : str or Path, optional
        OUTPUT_DIR (default ``bids_root/derivatives/glmx``).
    work_dir : str or Path, optional
        Nipype work directory, where nodes are cached (default: ``OUTPUT_DIR`` + ``_work``).
    model : str or Path, optional
        A BIDS Stats Models file used instead of the spec (``task`` may then be None: the model's
        ``Input.task``); its nodes publish under ``OUTPUT_DIR/node-<name>/``.
    **overrides
        Spec keys for this subject only: ``tr``, ``dummy_scans``, ``conditions``,
        ``confound_regressors``, ``design_contrasts``, ``smoothing_fwhm``, ... .
    """

    def __init__(self, sub_id, task, bids_root, spec=None, derivatives=None, output_dir=None, work_dir=None,
                 model=None, **overrides):
        self.sub_id = normalize_subject(sub_id)
        super().__init__(task, bids_root, spec, derivatives, output_dir, work_dir, model=model)
        self.overrides = overrides
        self.settings = subject_settings(self.entry, self.sub_id, **overrides)

    def report_cache_dir(self):
        """Where the subject's report keeps its drawn parts: ``<work_dir>/report_parts/task-<t>_sub-<s>``.

        Returns
        -------
        Path
        """
        return self.work_dir / "report_parts" / f"task-{self.task}_sub-{self.sub_id}"

    def contrast_cache_dir(self):
        """Where the subject's contrast and fixed-effects nodes keep each contrast's maps (see
        :mod:`glmx_workflows.io.parts`): ``<work_dir>/contrast_parts/task-<t>_sub-<s>``.

        Returns
        -------
        Path
        """
        return self.work_dir / "contrast_parts" / f"task-{self.task}_sub-{self.sub_id}"

    def plan(self, design_matrices=None):
        """Check inputs and spec for this subject.

        Parameters
        ----------
        design_matrices : list or str or Path, optional
            User designs, one per run (DataFrame or TSV path), or a folder of them.

        Returns
        -------
        glmx_workflows.planning.SubjectPlan
            The checked plan.

        Raises
        ------
        GlmxError
            Anything about the inputs or the spec that the fit would refuse.
        """
        from ..planning import plan_subject

        if self.model is not None:
            from ..bsm import plan_model_subject

            if design_matrices is not None:
                raise GlmxError("a BIDS Stats Model gives the designs; design matrices cannot be passed too",
                                field="design_matrices")
            return plan_model_subject(self.layout, self.entry, self.settings, self.model_graph([self.sub_id]),
                                      self.work_dir)
        return plan_subject(self.layout, self.entry, self.settings, design_matrices, self.work_dir)

    def workflow(self, plan=None, name=None, output_dir=True):
        """Build the subject's Nipype workflow (inputs connected, not run).

        Parameters
        ----------
        plan : SubjectPlan, optional
            From :meth:`plan` (made if omitted).
        name : str, optional
            Workflow name (default ``sub_<label>_<task>``).
        output_dir : bool
            False builds no ``ds_*`` sinks (for embedding the workflow elsewhere).

        Returns
        -------
        nipype.pipeline.engine.Workflow
            The first-level workflow, its ``inputnode`` filled from the plan.
        """
        from ..workflows.first_level import init_first_level_wf

        plan = plan or self.plan()
        out, subject_out, publish_runs = self.output_dir.resolve(), None, plan.publish_run_maps()
        session_out = None
        if self.model is not None:  # fitlins' layout: OUTPUT_DIR/node-<name>/ per node of the model
            dirs = self.node_dirs()
            levels = {n["Level"]: dirs[n["Name"]].resolve() for n in self.model["Nodes"]}
            out, subject_out, publish_runs = levels["Run"], levels.get("Subject"), True
            session_out = levels.get("Session")
        wf = init_first_level_wf(plan.settings, plan.contrasts, output_dir=str(out) if output_dir else None,
                                 fit_mem_gb=plan.fit_mem_gb(), publish_run_maps=publish_runs,
                                 report_cache=str(self.report_cache_dir().resolve()),
                                 contrast_cache=str(self.contrast_cache_dir().resolve()),
                                 subject_output_dir=str(subject_out) if output_dir and subject_out else None,
                                 session_output_dir=str(session_out) if output_dir and session_out else None,
                                 name=name or f"sub_{self.sub_id}_{self.task}")
        for field, value in plan.workflow_inputs().items():
            setattr(wf.inputs.inputnode, field, value)
        return wf

    @writes
    def run(self, design_matrices=None, plugin="MultiProc", plugin_args=None, n_procs=None):
        """Fit the subject and write its maps under OUTPUT_DIR.

        Parameters
        ----------
        design_matrices : list, optional
            One design per run (DataFrame or TSV path) replacing the built designs; rows must equal
            the run's volumes.
        plugin : str
            Nipype plugin: Linear, MultiProc, SLURM, SLURMGraph, SGE, SGEGraph.
        plugin_args : dict, optional
            Passed to the plugin.
        n_procs : int, optional
            Processes for MultiProc (default: all cores).

        Returns
        -------
        list of str
            Paths of the files the subject published under OUTPUT_DIR; files an earlier run of the
            subject published and this one no longer produces are deleted (see
            :func:`glmx_workflows.io.derivatives.record_outputs`).

        Raises
        ------
        GlmxError
            A bad OUTPUT_DIR, spec or input (before anything runs).
        """
        plan = self.plan(design_matrices)
        files = published_files(self._execute(self.workflow(plan), plugin, plugin_args, n_procs))
        # what an earlier run of this subject wrote and the current spec no longer produces goes
        record_outputs(self.output_dir, f"task-{self.task}_sub-{self.sub_id}", files)
        return files


def select_subjects(layout, participant_label, excludes, bids_root):
    """Subjects of a dataset-level run.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Layout of the dataset.
    participant_label : list of str or None
        Requested subjects ('01' or 'sub-01'); None: every subject of the raw dataset.
    excludes : list of str
        The spec's ``excludes`` (labels without 'sub-').
    bids_root : path
        For messages.

    Returns
    -------
    to_run : list of str
        Labels to run, without 'sub-'.
    excluded : list of str
        Requested labels left out by ``excludes``.

    Raises
    ------
    GlmxError
        A requested subject is not in the dataset.
    """
    from ..io.bids import list_subjects

    available = list_subjects(layout)
    if participant_label:
        wanted = [normalize_subject(s) for s in participant_label]
        missing = [s for s in wanted if s not in available]
        if missing:
            raise GlmxError(f"subject(s) {', '.join('sub-' + s for s in missing)} not found in the dataset",
                            file=bids_root, field="--participant-label")
    else:
        wanted = available
    excluded = [s for s in wanted if s in excludes]
    return [s for s in wanted if s not in excluded], excluded


class Aggregator(Project):
    """First level of every subject of a task, as one workflow the engine fans out.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    task : str
        Task name (a key of the spec).
    spec, derivatives, output_dir, work_dir
        As for :class:`Subject`.
    participant_label : list of str, optional
        Subjects to run (default: every subject of the dataset not in ``excludes``).
    design_dir : str or Path, optional
        Folder of user design matrices (``..._run-<r>_design.tsv``).
    model : str or Path, optional
        A BIDS Stats Models file used instead of the spec (``task`` may then be None).
    **overrides
        Spec keys applied to every subject.
    """

    def __init__(self, bids_root, task=None, spec=None, derivatives=None, output_dir=None, work_dir=None,
                 participant_label=None, design_dir=None, model=None, **overrides):
        super().__init__(task, bids_root, spec, derivatives, output_dir, work_dir, model=model)
        if self.model is not None and design_dir is not None:
            raise GlmxError("a BIDS Stats Model gives the designs; --design-dir cannot be used with it",
                            field="--design-dir")
        self.participant_label = participant_label
        self.design_dir = design_dir
        self.overrides = overrides
        self._to_plan = None  # subjects whose plans are not cached (set by plans(); None: every subject)

    def subjects(self):
        """Subjects to run and subjects excluded by the spec.

        Returns
        -------
        to_run, excluded : list of str
            As for :func:`select_subjects`.
        """
        to_run, excluded = select_subjects(self.layout, self.participant_label, self.entry["excludes"], self.bids_root)
        if self.model is not None:
            from ..spec.bsm import model_subjects

            allowed = model_subjects(self.model)  # the model's Input.subject, when it names subjects
            if allowed is not None:
                to_run = [s for s in to_run if s in allowed]
        return to_run, excluded

    def _subject(self, sub):
        subj = Subject(sub, self.task, self.bids_root, spec=None if self.model else self.spec_path,
                       derivatives=self.derivatives, output_dir=self.output_dir, work_dir=self.work_dir,
                       model=self.model["_model_file"] if self.model else None, **self.overrides)
        # shared when already indexed; not indexed for a subject whose plan came from its state record
        subj._layout = self._layout
        if self.model is not None:
            subj._layout = self.layout
            # one walk of the model's graph for every subject to plan (pybids takes seconds per walk)
            subj.model_graph = lambda subjects=None: self.model_graph(self._to_plan)
        return subj

    def _unit_options(self, derivatives_dir):
        """Everything besides the dataset's files that a subject's results depend on (see UnitState)."""
        from ..engine.state import code_fingerprint, file_stats
        from ..planning import without_contrasts

        design = None
        if self.design_dir is not None:
            folder = Path(self.design_dir)
            design = (file_stats(sorted(p for p in folder.rglob("*") if p.is_file())) if folder.is_dir()
                      else str(folder))
            # a plan names the design files as found under the folder given: relative paths hold in one cwd only
            design = [os.getcwd() if not folder.is_absolute() else None, design]
        # paths as the user typed them differ between working directories; what they name does not
        entry = {**self.entry, "_spec_file": str(Path(self.entry["_spec_file"]).resolve())}
        # contrasts are resolved again on a cached plan (with_contrasts): a contrast-only change plans nothing
        entry, overrides = without_contrasts(entry), without_contrasts(self.overrides)
        return {"entry": entry, "overrides": overrides, "participant_label": self.participant_label,
                "bids_root": str(self.bids_root.resolve()), "derivatives": str(Path(derivatives_dir).resolve()),
                "output_dir": str(self.output_dir.resolve()), "work_dir": str(self.work_dir.resolve()),
                "design_dir": design, "code": code_fingerprint()}

    def _states(self):
        """Subjects, excluded subjects, and each subject's key and state record (no pybids index when the
        subject list is recorded under the current dataset key)."""
        from ..engine.state import SubjectList, UnitState, unit_keys
        from ..io.bids import dataset_folders, input_file_stats

        deriv = dataset_folders(self.bids_root, self.derivatives)
        stats = input_file_stats(self.bids_root, deriv, exclude=(self.output_dir, self.work_dir, self.spec_path))
        options = self._unit_options(deriv)
        name = f"glmx_{self.task}"
        dataset_key, _ = unit_keys(options, stats, ())
        listing = SubjectList(self.work_dir, name)
        listed = listing.get(dataset_key)
        if listed is None:
            listed = self.subjects()
            listing.set(dataset_key, *listed)
        to_run, excluded = listed
        _, keys = unit_keys(options, stats, to_run)
        states = {sub: UnitState(self.work_dir, name, f"sub_{sub}_{self.task}") for sub in to_run}
        return to_run, excluded, keys, states

    def plans(self, _states=None):
        """Subjects and their checked plans; a subject's plan comes from its state record while valid.

        A subject's record (see :mod:`glmx_workflows.engine.state`) is valid under the key of its input
        files (size and modification time of every file of the dataset its plan could read), the spec entry,
        options and code; a subject with any such change is planned again with pybids, the others are not
        (and with no change at all the dataset is not indexed).

        Parameters
        ----------
        _states : tuple, optional
            From ``_states()`` (made when omitted).

        Returns
        -------
        to_run, excluded : list of str
            As for :func:`select_subjects`.
        plans : dict
            ``{subject: SubjectPlan}`` of the subjects planned successfully.
        failures : dict
            ``{subject: (reason, None)}`` for subjects that failed planning.

        Raises
        ------
        GlmxError
            Not a BIDS dataset, a requested subject missing, planning failed and only one subject was
            asked for, or a subject's plan found an error in the spec file (see ``Project.is_spec_error``).
        """
        from ..planning import with_contrasts

        to_run, excluded, keys, states = _states or self._states()
        plans, failures = {}, {}
        self._to_plan = [s for s in to_run if states[s].plan(keys[s]) is None]
        if self.model is not None and self._to_plan:
            # a model's problems (a contrast on a missing regressor, an X entry matching nothing) are the
            # model's, not one subject's: they stop the run before anything is written
            self.model_graph(self._to_plan)
        for sub in to_run:
            plan = states[sub].plan(keys[sub])
            if plan is not None:
                # the spec as named in this invocation (the key has it resolved: the recorded plan may come
                # from another working directory)
                plan.settings = {**plan.settings, "_spec_file": self.entry["_spec_file"]}
                try:
                    resolved = with_contrasts(plan, subject_settings(self.entry, sub, **self.overrides))
                    if resolved is not plan:
                        states[sub].set_plan(keys[sub], resolved)
                        states[sub].save()
                        plan = resolved
                except GlmxError as exc:
                    if len(to_run) == 1 or self.is_spec_error(exc):
                        raise
                    failures[sub] = (exc.one_line(), None)
                    continue
            else:
                try:
                    subj = self._subject(sub)
                    subj._layout = self.layout  # indexed once for every subject planned
                    plan = subj.plan(self.design_dir)
                    plan.fit_mem_gb()  # reads the runs' headers and masks: kept with the plan
                except GlmxError as exc:
                    if len(to_run) == 1 or self.is_spec_error(exc):
                        raise  # a spec error stops the run before any node: the same for every subject
                    failures[sub] = (exc.one_line(), None)
                    continue
                states[sub].set_plan(keys[sub], plan)
                states[sub].save()
            plans[sub] = plan
        return to_run, excluded, plans, failures

    def _outputs_key(self, plan):
        """Key of a subject's outputs: its plan, the files its workflow reads, OUTPUT_DIR, the code."""
        from dataclasses import asdict

        from ..engine.state import code_fingerprint, digest, file_stats

        inputs = [f for r in plan.runs for f in (r.bold, r.mask, r.events, r.confounds)] + list(plan.design_files)
        inputs = [str(Path(f).resolve()) for f in inputs]
        material = asdict(plan)
        material["settings"]["_spec_file"] = str(Path(self.entry["_spec_file"]).resolve())
        material["design_files"] = [str(Path(f).resolve()) for f in plan.design_files]
        return digest(["outputs", self.task, material, file_stats(inputs), str(self.output_dir.resolve()),
                       plan.publish_run_maps(), plan.fit_mem_gb(), code_fingerprint()])

    def workflow(self):
        """Build the dataset workflow; a subject that fails planning is left out and reported.

        Returns
        -------
        workflow : nipype.pipeline.engine.Workflow
            ``glmx_<task>`` with one ``sub_<s>_<task>`` sub-workflow per planned subject.
        failures : dict
            ``{subject: (reason, None)}`` for subjects that failed planning.

        Raises
        ------
        GlmxError
            Planning failed and only one subject was asked for.
        """
        from nipype.pipeline import engine as pe

        _, _, plans, failures = self.plans()
        parent = pe.Workflow(name=f"glmx_{self.task}")
        for sub, plan in plans.items():
            parent.add_nodes([self._subject(sub).workflow(plan)])
        return parent, failures

    def read_folders(self):
        """The ``design_dir``, read as input (see :meth:`Project.writing`).

        Returns
        -------
        list of Path
        """
        return [Path(self.design_dir)] if self.design_dir is not None else []

    @writes  # the folders are checked and locked before a state record is written to the work dir
    def run(self, plugin="MultiProc", plugin_args=None, n_procs=None, progress=True):
        """Run every subject; a failing subject does not stop the others.

        A subject whose plan, input files (size and mtime), options and code are those of its last
        complete run, and whose published files are all unmodified, is not run again (see
        :class:`glmx_workflows.engine.state.UnitState`); every other subject goes through nipype, whose
        node cache recomputes only what changed.

        Parameters
        ----------
        plugin : str
            Nipype plugin (Linear, MultiProc, SLURM, SLURMGraph, SGE, SGEGraph).
        plugin_args : dict, optional
            Passed to the plugin (e.g. ``sbatch_args``, ``max_jobs``).
        n_procs : int, optional
            Processes for MultiProc.
        progress : bool
            Show done / running / pending nodes on stderr while it runs.

        Returns
        -------
        RunReport
            Subjects done, failed and excluded; files written.
        """
        states = self._states()
        subjects, excluded, plans, failed = self.plans(states)
        records = states[3]
        # A subject whose record is valid under its current key and whose published files are all still there
        # unmodified is not built into the workflow: nipype would only find every node cached. Anything else
        # goes through nipype, which reruns what changed.
        skipped, todo = {}, []
        for sub in plans:
            files = records[sub].outputs(self._outputs_key(plans[sub]))
            if files is None:
                records[sub].forget_outputs()  # a run killed half-way is never taken for a complete one
                todo.append(sub)
            else:
                skipped[sub] = files
        wf = None
        if todo:
            from nipype.pipeline import engine as pe

            wf = pe.Workflow(name=f"glmx_{self.task}")
            for sub in todo:
                wf.add_nodes([self._subject(sub).workflow(plans[sub])])
        report, self.progress = run_dataset(wf, subjects, excluded, failed, self.task, self.bids_root,
                                            self.output_dir, self.work_dir, plugin, plugin_args, n_procs, progress,
                                            skipped=skipped)
        for sub, files in report.unit_outputs.items():
            records[sub].set_outputs(self._outputs_key(plans[sub]), files)
        report.notes = [f"sub-{sub}: {note}" for sub, plan in sorted(plans.items()) for note in plan.notes]
        return report
