"""Surface meshes: the fsaverage meshes nilearn ships in its package data (no download), or mesh files.

Meshes give the neighbours of vertices (cluster extent, cluster mass and TFCE on surfaces) and the
geometry surface maps are drawn on.
"""

from pathlib import Path

import numpy as np

from ..core.errors import GlmxError

#: fsaverage meshes present in nilearn's package data (others would need a download).
PACKAGED = ("fsaverage5",)
_KINDS = {"pial": "pial", "white": "white", "inflated": "infl", "sphere": "sphere"}


def packaged_mesh(space, kind="pial"):
    """Both hemispheres of a packaged fsaverage mesh.

    Parameters
    ----------
    space : str
        ``fsaverage5``.
    kind : str
        ``pial``, ``white``, ``inflated`` or ``sphere``.

    Returns
    -------
    dict or None
        ``{'L': (coordinates (n, 3), faces (m, 3)), 'R': ...}``; None when nilearn does not ship this space.
    """
    if space not in PACKAGED:
        return None
    from nilearn.datasets import fetch_surf_fsaverage
    from nilearn.surface import load_surf_mesh

    files = fetch_surf_fsaverage(space)  # fsaverage5 is read from nilearn's package folder
    out = {}
    for hemi, side in (("L", "left"), ("R", "right")):
        mesh = load_surf_mesh(files[f"{_KINDS[kind]}_{side}"])
        out[hemi] = (np.asarray(mesh.coordinates, float), np.asarray(mesh.faces, np.int64))
    return out


def read_mesh(path):
    """A ``.surf.gii`` mesh (or any format nilearn reads) → (coordinates, faces), with errors naming the file."""
    from nilearn.surface import load_surf_mesh

    path = Path(path)
    if not path.is_file():
        raise GlmxError("surface mesh not found", file=path, field="surface_meshes")
    try:
        mesh = load_surf_mesh(str(path))
    except Exception as exc:
        raise GlmxError(f"not a readable surface mesh ({exc})", file=path, field="surface_meshes") from None
    return np.asarray(mesh.coordinates, float), np.asarray(mesh.faces, np.int64)


def mesh_edges(faces):
    """Unique undirected edges of a triangle mesh.

    Parameters
    ----------
    faces : array of int, shape (n_faces, 3)

    Returns
    -------
    numpy.ndarray of int64, shape (n_edges, 2)
        Each edge once, smaller index first, sorted.
    """
    faces = np.asarray(faces, np.int64)
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def voxel_face_edges(ijk):
    """Face-neighbour pairs (6-connectivity) among voxels given by their indices.

    Parameters
    ----------
    ijk : array of int, shape (n_voxels, 3)

    Returns
    -------
    numpy.ndarray of int64, shape (n_edges, 2)
        Row indices of ``ijk`` that are face neighbours.
    """
    ijk = np.asarray(ijk, np.int64)
    if not len(ijk):
        return np.zeros((0, 2), np.int64)
    dims = ijk.max(axis=0) + 2
    keys = np.ravel_multi_index(ijk.T, dims)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    out = []
    for axis in range(3):
        step = np.zeros(3, np.int64)
        step[axis] = 1
        nkeys = np.ravel_multi_index((ijk + step).T, dims)
        pos = np.clip(np.searchsorted(sorted_keys, nkeys), 0, len(keys) - 1)
        hit = sorted_keys[pos] == nkeys
        out.append(np.column_stack([np.flatnonzero(hit), order[pos[hit]]]))
    return np.concatenate(out)


#: Methods of ``group_inference`` whose neighbours are mesh edges on surfaces.
MESH_METHODS = ("cluster", "perm_cluster_mass", "tfce")
#: fMRIPrep's midthickness mesh of an fsLR CIFTI density (``--cifti-output 91k`` → ``den-32k`` meshes).
FSLR_MESH_DENSITY = {"91k": "32k", "170k": "59k"}


