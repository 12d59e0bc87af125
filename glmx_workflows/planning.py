"""From a spec entry and a dataset to a checked plan for one subject, before any work starts.

Everything that can be known without fitting is checked here (files, TR, events columns, confound
patterns, contrast regressors), so a bad spec fails in a second with one line instead of in a node.
"""

from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import GlmxError
from .io.bids import find_runs

# The modelling modules (nilearn, nibabel, pandas: seconds of imports) are imported where they are used:
# a rerun whose plans come from the plan cache never needs them.

@dataclass
class SubjectPlan:
    """What the first-level workflow of one subject needs, all checked.

    Parameters
    ----------
    subject : str
        Subject label, without ``sub-``.
    task : str
        Task label.
    settings : dict
        Subject settings (spec defaults, task entry and overrides merged), with the resolved ``tr`` (s).
    runs : list of glmx_workflows.io.bids.RunRecord
        The subject's runs, in BIDS order.
    contrasts : dict
        ``{name: {'label': str, 'rows': list of dict, 'type': 't' or 'F'}}`` from :func:`resolve_contrasts`.
    design_files : list of str, optional
        User design matrix TSV paths, one per run; empty when the designs are built from the events.
    run_regressors : list of list of str, optional
        Sorted regressor names of each run's design.
    """

    subject: str
    task: str
    settings: dict
    runs: list
    contrasts: dict
    design_files: list = field(default_factory=list)
    run_regressors: list = field(default_factory=list)

    @property
    def multi_session(self):
        return len({r.session for r in self.runs}) > 1

    def subject_entities(self):
        """BIDS entities of the subject-level outputs.

        Returns
        -------
        dict
            ``sub``, ``task``, ``space`` (+ ``res``/``den``/``cohort`` from the space, and ``ses`` when all
            runs share one session).
        """
        first = self.runs[0]
        ent = {"sub": self.subject, "task": self.task, "space": first.space, **_img_entities(first)}
        if first.session and not self.multi_session:
            ent["ses"] = first.session
        return ent

    def run_map_entities(self):
        """BIDS entities of each run's maps.

        Returns
        -------
        list of dict
            One per run: the run's entities plus ``space`` (+ ``res``/``den``/``cohort``).
        """
        return [{**r.entities(), "space": r.space, **_img_entities(r)} for r in self.runs]

    def run_design_entities(self):
        """BIDS entities of each run's design outputs (no space: designs are not images).

        Returns
        -------
        list of dict
            One per run, from :meth:`RunRecord.entities`.
        """
        return [r.entities() for r in self.runs]

    def publish_run_maps(self):
        """Whether per-run maps are published: unless their names would collide with the subject-level ones.

        Returns
        -------
        bool
            True with several runs, or when the single run's entities differ from the subject's.
        """
        return self.run_map_entities()[0] != self.subject_entities() or len(self.runs) > 1

    def fit_mem_gb(self):
        """Memory of the largest run's fit, from its in-mask voxels and volumes (``io.fastread.fit_memory_gb``).

        Returns
        -------
        float
            Memory in GB to request for the ``fit_glm`` node.
        """
        if getattr(self, "_fit_mem_gb", None) is not None:  # reading every run's header and mask once is enough
            return self._fit_mem_gb
        from .io.fastread import fit_memory_gb  # scipy.ndimage: imported only when computed
        from .io.geometry import run_size

        worst = 0.0
        for r in self.runs:
            n_vox, n_scans = run_size(r.bold, r.mask)
            worst = max(worst, fit_memory_gb(n_vox, n_scans, smoothing=bool(self.settings.get("smoothing_fwhm")),
                                             estimator=self.settings.get("estimator", "glmx")))
        self._fit_mem_gb = worst
        return worst

    def workflow_inputs(self):
        """Values for the first-level workflow's ``inputnode``.

        Returns
        -------
        dict
            Per-run lists ``bold_files``, ``mask_files``, ``events_files``, ``confounds_files``,
            ``design_files`` (None per run without user designs), ``run_map_entities``,
            ``run_design_entities``, and the dict ``subject_entities``.
        """
        return {
            "bold_files": [r.bold for r in self.runs], "mask_files": [r.mask for r in self.runs],
            "events_files": [r.events for r in self.runs], "confounds_files": [r.confounds for r in self.runs],
            "design_files": list(self.design_files) or [None] * len(self.runs),
            "run_map_entities": self.run_map_entities(), "run_design_entities": self.run_design_entities(),
            "subject_entities": self.subject_entities(),
        }


