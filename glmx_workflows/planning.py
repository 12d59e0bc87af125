"""From a spec entry and a dataset to a checked plan for one subject, before any work starts.

Everything that can be known without fitting is checked here (files, TR, events columns, confound
patterns, contrast regressors), so a bad spec fails in a second with one line instead of in a node.
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .core.errors import GlmxError
from .core.timing import resolve_tr as resolve_run_tr
from .io.bids import find_runs

# The modelling modules (nilearn, nibabel, pandas: seconds of imports) are imported where they are used:
# a rerun whose plans come from the state records never needs them.

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
    notes : list of str, optional
        What the plan leaves out and why (e.g. condition maps with user designs), for the run summary.
    conditions : list of str, optional
        The conditions found in the events (None with user designs), for :func:`with_contrasts`.
    task_regressors : list of str, optional
        Condition and modulator regressors of the designs, for :func:`with_contrasts`.
    """

    subject: str
    task: str
    settings: dict
    runs: list
    contrasts: dict
    design_files: list = field(default_factory=list)
    run_regressors: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    conditions: list = None
    task_regressors: tuple = ()

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
    task_tr = entry.get("tr")
    subject_tr = settings.get("tr")
    override = subject_tr if subject_tr is not None and subject_tr != task_tr else None
    return resolve_run_tr([run.tr for run in runs], spec_tr=task_tr, override_tr=override,
                          sources=[run.tr_source or run.bold for run in runs], spec_file=entry["_spec_file"],
                          spec_field=f"{entry['_task']}.tr")


@contextmanager
def _spec_setting(settings, key):
    """Name the spec file and key in an error that a spec value alone causes (``field == key``), so that a
    dataset run stops on it once (``Project.is_spec_error``) instead of failing every subject."""
    try:
        yield
    except GlmxError as exc:
        if exc.field != key or not settings.get("_spec_file"):
            raise
        raise GlmxError(f"{exc.message} (run {exc.file}); lower it, or set a per-subject value under 'overrides'",
                        file=settings["_spec_file"], field=f"{settings.get('_task', '')}.{key}") from None


def _checked_design(settings, run, events=None, user_design=None):
    """Build (or read) one run's design exactly as the workflow will, and refuse what it would refuse:
    confounds length and patterns, censoring leaving too few volumes, rank deficiency."""
    from .core.confounds import censor_table, check_confounds_rows, select_confounds
    from .core.design import run_design
    from .io.tables import read_tsv

    table = read_tsv(run.confounds, "confounds file")
    check_confounds_rows(table, run.n_scans, run.confounds, run.bold)
    with _spec_setting(settings, "dummy_scans"):
        keep = censor_table(table, run.n_scans, settings["dummy_scans"], settings["fd_threshold"],
                            source=run.confounds)["censored"].to_numpy() == 0
    confounds = design = None
    if user_design is not None:
        design = read_tsv(user_design, "design matrix")
    else:
        confounds = select_confounds(table, settings["confound_regressors"], settings["include_motion_outliers"],
                                     settings["non_steady_state"], source=run.confounds)
    design = run_design(run.n_scans, settings["tr"], keep, events, confounds, design, settings["hrf_model"],
                        settings["drift_model"], settings["high_pass"], settings["drift_order"],
                        events_source=run.events, design_source=user_design, bold=run.bold,
                        events_field=f"column '{settings['condition_identifier']}'")
    return design


