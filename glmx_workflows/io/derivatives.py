"""BIDS-Derivatives names and the output dataset's description."""

import json
from pathlib import Path

from .atomic import copy_file, write_text

# Entity order of the BIDS specification (with the statmap entities contrast/stat after space).
ENTITY_ORDER = ("sub", "ses", "task", "acq", "run", "echo", "space", "res", "den", "cohort", "seg", "contrast",
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
        ``.nii.gz`` for gzipped NIfTI, else the last suffix (``""`` when none).
    """
    name = Path(path).name
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


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
        target = derivative_path(out_dir, ent, item["suffix"], extension_of(item["path"]),
                                 datatype=item.get("datatype", "func"))
        out.append(str(copy_file(item["path"], target)))
    return out


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