def _img_entities(run):
    return {k: run.extra[k] for k in ("res", "den", "cohort") if k in run.extra}


def resolve_tr(settings, entry, runs):
    """The TR of the subject's runs.

    A task-level ``tr`` must agree with the sidecars (else an error naming both values and files); a
    subject-level ``tr`` (``overrides`` or a keyword argument) is an explicit correction and wins.

    Parameters
    ----------
    settings : dict
        Subject settings; ``settings['tr']`` is the subject-level TR (s) or None.
    entry : dict
        Task entry of the spec (``tr``, ``_spec_file``, ``_task``).
    runs : list of glmx_workflows.io.bids.RunRecord
        The subject's runs, with the sidecar TR (``tr``, s) and where it came from (``tr_source``).

    Returns
    -------
    float
        TR in seconds.

    Raises
    ------
    GlmxError
        No TR anywhere, the spec's TR disagrees with a sidecar, or the runs' TRs differ without an override.
    """
    spec_file = entry["_spec_file"]
    task_tr = entry.get("tr")
    subject_tr = settings.get("tr")
    overridden = subject_tr is not None and subject_tr != task_tr
    for run in runs:
        if run.tr is None and subject_tr is None:
            raise GlmxError("no RepetitionTime in the BOLD sidecars and no 'tr' in the spec", file=run.bold,
                            field="RepetitionTime")
        if run.tr is not None and task_tr is not None and not overridden and abs(run.tr - task_tr) > 1e-6:
            raise GlmxError(f"tr is {task_tr:g} s in the spec but RepetitionTime is {run.tr:g} s in {run.tr_source}; "
                            "fix one, or set a per-subject value under 'overrides'", file=spec_file,
                            field=f"{entry['_task']}.tr")
    trs = {run.tr for run in runs}
    if subject_tr is not None:
        return float(subject_tr)
    if len(trs) > 1:
        raise GlmxError(f"runs have different RepetitionTime values {sorted(trs)}; set 'tr' per subject under "
                        "'overrides'", file=runs[0].bold, field="RepetitionTime")
    return float(trs.pop())


def _checked_design(settings, run, events=None, user_design=None):
    """Build (or read) one run's design exactly as the workflow will, and refuse what it would refuse:
    confounds length and patterns, censoring leaving too few volumes, rank deficiency."""
    from .core.confounds import censor_run, select_confounds
    from .core.design import build_design, check_design
    from .core.events import check_events_fit_run
    from .io.tables import read_tsv

    table = read_tsv(run.confounds, "confounds file")
    if len(table) != run.n_scans:
        raise GlmxError(f"confounds file has {len(table)} rows but the BOLD run {run.bold} has {run.n_scans} "
                        "volumes; expected one row per volume", file=run.confounds, field="rows")
    keep, _ = censor_run(table, run.n_scans, settings["dummy_scans"], settings["fd_threshold"],
                         source=run.confounds)
    if user_design is not None:
        design = read_tsv(user_design, "design matrix")
    else:
        check_events_fit_run(events, run.n_scans, settings["tr"], run.events)
        confounds = select_confounds(table, settings["confound_regressors"], settings["include_motion_outliers"],
                                     settings["non_steady_state"], source=run.confounds)
        design = build_design(events, confounds, run.n_scans, settings["tr"], settings["hrf_model"],
                              settings["drift_model"], settings["high_pass"], settings["drift_order"])
    check_design(design.iloc[keep], source=run.bold)
    return design


