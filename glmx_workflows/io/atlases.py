"""Atlases for connectivity: labels images, probabilistic maps and coordinate spheres.

The spec's ``atlas`` key is either the name of a coordinate atlas shipped inside nilearn's package
(``"dosenbach_2010"``, ``"power_2011"``; read from nilearn's installed ``datasets/data`` folder, no
download) or an object:

- ``{"name": "Schaefer100", "labels_img": "atlas.nii.gz", "labels_tsv": "atlas.tsv"}``: a labels image
  (integers, 0 = background) with a TSV of ``index`` and ``name`` columns (BIDS dseg.tsv);
- ``{"name": "MSDL", "maps_img": "maps.nii.gz", "labels_tsv": "maps.tsv"}``: a 4D probabilistic atlas
  (one volume per region; the TSV is optional, one ``name`` per volume in order);
- ``{"name": "DMN", "coordinates": "rois.tsv" | "power_2011", "radius": 5}``: spheres around MNI
  coordinates (TSV/CSV with x, y, z and optionally name columns);
- on fsLR CIFTI runs, ``{"name": "Schaefer100", "labels_img": "atlas.dlabel.nii"}``: a dense label file on
  the dtseries' grayordinates;
- on fsaverage* GIfTI runs, ``{"name": "Schaefer100", "labels_img": {"L": "lh.label.gii", "R":
  "rh.label.gii"}}``: one GIfTI label file per hemisphere, each with the vertex count of that hemisphere's
  BOLD. Parcels are the keys of each file's label table present in its data (0 is background), left
  hemisphere first, each hemisphere's in key order; their names come from the label tables, prefixed with
  ``L_``/``R_`` only when both hemispheres use the same name (Destrieux), suffixed ``_<key>`` when one table
  gives a name to several keys, so that names stay unique.

Relative paths are read from the spec file's folder. Image atlases must be on the BOLD grid (the same
shape and affine): a mismatch is one line naming both files, never a silent resampling.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import GlmxError
from .images import load_image

PACKAGED = {"dosenbach_2010": "Dosenbach2010", "power_2011": "Power2011"}
DEFAULT_ATLAS = "dosenbach_2010"
DEFAULT_RADIUS = 5.0


@dataclass
class Atlas:
    """Regions of an atlas, ready for :mod:`glmx_workflows.core.connectivity`.

    ``kind`` is 'labels', 'maps' or 'spheres'; ``names`` one label per region; ``centres`` (n, 3) world
    coordinates for plots; plus ``labels``/``label_values`` (labels), ``maps`` (maps) or
    ``coords``/``radius`` (spheres). ``source`` names the file(s) the atlas came from.

    Parameters
    ----------
    kind : {'labels', 'maps', 'spheres'}
        How regions are defined.
    name : str
        Atlas name (becomes the ``seg`` label of outputs).
    names : list of str
        One label per region.
    centres : numpy.ndarray of shape (n_regions, 3)
        World coordinates of the regions, for plots.
    source : str
        The file(s) or package dataset the atlas came from.
    labels : numpy.ndarray, optional
        Label image data (kind 'labels').
    label_values : list of int, optional
        Label value of each region in ``labels``.
    maps : numpy.ndarray, optional
        4D region maps (weights), one volume per region (kind 'maps').
    coords : numpy.ndarray of shape (n_regions, 3), optional
        Sphere centres in world coordinates (kind 'spheres').
    radius : float, optional
        Sphere radius in mm.
    networks : list of str, optional
        Network of each region, when the atlas gives one (empty otherwise).
    """

    kind: str
    name: str
    names: list
    centres: np.ndarray
    source: str
    labels: np.ndarray = None
    label_values: list = None
    maps: np.ndarray = None
    coords: np.ndarray = None
    radius: float = None
    networks: list = field(default_factory=list)


def seg_label(name):
    """The atlas name as a BIDS label (letters and digits only).

    Parameters
    ----------
    name : str
        Atlas name as given (file stem or the spec's ``name``).

    Returns
    -------
    str
        ``name`` without any character other than letters and digits.

    Raises
    ------
    GlmxError
        When nothing is left (the name has no letter or digit).
    """
    label = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not label:
        raise GlmxError(f"atlas name '{name}' has no letter or digit to name the outputs (seg-<name>)",
                        field="atlas.name")
    return label


def packaged_coordinates_file(key):
    """Path of a coordinate atlas inside the installed nilearn package (no download).

    Parameters
    ----------
    key : str
        'dosenbach_2010' or 'power_2011'.

    Returns
    -------
    pathlib.Path
        ``nilearn/datasets/data/<key>.csv``.

    Raises
    ------
    GlmxError
        When the installed nilearn does not ship that file.
    """
    import nilearn

    path = Path(nilearn.__file__).parent / "datasets" / "data" / f"{key}.csv"
    if not path.is_file():
        raise GlmxError(f"nilearn's package data has no {key}.csv (nilearn {nilearn.__version__})", file=path,
                        field="atlas")
    return path


def _resolve(path, base):
    p = Path(path)
    return p if p.is_absolute() or base is None else Path(base) / p


def read_coordinates(path):
    """x, y, z (and names, networks) of a coordinate table (CSV or TSV, columns case-insensitive).

    Parameters
    ----------
    path : str or Path
        CSV (or ``.tsv``) with x, y, z columns and optionally name/label/roi/number and network.

    Returns
    -------
    coords : numpy.ndarray of shape (n, 3)
        World coordinates, one row per region.
    names : list of str
        Region names (row numbers when the table has none; prefixed by the row number when they
        repeat).
    networks : list of str
        Network of each region; empty without a network column.

    Raises
    ------
    GlmxError
        When the file is missing or unreadable, lacks x/y/z, or a coordinate is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise GlmxError("coordinates file not found", file=path, field="atlas.coordinates")
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep)
    except Exception as exc:  # pandas raises several types for unreadable tables
        raise GlmxError(f"coordinates file is not a readable table ({exc})", file=path) from None
    cols = {str(c).strip().lower(): c for c in table.columns}
    missing = [a for a in "xyz" if a not in cols]
    if missing:
        raise GlmxError(f"coordinates file lacks column(s) {', '.join(missing)}; columns: "
                        f"{', '.join(map(str, table.columns))}", file=path, field="atlas.coordinates")
    coords = table[[cols["x"], cols["y"], cols["z"]]].to_numpy(float)
    if not np.isfinite(coords).all():
        raise GlmxError("coordinates must be numbers", file=path, field="atlas.coordinates")
    key = next((cols[k] for k in ("name", "label", "roi", "number") if k in cols), None)
    base = [str(v) for v in table[key]] if key is not None else [str(i + 1) for i in range(len(table))]
    # packaged Dosenbach names repeat (e.g. 'inf cerebellum'): prefix the row number so labels are unique
    names = base if len(set(base)) == len(base) else [f"{i + 1}_{n}" for i, n in enumerate(base)]
    networks = [str(v) for v in table[cols["network"]]] if "network" in cols else []
    return coords, names, networks


