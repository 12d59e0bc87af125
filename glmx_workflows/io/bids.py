"""Finding a subject's runs in a BIDS dataset and its fmriprep derivatives, with pybids.

Everything is matched on BIDS entities (never on substrings of file names), so sessions,
zero-padded runs, ``res-``/``den-`` entities and single-run datasets all work.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import GlmxError
from ..core.timing import check_tr, same_tr
from .geometry import check_cifti_run, check_gifti_pair, space_form

_RUN_ENTITIES = ("session", "task", "acquisition", "run", "echo")


@dataclass
class RunRecord:
    """The files and facts of one preprocessed BOLD run.

    Parameters
    ----------
    subject : str
        Subject label, without ``sub-``.
    task : str
        Task label.
    bold : str
        Preprocessed BOLD image (4D NIfTI).
    mask : str
        fmriprep brain mask of the run, on the BOLD's grid.
    events : str
        Raw events TSV.
    confounds : str
        fmriprep confounds TSV.
    tr : float or None
        RepetitionTime (s) from the BOLD sidecars, None when absent.
    tr_source : str or None
        Sidecar the TR came from.
    n_scans : int
        Number of volumes.
    session, run : str, optional
        Session and run labels, None when the dataset has none.
    space : str, optional
        Space name without modifiers.
    extra : dict, optional
        ``res``/``den``/``cohort`` entities of the BOLD file.
    """

    subject: str
    task: str
    bold: str
    mask: str
    events: str
    confounds: str
    tr: float
    tr_source: str
    n_scans: int
    session: str = None
    run: str = None
    space: str = None
    extra: dict = field(default_factory=dict)

    def entities(self):
        """BIDS entities of the run for output names.

        Returns
        -------
        dict
            ``sub``, ``ses``, ``task``, ``run``, leaving out those that are None (no space: callers add it).
        """
        ent = {"sub": self.subject, "ses": self.session, "task": self.task, "run": self.run}
        return {k: v for k, v in ent.items() if v is not None}

    def to_dict(self):
        """The record as a plain dict (e.g. for JSON).

        Returns
        -------
        dict
            Every field by name.
        """
        return asdict(self)


def parse_space(space):
    """'MNI152NLin2009cAsym:res-2' → ('MNI152NLin2009cAsym', {'res': '2'}).

    Parameters
    ----------
    space : str
        fmriprep space, optionally with ``:res-``, ``:den-`` or ``:cohort-`` modifiers.

    Returns
    -------
    name : str
        The space name.
    extra : dict
        ``{'res'|'den'|'cohort': value}`` from the modifiers.

    Raises
    ------
    GlmxError
        A modifier is not one of res/den/cohort or has no value.
    """
    name, *mods = str(space).split(":")
    extra = {}
    for mod in mods:
        key, _, value = mod.partition("-")
        if key not in ("res", "den", "cohort") or not value:
            raise GlmxError(f"space modifier '{mod}' not understood; expected e.g. 'MNI152NLin2009cAsym:res-2'",
                            field="space")
        extra[key] = value  # pybids' derivatives entities are named res/den/cohort
    return name, extra


def _is_fmriprep(desc_file):
    try:
        desc = json.loads(Path(desc_file).read_text())
    except (OSError, ValueError):
        return False
    names = [g.get("Name", "") for g in desc.get("GeneratedBy", []) if isinstance(g, dict)]
    names.append(desc.get("PipelineDescription", {}).get("Name", ""))
    return any("fmriprep" in str(n).lower() for n in names)


def find_derivatives(bids_root, derivatives=None):
    """Folder of the fmriprep derivatives.

    Default ``BIDS_DIR/derivatives/fmriprep``, else any ``BIDS_DIR/derivatives/*`` whose
    dataset_description.json says fMRIPrep generated it.

    Parameters
    ----------
    bids_root : str or Path
        Raw BIDS dataset.
    derivatives : str or Path, optional
        Explicit derivatives folder (``--derivatives``); must exist and have a dataset_description.json.

    Returns
    -------
    Path
        The fmriprep derivatives folder.

    Raises
    ------
    GlmxError
        No such folder, or it has no dataset_description.json.
    """
    bids_root = Path(bids_root)
    if derivatives is not None:
        deriv = Path(derivatives)
        if not deriv.is_dir():
            raise GlmxError("fmriprep derivatives folder not found", file=deriv, field="--derivatives")
        if not (deriv / "dataset_description.json").is_file():
            raise GlmxError("fmriprep derivatives folder has no dataset_description.json", file=deriv,
                            field="--derivatives")
        return deriv
    default = bids_root / "derivatives" / "fmriprep"
    if (default / "dataset_description.json").is_file():
        return default
    for cand in sorted((bids_root / "derivatives").glob("*/dataset_description.json")):
        if _is_fmriprep(cand):
            return cand.parent
    if default.is_dir():
        raise GlmxError("fmriprep derivatives folder has no dataset_description.json", file=default,
                        field="derivatives")
    raise GlmxError("no fmriprep derivatives found (looked for derivatives/fmriprep and derivatives/* "
                    "generated by fMRIPrep); pass --derivatives DIR", file=bids_root / "derivatives")