def _check_mask(run):
    """The mask must be a non-empty 3D image on the BOLD's grid (surfaces: the density, the two hemispheres)."""
    from .io.geometry import check_run_locations

    check_run_locations(run.bold, run.mask, run.space, run.extra.get("den"))


def check_surface_settings(settings, spec_file, where):
    """What surfaces cannot do yet is refused before any work: smoothing (no geodesic smoothing here).

    Parameters
    ----------
    settings : dict
        Subject settings (``space``, ``smoothing_fwhm``).
    spec_file, where : str
        For the message.

    Raises
    ------
    GlmxError
        ``smoothing_fwhm`` set with a surface space.
    """
    from .io.bids import parse_space
    from .io.geometry import space_form

    form = space_form(parse_space(settings["space"])[0])
    if form != "volume" and settings.get("smoothing_fwhm"):
        raise GlmxError(f"smoothing_fwhm is {settings['smoothing_fwhm']:g} mm but space '{settings['space']}' is a "
                        "surface: glmx has no geodesic smoothing on meshes; set smoothing_fwhm to null (fMRIPrep's "
                        "CIFTI is usually already smoothed) or smooth the surfaces beforehand (e.g. Connectome "
                        "Workbench's -cifti-smoothing)", file=spec_file, field=f"{where}.smoothing_fwhm")


def resolve_contrasts(settings, conditions, regressors, spec_file, where, task_regressors=(), events_files=()):
    """Spec contrasts (+ condition maps) → ``{name: {'label', 'rows', 'type'}}``, checked.

    Parameters
    ----------
    settings : dict
        Subject settings.
    conditions : list of str
        Condition regressors (for 'default' and condition maps); None when the user gave designs.
    regressors : list of set of str
        Regressor names of each run.
    task_regressors : iterable of str
        Condition and modulator regressors (written as maps when ``condition_maps`` is true).
    spec_file, where : str
        For messages.
    events_files : list of path, optional
        The runs' events files, named when a contrast asks for a condition they do not have.

    Returns
    -------
    dict
        ``{name: {'label': BIDS label, 'rows': list of {regressor: weight}, 'type': 't' or 'F'}}``; an F
        contrast has one row per formula.

    Raises
    ------
    GlmxError
        'default' without events, a contrast naming unknown regressors or regressors no single run has
        together, or two contrasts with the same output label.
    """
    from .core.formula import bids_label, default_contrasts, parse_formula, unknown_regressors

    raw = settings["design_contrasts"]
    if raw == "default":
        if conditions is None:
            raise GlmxError("'default' contrasts need the events; give explicit design_contrasts when supplying "
                            "design matrices", file=spec_file, field=f"{where}.design_contrasts")
        raw = default_contrasts(conditions)
    contrasts = {}
    known = set().union(*regressors)
    for name, formula in raw.items():
        rows = formula if isinstance(formula, list) else [formula]
        weights = [parse_formula(r) for r in rows]
        missing = unknown_regressors(weights, known)
        if missing:
            source = ""
            if events_files and conditions is not None:
                # usually the events lack a condition, not the spec a typo: say where the conditions came from
                source = (f" (events {', '.join(Path(f).name for f in events_files)}, column "
                          f"'{settings['condition_identifier']}', give conditions: {', '.join(conditions)}; modulators: "
                          f"{', '.join(settings['modulators']) or 'none'})")
            raise GlmxError(f"contrast '{name}' names regressor(s) {', '.join(missing)} that the design will not "
                            f"have{source}; regressors: {', '.join(sorted(known))}", file=spec_file,
                            field=f"{where}.design_contrasts.{name}")
        if not any(all(set(w) <= regs for w in weights) for regs in regressors):
            raise GlmxError(f"contrast '{name}' needs regressors that no single run has together",
                            file=spec_file, field=f"{where}.design_contrasts.{name}")
        contrasts[name] = {"label": bids_label(name), "rows": weights,
                           "type": "F" if isinstance(formula, list) else "t"}
    if settings["condition_maps"] and conditions is not None:
        for reg in sorted(task_regressors):
            if reg in contrasts:
                continue
            contrasts[reg] = {"label": bids_label(reg), "rows": [{reg: 1.0}], "type": "t"}
    labels = {}
    for name, c in contrasts.items():
        if c["label"] in labels:
            raise GlmxError(f"contrasts '{labels[c['label']]}' and '{name}' both give the output label "
                            f"'{c['label']}'; rename one", file=spec_file, field=f"{where}.design_contrasts")
        labels[c["label"]] = name
    return contrasts