def _read_label_table(path, n=None):
    table = pd.read_csv(path, sep="\t")
    cols = {str(c).strip().lower(): c for c in table.columns}
    if "name" not in cols:
        raise GlmxError(f"labels TSV needs a 'name' column (and 'index' for a labels image); columns: "
                        f"{', '.join(map(str, table.columns))}", file=path, field="atlas.labels_tsv")
    names = [str(v) for v in table[cols["name"]]]
    index = [int(v) for v in table[cols["index"]]] if "index" in cols else None
    if n is not None and len(names) != n:
        raise GlmxError(f"labels TSV has {len(names)} rows but the maps image has {n} volumes", file=path,
                        field="atlas.labels_tsv")
    return names, index


def _check_grid(img, path, bold_img, bold_path):
    if tuple(img.shape[:3]) != tuple(bold_img.shape[:3]) or not np.allclose(img.affine, bold_img.affine, atol=1e-3):
        raise GlmxError(f"atlas grid {tuple(img.shape[:3])} does not match the grid {tuple(bold_img.shape[:3])} of "
                        f"BOLD {bold_path} (shape and affine must agree; resample the atlas to the BOLD space)",
                        file=path, field="atlas")


def _check_space(space, atlas_space, source, bold_path):
    if atlas_space and space and str(space).split(":")[0] != atlas_space:
        raise GlmxError(f"atlas is in space '{atlas_space}' but BOLD {bold_path} is in space '{space}'",
                        file=source, field="atlas.space")


