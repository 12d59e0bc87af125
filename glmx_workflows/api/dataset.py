"""Dataset-wide utilities behind ``glmx validate`` and ``glmx init``."""

import json
from pathlib import Path

from ..core.confounds import match_patterns
from ..core.errors import GlmxError
from ..io.atomic import write_text
from ..io.bids import list_subjects, open_layout
from ..io.tables import read_tsv
from ..planning import plan_rest_subject, plan_subject
from ..spec.model import load_spec, normalize_subject, subject_settings, task_entry
from .base import default_spec_path

# Tried in order by `glmx init`; only patterns that match the dataset's confounds file are kept.
STARTER_CONFOUNDS = ["trans_?", "rot_?", "trans_?_derivative1", "rot_?_derivative1", "a_comp_cor_0[0-4]"]


def validate_dataset(bids_root, spec=None, derivatives=None, tasks=None, participant_label=None):
    """Run every check that needs no model fit, for every task and subject; collect all problems.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    spec : str or Path, optional
        Default ``bids_root/task_information.json``.
    derivatives : str or Path, optional
        fmriprep derivatives folder (found under ``bids_root/derivatives`` by default).
    tasks : list of str, optional
        Default: every task entry of the spec.
    participant_label : list of str, optional
        Default: every subject of the dataset not excluded.

    Returns
    -------
    checked : list of tuple
        ``(task, subject, summary)`` of each subject that passed (GLM and connectivity entries alike).
    problems : list of tuple
        ``(task or None, subject or None, one-line message)``.

    Raises
    ------
    GlmxError
        The spec file cannot be read or the dataset cannot be indexed (problems of entries and subjects are
        collected instead).
    """
    spec_path = Path(spec) if spec else default_spec_path(bids_root)
    invalid = []
    entries = load_spec(spec_path, problems=invalid)
    layout = open_layout(bids_root, derivatives)
    available = list_subjects(layout)
    checked, problems = [], [(task, None, exc.one_line()) for task, exc in invalid]
    invalid = {task for task, _ in invalid}
    wanted = [normalize_subject(s) for s in participant_label] if participant_label else available
    for sub in sorted(set(wanted) - set(available)):
        problems.append((None, sub, f"subject 'sub-{sub}' not found in the dataset"))
    for task in tasks or sorted(entries):
        if task in invalid:
            continue
        try:
            entry = task_entry(entries, task, spec_path)
        except GlmxError as exc:
            problems.append((task, None, exc.one_line()))
            continue
        if entry["analysis"] == "connectivity":
            from .rest import _check_connectivity

            try:
                _check_connectivity(entry, task, spec_path)
            except GlmxError as exc:
                problems.append((task, None, exc.one_line()))
                continue
        for sub in [s for s in wanted if s in available and s not in entry["excludes"]]:
            try:
                if entry["analysis"] == "connectivity":
                    runs = plan_rest_subject(layout, entry, subject_settings(entry, sub))
                    summary = f"{len(runs)} run(s), connectivity, TR {runs[0].tr:g} s"
                else:
                    plan = plan_subject(layout, entry, subject_settings(entry, sub))
                    summary = (f"{len(plan.runs)} run(s), {len(plan.contrasts)} contrast(s), "
                               f"TR {plan.settings['tr']:g} s")
            except GlmxError as exc:
                problems.append((task, sub, exc.one_line()))
            else:
                checked.append((task, sub, summary))
    return checked, problems


def _condition_column(events):
    if "trial_type" in events.columns:
        return "trial_type"
    for col in events.columns:
        if col not in ("onset", "duration") and events[col].dtype == object:
            return col
    return "trial_type"