def designs_from_dir(design_dir, runs):
    """One ``..._run-<r>_design.tsv`` per run from a folder, matched on the run's entities.

    Parameters
    ----------
    design_dir : str or Path
        Folder holding the design TSVs, directly or under ``sub-<s>/``.
    runs : list of glmx_workflows.io.bids.RunRecord
        The subject's runs.

    Returns
    -------
    list of str
        One design TSV path per run.

    Raises
    ------
    GlmxError
        The folder does not exist or a run has no design file.
    """
    from .io.derivatives import bids_name

    design_dir = Path(design_dir)
    if not design_dir.is_dir():
        raise GlmxError("design folder not found", file=design_dir, field="--design-dir")
    files = []
    for run in runs:
        name = bids_name(run.entities(), "design", ".tsv")
        hits = [p for p in (design_dir / name, design_dir / f"sub-{run.subject}" / name) if p.is_file()]
        if not hits:
            raise GlmxError(f"no design file {name} for this run", file=design_dir, field="--design-dir")
        files.append(str(hits[0]))
    return files


def read_user_designs(designs, runs, work_dir):
    """User design matrices (DataFrames or TSV paths, one per run, or a folder) → TSV paths, rows checked.

    Parameters
    ----------
    designs : list of (pandas.DataFrame or path), or str or Path
        One design per run (rows = volumes, columns = regressors), or a folder for :func:`designs_from_dir`.
    runs : list of glmx_workflows.io.bids.RunRecord
        The subject's runs.
    work_dir : str or Path
        DataFrames are written to ``work_dir/user_designs/`` as TSV.

    Returns
    -------
    list of str
        One design TSV path per run.

    Raises
    ------
    GlmxError
        The number of designs differs from the number of runs, or a design's rows differ from the run's volumes.
    """
    import pandas as pd

    from .io.tables import read_tsv, write_tsv

    if isinstance(designs, (str, Path)):
        designs = designs_from_dir(designs, runs)
    if len(designs) != len(runs):
        raise GlmxError(f"{len(designs)} design matrices given for {len(runs)} runs "
                        f"({', '.join(Path(r.bold).name for r in runs)})", field="design_matrices")
    paths = []
    for i, (design, run) in enumerate(zip(designs, runs)):
        if isinstance(design, pd.DataFrame):
            path = Path(work_dir) / "user_designs" / f"sub-{run.subject}_run-{run.run or i + 1}_design.tsv"
            write_tsv(design, path)
            frame, src = design, path
        else:
            src = Path(design)
            frame = read_tsv(src, "design matrix")
        if len(frame) != run.n_scans:
            raise GlmxError(f"design matrix has {len(frame)} rows but the BOLD run {run.bold} has {run.n_scans} "
                            "volumes", file=src, field="rows")
        paths.append(str(src))
    return paths