def load_atlas(spec, bold_img, bold_path, space=None, base_dir=None, mask_path=None):
    """Read the atlas of the spec for one BOLD grid.

    Parameters
    ----------
    spec : str, dict or None
        The ``atlas`` key (None: the default, Dosenbach 2010 spheres).
    bold_img : nibabel image
        A BOLD run (its grid is the reference).
    bold_path : str
        Its path (for messages).
    space : str, optional
        The BOLD's space (coordinate atlases are MNI).
    base_dir : str or Path, optional
        Folder against which relative atlas paths are read (the spec file's).
    mask_path : str or Path, optional
        The run's ``mask_file``: for a GIfTI run, its right hemisphere (the label files' vertex counts are
        checked against both hemispheres).

    Returns
    -------
    Atlas
        The regions, with label or map images checked to be on the BOLD grid (GIfTI: the labels of both
        hemispheres concatenated, left first, as the run's vertices are).

    Raises
    ------
    GlmxError
        When an atlas file is missing or unreadable, not on the BOLD grid or in another space, its
        labels table does not match, or the spec names no known atlas form.
    """
    spec = DEFAULT_ATLAS if spec is None else spec
    if isinstance(spec, str):
        spec = {"coordinates": spec}
    spec = dict(spec)
    radius = float(spec.get("radius", DEFAULT_RADIUS))
    if "coordinates" in spec:
        ref = spec["coordinates"]
        path = packaged_coordinates_file(ref) if ref in PACKAGED else _resolve(ref, base_dir)
        name = seg_label(spec.get("name", PACKAGED.get(ref, Path(str(ref)).name.split(".")[0])))
        if space and not str(space).startswith("MNI"):
            raise GlmxError(f"coordinate atlases are in MNI space but BOLD {bold_path} is in space '{space}'",
                            file=path, field="atlas")
        coords, names, networks = read_coordinates(path)
        return Atlas(kind="spheres", name=name, names=names, centres=coords, source=str(path), coords=coords,
                     radius=radius, networks=networks)
    if "labels_img" in spec and (isinstance(spec["labels_img"], dict) or str(spec["labels_img"]).endswith(".gii")):
        return _gifti_atlas(spec, bold_path, mask_path, base_dir)
    if "labels_img" in spec and str(spec["labels_img"]).endswith(".dlabel.nii"):
        if not str(bold_path).endswith(".dtseries.nii"):
            raise GlmxError(f"a .dlabel.nii atlas needs fsLR CIFTI runs, not {Path(bold_path).name}",
                            file=_resolve(spec["labels_img"], base_dir), field="atlas.labels_img")
        return _dlabel_atlas(_resolve(spec["labels_img"], base_dir), spec, bold_path)
    if str(bold_path).endswith((".dtseries.nii", ".gii")):
        raise GlmxError("on a surface run the atlas must be a label atlas: a .dlabel.nii for fsLR CIFTI, a GIfTI label "
                        "file per hemisphere for fsaverage* ({\"labels_img\": {\"L\": \"...label.gii\", \"R\": "
                        "\"...label.gii\"}})", file=bold_path, field="atlas")
    if "labels_img" in spec:
        path = _resolve(spec["labels_img"], base_dir)
        img = load_image(path, "atlas labels image")
        _check_grid(img, path, bold_img, bold_path)
        _check_space(space, spec.get("space"), path, bold_path)
        data = np.asarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3 or not np.allclose(data, np.round(data)):
            raise GlmxError("a labels atlas must be a 3D image of integers", file=path, field="atlas.labels_img")
        labels = np.round(data).astype(int)
        values = sorted(int(v) for v in np.unique(labels) if v != 0)
        names = [str(v) for v in values]
        if spec.get("labels_tsv"):
            tsv = _resolve(spec["labels_tsv"], base_dir)
            tnames, index = _read_label_table(tsv)
            if index is None:
                raise GlmxError("labels TSV of a labels image needs an 'index' column", file=tsv,
                                field="atlas.labels_tsv")
            lookup = dict(zip(index, tnames))
            unknown = [v for v in values if v not in lookup]
            if unknown:
                raise GlmxError(f"labels {unknown[:10]} of {path} are not in the labels TSV", file=tsv,
                                field="atlas.labels_tsv")
            names = [lookup[v] for v in values]
        ijk = [np.argwhere(labels == v).mean(axis=0) for v in values]
        centres = np.array([img.affine[:3, :3] @ c + img.affine[:3, 3] for c in ijk]).reshape(-1, 3)
        return Atlas(kind="labels", name=seg_label(spec.get("name", Path(path).name.split(".")[0])), names=names,
                     centres=centres, source=str(path), labels=labels, label_values=values)
    if "maps_img" in spec:
        path = _resolve(spec["maps_img"], base_dir)
        img = load_image(path, "atlas maps image")
        if len(img.shape) != 4:
            raise GlmxError(f"a maps atlas must be 4D (one volume per region), got shape {img.shape}", file=path,
                            field="atlas.maps_img")
        _check_grid(img, path, bold_img, bold_path)
        _check_space(space, spec.get("space"), path, bold_path)
        maps = np.asarray(img.get_fdata(), dtype=np.float64)
        names = [str(i + 1) for i in range(maps.shape[3])]
        if spec.get("labels_tsv"):
            names, _ = _read_label_table(_resolve(spec["labels_tsv"], base_dir), maps.shape[3])
        weights = np.abs(maps).reshape(-1, maps.shape[3])
        ijk = np.indices(maps.shape[:3]).reshape(3, -1).T
        centres = (weights.T @ ijk) / np.maximum(weights.sum(axis=0)[:, None], 1e-12)
        centres = centres @ img.affine[:3, :3].T + img.affine[:3, 3]
        return Atlas(kind="maps", name=seg_label(spec.get("name", Path(path).name.split(".")[0])), names=names,
                     centres=centres, source=str(path), maps=maps)
    raise GlmxError("atlas needs one of 'coordinates', 'labels_img' or 'maps_img' (or the name of a packaged "
                    f"coordinate atlas: {', '.join(PACKAGED)})", field="atlas")


