"""Inputs of the group level: the first level's subject-level maps in OUTPUT_DIR, and participants.tsv.

File names are parsed strictly as BIDS (``key-value`` entities joined by ``_``, then the suffix);
only subject-level maps (no ``run`` entity) with ``stat-effect`` / ``stat-variance`` of the task
and space are used.
"""

import re
from pathlib import Path

from ..core.errors import GlmxError
from .derivatives import current_subject_files

_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")


def parse_bids_name(path):
    """``sub-01_task-x_contrast-a_stat-z_statmap.nii.gz`` → (``{'sub': '01', ...}``, 'statmap', '.nii.gz').

    Returns None when the name is not a BIDS name (a part is not ``key-value``, or a key repeats).

    Parameters
    ----------
    path : str or Path
        File path; only its name is parsed.

    Returns
    -------
    tuple of (dict, str, str) or None
        Entities in name order, suffix, and extension (``.nii.gz`` kept whole); None when the name
        is not a BIDS name.
    """
    from .derivatives import extension_of

    name = Path(path).name
    ext = extension_of(name)
    stem = name[: len(name) - len(ext)]
    *parts, suffix = stem.split("_")
    entities = {}
    for part in parts:
        match = _ENTITY.match(part)
        if not match or match.group(1) in entities:
            return None
        entities[match.group(1)] = match.group(2)
    return entities, suffix, ext


def find_subject_maps(output_dir, task, space=None, space_extra=None):
    """The first level's subject-level effect and variance maps, per contrast and subject.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the first level.
    task : str
        Task whose maps are collected.
    space : str, optional
        Space entity to keep (default: every space; more than one found is an error).
    space_extra : dict, optional
        ``{'res': '2', 'den': ...}`` entities the maps must also carry.

    Returns
    -------
    dict
        ``{contrast: {subject: {'effect': path, 'variance': path or None}}}`` (sorted), and under the
        key ``None`` the entities shared by the maps (``space`` and any ``res``/``den``). Of a subject
        whose outputs are recorded (:func:`glmx_workflows.io.derivatives.record_outputs`), only the maps
        its latest run produced.

    Raises
    ------
    GlmxError
        No maps at all, maps in several spaces, or several maps of one subject and contrast (sessions).
    """
    root = Path(output_dir)
    if not root.is_dir():
        raise GlmxError("output directory of the first level not found", file=root, field="OUTPUT_DIR")
    found = {}
    spaces = set()
    current = {}
    # volumes, CIFTI dense scalars, and GIfTI pairs (the hemi-L file stands for its pair, as between nodes)
    candidates = [p for pattern in ("*_statmap.nii.gz", "*_statmap.dscalar.nii", "*_hemi-L_*_statmap.func.gii")
                  for p in root.resolve().glob(f"sub-*/**/{pattern}")]
    for path in sorted(candidates):
        parsed = parse_bids_name(path)
        if parsed is None:
            continue
        ent, suffix, _ = parsed
        ent.pop("hemi", None)
        if ent.get("task") != task or "run" in ent or ent.get("stat") not in ("effect", "variance") \
                or "contrast" not in ent or "sub" not in ent:
            continue
        if ent["sub"] not in current:
            current[ent["sub"]] = current_subject_files(root, task, ent["sub"])
        if current[ent["sub"]] is not None and str(path) not in current[ent["sub"]]:
            continue  # left by an earlier run of the subject, not produced by its latest one
        if space is not None and ent.get("space") != space:
            continue
        if any(ent.get(k) != v for k, v in (space_extra or {}).items()):
            continue
        shared = tuple((k, ent[k]) for k in ("space", "res", "den") if k in ent)
        spaces.add(shared)
        key = (ent["contrast"], ent["sub"], ent["stat"])
        if key in found:
            raise GlmxError(f"sub-{ent['sub']} has more than one subject-level stat-{ent['stat']} map for contrast "
                            f"'{ent['contrast']}' ({Path(found[key]).name} and {path.name}); the group level "
                            "takes one map per subject (sessions are not combined)", file=path)
        found[key] = str(path)
    if not found:
        raise GlmxError(f"no subject-level stat-effect maps of task '{task}'"
                        + (f" in space '{space}'" if space else "")
                        + "; run the participant level first ('glmx BIDS_DIR OUTPUT_DIR participant --task T')",
                        file=root)
    if len(spaces) > 1:
        raise GlmxError("subject-level maps in several spaces (" + "; ".join(
            " ".join(f"{k}-{v}" for k, v in s) for s in sorted(spaces)) + "); set 'space' in the spec", file=root)
    out = {}
    for (contrast, sub, stat), path in found.items():
        if stat == "effect":
            out.setdefault(contrast, {})[sub] = {"effect": path,
                                                 "variance": found.get((contrast, sub, "variance"))}
    out = {c: dict(sorted(subs.items())) for c, subs in sorted(out.items())}
    out[None] = dict(next(iter(spaces)))
    return out


def find_connectivity_outputs(output_dir, task, space, seg=None):
    """The participant level's Pearson matrices and mean time series of a connectivity task, per subject,
    matched on their entities (sessions, runs, ``res``/``den`` need no special naming).

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the participant level.
    task : str
        Connectivity task.
    space : str
        Space entity the files must carry.
    seg : str, optional
        Atlas (``seg`` entity) to keep; default: the first found.

    Returns
    -------
    found : dict
        ``{subject: {'subject': matrix path or None, 'runs': [per-run or per-session matrix paths],
        'run_timeseries': [paths], 'subject_timeseries': [paths]}}``, subjects and lists sorted.
    seg : str or None
        The atlas label the files carry.
    """
    found = {}
    for path in sorted(Path(output_dir).glob("sub-*/**/sub-*.tsv")):
        parsed = parse_bids_name(path)
        if parsed is None:
            continue
        ent, suffix, _ = parsed
        kind = {("relmat", "pearsoncorrelation"): "matrix", ("timeseries", "mean"): "timeseries"}.get(
            (suffix, ent.get("stat")))
        if kind is None or ent.get("task") != task or ent.get("space") != space or "sub" not in ent:
            continue
        if seg is not None and ent.get("seg") != seg:
            continue
        seg = seg or ent.get("seg")
        rec = found.setdefault(ent["sub"], {"subject": None, "runs": [], "run_timeseries": [],
                                            "subject_timeseries": []})
        per_run = "run" in ent or "ses" in ent
        if kind == "matrix":
            if per_run:
                rec["runs"].append(str(path))
            else:
                rec["subject"] = str(path)
        else:
            rec["run_timeseries" if per_run else "subject_timeseries"].append(str(path))
    return dict(sorted(found.items())), seg


def read_participants(bids_root, required=False):
    """``BIDS_DIR/participants.tsv`` as a DataFrame (missing values NaN).

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    required : bool
        True when group regressors are named: a missing file is then an error.

    Returns
    -------
    (pandas.DataFrame or None, Path)
        The table (None when the file is missing and not required) and the file's path.

    Raises
    ------
    GlmxError
        When the file is required but missing, unreadable, or has no ``participant_id`` column.
    """
    path = Path(bids_root) / "participants.tsv"
    if not path.is_file():
        if required:
            raise GlmxError("participants.tsv not found; group_level_regressors needs it", file=path,
                            field="group_level_regressors")
        return None, path
    from .tables import read_tsv  # pandas only when a table is read: the index and pruning parse names only

    table = read_tsv(path, "participants table")
    if "participant_id" not in table.columns:
        raise GlmxError("participants table has no participant_id column", file=path, field="participant_id")
    return table, path
