"""Clusters of a statistic map: the extent filter and the one cluster table (first-level reports and
the group level both use it).

Rules (nilearn's ``get_clusters_table``, the field's reference, which the tests compare with):

* a cluster is a face-connected set of voxels strictly above the height (each sign apart when
  two-sided); clusters smaller than ``min_size`` voxels are left out;
* clusters are listed by descending peak; with two signs, negative clusters are numbered after the
  positive rows (peaks and sub-peaks), as nilearn numbers them;
* peaks are the 3x3x3 local maxima of the cluster (flat patches are no maxima unless the whole
  cluster is flat; a plateau counts once, at its centre of mass, or at the plateau voxel nearest to
  it when the centre falls outside);
* sub-peaks are pared as nilearn pares them: a peak is kept when it lies farther than
  ``min_distance`` mm from the last kept one; the peak and at most ``n_subpeaks`` sub-peaks are listed.

Unlike nilearn, which scans the whole volume once per cluster (minutes on an unsmoothed 2 mm map with
thousands of clusters), the map is labelled once and each cluster's peaks are searched in its bounding
box (plus a voxel of margin, so that the 3x3x3 filters see what they would see in the whole volume).

The only imports are numpy, scipy and pandas.
"""

import numpy as np
import pandas as pd
from scipy import ndimage

from .tfce import is_graph, label_clusters, stack_structure


def cluster_extent_mask(stat_map, threshold, min_size, connectivity=1):
    """Voxels above a height that belong to a cluster of at least ``min_size`` voxels.

    The clusters :func:`cluster_table` lists (one-sided) are exactly the ones kept here.

    Parameters
    ----------
    stat_map : numpy.ndarray, shape (x, y, z)
        Statistic map.
    threshold : float
        Height: voxels strictly above it form clusters.
    min_size : int
        Smallest cluster kept, in voxels.
    connectivity : {1, 2, 3} or array of shape (n_edges, 2)
        1: faces (6 neighbours), 2: + edges (18), 3: + corners (26); or a mesh's edges, ``stat_map`` then
        being one value per location (see :func:`glmx_workflows.core.tfce.label_clusters`).

    Returns
    -------
    numpy.ndarray of bool, shape of ``stat_map``
        True in the kept clusters.
    """
    labels, sizes, _ = label_clusters(stat_map, threshold, connectivity)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    return keep[labels]


