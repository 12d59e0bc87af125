"""BIDS-Derivatives names and the output dataset's description."""

import json
import os
import re
from pathlib import Path

from .atomic import copy_file, write_text

# Entity order of the BIDS specification (with the statmap entities contrast/stat after space).
ENTITY_ORDER = ("sub", "ses", "task", "acq", "run", "echo", "hemi", "space", "res", "den", "cohort", "seg", "contrast",
                "stat", "desc")


def bids_name(entities, suffix, extension):
    """``{'sub': '01', 'task': 'x', 'contrast': 'AvB', 'stat': 'z'}``, 'statmap', '.nii.gz' →
    ``sub-01_task-x_contrast-AvB_stat-z_statmap.nii.gz``.

    Parameters
    ----------
    entities : dict
        ``{entity: label}``; keys from ``ENTITY_ORDER``, None or empty values left out.
    suffix : str
        BIDS suffix, e.g. ``statmap``, ``design``.
    extension : str
        With the dot, e.g. ``.nii.gz``.

    Returns
    -------
    str
        File name with the entities in BIDS order.

    Raises
    ------
    ValueError
        An entity is not in ``ENTITY_ORDER`` (a programming error, not a user one).
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def check_name_length(entities, suffix, extension, what, file=None, field=None):
    """Refuse entities whose BIDS file name would be too long for the file system (checked before a run:
    the write would otherwise fail after the fit).

    Parameters
    ----------
    entities : dict
        As for :func:`bids_name`.
    suffix, extension : str
        As for :func:`bids_name`.
    what : str
        What gives the long label (named in the message), e.g. ``"contrast 'x'"``.
    file, field : str, optional
        Where that label was set (the spec and its key).

    Raises
    ------
    GlmxError
        The name is longer than :func:`glmx_workflows.io.atomic.longest_name`.
    """
    from ..core.errors import GlmxError
    from .atomic import longest_name

    name = bids_name(entities, suffix, extension)
    limit = longest_name()
    if len(name.encode()) > limit:
        raise GlmxError(f"{what[:60]}{'...' if len(what) > 60 else ''} gives output file names of "
                        f"{len(name.encode())} characters (e.g. {name[:60]}...); the file system takes {limit}: use "
                        "a shorter name", file=file, field=field)


def derivative_path(out_dir, entities, suffix, extension, datatype="func"):
    """Full path of a subject-level derivative: ``OUT/sub-<s>/[ses-<x>/]<datatype>/<name>``.

    Without a ``sub`` entity (group outputs) the file goes directly in ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output dataset root.
    entities, suffix, extension
        As for :func:`bids_name`.
    datatype : str, optional
        Folder under the subject (or session); ``""`` puts the file in the subject's folder.

    Returns
    -------
    Path
        The derivative's path (folders not created).
    """
    folder = Path(out_dir)
    if entities.get("sub"):
        folder = folder / f"sub-{entities['sub']}"
        if entities.get("ses"):
            folder = folder / f"ses-{entities['ses']}"
        folder = folder / datatype
    return folder / bids_name(entities, suffix, extension)


def extension_of(path):
    """'.nii.gz', '.tsv', '.svg', ... of a path.

    Parameters
    ----------
    path : str or Path
        Any file path.

    Returns
    -------
    str
        ``.nii.gz`` for gzipped NIfTI, ``.dscalar.nii``/``.func.gii``... for CIFTI and GIfTI, else the last suffix (``""`` when none).
    """
    name = Path(path).name
    for double in (".nii.gz", ".dtseries.nii", ".dscalar.nii", ".dlabel.nii", ".pscalar.nii", ".ptseries.nii",
                   ".pconn.nii", ".func.gii", ".label.gii", ".shape.gii", ".surf.gii"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def publish(manifest, base_entities, out_dir):
    """Copy every manifest file to its BIDS-derivatives path (atomically); return the new paths.

    An item's optional ``datatype`` names the folder under the subject (default ``func``; ``""``
    puts the file in the subject's folder itself, as the subject's report).

    Parameters
    ----------
    manifest : list of dict
        Items with ``path`` (source file), ``suffix``, optional ``entities`` (added to ``base_entities``)
        and ``datatype``.
    base_entities : dict
        Entities shared by every item (``sub``, ``task``, ...).
    out_dir : str or Path
        Output dataset root.

    Returns
    -------
    list of str
        The published paths, in manifest order.
    """
    out = []
    for item in manifest:
        ent = {**base_entities, **item.get("entities", {})}
        sources = [(item["path"], ent)]
        if str(item["path"]).endswith("_hemi-L.func.gii") and "hemi" not in ent:
            # a GIfTI pair travels between nodes as its left file (io.geometry): publish both hemispheres
            sources = [(item["path"], {**ent, "hemi": "L"}),
                       (item["path"][:-len("_hemi-L.func.gii")] + "_hemi-R.func.gii", {**ent, "hemi": "R"})]
        for path, entities in sources:
            target = derivative_path(out_dir, entities, item["suffix"], extension_of(path),
                                     datatype=item.get("datatype", "func"))
            out.append(str(copy_file(path, target)))
    return out


def written_since(files, start):
    """The files modified at or after ``start``: those a run wrote (a sink leaves a file that already
    holds the same bytes untouched, see :func:`glmx_workflows.io.atomic.copy_file`).

    Parameters
    ----------
    files : iterable of str or Path
        Published files.
    start : float
        The run's start (seconds since the epoch).

    Returns
    -------
    list of str
        Sorted.
    """
    out = []
    for f in files:
        try:
            if os.stat(f).st_mtime >= start:
                out.append(str(f))
        except OSError:
            continue
    return sorted(out)


def write_dataset_description(out_dir, version, source_dirs=()):
    """OUTPUT_DIR/dataset_description.json of a derivatives dataset generated by glmx_workflows.

    Parameters
    ----------
    out_dir : str or Path
        Output dataset root.
    version : str
        glmx_workflows version, recorded under ``GeneratedBy``.
    source_dirs : iterable of str or Path, optional
        Input datasets, recorded as ``file://`` URLs under ``SourceDatasets``.

    Returns
    -------
    Path
        The written file (left untouched when identical).
    """
    desc = {
        "Name": "glmx_workflows first-level and group models",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "glmx_workflows", "Version": version}],
        "SourceDatasets": [{"URL": Path(d).resolve().as_uri()} for d in source_dirs],
    }
    return write_text(Path(out_dir) / "dataset_description.json", json.dumps(desc, indent=2) + "\n")


def written_by_glmx(folder):
    """Whether the dataset in ``folder`` was written by glmx_workflows (its outputs, ``glmx example``).

    Parameters
    ----------
    folder : str or Path
        A dataset root.

    Returns
    -------
    bool
        True when its ``dataset_description.json`` names glmx_workflows under ``GeneratedBy`` (as
        :func:`write_dataset_description` writes it); False when it names another program, cannot be
        read, or there is none.
    """
    try:
        desc = json.loads((Path(folder) / "dataset_description.json").read_text())
        return any(isinstance(g, dict) and g.get("Name") == "glmx_workflows" for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


# What glmx wrote, per unit (a subject's first level or connectivity of a task, a group contrast, a group
# report): OUTPUT_DIR/logs/outputs/<unit>.json. A rerun of a unit deletes the files recorded for it that
# it no longer produces (a contrast removed from the spec, an inference method no longer asked for), and
# only those: a file glmx did not record is never touched.
RECORDS = ("logs", "outputs")
_UNIT = re.compile(r"^[A-Za-z0-9_+-]+$")


def output_record_path(out_dir, unit):
    """Where the outputs of a unit are recorded.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    unit : str
        Letters, digits, ``_``, ``-`` and ``+``, e.g. ``task-flanker_sub-01``.

    Returns
    -------
    Path
        ``OUTPUT_DIR/logs/outputs/<unit>.json``.
    """
    if not _UNIT.match(unit):
        raise ValueError(f"bad output unit name {unit!r}")
    return Path(out_dir).joinpath(*RECORDS, f"{unit}.json")


def read_output_record(out_dir, unit):
    """The record of a unit: ``{'files': [path, ...], ...}`` (absolute paths), None when there is none.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    unit : str
        As for :func:`output_record_path`.

    Returns
    -------
    dict or None
        The record; an unreadable record counts as none (nothing is then deleted on its account).
    """
    path = output_record_path(out_dir, unit)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = [str(Path(out_dir) / f) for f in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {**record, "files": files}


def record_outputs(out_dir, unit, files, **extra):
    """Make ``files`` the outputs of ``unit``: delete those recorded for it earlier that are not among them.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    unit : str
        As for :func:`output_record_path`.
    files : iterable of str or Path
        Every file the unit produced in this run (written or left unchanged), under ``out_dir``.
    **extra
        JSON-able values kept in the record (e.g. ``contrasts``).

    Returns
    -------
    list of str
        The deleted files (earlier outputs of the unit that the current run no longer produces).
    """
    root = Path(out_dir).resolve()
    current = sorted({_relative(f, root) for f in files} - {None})
    old = read_output_record(root, unit)
    removed = []
    if old is not None:
        keep = {str(root / f) for f in current}
        removed = _delete_outputs([f for f in old["files"] if f not in keep], root)
    write_text(output_record_path(root, unit), json.dumps({"unit": unit, "files": current, **extra}, indent=1) + "\n")
    return removed


def retire_outputs(out_dir, unit):
    """Delete every output recorded for ``unit``, and its record (a unit the spec no longer has).

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    unit : str
        As for :func:`output_record_path`.

    Returns
    -------
    list of str
        The deleted files.
    """
    root = Path(out_dir).resolve()
    old = read_output_record(root, unit)
    removed = _delete_outputs(old["files"], root) if old is not None else []
    output_record_path(root, unit).unlink(missing_ok=True)
    return removed


def recorded_units(out_dir, prefix):
    """Units with a record whose name starts with ``prefix``.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    prefix : str
        E.g. ``group_task-flanker_contrast-``.

    Returns
    -------
    list of str
        Unit names, sorted.
    """
    folder = Path(out_dir).joinpath(*RECORDS)
    return sorted(p.stem for p in folder.glob("*.json") if p.stem.startswith(prefix)) if folder.is_dir() else []


def _relative(path, root):
    """``path`` relative to ``root`` (as posix text), None when it is not under it."""
    path = Path(path)
    path = path if path.is_absolute() else Path.cwd() / path
    try:
        return Path(os.path.normpath(path)).relative_to(root).as_posix()
    except ValueError:
        try:  # a path through a symlinked OUTPUT_DIR
            return (path.parent.resolve() / path.name).relative_to(root).as_posix()
        except ValueError:
            return None


def _delete_outputs(files, root):
    """Delete recorded files under ``root`` (never outside it, never a folder), then folders left empty."""
    removed = []
    for f in files:
        path = Path(f)
        try:
            # the folder resolved (OUTPUT_DIR may be reached through a symlink), the file itself not followed
            if (path.parent.resolve() / path.name).relative_to(root).parts[:1] in ((), ("logs",)):
                continue
        except ValueError:
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(str(path))
            parent = path.parent
            while parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    return removed


def contrast_labels(files):
    """The ``contrast`` entities of the statistical maps among ``files``.

    Parameters
    ----------
    files : iterable of str or Path
        Published files.

    Returns
    -------
    set of str
    """
    from .group_inputs import parse_bids_name

    labels = set()
    for f in files:
        parsed = parse_bids_name(f)
        if parsed is not None and parsed[1] == "statmap" and "contrast" in parsed[0]:
            labels.add(parsed[0]["contrast"])
    return labels


def settle_task_outputs(out_dir, task, produced, unchanged=None):
    """After a dataset run of ``task``: record what each subject produced and delete what it no longer does.

    Each subject that completed in the run has its outputs recorded (``task-<t>_sub-<s>``), and the files
    recorded for it by an earlier run that this run did not produce are deleted. The contrasts of the
    maps produced or kept unchanged by the run are recorded as the task's current contrasts
    (``task-<t>``), which the dataset index and the group level use.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    task : str
        Task label.
    produced : dict
        ``{subject: files}`` of the subjects that completed in this run.
    unchanged : dict, optional
        ``{subject: files}`` of the subjects left out of the run because nothing changed.

    Returns
    -------
    list of str
        The deleted files.
    """
    removed = []
    for sub, files in sorted(produced.items()):
        removed += record_outputs(out_dir, f"task-{task}_sub-{sub}", files)
    every = [f for files in [*produced.values(), *(unchanged or {}).values()] for f in files]
    if produced or unchanged:
        record_outputs(out_dir, f"task-{task}", [], contrasts=sorted(contrast_labels(every)))
    return removed


def current_contrasts(out_dir, task):
    """The contrasts the latest dataset run of ``task`` produced (see :func:`settle_task_outputs`).

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    task : str
        Task label.

    Returns
    -------
    list of str or None
        Contrast labels; None when no run recorded them (outputs of an older glmx).
    """
    record = read_output_record(out_dir, f"task-{task}")
    return None if record is None else list(record.get("contrasts", []))


def current_subject_files(out_dir, task, sub):
    """The files the latest complete run of a subject produced for ``task``.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR.
    task, sub : str
        Task and subject labels.

    Returns
    -------
    set of str or None
        Absolute paths (through ``out_dir`` resolved); None when none was recorded.
    """
    record = read_output_record(Path(out_dir).resolve(), f"task-{task}_sub-{sub}")
    return None if record is None else set(record["files"])


def settle_group_outputs(out_dir, task, per_contrast, others, current=None):
    """After a group run of ``task``: record what each contrast produced and delete what it no longer does.

    Parameters
    ----------
    out_dir : str or Path
        OUTPUT_DIR (the group outputs are under ``OUTPUT_DIR/group``).
    task : str
        Task label.
    per_contrast : dict
        ``{contrast: files}`` of every contrast modelled in the run: files recorded for it by an earlier
        run and not among these (e.g. a TFCE map after ``group_inference`` dropped ``tfce``) are deleted.
    others : iterable of str
        The run's other outputs (the report), recorded as ``group_task-<t>``.
    current : list of str, optional
        The group models the spec can produce: the task's current first-level contrasts
        (:func:`current_contrasts`), or the one within-subject model of a ``group_design``. Recorded group
        outputs of a model not among them and not modelled now are deleted (a contrast left out by
        ``--contrast`` keeps its outputs). None deletes none of them.

    Returns
    -------
    list of str
        The deleted files.
    """
    removed = []
    for contrast, files in sorted(per_contrast.items()):
        removed += record_outputs(out_dir, f"group_task-{task}_contrast-{contrast}", files)
    removed += record_outputs(out_dir, f"group_task-{task}", others)
    if current is not None:
        prefix = f"group_task-{task}_contrast-"
        for unit in recorded_units(out_dir, prefix):
            if unit[len(prefix):] not in current and unit[len(prefix):] not in per_contrast:
                removed += retire_outputs(out_dir, unit)
    return removed
