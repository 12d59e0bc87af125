"""Threshold-free cluster enhancement and cluster measures, vectorised over a stack of maps.

A stack of statistic maps (one per permutation) is labelled in one call of
:func:`scipy.ndimage.label` with a structuring element that connects voxels within a map (faces,
6-connectivity, as nilearn and FSL's TFCE) but never across maps: the Python loop runs over the
TFCE height steps only, not over permutations.

The TFCE sum follows nilearn's ``calculate_tfce`` (itself following fslmaths): per map, ``n_steps``
heights ``linspace(0, max, n_steps + 1)[1:]``, and at each height every supra-threshold voxel
gains ``extent**E * height**H`` (not multiplied by the step, as fslmaths).

On surfaces, locations are the vertices of a mesh (and a CIFTI's subcortical voxels): ``connectivity`` is then
an ``(n_edges, 2)`` array of neighbour pairs (mesh edges, voxel faces) over the map's locations, maps are
``(n_maps, n_locations)``, and clusters are the connected components of the graph restricted to the
supra-threshold locations (:func:`graph_label`), one sparse labelling per height for the whole stack.

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


def is_graph(connectivity):
    """Whether ``connectivity`` is a neighbour list rather than a grid neighbourhood.

    Parameters
    ----------
    connectivity : int or array of shape (n_edges, 2)
        1, 2 or 3 (grid neighbourhoods), or pairs of neighbouring locations.

    Returns
    -------
    bool
    """
    return not isinstance(connectivity, (int, np.integer))


def _graph_edges(edges):
    return np.asarray(edges, dtype=np.int64).reshape(-1, 2)


def mask_edges(edges, mask):
    """Neighbour pairs over all locations → pairs over the locations in ``mask`` (renumbered in mask order).

    Parameters
    ----------
    edges : array of shape (n_edges, 2)
        Pairs of location indices (e.g. mesh edges over every vertex).
    mask : array of bool, shape (n_locations,)
        Locations kept.

    Returns
    -------
    numpy.ndarray of int64, shape (n_kept_edges, 2)
        Edges with both ends in the mask, indices into the kept locations.
    """
    mask = np.asarray(mask, bool)
    edges = _graph_edges(edges)
    index = np.full(mask.size, -1, np.int64)
    index[mask] = np.arange(int(mask.sum()))
    kept = index[edges]
    return kept[(kept >= 0).all(axis=1)]


def graph_label(active, edges):
    """Connected components of the active locations of each map, through the graph's edges.

    Parameters
    ----------
    active : array of bool, shape (n_maps, n_locations)
    edges : array of int, shape (n_edges, 2)
        Neighbour pairs over the locations.

    Returns
    -------
    labels : numpy.ndarray of int, shape (n_maps, n_locations)
        0 inactive, 1..n components (numbered over the whole stack: no component spans two maps).
    n : int
        Number of components.
    """
    from scipy import sparse
    from scipy.sparse import csgraph

    active = np.asarray(active, bool)
    n_maps, n_loc = active.shape
    edges = _graph_edges(edges)
    both = active[:, edges[:, 0]] & active[:, edges[:, 1]]
    m, e = np.nonzero(both)
    rows, cols = m * n_loc + edges[e, 0], m * n_loc + edges[e, 1]
    size = n_maps * n_loc
    graph = sparse.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(size, size))
    _, comp = csgraph.connected_components(graph, directed=False)
    flat = active.ravel()
    labels = np.zeros(size, np.int64)
    uniq, inv = np.unique(comp[flat], return_inverse=True)
    labels[flat] = inv + 1
    return labels.reshape(n_maps, n_loc), int(uniq.size)


def _label(above, connectivity):
    """Labels of a stack's supra-threshold locations: scipy on grids, :func:`graph_label` on graphs."""
    if is_graph(connectivity):
        return graph_label(above, connectivity)
    return ndimage.label(above, stack_structure(connectivity))


def _as_stack(maps, connectivity=1):
    maps = np.asarray(maps, dtype=np.float64)
    dims = 1 if is_graph(connectivity) else 3
    if maps.ndim == dims:
        return maps[None], True
    if maps.ndim != dims + 1:
        what = "(n_maps, n_locations)" if dims == 1 else "(n_maps, x, y, z)"
        raise GlmxError(f"expected a {dims}D map or a stack of shape {what}, got shape {maps.shape}")
    return maps, False