def _peaks(masked, origin, affine, min_distance, n_peaks):
    """Peak and sub-peaks of one cluster: ``masked`` holds its values (> 0) in a box, 0 around it.

    Returns voxel indices (n, 3) in the whole volume (``origin`` is the box's corner) and values (n,),
    by descending value, pared to at most ``n_peaks`` as nilearn pares them.
    """
    data_max = ndimage.maximum_filter(masked, 3)
    maxima = masked == data_max
    nonzero = masked != 0
    maxima[~nonzero] = False
    if not np.isclose(masked[nonzero].max(), masked[nonzero].min()):
        maxima[(data_max - ndimage.minimum_filter(masked, 3)) <= 0] = False  # flat patches are no maxima
    labeled, n = ndimage.label(maxima)
    index = np.arange(1, n + 1)
    # round in whole-volume coordinates: numpy rounds halves to even, so the box offset matters
    ijk = np.round(np.array(ndimage.center_of_mass(masked, labeled, index)) + origin).astype(int) - origin
    outside = labeled[ijk[:, 0], ijk[:, 1], ijk[:, 2]] != index
    if outside.any():  # a plateau's centre of mass off the plateau: its nearest voxel (nilearn's rule)
        points = np.argwhere(labeled > 0)
        which = labeled[labeled > 0]
        for i in np.flatnonzero(outside):
            cand = points[which == index[i]]
            ijk[i] = cand[np.argmin(np.linalg.norm(cand - ijk[i], axis=1))]
    vals = masked[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    order = (-vals).argsort()
    ijk, vals = ijk[order] + origin, vals[order]
    xyz = _world(affine, ijk)
    kept, last = [0], 0
    for j in range(1, len(vals)):
        if len(kept) == n_peaks:
            break
        if np.linalg.norm(xyz[last] - xyz[j]) > min_distance:
            kept.append(j)
            last = j
    return ijk[kept], vals[kept]


def _world(affine, ijk):
    # nibabel's apply_affine, to the bit
    return np.dot(ijk, affine[:3, :3].T) + affine[:3, 3][None, :]


def cluster_table(stat_map, affine, threshold, min_size=0, two_sided=False, min_distance=8.0, n_subpeaks=3,
                  connectivity=1, max_clusters=None, values=None):
    """Clusters of a statistic map above a height, with peaks and sub-peaks (nilearn's rules, see module).

    Parameters
    ----------
    stat_map : numpy.ndarray, shape (x, y, z)
        z (or t) map, zero (or NaN) outside the mask; worked on in its own float dtype.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world transform (peak coordinates are reported in mm).
    threshold : float
        Cluster-forming height (voxels strictly above it; \\|value\\| when two-sided).
    min_size : int
        Clusters smaller than this (in voxels) are left out.
    two_sided : bool
        Negative clusters too (listed after the positive ones, with negative peak values).
    min_distance : float
        A sub-peak is listed when farther than this (mm) from the last listed peak of its cluster.
    n_subpeaks : int
        Sub-peaks listed per cluster at most (nilearn: 3).
    connectivity : {1, 2, 3} or array of shape (n_edges, 2)
        Neighbourhood of the clusters (1: faces, nilearn's); or neighbour pairs of locations (mesh edges),
        ``stat_map`` then holding one value per location: see :func:`_graph_cluster_table`.
    max_clusters : int, optional
        List only the clusters with the highest peaks, this many per sign (all by default).
    values : dict, optional
        ``{column: array (x, y, z)}`` read at each row's voxel (e.g. corrected p-values).

    Returns
    -------
    pandas.DataFrame
        One row per peak: ``cluster_id`` ('1', '1a', ...), ``x``, ``y``, ``z`` (mm), ``i``, ``j``, ``k``
        (voxel), ``peak_stat`` (signed), ``size_voxels``, ``size_mm3`` (empty on sub-peak rows), then
        ``values``'s columns. ``attrs['n_clusters']`` counts the clusters before ``max_clusters``.
    """
    stat_map = np.asarray(stat_map)
    data = np.array(stat_map, dtype=stat_map.dtype if np.issubdtype(stat_map.dtype, np.floating) else np.float64)
    data[~np.isfinite(data)] = 0
    if is_graph(connectivity):
        return _graph_cluster_table(data, connectivity, threshold, min_size, two_sided, max_clusters, values)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_mm3 = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0)))  # the header's zooms
    values = values or {}
    structure = stack_structure(connectivity)[1]
    rows, n_clusters = [], 0
    for sign in ((1, -1) if two_sided else (1,)):
        offset = len(rows)  # nilearn numbers the negative clusters after the rows (peaks and sub-peaks) so far
        signed = data * sign if sign < 0 else data
        # compared in the map's own dtype, as nilearn does (a float32 map against a float32 height)
        labels, n = ndimage.label(signed > threshold, structure)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        ids = np.flatnonzero(sizes[1:] >= max(int(min_size), 1)) + 1
        if not ids.size:
            continue
        n_clusters += ids.size
        flat = labels.ravel()
        inside = np.flatnonzero(flat)
        lab, val = flat[inside], signed.ravel()[inside]
        by = np.lexsort((val, lab))  # by cluster, then value: each cluster's maximum comes last
        ends = np.append(np.flatnonzero(np.diff(lab[by])), by.size - 1)
        peaks = val[by][ends][ids - 1]  # every label 1..n has voxels, so ends[c - 1] is cluster c's maximum
        order = ids[(-peaks).argsort()]  # nilearn's sort (same array as nilearn's, so the same order of ties)
        boxes = ndimage.find_objects(labels)
        for rank, c in enumerate(order[:max_clusters]):
            box = boxes[c - 1]
            lo = [max(s.start - 1, 0) for s in box]
            crop = tuple(slice(a, min(s.stop + 1, dim)) for a, s, dim in zip(lo, box, data.shape))
            masked = np.where(labels[crop] == c, signed[crop], 0).astype(signed.dtype)
            ijk, vals = _peaks(masked, np.array(lo), affine, min_distance, n_subpeaks + 1)
            xyz = _world(affine, ijk)
            number = rank + offset + 1
            for m in range(len(vals)):
                row = {"cluster_id": str(number) if m == 0 else f"{number}{chr(ord('a') + m - 1)}",
                       "x": float(xyz[m, 0]), "y": float(xyz[m, 1]), "z": float(xyz[m, 2]),
                       "i": int(ijk[m, 0]), "j": int(ijk[m, 1]), "k": int(ijk[m, 2]),
                       "peak_stat": vals[m] * sign,
                       "size_voxels": int(sizes[c]) if m == 0 else None,
                       "size_mm3": float(sizes[c] * voxel_mm3) if m == 0 else None}
                for name, arr in values.items():
                    row[name] = float(np.asarray(arr)[tuple(ijk[m])])
                rows.append(row)
    columns = ["cluster_id", "x", "y", "z", "i", "j", "k", "peak_stat", "size_voxels", "size_mm3", *values]
    table = pd.DataFrame(rows, columns=columns).astype({"size_voxels": "Int64", "size_mm3": "float64"})
    if len(table):
        table["peak_stat"] = table["peak_stat"].astype(data.dtype)
    table.attrs["n_clusters"] = n_clusters
    return table