def _check_single_trial(settings, runs, events, designs, spec_file, where):
    """Refuse single-trial models that cannot be estimated (before anything runs): user designs, an
    unknown trial-wise condition, too few trials, trials outside the run or wholly censored, LSA without
    enough volumes, an unreadable atlas."""
    from .core import single_trial as st
    from .core.confounds import censor_table
    from .core.events import conditions_of
    from .io.tables import read_tsv
    from .spec.keys import resolve_single_trial

    opts = resolve_single_trial(settings["single_trial"])
    if events is None:
        raise GlmxError("single-trial models are built from the events; they cannot use user design matrices",
                        file=spec_file, field=f"{where}.single_trial")
    if opts["conditions"] is not None:
        modelled = set().union(*(conditions_of(e, settings["modulators"]) for e in events))
        unknown = sorted(set(opts["conditions"]) - modelled)
        if unknown:
            raise GlmxError(f"condition '{unknown[0]}' is not modelled; modelled: {', '.join(sorted(modelled))}",
                            file=spec_file, field=f"{where}.single_trial.conditions")
    k = 1 + ("derivative" in settings["hrf_model"]) + ("dispersion" in settings["hrf_model"])
    for run, ev, design in zip(runs, events, designs):
        table = read_tsv(run.confounds, "confounds file")
        # the one censoring rule, as the main design's plan applies it
        keep = censor_table(table, run.n_scans, settings["dummy_scans"], settings["fd_threshold"],
                            source=run.confounds)["censored"].to_numpy() == 0
        trials, _ = st.trial_table(ev, settings["modulators"], opts["conditions"])
        nuisance = st.nuisance_columns(design, sorted(set(trials["trial_type"])), settings["modulators"])
        st.check_trials(trials, run.n_scans, settings["tr"], keep, opts["method"], nuisance.shape[1], k,
                        source=run.events)
    if opts["atlas"] is not None:
        from .io.atlases import load_atlas
        from .io.images import load_image

        try:
            load_atlas(opts["atlas"], load_image(runs[0].bold, "BOLD run"), runs[0].bold, space=runs[0].space,
                       base_dir=str(Path(spec_file).parent), mask_path=runs[0].mask)
        except GlmxError as exc:
            raise GlmxError(exc.message, file=exc.file or spec_file,
                            field=f"{where}.single_trial.{exc.field or 'atlas'}") from None


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
    if settings["condition_maps"]:
        for reg in sorted(task_regressors):
            if reg in contrasts:
                if contrasts[reg]["rows"] != [{reg: 1.0}]:
                    # the contrast would silently take the place of the condition's own map
                    raise GlmxError(f"contrast '{reg}' has the name of a condition, whose map condition_maps also "
                                    "writes; rename the contrast (or set condition_maps to false)", file=spec_file,
                                    field=f"{where}.design_contrasts.{reg}")
                continue
            contrasts[reg] = {"label": bids_label(reg), "rows": [{reg: 1.0}], "type": "t"}
    labels = {}
    for name, c in contrasts.items():
        if c["label"] in labels:
            raise GlmxError(f"contrasts '{labels[c['label']]}' and '{name}' both give the output label "
                            f"'{c['label']}'; rename one", file=spec_file, field=f"{where}.design_contrasts")
        labels[c["label"]] = name
    return contrasts