def plan_subject(layout, entry, settings, user_designs=None, work_dir=None):
    """Check everything about one subject and return its plan.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Layout of the raw dataset with the fmriprep derivatives.
    entry : dict
        Task entry of the spec (for the task-level TR and messages).
    settings : dict
        Subject settings from :func:`glmx_workflows.spec.model.subject_settings`.
    user_designs : list, optional
        The user's design matrices, one per run.
    work_dir : str, optional
        Where DataFrame designs are written as TSV.

    Returns
    -------
    SubjectPlan
        The checked plan.

    Raises
    ------
    GlmxError
        Anything about the runs, TR, events, confounds, designs or contrasts that the fit would refuse.
    """
    from .core.events import conditions_of, conditions_to_drop, normalize_events, regressor_names
    from .io.tables import read_tsv

    subject, task = settings["_subject"], entry["_task"]
    spec_file = entry["_spec_file"]
    check_surface_settings(settings, spec_file, task)
    runs = find_runs(layout, subject, task, settings["space"])
    settings = dict(settings, tr=resolve_tr(settings, entry, runs))
    where = f"{task} (sub-{subject})"
    for run in runs:
        _check_mask(run)
    design_files = []
    if user_designs is not None:
        design_files = read_user_designs(user_designs, runs, work_dir)
        designs = [_checked_design(settings, r, user_design=p) for r, p in zip(runs, design_files)]
        conditions, task_regressors = None, set()
    else:
        frames = [read_tsv(r.events, "events file") for r in runs]
        drop = conditions_to_drop(frames, settings["condition_identifier"], settings["conditions"],
                                  settings["drop_conditions"])
        events = normalize_events(frames, [r.events for r in runs], settings["condition_identifier"],
                                  settings["modulators"], settings["block_identifier"], drop)
        designs = [_checked_design(settings, r, events=e) for r, e in zip(runs, events)]
        conditions = sorted(set().union(*(conditions_of(e, settings["modulators"]) for e in events)))
        task_regressors = set().union(*(regressor_names(e) for e in events))
    regressors = [set(d.columns) for d in designs]
    contrasts = resolve_contrasts(settings, conditions, regressors, spec_file, where,
                                  task_regressors, [] if user_designs is not None else [r.events for r in runs])
    if not contrasts:
        raise GlmxError("no contrast to compute (design_contrasts is empty and condition_maps is false)",
                        file=spec_file, field=f"{task}.design_contrasts")
    return SubjectPlan(subject=subject, task=task, settings=settings, runs=runs, contrasts=contrasts,
                       design_files=design_files, run_regressors=[sorted(r) for r in regressors])


def digest(material):
    """A stable hex digest of JSON-able material (dict keys sorted, other objects by ``str``).

    Parameters
    ----------
    material : object
        Nested dicts, lists, strings and numbers.

    Returns
    -------
    str
        SHA-256 hex digest.
    """
    import hashlib
    import json

    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


_CODE = None


