"""Threshold-free cluster enhancement and cluster measures, vectorised over a stack of maps.

A stack of statistic maps (one per permutation) is labelled in one call of
:func:`scipy.ndimage.label` with a structuring element that connects voxels within a map (faces,
6-connectivity, as nilearn and FSL's TFCE) but never across maps: the Python loop runs over the
TFCE height steps only, not over permutations.

The TFCE sum follows nilearn's ``calculate_tfce`` (itself following fslmaths): per map, ``n_steps``
heights ``linspace(0, max, n_steps + 1)[1:]``, and at each height every supra-threshold voxel
gains ``extent**E * height**H`` (not multiplied by the step, as fslmaths).

The only imports are numpy and scipy.
"""

import numpy as np
from scipy import ndimage

from .errors import GlmxError


def stack_structure(connectivity=1):
    """Structuring element for a stack of 3D maps: neighbours within a map only.

    Parameters
    ----------
    connectivity : {1, 2, 3}
        1: faces (6 neighbours), 2: + edges (18), 3: + corners (26).

    Returns
    -------
    numpy.ndarray of bool, shape (3, 3, 3, 3)
        scipy's 3D structure of ``connectivity`` in the middle of the first (map) axis, so that no
        cluster spans two maps.

    Raises
    ------
    GlmxError
        When ``connectivity`` is not 1, 2 or 3.
    """
    if connectivity not in (1, 2, 3):
        raise GlmxError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    struct = np.zeros((3, 3, 3, 3), bool)
    struct[1] = ndimage.generate_binary_structure(3, connectivity)
    return struct


def _as_stack(maps):
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 3:
        return maps[None], True
    if maps.ndim != 4:
        raise GlmxError(f"expected a 3D map or a stack of shape (n_maps, x, y, z), got shape {maps.shape}")
    return maps, False


def tfce(maps, E=0.5, H=2.0, n_steps=100, two_sided=False, connectivity=1):
    """TFCE of every map of a stack.

    Parameters
    ----------
    maps : numpy.ndarray, shape (n_maps, x, y, z) or (x, y, z)
        Statistic maps, zero (or NaN) outside the mask.
    E, H : float
        Extent and height exponents (Smith & Nichols 2009: 0.5 and 2).
    n_steps : int
        Number of heights between 0 and each map's maximum (nilearn's and fslmaths' 100).
    two_sided : bool
        Also enhance negative values (with negative sign), as nilearn's two-sided test.
    connectivity : {1, 2, 3}
        Neighbourhood of a voxel (1: faces, nilearn's and FSL's choice for TFCE).

    Returns
    -------
    numpy.ndarray of float64, the shape of ``maps``
        TFCE values (zero where the map is <= 0 for a one-sided test).
    """
    stack, single = _as_stack(maps)
    stack = np.nan_to_num(stack, nan=0.0)
    struct = stack_structure(connectivity)
    out = np.zeros_like(stack)
    signs = (1.0, -1.0) if two_sided else (1.0,)
    for sign in signs:
        signed = stack * sign
        top = (np.abs(stack) if two_sided else signed).reshape(len(stack), -1).max(axis=1)
        # per-map heights exactly as numpy.linspace(0, top, n_steps + 1)[1:] for each map
        heights = np.linspace(0.0, top, int(n_steps) + 1)[1:]  # (n_steps, n_maps)
        for h in heights:
            live = h > 0
            if not live.any():
                continue
            above = signed >= np.where(live, h, np.inf)[:, None, None, None]
            labels, n = ndimage.label(above, struct)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel())
            gain = (sizes.astype(np.float64) ** E)[labels]
            gain[labels == 0] = 0.0
            out += sign * gain * (h ** H)[:, None, None, None]
    return out[0] if single else out


def cluster_measures(maps, threshold, connectivity=1, two_sided=False):
    """Largest cluster size and mass of every map of a stack.

    Parameters
    ----------
    maps : numpy.ndarray, shape (n_maps, x, y, z) or (x, y, z)
        Statistic maps, zero outside the mask.
    threshold : float
        Cluster-forming height: clusters are connected voxels with a value above it (absolute value
        for a two-sided test). Mass is the sum of (value - threshold) over the cluster.
    connectivity : {1, 2, 3}
        Neighbourhood of a voxel.
    two_sided : bool
        Positive and negative clusters (labelled separately).

    Returns
    -------
    max_size : numpy.ndarray of int, shape (n_maps,)
        Voxel count of each map's largest cluster (0 when none).
    max_mass : numpy.ndarray of float64, shape (n_maps,)
        Largest cluster mass of each map (0 when none).
    """
    stack, _ = _as_stack(maps)
    stack = np.nan_to_num(stack, nan=0.0)
    struct = stack_structure(connectivity)
    n_maps = len(stack)
    max_size = np.zeros(n_maps, int)
    max_mass = np.zeros(n_maps)
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        signed = stack * sign
        labels, n = ndimage.label(signed > threshold, struct)
        if n == 0:
            continue
        flat = labels.ravel()
        sizes = np.bincount(flat, minlength=n + 1)
        mass = np.bincount(flat, weights=(signed - threshold).ravel(), minlength=n + 1)
        sizes[0], mass[0] = 0, 0.0
        # which map each label belongs to: the map index of any of its voxels
        owner = np.zeros(n + 1, int)
        owner[flat] = np.repeat(np.arange(n_maps), flat.size // n_maps)
        np.maximum.at(max_size, owner[1:], sizes[1:])
        np.maximum.at(max_mass, owner[1:], mass[1:])
    return max_size, max_mass


def label_clusters(stat_map, threshold, connectivity=1):
    """Clusters of a single map above a height.

    Parameters
    ----------
    stat_map : numpy.ndarray, shape (x, y, z)
        Statistic map.
    threshold : float
        Voxels with a value strictly above it form clusters.
    connectivity : {1, 2, 3}
        1: faces (6 neighbours), 2: + edges (18), 3: + corners (26).

    Returns
    -------
    labels : numpy.ndarray of int, shape (x, y, z)
        0 background, 1..n clusters.
    sizes : numpy.ndarray of int, shape (n + 1,)
        Voxels per label (``sizes[0] = 0``).
    mass : numpy.ndarray of float64, shape (n + 1,)
        Sum of (value - threshold) per label (``mass[0] = 0``).
    """
    data = np.nan_to_num(np.asarray(stat_map, dtype=np.float64), nan=0.0)
    labels, n = ndimage.label(data > threshold, ndimage.generate_binary_structure(3, connectivity))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    mass = np.bincount(labels.ravel(), weights=(data - threshold).ravel(), minlength=n + 1)
    sizes[0], mass[0] = 0, 0.0
    return labels, sizes, mass
