"""Surface maps in reports: CIFTI dense scalars and GIfTI hemisphere pairs, drawn with nilearn's surface plotting.

A map is drawn on the inflated mesh (lateral and medial views of both hemispheres) when one is available
without a download (fsaverage5 from nilearn's package data); otherwise (fsLR without mesh files) the
report lists, per structure, how many locations pass the threshold and where the peak is.
"""

import re
from pathlib import Path

import numpy as np

from . import html as H


def is_surface_map(path):
    """Whether a map (path, or list of hemisphere paths) is a CIFTI or GIfTI file.

    Parameters
    ----------
    path : str or list of str

    Returns
    -------
    bool
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    return all(str(p).endswith((".dscalar.nii", ".func.gii")) for p in paths)


def surface_space(path):
    """The ``space-`` entity of a map's file name ('fsaverage5', 'fsLR'), or None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    for part in Path(str(paths[0])).name.split("_"):
        if part.startswith("space-"):
            return part[len("space-"):]
    return None


def mesh_space(parts):
    """The fsaverage space of a GIfTI pair from its vertex count (maps in a work folder have no space entity).

    Parameters
    ----------
    parts : dict
        From :func:`load_surface_map`.

    Returns
    -------
    str or None
    """
    from ..io.geometry import FSAVERAGE_VERTICES

    if set(parts) != {"L", "R"}:
        return "fsLR"
    counts = {len(v) for v, _ in parts.values()}
    return next((name for name, n in FSAVERAGE_VERTICES.items() if counts == {n}), None)


def load_surface_map(path):
    """A surface map by structure.

    Parameters
    ----------
    path : str or list of str
        A ``.dscalar.nii`` (first map), or the ``hemi-L``/``hemi-R`` ``.func.gii`` pair (names tell the hemisphere).

    Returns
    -------
    dict
        ``{structure: (values, indices)}``: for GIfTI ``'L'``/``'R'`` → (all vertex values, None); for CIFTI each
        brain structure → (its values, vertex indices or voxel ijk).
    """
    import nibabel as nb

    paths = path if isinstance(path, (list, tuple)) else [path]
    if str(paths[0]).endswith(".dscalar.nii"):
        img = nb.load(str(paths[0]))
        data = np.asarray(img.dataobj, dtype=np.float64)[0]
        axis = img.header.get_axis(1)
        out = {}
        for name, sl, bm in axis.iter_structures():
            short = name.replace("CIFTI_STRUCTURE_", "")
            out[short] = (data[sl], bm.vertex[bm.surface_mask] if bm.surface_mask.any() else bm.voxel)
        return out
    out = {}
    for p in paths:
        hemi = "L" if re.search(r"_hemi-L[_.]", Path(str(p)).name) else "R"
        out[hemi] = (np.asarray(nb.load(str(p)).darrays[0].data, dtype=np.float64), None)
    return out


def surface_summary(parts, threshold):
    """Per structure: locations, how many at \\|z\\| ≥ threshold, the peak and where it is.

    Parameters
    ----------
    parts : dict
        From :func:`load_surface_map`.
    threshold : float

    Returns
    -------
    list of list
        Rows ``[structure, locations, above, peak z, peak index]``.
    """
    rows = []
    for name, (values, index) in parts.items():
        v = np.nan_to_num(values)
        k = int(np.abs(v).argmax()) if v.size else 0
        where = index[k] if index is not None else k
        where = " ".join(str(int(x)) for x in np.atleast_1d(where))
        rows.append([name, int(v.size), int((np.abs(v) >= threshold).sum()), round(float(v[k]), 2) if v.size else 0.0,
                     where])
    return rows