def code_fingerprint():
    """What the package is: its version, the (name, size, mtime_ns) of its modules, and the versions of
    the libraries its plans and models depend on.

    Cached plans and subjects recorded as done are reused only with the same code: an edited module or
    an upgraded nilearn makes the next run plan and check again (nipype's node cache then decides what
    actually recomputes).

    Returns
    -------
    list
        JSON-able, equal between two processes running the same installation.
    """
    global _CODE
    if _CODE is None:
        import os
        from importlib import metadata

        from . import __version__

        pkg = Path(__file__).resolve().parent
        files = []
        for top, dirs, names in os.walk(pkg):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for name in sorted(names):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(top, name))
                    files.append((os.path.relpath(os.path.join(top, name), pkg), st.st_size, st.st_mtime_ns))
        libs = {}
        for dist in ("pybids", "nipype", "nilearn", "nibabel", "numpy", "pandas", "scipy"):
            try:
                libs[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                libs[dist] = None
        _CODE = [__version__, libs, files]
    return _CODE


class PlanCache:
    """Plans of one task's subjects, kept in the work directory between runs.

    Planning a subject queries pybids for each run and reads its events, confounds, mask and BOLD
    header to build and check the designs: about a second per subject. A rerun on an unchanged dataset
    reuses the plans instead. Each plan is stored with the key it was made under (see
    :func:`subject_plan_key`): the spec entry and options, the code, and the size and modification time
    of every file of the dataset the subject's plan could read; a different key (any file added,
    removed, rewritten or touched) plans the subject again. The subject list is kept the same way under
    a key covering the whole dataset.

    Parameters
    ----------
    path : str or Path
        The cache file (a pickle written atomically); missing or unreadable means empty.
    """

    FORMAT = 1

    def __init__(self, path):
        import pickle

        self.path = Path(path)
        self.changed = False
        data = None
        try:
            with open(self.path, "rb") as fh:
                data = pickle.load(fh)
        except Exception:  # missing, truncated, or written by other code: plan again
            data = None
        if not isinstance(data, dict) or data.get("format") != self.FORMAT:
            data = {"format": self.FORMAT, "dataset": None, "subjects": {}}
        self.data = data

    def subjects(self, key):
        """The cached ``(to_run, excluded)`` subject lists when made under ``key``, else None.

        Parameters
        ----------
        key : str
            The dataset key.

        Returns
        -------
        tuple of (list of str, list of str), or None
        """
        entry = self.data["dataset"]
        return (list(entry[1]), list(entry[2])) if entry and entry[0] == key else None

    def set_subjects(self, key, to_run, excluded):
        """Remember the subject lists under ``key``.

        Parameters
        ----------
        key : str
            The dataset key.
        to_run, excluded : list of str
            As from :func:`glmx_workflows.api.subject.select_subjects`.
        """
        self.data["dataset"] = (key, list(to_run), list(excluded))
        self.changed = True

    def plan(self, subject, key):
        """The cached plan of ``subject`` when made under ``key``, else None.

        Parameters
        ----------
        subject : str
            Label without 'sub-'.
        key : str
            The subject's plan key.

        Returns
        -------
        SubjectPlan or None
        """
        entry = self.data["subjects"].get(subject)
        return entry[1] if entry and entry[0] == key else None

    def set_plan(self, subject, key, plan):
        """Remember ``plan`` for ``subject`` under ``key``.

        Parameters
        ----------
        subject : str
            Label without 'sub-'.
        key : str
            The subject's plan key.
        plan : SubjectPlan
            A successful plan (failures are not cached: they are planned again each run).
        """
        self.data["subjects"][subject] = (key, plan)
        self.changed = True

    def save(self):
        """Write the cache (atomically) if anything changed; a failure to write is not an error.

        Returns
        -------
        bool
            True when written.
        """
        import pickle

        from .io.atomic import atomic_path

        if not self.changed:
            return False
        try:
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as fh:
                    pickle.dump(self.data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError:
            return False
        self.changed = False
        return True


def plan_keys(options, file_stats, subjects):
    """Keys of a dataset's subject list and of each subject's plan.

    Parameters
    ----------
    options : dict
        Everything besides the dataset's files that planning depends on: the spec entry, overrides,
        ``participant_label``, folders, the design folder's file stats, :func:`code_fingerprint`.
    file_stats : dict
        From :func:`glmx_workflows.io.bids.input_file_stats`: ``{'sub-<s>' or '': [(path, size, mtime_ns)]}``.
    subjects : iterable of str
        Labels (without 'sub-') whose plan keys are wanted.

    Returns
    -------
    dataset_key : str
        Covers every file: the subject list may depend on any of them.
    subject_keys : dict
        ``{subject: key}`` covering the files outside any subject folder (top-level sidecars, ...) and
        those of the subject's own folders, so that another subject's change leaves it valid.
    """
    common = file_stats.get("", [])
    dataset_key = digest(["dataset", options, file_stats])
    return dataset_key, {s: digest(["subject", s, options, common, file_stats.get(f"sub-{s}", [])])
                         for s in subjects}