def check_name_lengths(contrasts, runs, spec_file, where):
    """Refuse a contrast whose output file names would be too long for the file system, before any fit.

    The longest names a contrast gives are its per-run maps (every entity of the run) and its group maps
    (the group contrast and inference method in ``desc``); each must pass
    :func:`glmx_workflows.io.derivatives.check_name_length`.

    Parameters
    ----------
    contrasts : dict
        From :func:`resolve_contrasts`.
    runs : list of glmx_workflows.io.bids.RunRecord
        The subject's runs.
    spec_file, where : str
        For messages.

    Raises
    ------
    GlmxError
        A contrast's longest output name is longer than the file system allows.
    """
    from .io.derivatives import bids_name, check_name_length

    run = max(runs, key=lambda r: len(bids_name({**r.entities(), "space": r.space, **_img_entities(r)}, "x", "")))
    base = {**run.entities(), "space": run.space, **_img_entities(run)}
    # group maps: no sub/ses/run, a desc of group contrast + method (room for 40 characters)
    group_base = {"task": run.task, "space": run.space, **_img_entities(run), "desc": "x" * 40}
    for name, c in contrasts.items():
        for ent in (base, group_base):
            check_name_length({**ent, "contrast": c["label"], "stat": "variance"}, "statmap", ".nii.gz",
                              f"contrast '{name}'", spec_file, f"{where}.design_contrasts")


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

    from .core.design import check_user_design
    from .io.tables import read_tsv, write_tsv

    if isinstance(designs, (str, Path)):
        designs = designs_from_dir(designs, runs)
    if len(designs) != len(runs):
        raise GlmxError(f"{len(designs)} design matrices given for {len(runs)} runs "
                        f"({', '.join(Path(r.bold).name for r in runs)})", field="design_matrices")
    paths = []
    for i, (design, run) in enumerate(zip(designs, runs)):
        if isinstance(design, pd.DataFrame):
            src = Path(work_dir) / "user_designs" / f"sub-{run.subject}_run-{run.run or i + 1}_design.tsv"
            check_user_design(design, run.n_scans, f"design_matrices[{i}]", run.bold)  # before writing it
            write_tsv(design, src)
        else:
            src = Path(design)
            check_user_design(read_tsv(src, "design matrix"), run.n_scans, src, run.bold)
        paths.append(os.path.abspath(src))  # the nodes run in their own folders
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
    design_files, notes = [], []
    if user_designs is not None:
        design_files = read_user_designs(user_designs, runs, work_dir)
        designs = [_checked_design(settings, r, user_design=p) for r, p in zip(runs, design_files)]
        conditions, task_regressors = None, set()
        if settings["condition_maps"]:
            task_regressors, why = _user_design_conditions(settings, runs, designs)
            notes += [why] if why else []
    else:
        frames = [read_tsv(r.events, "events file") for r in runs]
        drop = conditions_to_drop(frames, settings["condition_identifier"], settings["conditions"],
                                  settings["drop_conditions"])
        events = normalize_events(frames, [r.events for r in runs], settings["condition_identifier"],
                                  settings["modulators"], settings["block_identifier"], drop)
        designs = [_checked_design(settings, r, events=e) for r, e in zip(runs, events)]
        conditions = sorted(set().union(*(conditions_of(e, settings["modulators"]) for e in events)))
        task_regressors = set().union(*(regressor_names(e) for e in events))
    if settings.get("single_trial") is not None:
        _check_single_trial(settings, runs, None if user_designs is not None else events, designs, spec_file,
                            where)
    regressors = [set(d.columns) for d in designs]
    contrasts = resolve_contrasts(settings, conditions, regressors, spec_file, where,
                                  task_regressors, [] if user_designs is not None else [r.events for r in runs])
    if not contrasts:
        raise GlmxError("no contrast to compute (design_contrasts is empty and condition_maps is false)",
                        file=spec_file, field=f"{task}.design_contrasts")
    check_name_lengths(contrasts, runs, spec_file, where)
    return SubjectPlan(subject=subject, task=task, settings=settings, runs=runs, contrasts=contrasts,
                       design_files=design_files, run_regressors=[sorted(r) for r in regressors],
                       conditions=conditions, task_regressors=tuple(sorted(task_regressors)), notes=notes)


def without_contrasts(value):
    """A spec entry (or overrides) with every ``design_contrasts`` left out: what a plan depends on besides
    its contrasts, which :func:`with_contrasts` resolves again on a plan made for other contrasts.

    Parameters
    ----------
    value : object
        Dicts are copied without the key, at any depth; other values are returned as they are.

    Returns
    -------
    object
    """
    if isinstance(value, dict):
        return {k: without_contrasts(v) for k, v in value.items() if k != "design_contrasts"}
    return value


def with_contrasts(plan, settings):
    """``plan`` with the contrasts of ``settings`` (a contrast-only change of the spec needs no new plan).

    The contrasts are resolved and checked as :func:`plan_subject` does, from the conditions and
    regressors the plan recorded.

    Parameters
    ----------
    plan : SubjectPlan
        A plan made with the same settings except, maybe, ``design_contrasts``.
    settings : dict
        The subject's current settings.

    Returns
    -------
    SubjectPlan
        ``plan`` itself when its contrasts are already those of ``settings``, else a copy with new contrasts.

    Raises
    ------
    GlmxError
        As :func:`resolve_contrasts`; an empty contrast set.
    """
    from dataclasses import replace

    if plan.settings.get("design_contrasts") == settings.get("design_contrasts"):
        return plan
    spec_file, where = plan.settings["_spec_file"], f"{plan.task} (sub-{plan.subject})"
    new_settings = {**plan.settings, "design_contrasts": settings.get("design_contrasts")}
    events_files = [] if plan.design_files else [r.events for r in plan.runs]
    contrasts = resolve_contrasts(new_settings, plan.conditions, [set(r) for r in plan.run_regressors], spec_file,
                                  where, plan.task_regressors, events_files)
    if not contrasts:
        raise GlmxError("no contrast to compute (design_contrasts is empty and condition_maps is false)",
                        file=spec_file, field=f"{plan.task}.design_contrasts")
    check_name_lengths(contrasts, plan.runs, spec_file, where)
    out = replace(plan, settings=new_settings, contrasts=contrasts)
    out._fit_mem_gb = getattr(plan, "_fit_mem_gb", None)  # the runs are the same: no need to read them again
    return out


