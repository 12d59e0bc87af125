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
