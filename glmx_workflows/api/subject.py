"""The Python facades: validate → find inputs → build → run.

``Subject`` is the first level of one subject; ``Aggregator``, ``GroupLevel`` and ``RestingState``
follow the same shape.
"""

import os
import tempfile
from pathlib import Path

from .. import __version__
from ..core.errors import GlmxError
from ..engine import configure, plugin_arguments
from ..io.atomic import remove_stale_temporaries
from ..io.derivatives import write_dataset_description
from ..spec.model import normalize_subject, subject_settings
from .base import Project

# planning, the workflow builders and the reports import nilearn, nipype, pandas and matplotlib (seconds):
# they are imported where used, so that a rerun with nothing to do (see Aggregator.run) never loads them.


def check_output_dir(output_dir, bids_root):
    """Refuse an OUTPUT_DIR inside the raw dataset (outside derivatives/) or one that cannot be written.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR; need not exist yet (its nearest existing parent is probed with a real write).
    bids_root : str or Path
        The raw BIDS dataset.

    Returns
    -------
    Path
        ``output_dir`` resolved.

    Raises
    ------
    GlmxError
        OUTPUT_DIR is the dataset or inside it outside ``derivatives/``, or is not writable.
    """
    out = Path(output_dir).resolve()
    root = Path(bids_root).resolve()
    if out == root or (root in out.parents and (root / "derivatives") not in [out, *out.parents]):
        raise GlmxError("output directory is inside the raw BIDS dataset; choose a folder outside it or under "
                        f"{root / 'derivatives'}", file=out, field="OUTPUT_DIR")
    probe = out
    while not probe.exists():
        probe = probe.parent
    # os.access says yes to root everywhere; only a real write answers (read-only mounts, /proc, quotas)
    try:
        if not probe.is_dir():
            raise OSError("not a directory")
        fd, tmp = tempfile.mkstemp(prefix=".glmx-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise GlmxError(f"output directory is not writable ({exc.strerror or exc})", file=probe,
                        field="OUTPUT_DIR") from None
    return out


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
        if self.model is not None:  # fitlins' layout: OUTPUT_DIR/node-<name>/ per node of the model
            dirs = list(self.node_dirs().values())
            out, subject_out, publish_runs = dirs[0].resolve(), (dirs[1].resolve() if len(dirs) > 1 else None), True
        wf = init_first_level_wf(plan.settings, plan.contrasts, output_dir=str(out) if output_dir else None,
                                 fit_mem_gb=plan.fit_mem_gb(), publish_run_maps=publish_runs,
                                 subject_output_dir=str(subject_out) if output_dir and subject_out else None,
                                 name=name or f"sub_{self.sub_id}_{self.task}")
        for field, value in plan.workflow_inputs().items():
            setattr(wf.inputs.inputnode, field, value)
        return wf

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
            Paths of the files written under OUTPUT_DIR.

        Raises
        ------
        GlmxError
            A bad OUTPUT_DIR, spec or input (before anything runs).
        """
        check_output_dir(self.output_dir, self.bids_root)
        plan = self.plan(design_matrices)
        return published_files(self._execute(self.workflow(plan), plugin, plugin_args, n_procs))


def published_files(graph, unit=None):
    """Files written by the ``ds_*`` nodes of an executed graph (sorted).

    Parameters
    ----------
    graph : networkx.DiGraph
        Executed graph of nipype nodes (from ``run_workflow``/``execute``).
    unit : str, optional
        Only the nodes of the sub-workflow of that name (e.g. ``sub_01_flanker``).

    Returns
    -------
    list of str
        Published paths, sorted.
    """
    out = []
    for node in graph.nodes():
        if unit is not None and unit not in node.fullname.split(".")[:-1]:
            continue
        if node.name.startswith("ds_") and node.result is not None and node.result.outputs is not None:
            files = node.result.outputs.out_files
            for item in files if isinstance(files, list) else [files]:
                out.extend(item if isinstance(item, list) else [item])
    return sorted(str(f) for f in out if f)


def _unit_outputs(wf, unit, since):
    """Files published by sub-workflow ``unit`` of ``wf`` in a run started at ``since``, from the sinks'
    result files; None unless every sink of the unit ran in that run."""
    from nipype.pipeline.engine.utils import load_resultfile

    sub_wf = wf.get_node(unit)
    if sub_wf is None:
        return None
    out = []
    for node in sub_wf._graph.nodes():
        if not node.name.startswith("ds_"):
            continue
        result_file = Path(wf.base_dir) / wf.name / unit / node.name / f"result_{node.name}.pklz"
        try:
            if result_file.stat().st_mtime < since:
                return None
            files = load_resultfile(str(result_file)).outputs.out_files
        except Exception:  # missing or unreadable: the unit is not known to be complete
            return None
        for item in files if isinstance(files, list) else [files]:
            out.extend(item if isinstance(item, list) else [item])
    return sorted(str(f) for f in out if f)


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


def run_dataset(wf, subjects, excluded, failed, task, bids_root, output_dir, work_dir, plugin="MultiProc",
                plugin_args=None, n_procs=None, progress=True, skipped=None):
    """Run a dataset workflow (one sub-workflow per subject) and account for every subject.

    Parameters
    ----------
    wf : nipype Workflow
        Sub-workflows named ``sub_<s>_<task>``.
    subjects, excluded : list of str
        Subjects in the workflow and subjects excluded by the spec (labels without 'sub-').
    failed : dict
        Subjects that already failed while planning: ``{sub: (reason, None)}``; completed here.
    task : str
        Task label (names the sub-workflows and the index).
    bids_root, output_dir, work_dir : path
        Raw dataset, OUTPUT_DIR and Nipype work directory.
    plugin, plugin_args, n_procs, progress
        As for :meth:`Aggregator.run`.
    skipped : dict, optional
        ``{sub: published files}`` of subjects left out of ``wf`` because nothing changed since their
        last complete run (counted as done, their files among the outputs). ``wf`` may then be None.

    Returns
    -------
    report : RunReport
        Subjects done, failed and excluded, files written, and the dataset index; ``unit_outputs``
        maps each subject that completed in ``wf`` to the files its sinks published.
    progress : engine.Progress
        The progress display, with the final node counts.

    Raises
    ------
    GlmxError
        Unknown plugin.
    """
    import time

    from ..engine import (PLUGINS, Progress, count_nodes, crash_files, crash_reason, crash_subject, execute,
                          new_crash_files)
    from ..reports.index import write_index

    if plugin not in PLUGINS:
        raise GlmxError(f"unknown plugin '{plugin}'; expected one of {', '.join(PLUGINS)}", field="--plugin")
    output_dir = Path(output_dir)
    skipped = dict(skipped or {})
    runs = wf is not None and wf._graph.number_of_nodes() > 0
    args = plugin_arguments(plugin, plugin_args, n_procs)
    if runs:
        crash_dir = configure(wf, work_dir, plugin=plugin)
        display = Progress(count_nodes(wf), stream="stderr" if progress else None)
        args.setdefault("status_callback", display)
    else:
        display = Progress(0, stream="stderr" if progress else None)
    if skipped and progress:
        print(f"[glmx] {len(skipped)} subject(s) unchanged since their last complete run: not run again",
              file=display.stream)
    remove_stale_temporaries(output_dir)
    write_dataset_description(output_dir, __version__, [bids_root])
    known = crash_files(crash_dir) if runs else {}
    start = time.time()
    failed = dict(failed)
    outputs = []
    unit_outputs = {}
    if runs:
        try:
            graph = execute(wf, plugin, args)
        except RuntimeError:
            graph = None
        # Graph plugins raise nothing when a job fails: the crash files are the record for all
        for crash in new_crash_files(crash_dir, start, known):
            sub = crash_subject(crash, subjects, task)
            if sub is not None and sub not in failed:
                failed[sub] = (crash_reason(crash), crash)
        if graph is not None and not failed:
            outputs = published_files(graph)
        else:
            outputs = sorted(str(p) for p in output_dir.rglob("*") if p.is_file())
        # what each subject that completed in this run published (for its done stamp)
        for sub in subjects:
            unit = f"sub_{sub}_{task}"
            if sub in failed or sub in skipped or wf.get_node(unit) is None:
                continue
            # from the sinks' result files, each written in this run: a stale result (a node that did not
            # run although no crash file named its subject) never vouches for a subject
            files = _unit_outputs(wf, unit, start)
            if files:
                unit_outputs[sub] = files
    if skipped:
        outputs = sorted(set(outputs).union(*skipped.values()))
    if runs or not skipped:
        display.show(final=True)
    report = RunReport([s for s in subjects if s not in failed], failed, excluded, outputs)
    report.unit_outputs = unit_outputs
    # the dataset index (OUTPUT_DIR/index.html) is rebuilt after every dataset run, GLM or connectivity
    report.index = write_index(output_dir, task, report.done, report.failed, report.excluded)
    return report, display


class RunReport:
    """What a dataset-level run did: subjects done, failed (with reason and crash file), excluded.

    Parameters
    ----------
    done : iterable of str, optional
        Subjects that completed.
    failed : dict, optional
        ``{subject: (reason, crash file or None)}``.
    excluded : iterable of str, optional
        Subjects left out by the spec's ``excludes``.
    outputs : iterable of str, optional
        Files written under OUTPUT_DIR.
    """

    def __init__(self, done=(), failed=None, excluded=(), outputs=()):
        self.done = list(done)
        self.failed = dict(failed or {})
        self.excluded = list(excluded)
        self.outputs = list(outputs)
        self.unit_outputs = {}  # {subject: files it published}, for subjects that ran in this run
        self.index = None  # OUTPUT_DIR/index.html once the run has written it

    @property
    def ok(self):
        """True when no subject failed."""
        return not self.failed

    def summary(self):
        """Human-readable lines: one per failed subject with its reason.

        Returns
        -------
        str
            A counts line, one line per failed subject, and the index path when written.
        """
        lines = [f"{len(self.done)} subject(s) done, {len(self.failed)} failed, {len(self.excluded)} excluded; "
                 f"{len(self.outputs)} file(s) written"]
        for sub, (reason, crash) in sorted(self.failed.items()):
            lines.append(f"  sub-{sub} FAILED: {reason}" + (f" [crash file: {crash}]" if crash else ""))
        if self.index:
            lines.append(f"reports: {self.index}")
        return "\n".join(lines)


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
        subj._layout = self.layout
        if self.model is not None:
            # one walk of the model's graph for every subject to plan (pybids takes seconds per walk)
            subj.model_graph = lambda subjects=None: self.model_graph(self._to_plan)
        return subj

    def _plan_options(self, derivatives_dir):
        """Everything besides the dataset's files that a plan depends on (see PlanCache)."""
        from ..engine import file_stats
        from ..planning import code_fingerprint

        design = None
        if self.design_dir is not None:
            folder = Path(self.design_dir)
            design = (file_stats(sorted(p for p in folder.rglob("*") if p.is_file())) if folder.is_dir()
                      else str(folder))
            # a plan names the design files as found under the folder given: relative paths hold in one cwd only
            design = [os.getcwd() if not folder.is_absolute() else None, design]
        # paths as the user typed them differ between working directories; what they name does not
        entry = {**self.entry, "_spec_file": str(Path(self.entry["_spec_file"]).resolve())}
        return {"entry": entry, "overrides": self.overrides, "participant_label": self.participant_label,
                "bids_root": str(self.bids_root.resolve()), "derivatives": str(Path(derivatives_dir).resolve()),
                "work_dir": str(self.work_dir.resolve()), "design_dir": design, "code": code_fingerprint()}

    def plans(self):
        """Subjects and their checked plans; unchanged subjects' plans come from the plan cache.

        The cache (``<work_dir>/glmx_state/task-<task>/plans.pkl``, see
        :class:`glmx_workflows.planning.PlanCache`) is keyed on the spec entry, options, code and the
        size and modification time of every file of the dataset a plan could read; a subject with any
        such change is planned again with pybids, the others are not (and with no change at all the
        dataset is not indexed).

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
            Not a BIDS dataset, a requested subject missing, or planning failed and only one subject was
            asked for.
        """
        from ..io.bids import dataset_folders, input_file_stats
        from ..planning import PlanCache, plan_keys

        deriv = dataset_folders(self.bids_root, self.derivatives)
        stats = input_file_stats(self.bids_root, deriv, exclude=(self.output_dir, self.work_dir, self.spec_path))
        options = self._plan_options(deriv)
        cache = PlanCache(self.work_dir / "glmx_state" / f"task-{self.task}" / "plans.pkl")
        dataset_key, _ = plan_keys(options, stats, ())
        listed = cache.subjects(dataset_key)
        if listed is None:
            listed = self.subjects()
            cache.set_subjects(dataset_key, *listed)
        to_run, excluded = listed
        _, keys = plan_keys(options, stats, to_run)
        plans, failures = {}, {}
        self._to_plan = [s for s in to_run if cache.plan(s, keys[s]) is None]
        if self.model is not None and self._to_plan:
            # a model's problems (a contrast on a missing regressor, an X entry matching nothing) are the
            # model's, not one subject's: they stop the run before anything is written
            self.model_graph(self._to_plan)
        for sub in to_run:
            plan = cache.plan(sub, keys[sub])
            if plan is not None:
                # the spec as named in this invocation (the key has it resolved: the cached plan may come from
                # another working directory)
                plan.settings = {**plan.settings, "_spec_file": self.entry["_spec_file"]}
            else:
                try:
                    plan = self._subject(sub).plan(self.design_dir)
                    plan.fit_mem_gb()  # reads the runs' headers and masks: kept with the plan
                except GlmxError as exc:
                    if len(to_run) == 1:
                        raise
                    failures[sub] = (exc.one_line(), None)
                    continue
                cache.set_plan(sub, keys[sub], plan)
            plans[sub] = plan
        cache.save()
        return to_run, excluded, plans, failures

    def _done_key(self, plan):
        """Key of a subject's done stamp: its plan, the files its workflow reads, the workflow's options."""
        from dataclasses import asdict

        from ..engine import file_stats
        from ..planning import code_fingerprint, digest

        inputs = [f for r in plan.runs for f in (r.bold, r.mask, r.events, r.confounds)] + list(plan.design_files)
        inputs = [str(Path(f).resolve()) for f in inputs]
        material = asdict(plan)
        material["settings"]["_spec_file"] = str(Path(self.entry["_spec_file"]).resolve())
        material["design_files"] = [str(Path(f).resolve()) for f in plan.design_files]
        return digest(["done", self.task, material, file_stats(inputs), str(self.output_dir.resolve()),
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

    def run(self, plugin="MultiProc", plugin_args=None, n_procs=None, progress=True):
        """Run every subject; a failing subject does not stop the others.

        A subject whose plan, input files (size and mtime), options and code are those of its last
        complete run, and whose published files are all unmodified, is not run again (see
        :func:`glmx_workflows.engine.read_done_stamp`); every other subject goes through nipype, whose
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
        from ..engine import done_stamp_path, forget_done_stamp, read_done_stamp, write_done_stamp

        check_output_dir(self.output_dir, self.bids_root)  # before the plan cache is written to the work dir
        subjects, excluded, plans, failed = self.plans()
        # A subject whose inputs, plan, options and code are those of its last complete run, and whose
        # published files are all still there unmodified, is not built into the workflow: nipype would
        # only find every node cached. Anything else goes through nipype, which reruns what changed.
        keys, skipped, todo = {}, {}, []
        for sub, plan in plans.items():
            keys[sub] = self._done_key(plan)
            stamp = done_stamp_path(self.work_dir, self.task, sub)
            files = read_done_stamp(stamp, keys[sub])
            if files is None:
                forget_done_stamp(stamp)
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
            write_done_stamp(done_stamp_path(self.work_dir, self.task, sub), keys[sub], files)
        return report