def dataset_folders(bids_root, derivatives=None):
    """Check that ``bids_root`` is a BIDS dataset and find its fmriprep folder, without indexing.

    Parameters
    ----------
    bids_root : str or Path
        Raw BIDS dataset.
    derivatives : str or Path, optional
        fmriprep derivatives folder; found by :func:`find_derivatives` when None.

    Returns
    -------
    Path
        The fmriprep derivatives folder.

    Raises
    ------
    GlmxError
        Not a BIDS dataset, or no derivatives found.
    """
    bids_root = Path(bids_root)
    if not (bids_root / "dataset_description.json").is_file():
        raise GlmxError("not a BIDS dataset (no dataset_description.json)", file=bids_root, field="BIDS_DIR")
    return find_derivatives(bids_root, derivatives)


def open_layout(bids_root, derivatives=None):
    """A pybids layout of the raw dataset with the fmriprep derivatives attached.

    Parameters
    ----------
    bids_root : str or Path
        Raw BIDS dataset.
    derivatives : str or Path, optional
        fmriprep derivatives folder; found by :func:`find_derivatives` when None.

    Returns
    -------
    bids.BIDSLayout
        Unvalidated layout indexing both.

    Raises
    ------
    GlmxError
        Not a BIDS dataset, no derivatives found, or pybids cannot index it.
    """
    import bids

    bids_root = Path(bids_root)
    deriv = dataset_folders(bids_root, derivatives)
    try:
        return bids.BIDSLayout(str(bids_root), derivatives=[str(deriv)], validate=False)
    except Exception as exc:  # pybids raises BIDSValidationError, ValueError, ...
        import re

        # a sidecar that is not JSON (or not UTF-8): name that file, as every other input error does
        bad = re.search(r"filename='([^']+\.json)'", str(exc))
        if bad:
            raise GlmxError("sidecar is not valid JSON (or not UTF-8 text); pybids cannot index the dataset",
                            file=bad.group(1), field="JSON") from None
        raise GlmxError(f"pybids could not index the dataset ({exc})", file=bids_root) from None


def list_subjects(layout):
    """Subjects of the raw dataset (labels without 'sub-'), sorted.

    Parameters
    ----------
    layout : bids.BIDSLayout
        From :func:`open_layout`.

    Returns
    -------
    list of str
        Subject labels.
    """
    return sorted(layout.get_subjects(scope="raw"))


def _tr_from_metadata(layout, bold, raw_bold):
    """The sidecars' RepetitionTime of a run (s) and the sidecar it came from; (None, None) without one.
    A value that cannot be seconds (milliseconds, a typo) is an error naming the sidecar."""
    for path in (bold, raw_bold):
        if path:
            tr = layout.get_metadata(path).get("RepetitionTime")
            if tr is not None:
                # the sidecar that sets it: the run's own, or (BIDS inheritance) one at a higher level
                source = str(Path(path).with_name(Path(path).name.split(".")[0] + ".json"))
                if not _sets(source, "RepetitionTime"):
                    source = _metadata_source(layout, path, "RepetitionTime") or source
                return check_tr(tr, source, "RepetitionTime"), source
    return None, None