def surface_figure(parts, space, threshold, vmax, title):
    """Lateral and medial views of both hemispheres on the inflated mesh, or None without a packaged mesh.

    Parameters
    ----------
    parts : dict
        From :func:`load_surface_map` of a GIfTI pair (``'L'``, ``'R'`` with all vertex values).
    space : str
        ``fsaverage5`` (the meshes nilearn ships).
    threshold, vmax : float
        \\|z\\| below ``threshold`` is not coloured; the colour scale spans ±``vmax``.
    title : str
        Alternative text.

    Returns
    -------
    Raw or None
        The embedded PNG.
    """
    from ..io.meshes import packaged_mesh

    if set(parts) != {"L", "R"}:
        return None
    mesh = packaged_mesh(space, "inflated")
    if mesh is None or any(len(mesh[h][0]) != len(parts[h][0]) for h in ("L", "R")):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn.plotting import plot_surf_stat_map

    sulc = packaged_mesh_sulc(space)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.6), subplot_kw={"projection": "3d"})
    for ax, (hemi, view) in zip(axes, (("L", "lateral"), ("L", "medial"), ("R", "medial"), ("R", "lateral"))):
        plot_surf_stat_map(mesh[hemi], np.nan_to_num(parts[hemi][0]), hemi="left" if hemi == "L" else "right",
                           view=view, bg_map=None if sulc is None else sulc[hemi], threshold=threshold, vmax=vmax,
                           cmap="RdBu_r", colorbar=False, axes=ax, figure=fig, engine="matplotlib")
        ax.set_title(f"{hemi} {view}", fontsize=8)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0)
    return H.figure(fig, title, dpi=70)


def packaged_mesh_sulc(space):
    """Sulcal depth of a packaged fsaverage mesh (the figures' shading), or None."""
    from ..io.meshes import PACKAGED

    if space not in PACKAGED:
        return None
    from nilearn.datasets import fetch_surf_fsaverage
    from nilearn.surface import load_surf_data

    files = fetch_surf_fsaverage(space)
    return {"L": load_surf_data(files["sulc_left"]), "R": load_surf_data(files["sulc_right"])}


def surface_contrast_section(name, spec, path, threshold, vmax):
    """The report's part for one contrast's surface z map: counts, figure (or why none), per-structure table.

    Parameters
    ----------
    name : str
        Contrast name.
    spec : dict
        ``{'label', 'type', ...}``.
    path : str or list of str
        The z map (see :func:`load_surface_map`).
    threshold, vmax : float

    Returns
    -------
    list of Raw
    """
    parts = load_surface_map(path)
    space = surface_space(path) or mesh_space(parts)
    kind = "F" if spec["type"] == "F" else "t"
    out = [H.tag("h3", H.join(f"Contrast {name} ", H.tag("small", f"({kind}, label {spec['label']})")),
                 id=f"contrast-{H.anchor(spec['label'])}")]
    rows = surface_summary(parts, threshold)
    n_above = sum(r[2] for r in rows)
    peak = max((abs(r[3]) for r in rows), default=0.0)
    out.append(H.tag("p", f"{n_above} location(s) at |z| ≥ {threshold:.2f}; peak |z| = {peak:.2f}.",
                     cls=None if n_above else "none"))
    fig = surface_figure(parts, space, threshold, vmax, f"{name}: z on the inflated {space} mesh")
    if fig is not None:
        out.append(H.tag("figure", H.join(fig, H.tag(
            "figcaption", f"z on the inflated {space} mesh (left hemisphere lateral and medial, right medial and "
                          f"lateral); |z| < {threshold:.2f} not coloured; colour scale ±{vmax:.1f}, red positive."))))
    else:
        out.append(H.tag("p", f"No mesh of space {space} is available to draw on (nilearn ships fsaverage5 only); "
                              "the table lists each structure's locations above the threshold.", cls="none"))
    out.append(H.table(rows, header=["structure", "locations", f"|z| ≥ {threshold:.2f}", "peak z",
                                     "peak at (vertex, or voxel i j k)"]))
    return out


def surface_figure_file(path, out_png, threshold=None, title=""):
    """:func:`surface_figure` of a map file written as PNG (group figures travel as files).

    Parameters
    ----------
    path : str
        A ``.dscalar.nii`` or the ``hemi-L`` ``.func.gii`` of a pair (the right file beside it).
    out_png : str or Path
        The figure.
    threshold : float, optional
        \\|values\\| below it not coloured (default: every non-zero value).
    title : str
        Alternative text.

    Returns
    -------
    list of Path
        ``[out_png]``, or ``[]`` when no mesh of the space is available.
    """
    import base64

    from ..io.geometry import read_map, right_of

    paths = [path] if str(path).endswith(".dscalar.nii") else [path, right_of(path)]
    parts = load_surface_map(paths)
    values = np.concatenate([np.nan_to_num(v) for v, _ in parts.values()])
    vmax = max(float(np.abs(values).max()), 1e-6)
    thr = 1e-6 if threshold is None else threshold
    tag = surface_figure(parts, mesh_space(parts), thr, vmax, title)
    if tag is None:
        return []
    data = re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1)
    Path(out_png).write_bytes(base64.b64decode(data))
    del read_map
    return [Path(out_png)]
