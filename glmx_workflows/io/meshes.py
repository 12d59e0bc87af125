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
