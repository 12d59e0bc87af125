"""Cluster tables on meshes: core.clusters.cluster_table with mesh edges against connected components computed by
scipy on the same graph, and the group report's table of a surface group level (hemisphere, vertex, size, peak)."""

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from glmx_workflows.core.clusters import cluster_table
from glmx_workflows.io.geometry import GiftiGeometry


def _components(values, edges, threshold):
    """Clusters above a height by scipy's connected components of the graph restricted to the active locations."""
    active = values > threshold
    idx = np.flatnonzero(active)
    pos = np.full(values.size, -1)
    pos[idx] = np.arange(idx.size)
    e = pos[edges]
    e = e[(e >= 0).all(axis=1)]
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(idx.size, idx.size))
    _, labels = connected_components(graph, directed=False)
    return [idx[labels == k] for k in range(labels.max() + 1)] if idx.size else []


@pytest.mark.parametrize("two_sided", [False, True])
def test_graph_cluster_table_equals_scipys_components(two_sided):
    from glmx_workflows.io.meshes import mesh_edges, packaged_mesh

    mesh = packaged_mesh("fsaverage5")
    n = len(mesh["L"][0])
    edges = np.concatenate([mesh_edges(mesh["L"][1]), mesh_edges(mesh["R"][1]) + n])
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1, 2 * n)
    for hemi, offset, shift in (("L", 0, 4.0), ("R", n, -4.0)):  # a compact patch per hemisphere, signs opposite
        coords = mesh[hemi][0]
        patch = np.argsort(np.linalg.norm(coords - coords[100], axis=1))[:300]
        z[patch + offset] += shift
    p = rng.uniform(size=2 * n)
    table = cluster_table(z, None, 2.5, min_size=5, two_sided=two_sided, connectivity=edges, values={"p": p})
    expected = []
    for sign in ((1, -1) if two_sided else (1,)):
        comps = [c for c in _components(z * sign, edges, 2.5) if c.size >= 5]
        peaks = [c[np.argmax(z[c] * sign)] for c in comps]
        for k in np.argsort([-(z[q] * sign) for q in peaks], kind="stable"):
            expected.append((int(peaks[k]), comps[k].size))
    assert [(int(a), int(b)) for a, b in zip(table["location"], table["size_locations"])] == expected
    assert np.array_equal(table["peak_stat"].to_numpy(), z[table["location"].to_numpy(int)])
    assert np.array_equal(table["p"].to_numpy(), p[table["location"].to_numpy(int)])
    assert table.attrs["n_clusters"] == len(expected) and (table["peak_stat"] < 0).any() == two_sided
    assert table["size_locations"].max() >= 150  # the planted patch (300 vertices) is mostly one cluster
    # no cluster spans both hemispheres
    where = GiftiGeometry((n, n)).locate(table["location"].to_numpy(int))
    assert where["hemi"][0] == "L"  # the largest positive peak is the left patch's
    if two_sided:  # the largest negative cluster is the right patch
        negative = np.flatnonzero(table["peak_stat"].to_numpy() < 0)
        largest = int(negative[np.argmax(table["size_locations"].to_numpy()[negative])])
        assert where["hemi"][largest] == "R" and table["size_locations"].iloc[largest] >= 150


def test_no_cluster_gives_an_empty_table_with_the_columns():
    edges = np.array([[0, 1], [1, 2], [3, 4]])
    table = cluster_table(np.zeros(5), None, 1.0, connectivity=edges)
    assert table.empty and list(table.columns) == ["cluster_id", "location", "peak_stat", "size_locations"]