def tfce(maps, E=0.5, H=2.0, n_steps=100, two_sided=False, connectivity=1):
    """TFCE of every map of a stack.

    Parameters
    ----------
    maps : numpy.ndarray, shape (n_maps, x, y, z) or (x, y, z)
        Statistic maps, zero (or NaN) outside the mask; ``(n_maps, n_locations)`` or ``(n_locations,)`` with a
        neighbour list as ``connectivity``.
    E, H : float
        Extent and height exponents (Smith & Nichols 2009: 0.5 and 2).
    n_steps : int
        Number of heights between 0 and each map's maximum (nilearn's and fslmaths' 100).
    two_sided : bool
        Also enhance negative values (with negative sign), as nilearn's two-sided test.
    connectivity : {1, 2, 3} or array of shape (n_edges, 2)
        Neighbourhood of a voxel (1: faces, nilearn's and FSL's choice for TFCE), or neighbour pairs of
        locations (mesh edges).

    Returns
    -------
    numpy.ndarray of float64, the shape of ``maps``
        TFCE values (zero where the map is <= 0 for a one-sided test).
    """
    stack, single = _as_stack(maps, connectivity)
    stack = np.nan_to_num(stack, nan=0.0)
    if not is_graph(connectivity):
        stack_structure(connectivity)  # checked once
    per_map = (-1,) + (1,) * (stack.ndim - 1)
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
            above = signed >= np.where(live, h, np.inf).reshape(per_map)
            labels, n = _label(above, connectivity)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel())
            gain = (sizes.astype(np.float64) ** E)[labels]
            gain[labels == 0] = 0.0
            out += sign * gain * (h ** H).reshape(per_map)
    return out[0] if single else out


def cluster_measures(maps, threshold, connectivity=1, two_sided=False):
    """Largest cluster size and mass of every map of a stack.

    Parameters
    ----------
    maps : numpy.ndarray, shape (n_maps, x, y, z) or (x, y, z)
        Statistic maps, zero outside the mask (``(n_maps, n_locations)`` with a neighbour list).
    threshold : float
        Cluster-forming height: clusters are connected voxels with a value above it (absolute value
        for a two-sided test). Mass is the sum of (value - threshold) over the cluster.
    connectivity : {1, 2, 3} or array of shape (n_edges, 2)
        Neighbourhood of a voxel, or neighbour pairs of locations.
    two_sided : bool
        Positive and negative clusters (labelled separately).

    Returns
    -------
    max_size : numpy.ndarray of int, shape (n_maps,)
        Voxel count of each map's largest cluster (0 when none).
    max_mass : numpy.ndarray of float64, shape (n_maps,)
        Largest cluster mass of each map (0 when none).
    """
    stack, _ = _as_stack(maps, connectivity)
    stack = np.nan_to_num(stack, nan=0.0)
    if not is_graph(connectivity):
        stack_structure(connectivity)
    n_maps = len(stack)
    max_size = np.zeros(n_maps, int)
    max_mass = np.zeros(n_maps)
    for sign in (1.0, -1.0) if two_sided else (1.0,):
        signed = stack * sign
        labels, n = _label(signed > threshold, connectivity)
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
        Statistic map (``(n_locations,)`` with a neighbour list).
    threshold : float
        Voxels with a value strictly above it form clusters.
    connectivity : {1, 2, 3} or array of shape (n_edges, 2)
        1: faces (6 neighbours), 2: + edges (18), 3: + corners (26); or neighbour pairs of locations.

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
    if is_graph(connectivity):
        labels, n = graph_label((data > threshold)[None], connectivity)
        labels = labels[0]
    else:
        labels, n = ndimage.label(data > threshold, ndimage.generate_binary_structure(3, connectivity))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    mass = np.bincount(labels.ravel(), weights=(data - threshold).ravel(), minlength=n + 1)
    sizes[0], mass[0] = 0, 0.0
    return labels, sizes, mass