def find_fslr_meshes(layout, subjects, density="32k"):
    """fMRIPrep's fsLR midthickness meshes of the subjects, found through pybids.

    fMRIPrep 23+ with ``--cifti-output`` writes ``sub-<s>/[ses-<x>/]anat/sub-<s>_[ses-<x>_][acq-<y>_]hemi-<L|R>_
    space-fsLR_den-32k_midthickness.surf.gii``; the native ``sub-<s>_hemi-L_midthickness.surf.gii`` (no space)
    has the subject's own vertices and is not used.

    Parameters
    ----------
    layout : bids.BIDSLayout
        The raw dataset with the fmriprep derivatives attached (:func:`glmx_workflows.io.bids.open_layout`).
    subjects : list of str
        Labels without ``sub-``.
    density : str
        Mesh density (``32k``).

    Returns
    -------
    dict
        ``{subject: {'L': path, 'R': path}}`` of the subjects with both hemispheres (the first in name order
        when a subject has several, e.g. one per session).
    """
    out = {}
    for sub in subjects:
        files = layout.get(subject=sub, scope="derivatives", suffix="midthickness", extension=".surf.gii",
                           return_type="object")
        hemis = {}
        for f in sorted(files, key=lambda f: f.path):
            ent = f.get_entities()
            den = ent.get("den", ent.get("density"))
            if ent.get("space") == "fsLR" and str(den) == density and ent.get("hemi") in ("L", "R"):
                hemis.setdefault(ent["hemi"], f.path)
        if set(hemis) == {"L", "R"}:
            out[sub] = hemis
    return out


def average_mesh(paths, out_path):
    """One template mesh: the vertex-wise mean of meshes sharing their triangles (fsLR meshes of subjects).

    Cluster and TFCE neighbours come from the triangles, which every fsLR mesh of a density shares; the mean
    coordinates (as the HCP group-average midthickness) only place the template for drawing.

    Parameters
    ----------
    paths : list of str
        ``.surf.gii`` meshes of one hemisphere.
    out_path : str or Path
        The template mesh written (atomically).

    Returns
    -------
    str
        ``out_path``.

    Raises
    ------
    GlmxError
        A mesh with other triangles or vertex count than the first, naming it.
    """
    import nibabel as nb

    from .atomic import atomic_path

    coords, faces = read_mesh(paths[0])
    total = coords.copy()
    for path in paths[1:]:
        c, f = read_mesh(path)
        if c.shape != coords.shape or not np.array_equal(f, faces):
            raise GlmxError(f"the mesh's triangles differ from those of {Path(paths[0]).name} ({len(c)} vertices, "
                            f"{len(f)} triangles against {len(coords)} and {len(faces)}): not the same fsLR density",
                            file=path, field="surface_meshes")
        total += c
    img = nb.gifti.GiftiImage()
    img.add_gifti_data_array(nb.gifti.GiftiDataArray((total / len(paths)).astype(np.float32),
                                                     intent="NIFTI_INTENT_POINTSET", datatype="NIFTI_TYPE_FLOAT32"))
    img.add_gifti_data_array(nb.gifti.GiftiDataArray(faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE",
                                                     datatype="NIFTI_TYPE_INT32"))
    with atomic_path(out_path) as tmp:
        nb.save(img, str(tmp))
    return str(out_path)


def group_fslr_meshes(layout, subjects, folder, density="32k"):
    """The template meshes of a group's fsLR maps from fMRIPrep's anatomical derivatives.

    The template is the average of the subjects' ``space-fsLR_den-32k_midthickness`` meshes (all subjects of
    the group that have both hemispheres), written once per set of source files under ``folder``.

    Parameters
    ----------
    layout : bids.BIDSLayout
    subjects : list of str
        The group's subjects (labels without ``sub-``).
    folder : str or Path
        Where the template meshes are written (the work directory).
    density : str

    Returns
    -------
    meshes : dict or None
        ``{'L': path, 'R': path}``; None when no subject has both meshes.
    used : list of str
        The subjects averaged.
    """
    import hashlib
    import os

    found = find_fslr_meshes(layout, subjects, density)
    if not found:
        return None, []
    used = sorted(found)
    digest = hashlib.sha1()
    for sub in used:
        for hemi in "LR":
            st = os.stat(found[sub][hemi])
            digest.update(f"{found[sub][hemi]}:{st.st_size}:{st.st_mtime_ns};".encode())
    target = Path(folder) / digest.hexdigest()[:12]
    meshes = {}
    for hemi in "LR":
        path = target / f"tpl-groupAverage_hemi-{hemi}_space-fsLR_den-{density}_midthickness.surf.gii"
        meshes[hemi] = str(path) if path.is_file() else average_mesh([found[s][hemi] for s in used], path)
    return meshes, used