def _graph_cluster_table(data, edges, threshold, min_size, two_sided, max_clusters, values):
    """:func:`cluster_table` on a graph (a mesh): one row per cluster, at its peak location.

    Clusters are the connected sets of locations strictly above the height through ``edges`` (each sign
    apart), ordered and numbered as on grids; a mesh has no millimetre grid for nilearn's sub-peak rule, so
    no sub-peaks are listed.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_locations,)
    edges : numpy.ndarray of int, shape (n_edges, 2)
    threshold, min_size, two_sided, max_clusters, values
        As for :func:`cluster_table` (``values``: arrays of shape (n_locations,)).

    Returns
    -------
    pandas.DataFrame
        ``cluster_id``, ``location`` (index into ``data``), ``peak_stat`` (signed), ``size_locations``, then
        ``values``'s columns; ``attrs['n_clusters']``.
    """
    values = values or {}
    rows, n_clusters = [], 0
    for sign in ((1, -1) if two_sided else (1,)):
        signed = data * sign if sign < 0 else data
        labels, sizes, _ = label_clusters(signed, threshold, edges)
        ids = np.flatnonzero(sizes >= max(int(min_size), 1))
        ids = ids[ids > 0]
        if not ids.size:
            continue
        n_clusters += ids.size
        inside = np.flatnonzero(labels)
        lab, val = labels[inside], signed[inside]
        by = np.lexsort((val, lab))  # by cluster, then value: each cluster's maximum comes last
        ends = np.append(np.flatnonzero(np.diff(lab[by])), by.size - 1)
        peak_at = dict(zip(lab[by][ends], inside[by][ends]))
        order = ids[(-signed[[peak_at[c] for c in ids]]).argsort(kind="stable")]
        offset = len(rows)
        for rank, c in enumerate(order[:max_clusters]):
            loc = int(peak_at[c])
            row = {"cluster_id": str(rank + offset + 1), "location": loc, "peak_stat": signed[loc] * sign,
                   "size_locations": int(sizes[c])}
            for name, arr in values.items():
                row[name] = float(np.asarray(arr)[loc])
            rows.append(row)
    table = pd.DataFrame(rows, columns=["cluster_id", "location", "peak_stat", "size_locations", *values])
    if len(table):
        table["peak_stat"] = table["peak_stat"].astype(data.dtype)
    table.attrs["n_clusters"] = n_clusters
    return table