def _dlabel_atlas(path, spec, bold_path):
    """A CIFTI dense label atlas (Schaefer, Glasser... in fsLR) on a dtseries' grayordinates.

    Parcels are the label table's keys (0 and unlabelled grayordinates are background); names from the
    table. The dlabel's brain models must be the BOLD's (same structures, vertices and voxels), else an error
    naming the dlabel. Centres are unknown without a mesh (NaN).
    """
    import nibabel as nb

    from .geometry import cifti_axes, load_cifti

    img = load_cifti(path, "atlas dlabel file")
    labels_axis, models = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(labels_axis, nb.cifti2.LabelAxis):
        raise GlmxError("expected a dense label file (label × brain models)", file=path, field="atlas.labels_img")
    bold_models = cifti_axes(bold_path)[1]
    if models != bold_models:
        raise GlmxError(f"the dlabel's {len(models)} grayordinates are not those of the BOLD {bold_path} "
                        f"({len(bold_models)}): another grayordinate set or density", file=path, field="atlas.labels_img")
    labels = np.rint(np.asarray(img.dataobj)[0]).astype(int)
    table = labels_axis.label[0]
    values = sorted(int(v) for v in np.unique(labels) if v != 0)
    names = [str(table[v][0]) if v in table else str(v) for v in values]
    return Atlas(kind="labels", name=seg_label(spec.get("name", Path(path).name.split(".")[0])), names=names,
                 centres=np.full((len(values), 3), np.nan), source=str(path), labels=labels, label_values=values)


def _gifti_labels(path, n_vertices, hemi):
    """Integer labels (n_vertices,) and the {key: name} table of one hemisphere's ``.label.gii``."""
    from .geometry import load_gifti

    img = load_gifti(path, f"atlas hemi-{hemi} label file")
    data = np.asarray(img.darrays[0].data)
    if data.ndim != 1 and not (data.ndim == 2 and 1 in data.shape):
        raise GlmxError(f"a GIfTI label file holds one value per vertex; got an array of shape {data.shape}",
                        file=path, field=f"atlas.labels_img.{hemi}")
    data = data.ravel()
    if len(data) != n_vertices:
        raise GlmxError(f"{len(data)} vertices but the hemi-{hemi} BOLD has {n_vertices}: the label file is on "
                        "another mesh (resample it to the BOLD's space)", file=path, field=f"atlas.labels_img.{hemi}")
    if not np.allclose(data, np.round(data)):
        raise GlmxError("a GIfTI label file must hold integer keys", file=path, field=f"atlas.labels_img.{hemi}")
    table = {int(lab.key): str(lab.label) for lab in img.labeltable.labels if lab.label is not None}
    return np.round(data).astype(int), table