def _sets(sidecar, key):
    try:
        return key in json.loads(Path(sidecar).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _metadata_source(layout, path, key):
    """The sidecar (nearest first, as BIDS inheritance) that sets ``key`` for ``path``, or None."""
    try:
        sidecars = layout.get_nearest(path, extension=".json", all_=True,
                                      suffix=layout.get_file(path).entities.get("suffix")) or []
    except Exception:  # pybids versions differ; the message then names the run's own sidecar name
        return None
    return next((str(sidecar) for sidecar in sidecars if _sets(sidecar, key)), None)


class _Absent:
    """Stands for 'entity must be absent' in :func:`_select` (pybids' Query.NONE)."""


ABSENT = _Absent()


def _select(files, **query):
    """The ``(path, entities)`` pairs of ``files`` matching ``query`` as ``layout.get`` would: a value must
    equal the file's entity (a list: any of them), ``ABSENT`` requires the entity to be missing."""
    out = []
    for path, ent in files:
        for key, want in query.items():
            have = ent.get(key, ABSENT)
            if want is ABSENT:
                if have is not ABSENT:
                    break
            elif have is ABSENT or not (have in want if isinstance(want, list) else have == want):
                break
        else:
            out.append((path, ent))
    return out


def _only(hits, what, bold):
    if not hits:
        return None
    if len(hits) > 1:
        raise GlmxError(f"several {what} files match the run: {', '.join(Path(h).name for h, _ in hits)}",
                        file=bold, field=what)
    return hits[0][0]


def _hemisphere_pairs(bolds):
    """GIfTI runs as ``(left path, entities with '_right')``: each run needs both hemispheres."""
    by_run = {}
    for path, ent in bolds:
        key = tuple(sorted((k, str(v)) for k, v in ent.items() if k not in ("hemi", "extension")))
        by_run.setdefault(key, {})[str(ent.get("hemi"))] = (path, ent)
    pairs = []
    for hemis in by_run.values():
        for need, other in (("L", "R"), ("R", "L")):
            if need not in hemis:
                raise GlmxError(f"the run has no hemi-{need} file beside this hemi-{other} one", file=hemis[other][0],
                                field="hemi")
        left, ent = hemis["L"]
        pairs.append((left, {**ent, "_right": hemis["R"][0]}))
    return sorted(pairs, key=lambda p: p[0])


def _cifti_tr(bold, tr, tr_source):
    """The sidecar's TR checked against the dtseries' series axis (the axis when there is no sidecar)."""
    _, step = check_cifti_run(bold)
    if step is None:
        return tr, tr_source
    if tr is None:
        return step, str(bold)
    if not same_tr(step, tr):  # the one TR agreement rule (core.timing)
        raise GlmxError(f"RepetitionTime is {tr:g} s in {tr_source} but the series axis step is {step:g} s",
                        file=bold, field="RepetitionTime")
    return tr, tr_source


def find_runs(layout, subject, task, space="MNI152NLin2009cAsym", events=True):
    """Every preprocessed run of a subject and task, with its mask, events and confounds.

    The subject's files are fetched from the index once per scope (raw, derivatives) and matched on
    their entities here: a query per file kind and run cost pybids ~30 ms each, most of planning a
    subject.

    Parameters
    ----------
    layout : bids.BIDSLayout
        From :func:`open_layout`.
    subject : str
        Label without 'sub-'.
    task : str
        Task label.
    space : str
        fmriprep space, optionally with modifiers ('MNI152NLin2009cAsym:res-2').
    events : bool
        False for analyses without events (connectivity): a run needs none and ``events`` is None.

    Returns
    -------
    list of RunRecord
        Sorted by session and run (numerically).

    Raises
    ------
    GlmxError
        Unknown subject, no BOLD in the space, ambiguous BOLD files, a run without mask, events (when
        needed) or confounds, or a BOLD file cut short.
    """
    from .images import bold_length

    space_name, extra = parse_space(space)
    raw = [(f.path, f.get_entities()) for f in layout.get(subject=subject, scope="raw", return_type="object")]
    deriv = [(f.path, f.get_entities())
             for f in layout.get(subject=subject, scope="derivatives", return_type="object")]
    # no file of the subject anywhere: not in the dataset (layout.get_subjects() reads every file's entities)
    if not raw and not deriv:
        raise GlmxError(f"subject 'sub-{subject}' not found in the dataset "
                        f"(subjects: {', '.join('sub-' + s for s in list_subjects(layout)[:10])})",
                        file=layout.root, field=f"sub-{subject}")
    nifti = [".nii.gz", ".nii"]
    form = space_form(space_name)
    if form == "cifti":  # fMRIPrep: ..._space-fsLR_den-91k_bold.dtseries.nii (no desc)
        bolds = sorted(_select(deriv, task=task, suffix="bold", space=space_name, extension=".dtseries.nii",
                               **extra))
    elif form == "gifti":  # ..._hemi-L_space-fsaverage5_bold.func.gii: the left file stands for the pair
        bolds = sorted(_select(deriv, task=task, suffix="bold", space=space_name, extension=".func.gii", **extra))
        bolds = _hemisphere_pairs(bolds)
    else:
        bolds = sorted(_select(deriv, task=task, suffix="bold", desc="preproc", space=space_name, extension=nifti,
                               **extra))
    if not bolds:
        spaces = sorted({str(e["space"]) + (f":den-{e['den']}" if "den" in e else "")
                         for _, e in _select(deriv, task=task, suffix="bold") if "space" in e})
        raise GlmxError(f"no preprocessed BOLD for task '{task}' in space '{space}' "
                        f"(spaces found: {', '.join(spaces) or 'none'})", file=layout.root, field=f"sub-{subject}")
    seen = {}
    records = []
    for bold, ent in bolds:
        run_ent = {k: ent[k] for k in _RUN_ENTITIES if k in ent}
        key = tuple(sorted((k, str(v)) for k, v in run_ent.items()))
        if key in seen:
            raise GlmxError(f"several preprocessed BOLD files for one run: {Path(seen[key]).name}, {Path(bold).name}; "
                            "narrow 'space' with modifiers, e.g. 'MNI152NLin2009cAsym:res-2'", file=bold,
                            field="space")
        seen[key] = bold
        null = {k: ABSENT for k in _RUN_ENTITIES if k not in run_ent}
        img_ent = {k: ent[k] for k in ("space", "res", "den", "cohort") if k in ent}
        if form == "cifti":  # the grayordinates are the mask
            mask = bold
            check_cifti_run(bold, extra.get("den") or str(ent.get("den", "")) or None)
        elif form == "gifti":  # the right hemisphere travels where a volume's mask does
            mask = ent.pop("_right")
            check_gifti_pair(bold, mask, space_name)
        else:
            mask = _only(_select(deriv, suffix="mask", desc="brain", extension=nifti, **run_ent, **img_ent, **null),
                         "brain mask", bold)
        confounds = _only(_select(deriv, desc="confounds", suffix=["timeseries", "regressors"], extension=".tsv",
                                  **run_ent, **null), "confounds", bold)
        events_file = _only(_select(raw, suffix="events", extension=".tsv",
                                    **{k: v for k, v in run_ent.items() if k != "echo"},
                                    **{k: v for k, v in null.items() if k != "echo"}), "events", bold) \
            if events else None
        raw_bold = _only(_select(raw, suffix="bold", extension=nifti, **run_ent, **null), "raw bold", bold)
        for what, path in (("brain mask", mask), ("confounds", confounds)) + ((("events", events_file),) if events
                                                                              else ()):
            if path is None:
                raise GlmxError(f"no {what} file for this run", file=bold, field=what)
        tr, tr_source = _tr_from_metadata(layout, bold, raw_bold)
        if form == "cifti":
            tr, tr_source = _cifti_tr(bold, tr, tr_source)
        records.append(RunRecord(
            subject=subject, task=task, bold=bold, mask=mask, events=events_file, confounds=confounds,
            tr=tr, tr_source=tr_source, n_scans=bold_length(bold),
            session=str(ent["session"]) if "session" in ent else None,
            run=str(ent["run"]) if "run" in ent else None,
            # the file's own res/den/cohort name the outputs, whether or not 'space' asked for them
            space=space_name, extra={k: str(ent[k]) for k in ("res", "den", "cohort") if k in ent}))
    # numeric run order: 'run-2' before 'run-10' whether or not the labels are zero-padded
    return sorted(records, key=lambda r: (r.session or "", int(r.run) if (r.run or "").isdigit() else -1,
                                          r.run or "", r.bold))


@dataclass
class RestRun:
    """Files and facts of one preprocessed run of a connectivity analysis (no events).

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
        BIDS entities that tell the run apart (``ses``, ``run``).
    extra : dict
        Further entities kept in output names (``res``/``den``/``cohort``).
    n_scans : int, optional
        Volumes of the run.
    space : str, optional
        The space's name (``fsLR``, ``fsaverage5``, ``MNI152NLin2009cAsym``...): how the run is read.
    """

    bold: str
    mask: str
    confounds: str
    tr: float
    entities: dict
    extra: dict
    n_scans: int = None
    space: str = None


def find_rest_runs(layout, subject, task, space, tr=None, override_tr=None):
    """Every preprocessed run of a subject for a connectivity task, matched on entities as :func:`find_runs`
    (no events needed), with the TR every run is analysed at.

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
    override_tr : float, optional
        A subject-level TR correcting the sidecars (wins without comparison; see core.timing).

    Returns
    -------
    list of RestRun
        Sorted by session and run.

    Raises
    ------
    GlmxError
        As :func:`find_runs`; or the TR is unknown, disagrees with the sidecar, or differs between runs.
    """
    runs = []
    from ..core.timing import resolve_tr

    for rec in find_runs(layout, subject, task, space, events=False):
        # the one TR rule (core.timing), as the task GLM applies it
        use_tr = resolve_tr([rec.tr], spec_tr=tr, override_tr=override_tr, sources=[rec.tr_source or rec.bold])
        entities = {"ses": rec.session, "run": rec.run}
        runs.append(RestRun(bold=rec.bold, mask=rec.mask, confounds=rec.confounds, tr=use_tr,
                            entities={k: v for k, v in entities.items() if v is not None}, extra=dict(rec.extra),
                            n_scans=rec.n_scans, space=rec.space))
    resolve_tr([r.tr for r in runs], sources=[r.bold for r in runs])  # the runs must agree with each other
    return runs


# Top-level folders pybids leaves out of its index by default (validation.DEFAULT_LOCATIONS_TO_IGNORE);
# 'derivatives' is indexed only through the fmriprep folder attached to the layout.
_NOT_INDEXED = ("code", "models", "sourcedata", "stimuli", "derivatives")


def input_file_stats(bids_root, derivatives_dir, exclude=()):
    """(path, size, mtime_ns) of every file a layout of the dataset may index, grouped by subject.

    This is what a plan made from the layout can depend on: a file added, removed, rewritten or
    touched changes the result, so a cached plan keyed on it is reused only while the dataset is as
    it was. Walks the raw dataset (without ``code``, ``models``, ``sourcedata``, ``stimuli``,
    ``derivatives`` and dot-files, as pybids) and the fmriprep folder (same rules); one ``stat`` per
    file, no reading.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    derivatives_dir : str or Path
        The fmriprep derivatives folder attached to the layout.
    exclude : iterable of path, optional
        Files or folders left out (OUTPUT_DIR and the work directory when they lie inside, the spec).

    Returns
    -------
    dict
        ``{'sub-<s>': [(path, size, mtime_ns), ...], '': [...]}``: files under a top-level ``sub-<s>``
        folder of either tree by subject, every other file (sidecars at the top, participants.tsv, ...)
        under ``''``; each list sorted.
    """
    import os

    skip = {os.path.abspath(p) for p in exclude if p is not None}
    groups = {}
    for tree in (Path(bids_root), Path(derivatives_dir)):
        tree = os.path.abspath(tree)
        seen = set()
        for top, dirs, files in os.walk(tree, followlinks=True):
            real = os.path.realpath(top)
            if real in seen:  # a symlink loop
                dirs[:] = []
                continue
            seen.add(real)
            rel = os.path.relpath(top, tree)
            first = rel.split(os.sep)[0] if rel != "." else ""
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(top, d) not in skip
                             and not (top == tree and d in _NOT_INDEXED))
            group = first if first.startswith("sub-") else ""
            bucket = groups.setdefault(group, [])
            for name in files:
                path = os.path.join(top, name)
                if name.startswith(".") or path in skip:
                    continue
                try:
                    st = os.stat(path)
                except OSError:  # a dangling link (an annexed file not fetched): its absence is the fact
                    bucket.append((path, -1, -1))
                    continue
                bucket.append((path, st.st_size, st.st_mtime_ns))
    return {k: sorted(v) for k, v in groups.items()}
