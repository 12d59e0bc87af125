"""Clusters and TFCE on meshes: the graph labelling equals scipy's grid labelling on a voxel grid given as a
graph, planted clusters on fsaverage5 have their exact extent, and vertices that are close in space but not
joined by mesh edges (the two hemispheres, either side of a gap) are never merged."""

import numpy as np
import pytest
from scipy import sparse

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.clusters import cluster_extent_mask
from glmx_workflows.core.group import permutation_inference
from glmx_workflows.core.tfce import cluster_measures, label_clusters, mask_edges, tfce
from glmx_workflows.io.geometry import CiftiGeometry, GiftiGeometry
from glmx_workflows.io.meshes import packaged_mesh


def _grid_edges(mask):
    """Face neighbours of the in-mask voxels, numbered in C order (written here without glmx)."""
    index = -np.ones(mask.shape, int)
    index[mask] = np.arange(mask.sum())
    pairs = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        both = mask[tuple(a)] & mask[tuple(b)]
        pairs.append(np.column_stack([index[tuple(a)][both], index[tuple(b)][both]]))
    return np.concatenate(pairs)


@pytest.fixture(scope="module")
def grid():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 8, 6)) < 0.8
    vol = np.zeros(mask.shape)
    vol[mask] = rng.normal(size=mask.sum()) * 1.5
    vol[1:4, 2:5, 1:4] += 3.0 * mask[1:4, 2:5, 1:4]
    return mask, vol, _grid_edges(mask)


def test_graph_labelling_equals_grid_labelling(grid):
    mask, vol, edges = grid
    for two_sided in (False, True):
        assert np.allclose(tfce(vol, two_sided=two_sided)[mask], tfce(vol[mask], two_sided=two_sided,
                                                                         connectivity=edges), atol=1e-9)
    stack = np.stack([vol, -vol, vol * 0.5])
    ref = cluster_measures(stack, 1.0, two_sided=True)
    ours = cluster_measures(stack[:, mask], 1.0, connectivity=edges, two_sided=True)
    assert np.array_equal(ref[0], ours[0]) and np.allclose(ref[1], ours[1])
    _, sizes, mass = label_clusters(vol, 1.0)
    _, gsizes, gmass = label_clusters(vol[mask], 1.0, connectivity=edges)
    assert sorted(sizes) == sorted(gsizes) and np.allclose(sorted(mass), sorted(gmass))
    assert np.array_equal(cluster_extent_mask(vol, 1.0, 4)[mask], cluster_extent_mask(vol[mask], 1.0, 4, edges))


def test_permutation_inference_on_a_graph_equals_the_grid(grid):
    mask, vol, edges = grid
    rng = np.random.default_rng(1)
    Y = vol[mask][None] * 0.4 + rng.normal(size=(9, mask.sum()))
    X = np.ones((9, 1))
    kw = dict(n_permutations=40, seed=3, methods=("perm_fwe", "perm_cluster_mass", "tfce"), cluster_threshold=1.5,
              tfce_steps=30)
    ref = permutation_inference(Y, X, np.array([1.0]), mask=mask, **kw)
    ours = permutation_inference(Y, X, np.array([1.0]), connectivity=edges, **kw)
    for key in ("p_fwe", "p_cluster_mass", "p_tfce", "tfce", "cluster_mass"):
        assert np.allclose(ref[key], ours[key]), key


def _rings(edges, n, seed, k):
    """Vertices within k mesh edges of ``seed`` (breadth-first, written here)."""
    adj = sparse.coo_matrix((np.ones(len(edges)), tuple(edges.T)), shape=(n, n))
    adj = (adj + adj.T).tocsr()
    reached = np.zeros(n, bool)
    reached[seed] = True
    for _ in range(k):
        reached |= (adj @ reached.astype(float)) > 0
    return reached


@pytest.fixture(scope="module")
def fsaverage5():
    mesh = packaged_mesh("fsaverage5")
    geometry = GiftiGeometry((10242, 10242))
    return mesh, geometry.edges()