def _user_design_conditions(settings, runs, designs):
    """Condition maps with user designs: the events' condition (and modulator) regressors that are columns
    of the designs. Returns ``(regressors, None)``, or ``(set(), why)`` when there are none to write; an
    events error is raised (the workflow reads the events with user designs too)."""
    from .core.events import conditions_to_drop, normalize_events, regressor_names
    from .io.tables import read_tsv

    # the workflow's load_events node reads the events with user designs too: their errors are errors here
    frames = [read_tsv(r.events, "events file") for r in runs]
    drop = conditions_to_drop(frames, settings["condition_identifier"], settings["conditions"],
                              settings["drop_conditions"])
    events = normalize_events(frames, [r.events for r in runs], settings["condition_identifier"],
                              settings["modulators"], settings["block_identifier"], drop)
    named = set().union(*(regressor_names(e) for e in events))
    found = named & set().union(*(set(d.columns) for d in designs))
    if not found:
        return set(), (f"condition maps not written: no column of the design matrices is named after a condition "
                       f"of the events ({', '.join(sorted(named)) or 'none'}); name them in design_contrasts")
    return found, None


def plan_rest_subject(layout, entry, settings):
    """Check one subject of a connectivity task as its workflow will, before any node runs.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Layout of the raw dataset with the fmriprep derivatives.
    entry : dict
        The task's spec entry (``_task``, ``_spec_file``).
    settings : dict
        Subject settings from :func:`glmx_workflows.spec.model.subject_settings`.

    Returns
    -------
    list of glmx_workflows.io.bids.RestRun
        The subject's runs, each checked: mask on the BOLD grid, confounds rows, censoring leaving
        ``min_volumes``, the confound preset's columns, the atlas on the BOLD grid and in its space.

    Raises
    ------
    GlmxError
        Anything about the runs, TR, confounds or atlas that the workflow would refuse.
    """
    from .core.confounds import censor_table, check_confounds_rows
    from .core.connectivity import select_rest_confounds
    from .io.atlases import load_atlas
    from .io.bids import find_rest_runs
    from .io.images import load_image
    from .io.tables import read_tsv

    spec_tr, subject_tr = entry.get("tr"), settings["tr"]
    runs = find_rest_runs(layout, settings["_subject"], entry["_task"], settings["space"], spec_tr,
                          override_tr=subject_tr if subject_tr != spec_tr else None)
    for run in runs:
        _check_mask(run)
        table = read_tsv(run.confounds, "confounds file")
        check_confounds_rows(table, run.n_scans, run.confounds, run.bold)
        with _spec_setting(settings, "dummy_scans"):
            censor_table(table, run.n_scans, settings["dummy_scans"], settings["fd_threshold"],
                         settings["min_volumes"], source=run.confounds)
        select_rest_confounds(table, settings["confound_preset"], settings["confound_regressors"],
                              source=run.confounds)
    atlas = load_atlas(settings["atlas"], load_image(runs[0].bold, "BOLD run"), runs[0].bold, space=settings["space"],
                       base_dir=Path(settings["_spec_file"]).resolve().parent, mask_path=runs[0].mask)
    _check_seeds(settings, atlas, runs[0], entry)
    return runs


def _check_seeds(settings, atlas, run, entry):
    """A seed names a parcel of the atlas, or is MNI coordinates on an MNI volume (surfaces: parcels only)."""
    from .io.geometry import is_surface_file

    for name, value in sorted(settings["seeds"].items()):
        where = f"{entry['_task']}.seeds.{name}"
        if isinstance(value, str) and value not in atlas.names:
            raise GlmxError(f"seed '{name}' names parcel '{value}', which atlas '{atlas.name}' does not have (parcels: "
                            f"{', '.join(atlas.names[:8])}{', ...' if len(atlas.names) > 8 else ''})",
                            file=entry["_spec_file"], field=where)
        if not isinstance(value, str) and is_surface_file(run.bold):
            raise GlmxError(f"seed '{name}' is MNI coordinates but the runs are surfaces (space '{settings['space']}'); "
                            "on surfaces a seed names a parcel of the atlas ({\"PCC\": \"<parcel name>\"})",
                            file=entry["_spec_file"], field=where)