def _gifti_atlas(spec, bold_path, mask_path, base_dir):
    """A pair of GIfTI label files (fsaverage5/6/fsaverage) on a GIfTI run's two hemispheres (see the module)."""
    from .geometry import gifti_shape, right_of

    given = spec["labels_img"]
    if not str(bold_path).endswith(".gii"):
        named = given.get("L") if isinstance(given, dict) else given
        raise GlmxError(f"GIfTI label files need fsaverage* GIfTI runs, not {Path(bold_path).name}",
                        file=_resolve(named, base_dir) if named else None, field="atlas.labels_img")
    if not isinstance(given, dict) or set(given) != {"L", "R"}:
        named = given if not isinstance(given, dict) else next(iter(given.values()), None)
        raise GlmxError("a GIfTI label atlas needs both hemispheres: {\"labels_img\": {\"L\": \"...hemi-L....label.gii\", "
                        f"\"R\": \"...hemi-R....label.gii\"}}}} (got {_compact_json(given)})",
                        file=_resolve(named, base_dir) if isinstance(named, str) else None, field="atlas.labels_img")
    right = mask_path if mask_path is not None else right_of(bold_path)
    counts = {"L": gifti_shape(bold_path)[1], "R": gifti_shape(right)[1]}
    paths = {h: _resolve(given[h], base_dir) for h in "LR"}
    parts = {h: _gifti_labels(paths[h], counts[h], h) for h in "LR"}
    raw_names = {}
    for h in "LR":
        data, table = parts[h]
        keys = [int(v) for v in np.unique(data) if v > 0]
        named = [table.get(k, str(k)) for k in keys]
        # a name given to several keys of one table (an 'Unknown' or unnamed key): the key tells them apart
        raw_names[h] = [(k, f"{n}_{k}" if named.count(n) > 1 else n) for k, n in zip(keys, named)]
    shared = {n for _, n in raw_names["L"]} & {n for _, n in raw_names["R"]}
    labels, names, offset = [], [], 0
    for h in "LR":
        data, _ = parts[h]
        lut = np.zeros(max(int(data.max()), 0) + 1, int)  # file key -> parcel number (0: background)
        for i, (v, _) in enumerate(raw_names[h]):
            if v > 0:
                lut[v] = offset + i + 1
        labels.append(np.where(data > 0, lut[np.clip(data, 0, None)], 0))
        names += [f"{h}_{n}" if n in shared else n for _, n in raw_names[h]]
        offset += len(raw_names[h])
    labels = np.concatenate(labels)
    values = list(range(1, offset + 1))
    return Atlas(kind="labels", name=seg_label(spec.get("name", Path(paths["L"]).name.split(".")[0])), names=names,
                 centres=_vertex_centres(labels, values, counts), source=f"{paths['L']} {paths['R']}", labels=labels,
                 label_values=values)


def _compact_json(value):
    """A spec value as compact JSON (for messages)."""
    import json

    return json.dumps(value)


def _vertex_centres(labels, values, counts):
    """Parcel centres on nilearn's packaged fsaverage mesh of these vertex counts (pial), else NaN."""
    from .geometry import FSAVERAGE_VERTICES
    from .meshes import packaged_mesh

    space = next((s for s, n in FSAVERAGE_VERTICES.items() if (counts["L"], counts["R"]) == (n, n)), None)
    mesh = packaged_mesh(space) if space else None
    if mesh is None:
        return np.full((len(values), 3), np.nan)
    coords = np.concatenate([mesh["L"][0], mesh["R"][0]])
    return np.array([coords[labels == v].mean(axis=0) for v in values]).reshape(-1, 3)


def region_signals(atlas, data, affine, mask):
    """Raw (uncleaned) region series of a 4D array for an atlas.

    Parameters
    ----------
    atlas : Atlas
        Regions (from :func:`load_atlas`).
    data : numpy.ndarray of shape (x, y, z, n_scans)
        BOLD data.
    affine : numpy.ndarray of shape (4, 4)
        Voxel-to-world transform of ``data``.
    mask : numpy.ndarray of bool, shape (x, y, z)
        Brain mask; voxels outside it are ignored.

    Returns
    -------
    signals : numpy.ndarray of shape (n_scans, n_regions)
        Region series: label means, least-squares map signals (as NiftiMapsMasker), or sphere means.
    names : list of str
        Labels of the returned regions (maps outside the mask are dropped, as nilearn does; spheres
        outside it keep a NaN column so that every subject has the same regions).
    """
    from ..core import connectivity as cc

    if atlas.kind == "labels":
        signals, _ = cc.labels_signals(data, atlas.labels, mask, atlas.label_values)
        return signals, list(atlas.names)
    if atlas.kind == "maps":
        signals, kept = cc.maps_signals(data, atlas.maps, mask)
        return signals, [atlas.names[i] for i in kept]
    return cc.spheres_signals(data, atlas.coords, affine, mask, atlas.radius, allow_empty=True), list(atlas.names)