def test_planted_clusters_on_fsaverage5_have_their_extent_and_hemispheres_never_merge(fsaverage5):
    mesh, edges = fsaverage5
    n = 2 * 10242
    assert edges.max() == n - 1 and len(edges) == 2 * (3 * 10242 - 6)  # a closed triangulated sphere per hemisphere
    # the two hemispheres' closest medial vertices: millimetres apart in space, never neighbours on the meshes
    left, right = mesh["L"][0], mesh["R"][0]
    medial = np.flatnonzero(left[:, 0] > left[:, 0].max() - 3)
    d = np.linalg.norm(left[medial][:, None] - right[None], axis=-1)
    i, j = np.unravel_index(d.argmin(), d.shape)
    seed_l, seed_r = medial[i], 10242 + j
    assert d.min() < 10
    patch_l, patch_r = _rings(edges, n, seed_l, 3), _rings(edges, n, seed_r, 3)
    values = np.where(patch_l | patch_r, 5.0, 0.0)
    labels, sizes, _ = label_clusters(values, 3.0, connectivity=edges)
    assert len(sizes) == 3 and sorted(sizes[1:]) == sorted([patch_l.sum(), patch_r.sum()])
    assert len(np.unique(labels[patch_l])) == 1 and len(np.unique(labels[patch_r])) == 1
    assert labels[seed_l] != labels[seed_r]
    # two patches of one hemisphere separated by one ring below threshold stay apart; filling the ring joins them
    core = _rings(edges, n, seed_l, 2)
    ring = _rings(edges, n, seed_l, 3) & ~core
    outer = _rings(edges, n, seed_l, 5) & ~_rings(edges, n, seed_l, 3)
    values = np.where(core | outer, 5.0, 0.0)
    _, sizes, _ = label_clusters(values, 3.0, connectivity=edges)
    assert sorted(sizes[1:]) == sorted([core.sum(), outer.sum()])
    values[ring] = 5.0
    _, sizes, _ = label_clusters(values, 3.0, connectivity=edges)
    assert list(sizes[1:]) == [(core | ring | outer).sum()]


def test_group_tfce_and_cluster_mass_find_a_planted_patch(fsaverage5):
    mesh, edges = fsaverage5
    n = 10242  # the left hemisphere
    left_edges = edges[(edges < n).all(axis=1)]
    patch = _rings(left_edges, n, 4000, 4)
    rng = np.random.default_rng(5)
    Y = rng.normal(size=(14, n)) + 1.2 * patch
    kept = np.ones(n, bool)
    kept[:50] = False  # left-out vertices (a medial wall): edges renumbered to the kept ones
    out = permutation_inference(Y[:, kept], np.ones((14, 1)), np.array([1.0]), n_permutations=60, seed=0,
                                methods=("perm_cluster_mass", "tfce"), cluster_threshold=2.8, tfce_steps=25,
                                connectivity=mask_edges(left_edges, kept))
    far = ~_rings(left_edges, n, 4000, 8)
    for key in ("p_cluster_mass", "p_tfce"):
        hit = np.zeros(n, bool)
        hit[kept] = out[key] < 0.05
        # the patch is found; away from it at most a stray vertex (t of 9 dof has heavy tails: FWE 5 %)
        assert hit[patch].mean() > 0.5 and hit[far].sum() <= 2, (key, hit[patch].mean(), hit[far].sum())


def test_cluster_methods_without_a_mesh_are_refused():
    import nibabel as nb

    axis = nb.cifti2.BrainModelAxis.from_surface(np.arange(10), 32492, "CortexLeft")
    with pytest.raises(GlmxError, match="surface_meshes"):
        CiftiGeometry(axis).edges()
    with pytest.raises(GlmxError, match="surface_meshes"):
        GiftiGeometry((40962, 40962)).edges()
    # subcortical voxels alone need no mesh: their face neighbours
    vox = nb.cifti2.BrainModelAxis.from_mask(np.ones((2, 2, 1), bool), "ThalamusLeft", affine=np.eye(4))
    assert len(CiftiGeometry(vox).edges()) == 4


def test_cifti_neighbours_from_given_meshes_and_voxel_faces(tmp_path):
    """fsLR cortex: the given mesh's edges between the grayordinates' vertices (renumbered); voxels: faces."""
    import nibabel as nb

    coords = np.zeros((6, 3))
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 0]])
    axis = (nb.cifti2.BrainModelAxis.from_surface(np.array([0, 1, 2, 5]), 6, "CortexLeft")
            + nb.cifti2.BrainModelAxis.from_surface(np.array([3, 4]), 6, "CortexRight")
            + nb.cifti2.BrainModelAxis.from_mask(np.array([[[True, True], [False, True]]]), "ThalamusLeft",
                                                 affine=np.eye(4)))
    edges = CiftiGeometry(axis).edges({"L": (coords, faces), "R": (coords, faces)})
    got = {tuple(sorted(e)) for e in edges.tolist()}
    # left: vertices 0,1,2,5 → rows 0..3; mesh edges 0-1, 1-2, 0-2, 5-0 (2-3, 3-4, 4-5, 2-4, 0-4 need 3 or 4)
    # right: vertices 3,4 → rows 4,5; edge 3-4; voxels (0,0,0),(0,0,1),(0,1,1) → rows 6,7,8: faces 6-7, 7-8
    assert got == {(0, 1), (1, 2), (0, 2), (0, 3), (4, 5), (6, 7), (7, 8)}
    with pytest.raises(GlmxError, match="vertices"):
        CiftiGeometry(axis).edges({"L": (np.zeros((7, 3)), faces), "R": (coords, faces)})
