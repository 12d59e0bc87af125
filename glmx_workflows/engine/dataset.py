"""Running a dataset workflow (one sub-workflow per subject) and accounting for every subject: done, failed
(with the reason from its crash file), excluded, and the files it published."""

from pathlib import Path

from .. import __version__
from ..io.atomic import remove_stale_temporaries
from ..io.derivatives import settle_task_outputs, write_dataset_description, written_since
from .crashes import crash_reason, crash_subject
from .progress import Progress, count_nodes
from .run import check_plugin, configure, plugin_arguments, run


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
    from ..reports.index import write_index

    check_plugin(plugin)
    output_dir = Path(output_dir)
    skipped = dict(skipped or {})
    runs = wf is not None and wf._graph.number_of_nodes() > 0
    args = plugin_arguments(plugin, plugin_args, n_procs)
    if runs:
        configure(wf, work_dir, plugin=plugin)
        display = Progress(count_nodes(wf), stream="stderr" if progress else None)
        args.setdefault("status_callback", display)
    else:
        display = Progress(0, stream="stderr" if progress else None)
    if skipped and progress:
        print(f"[glmx] {len(skipped)} subject(s) unchanged since their last complete run: not run again",
              file=display.stream)
    remove_stale_temporaries(output_dir)
    write_dataset_description(output_dir, __version__, [bids_root])
    failed = dict(failed)
    outputs = []
    unit_outputs = {}
    if runs:
        outcome = run(wf, plugin, args)
        graph = outcome.graph
        # Graph plugins raise nothing when a job fails: the crash files are the record for all
        for crash in outcome.crashes:
            sub = crash_subject(crash, subjects, task)
            if sub is not None and sub not in failed:
                failed[sub] = (crash_reason(crash), crash)
        if graph is not None and not failed:
            outputs = published_files(graph)
        else:
            outputs = sorted(str(p) for p in output_dir.rglob("*") if p.is_file())
        # what each subject that completed in this run published (for its state record)
        for sub in subjects:
            unit = f"sub_{sub}_{task}"
            if sub in failed or sub in skipped or wf.get_node(unit) is None:
                continue
            # from the sinks' result files, each written in this run: a stale result (a node that did not
            # run although no crash file named its subject) never vouches for a subject
            files = _unit_outputs(wf, unit, outcome.start)
            if files:
                unit_outputs[sub] = files
    if skipped:
        outputs = sorted(set(outputs).union(*skipped.values()))
    if runs or not skipped:
        display.show(final=True)
    # files of the subjects' earlier runs that this run no longer produces go, before the index lists them
    removed = settle_task_outputs(output_dir, task, unit_outputs, skipped)
    outputs = sorted(set(outputs) - set(removed))
    # the kernel stamps files with a clock that may lag time.time() by a tick: a little slack
    written = written_since(outputs, outcome.start - 0.05) if runs else []
    report = RunReport([s for s in subjects if s not in failed], failed, excluded, outputs, written, removed)
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
        Files the subjects published under OUTPUT_DIR (written by this run or already up to date).
    written : iterable of str, optional
        The outputs this run wrote (default: all of them).
    removed : iterable of str, optional
        Earlier outputs deleted because the current spec no longer produces them.
    """

    def __init__(self, done=(), failed=None, excluded=(), outputs=(), written=None, removed=()):
        self.done = list(done)
        self.failed = dict(failed or {})
        self.excluded = list(excluded)
        self.outputs = list(outputs)
        self.written = list(outputs if written is None else written)  # the outputs this run (re)wrote
        self.removed = list(removed)  # earlier outputs the current spec no longer produces, deleted
        self.unit_outputs = {}  # {subject: files it published}, for subjects that ran in this run
        self.index = None  # OUTPUT_DIR/index.html once the run has written it
        self.notes = []  # what the plans left out and why (e.g. condition maps with user designs)

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
                 f"{len(self.written)} file(s) written" + (f", {len(self.removed)} outdated file(s) removed"
                                                          if self.removed else "")]
        for sub, (reason, crash) in sorted(self.failed.items()):
            lines.append(f"  sub-{sub} FAILED: {reason}" + (f" [crash file: {crash}]" if crash else ""))
        lines += [f"  note: {note}" for note in self.notes]
        if self.index:
            lines.append(f"reports: {self.index}")
        return "\n".join(lines)