def starter_spec(bids_root, derivatives=None):
    """A starter task_information.json (dict) with one entry per task found in the dataset.

    Tasks with events get conditions from the events' condition column and ``"default"`` contrasts; tasks
    without events get ``analysis: connectivity``. Only starter confound patterns that match the dataset's
    confounds file are kept.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    derivatives : str or Path, optional
        fmriprep derivatives folder.

    Returns
    -------
    dict
        ``{task: entry}``.

    Raises
    ------
    GlmxError
        The dataset cannot be indexed or has no task.
    """
    layout = open_layout(bids_root, derivatives)
    spec = {}
    for task in sorted(layout.get_tasks()):
        bolds = layout.get(task=task, suffix="bold", extension=[".nii.gz", ".nii"], scope="raw")
        events = layout.get(task=task, suffix="events", extension=".tsv", scope="raw", return_type="filename")
        confounds = layout.get(task=task, desc="confounds", suffix=["timeseries", "regressors"], extension=".tsv",
                               scope="derivatives", return_type="filename")
        trs = sorted({layout.get_metadata(b.path).get("RepetitionTime") for b in bolds} - {None})
        entry = {"description": f"starter entry written by 'glmx init' for task '{task}'; edit before use",
                 "tr": trs[0] if len(trs) == 1 else None}
        if not events:
            entry.update(analysis="connectivity")
        else:
            table = read_tsv(events[0], "events file")
            column = _condition_column(table)
            values = sorted({str(v) for f in events for v in read_tsv(f, "events file").get(column, []) if v == v})
            entry.update(condition_identifier=column, conditions=values, modulators=[], block_identifier=None,
                         design_contrasts="default")
        if confounds:
            header = list(read_tsv(confounds[0], "confounds file").columns)
            chosen = []
            for pattern in STARTER_CONFOUNDS:
                try:
                    match_patterns(header, [pattern])
                except GlmxError:
                    continue
                chosen.append(pattern)
            entry["confound_regressors"] = chosen
        entry.update(excludes=[], group_level_regressors=[])
        spec[task] = entry
    if not spec:
        raise GlmxError("no task found in the dataset", file=bids_root, field="task")
    return spec


def check_spec_path(path, bids_root, derivatives=None):
    """Refuse to write a spec file into an input, other than at its default place ``BIDS_DIR/task_information.json``.

    Parameters
    ----------
    path : str or Path
        Spec file to write.
    bids_root : str or Path
        The raw BIDS dataset.
    derivatives : str or Path, optional
        ``--derivatives`` (default: the fmriprep folder found under ``BIDS_DIR/derivatives``).

    Raises
    ------
    GlmxError
        ``path`` lies inside the raw dataset or an input derivatives folder, or is an input folder.
    """
    from ..engine.safety import input_conflict, input_folders

    path = Path(path)
    if path.resolve() == default_spec_path(bids_root).resolve():
        return
    # the spec's folder may contain an input (a spec beside the dataset); only the file's own place matters
    why = input_conflict(path, bids_root, input_folders(bids_root, derivatives)[1:])
    if why and not why.startswith(("contains", "holds")):
        raise GlmxError(f"refusing to write the spec here: {why}", file=path, field="--spec")


def write_starter_spec(bids_root, path=None, derivatives=None, force=False):
    """Write :func:`starter_spec` to ``path`` (default ``bids_root/task_information.json``); refuse to
    overwrite an existing file unless ``force``.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    path : str or Path, optional
        Spec file to write.
    derivatives : str or Path, optional
        fmriprep derivatives folder.
    force : bool, optional
        Overwrite an existing file.

    Returns
    -------
    path : Path
        The written file.
    spec : dict
        Its content.

    Raises
    ------
    GlmxError
        The file exists and ``force`` is false, or :func:`starter_spec` fails.
    """
    path = Path(path) if path else default_spec_path(bids_root)
    check_spec_path(path, bids_root, derivatives)
    if path.exists() and not force:
        raise GlmxError("spec file already exists; pass --force to overwrite it", file=path, field="--spec")
    spec = starter_spec(bids_root, derivatives)
    write_text(path, json.dumps(spec, indent=2) + "\n")
    return path, spec
