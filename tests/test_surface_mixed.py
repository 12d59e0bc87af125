"""group_model 'mixed' on surfaces: 8 simulated subjects' effect and variance maps written as fsaverage5 GIfTI pairs
and as fsLR CIFTI dense scalars, the group level run through GroupLevel; stat-tau2 and the contrast maps written in
the inputs' form equal the volume path's numeric core (core.group on the same arrays) and PyMARE's REML on a few
vertices; a missing or non-positive variance map is refused naming the file, nothing written."""

import json
import subprocess
import sys

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.api import GroupLevel
from glmx_workflows.core import group as cg
from glmx_workflows.io.example import make_example_dataset

N = 8
N_VERTICES = 10242


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    """A BIDS root with 8 subjects and participants' ages (the maps are written per test)."""
    return make_example_dataset(tmp_path_factory.mktemp("surfmixed") / "bids", n_subjects=N, n_runs=1, n_volumes=40,
                                shape=(5, 5, 5), seed=3)


def _spec(bids, space):
    spec = json.loads((bids / "task_information.json").read_text())
    spec["flanker"]["space"] = space
    path = bids.parent / f"spec_{space.replace(':', '_')}.json"
    path.write_text(json.dumps(spec))
    return path


def _patch(n_locations, mesh=False):
    """The planted locations: a tenth of them, on fsaverage5 a compact disc of the left pial mesh."""
    planted = np.zeros(n_locations, bool)
    if mesh:
        from glmx_workflows.io.meshes import packaged_mesh

        coords = packaged_mesh("fsaverage5")["L"][0]
        planted[np.argsort(np.linalg.norm(coords - coords[100], axis=1))[: n_locations // 10]] = True
    else:
        planted[: n_locations // 10] = True
    return planted


def _simulate(n_locations, seed, mesh=False):
    """Effects with a planted positive patch, heterogeneous first-level variances, zeros on a 'medial wall'."""
    rng = np.random.default_rng(seed)
    V = rng.uniform(0.2, 2.0, (N, n_locations)) ** 2
    tau = rng.uniform(0.0, 1.5, n_locations)
    Y = rng.normal(0, 1, (N, n_locations)) * np.sqrt(V + tau ** 2)
    planted = _patch(n_locations, mesh)
    Y[:, planted] += 2.5
    wall = np.zeros(n_locations, bool)
    wall[-n_locations // 20:] = True
    Y[:, wall] = 0.0
    V[:, wall] = 0.0
    return Y, V, wall, planted


def _gifti(path, values):
    img = nb.gifti.GiftiImage()
    img.add_gifti_data_array(nb.gifti.GiftiDataArray(np.asarray(values, np.float32), intent="NIFTI_INTENT_NONE",
                                                     datatype="NIFTI_TYPE_FLOAT32"))
    nb.save(img, str(path))


def _write_gifti_subjects(out, Y, V):
    for i in range(N):
        folder = out / f"sub-{i + 1:02d}" / "func"
        folder.mkdir(parents=True, exist_ok=True)
        for stat, data in (("effect", Y[i]), ("variance", V[i])):
            for h, part in (("L", data[:N_VERTICES]), ("R", data[N_VERTICES:])):
                _gifti(folder / f"sub-{i + 1:02d}_task-flanker_hemi-{h}_space-fsaverage5_contrast-task_stat-{stat}"
                                f"_statmap.func.gii", part)


def _cifti_axis():
    left = nb.cifti2.BrainModelAxis.from_surface(np.arange(0, 32492, 97), 32492, "CortexLeft")
    right = nb.cifti2.BrainModelAxis.from_surface(np.arange(5, 32492, 89), 32492, "CortexRight")
    mask = np.zeros((6, 6, 6), bool)
    mask[1:4, 2:5, 1:3] = True
    return left + right + nb.cifti2.BrainModelAxis.from_mask(mask, "ThalamusLeft", affine=np.diag([2.0, 2, 2, 1]))


def _write_cifti_subjects(out, Y, V, axis):
    for i in range(N):
        folder = out / f"sub-{i + 1:02d}" / "func"
        folder.mkdir(parents=True, exist_ok=True)
        for stat, data in (("effect", Y[i]), ("variance", V[i])):
            img = nb.Cifti2Image(np.asarray(data, np.float32)[None], header=(nb.cifti2.ScalarAxis(["map"]), axis))
            nb.save(img, str(folder / f"sub-{i + 1:02d}_task-flanker_space-fsLR_den-91k_contrast-task_stat-{stat}"
                                       f"_statmap.dscalar.nii"))


def _reference(bids, Y, V, keep):
    """The volume path's numeric core on the same (float32-stored) arrays: mixed fit and contrast maps."""
    ages = pd.read_csv(bids / "participants.tsv", sep="\t")["age"].to_numpy(float)
    X = np.column_stack([np.ones(N), ages - ages.mean()])
    Y32, V32 = Y.astype(np.float32).astype(np.float64), V.astype(np.float32).astype(np.float64)
    fit = cg.fit_group_model(Y32[:, keep], X, model="mixed", variances=V32[:, keep])
    return fit, cg.contrast_maps(fit, [1.0, 0.0]), X, Y32, V32


def _pair(folder, stem):
    return np.concatenate([nb.load(folder / stem.format(h=h)).darrays[0].data for h in "LR"]).astype(np.float64)


def _check_against_core_and_pymare(fit, maps, tau2, z, effect, keep, X, Y32, V32, planted):
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    assert np.all(tau2[~keep] == 0) and np.all(z[~keep] == 0)
    scale = max(1.0, np.abs(fit.tau2).max())
    assert np.abs(tau2[keep] - fit.tau2).max() <= 1e-5 * scale
    assert (fit.tau2 > 0).any() and (fit.tau2 == 0).any()
    assert np.abs(z[keep] - maps["z"]).max() <= 1e-4
    assert np.abs(effect[keep] - maps["effect"]).max() <= 1e-5 * np.abs(maps["effect"]).max()
    # an independent reference on a few vertices: PyMARE's REML
    idx = np.flatnonzero(keep)[:: max(1, keep.sum() // 12)][:12]
    est = VarianceBasedLikelihoodEstimator(method="REML", xtol=1e-12, maxiter=200)
    est.fit(Y32[:, idx], V32[:, idx], X)
    ref_tau2 = np.asarray(est.params_["tau2"]).ravel()
    assert np.abs(tau2[idx] - ref_tau2).max() <= 1e-4 * max(1.0, ref_tau2.max())
    assert np.abs(effect[idx] - est.params_["fe_params"][0]).max() <= 1e-4 * max(1.0, np.abs(effect[idx]).max())
    # the planted patch is found
    assert np.median(z[planted & keep]) > 2 and abs(np.median(z[~planted & keep])) < 0.5


def test_mixed_on_fsaverage5_gifti_pairs_equals_the_core_and_pymare(bids, tmp_path):
    Y, V, wall, planted = _simulate(2 * N_VERTICES, seed=5, mesh=True)
    out = tmp_path / "out"
    _write_gifti_subjects(out, Y, V)
    GroupLevel("flanker", bids, spec=_spec(bids, "fsaverage5"), output_dir=out, work_dir=tmp_path / "work",
               contrasts=["task"], group_model="mixed", group_inference=["fdr"]).run(plugin="Linear")
    gdir = out / "group"
    stem = "task-flanker_hemi-{h}_space-fsaverage5_contrast-task_stat-%s_statmap.func.gii"
    for h in "LR":  # one data array of the mesh's vertex count per hemisphere, tau2 included
        g = nb.load(gdir / (stem % "tau2").format(h=h))
        assert len(g.darrays) == 1 and g.darrays[0].data.shape == (N_VERTICES,)
    for stat in ("t", "tau2"):
        side = json.loads((gdir / f"task-flanker_space-fsaverage5_contrast-task_stat-{stat}_statmap.json").read_text())
        assert side["GroupModel"] == "mixed"
    keep = ~wall
    fit, maps, X, Y32, V32 = _reference(bids, Y, V, keep)
    z = _pair(gdir, stem % "z")
    _check_against_core_and_pymare(fit, maps, _pair(gdir, stem % "tau2"), z, _pair(gdir, stem % "effect"), keep, X,
                                   Y32, V32, planted)
    # the group report's cluster table: along fsaverage5's edges, per hemisphere, against scipy's components
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from glmx_workflows.io.meshes import mesh_edges, packaged_mesh

    table = pd.read_csv(gdir / "task-flanker_space-fsaverage5_contrast-task_clusters.tsv", sep="\t")
    assert list(table.columns[:4]) == ["cluster_id", "hemi", "vertex", "peak_z"] and "size_vertices" in table
    mesh = packaged_mesh("fsaverage5")
    edges = np.concatenate([mesh_edges(mesh["L"][1]), mesh_edges(mesh["R"][1]) + N_VERTICES])
    active = np.flatnonzero((z > 3.0902323) & keep)  # the default height, p < 0.001
    pos = np.full(z.size, -1)
    pos[active] = np.arange(active.size)
    e = pos[edges]
    e = e[(e >= 0).all(axis=1)]
    _, comp = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])),
                                              shape=(active.size,) * 2), directed=False)
    sizes = np.bincount(comp)
    assert sorted(table["size_vertices"]) == sorted(s for s in sizes if s >= 10)
    for _, row in table.iterrows():
        at = row["vertex"] + (N_VERTICES if row["hemi"] == "R" else 0)
        assert abs(z[at] - row["peak_z"]) < 1e-4 and sizes[comp[pos[at]]] == row["size_vertices"]
        assert z[active[comp == comp[pos[at]]]].max() == z[at]
    assert table["hemi"].iloc[0] == "L" and table["size_vertices"].iloc[0] >= 500  # the planted left disc
    report = (gdir / "task-flanker_report.html").read_text()
    assert "size_vertices" in report


def test_mixed_on_fslr_cifti_keeps_the_axis_and_equals_the_core(bids, tmp_path):
    axis = _cifti_axis()
    Y, V, wall, planted = _simulate(len(axis), seed=6)
    out = tmp_path / "out"
    _write_cifti_subjects(out, Y, V, axis)
    GroupLevel("flanker", bids, spec=_spec(bids, "fsLR"), output_dir=out, work_dir=tmp_path / "work",
               contrasts=["task"], group_model="mixed", group_inference=["fdr"]).run(plugin="Linear")
    gdir = out / "group"
    read = {}
    for stat in ("tau2", "z", "effect"):
        img = nb.load(gdir / f"task-flanker_space-fsLR_den-91k_contrast-task_stat-{stat}_statmap.dscalar.nii")
        assert img.header.get_axis(1) == axis and isinstance(img.header.get_axis(0), nb.cifti2.ScalarAxis)
        read[stat] = np.asarray(img.dataobj, np.float64)[0]
    keep = ~wall
    fit, maps, X, Y32, V32 = _reference(bids, Y, V, keep)
    _check_against_core_and_pymare(fit, maps, read["tau2"], read["z"], read["effect"], keep, X, Y32, V32, planted)


def _glmx(*args, cwd):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize("case", ["zero_variance", "missing_variance"])
def test_bad_surface_variance_map_is_one_line_naming_the_file(bids, tmp_path, case):
    Y, V, _, _ = _simulate(2 * N_VERTICES, seed=7)
    out = tmp_path / "out"
    _write_gifti_subjects(out, Y, V)
    folder = out / "sub-03" / "func"
    variance = folder / "sub-03_task-flanker_hemi-R_space-fsaverage5_contrast-task_stat-variance_statmap.func.gii"
    if case == "missing_variance":  # the pair stands for its left file: no left variance, no variance map
        named = "sub-03_task-flanker_hemi-L_space-fsaverage5_contrast-task_stat-effect_statmap.func.gii"
        (folder / named.replace("stat-effect", "stat-variance")).unlink()
    else:
        values = V[2, N_VERTICES:].copy()
        values[100] = 0.0  # inside the used locations (effects non-zero there in every subject)
        _gifti(variance, values)
        named = variance.name  # the hemisphere's own file
    spec = _spec(bids, "fsaverage5")
    proc = _glmx(bids, out, "group", "--task", "flanker", "--contrast", "task", "--group-model", "mixed",
                 "--inference", "fdr", "--quiet", "--work-dir", tmp_path / "work", "--spec", spec, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("glmx: error:"), proc.stderr[-2000:]
    assert named in lines[0] and "group_model" in lines[0], lines[0]
    assert not list(out.glob("group/*")), "partial group outputs written"


def test_mixed_with_group_min_subjects_on_gifti_pairs_uses_each_locations_subjects(bids, tmp_path):
    Y, V, wall, _ = _simulate(2 * N_VERTICES, seed=8)
    gap = np.zeros(2 * N_VERTICES, bool)
    gap[5000:7000] = True  # two subjects without data there (zeros, as outside their maps)
    Y[:2, gap] = 0.0
    V[:2, gap] = 0.0
    out = tmp_path / "out"
    _write_gifti_subjects(out, Y, V)
    GroupLevel("flanker", bids, spec=_spec(bids, "fsaverage5"), output_dir=out, work_dir=tmp_path / "work",
               contrasts=["task"], group_model="mixed", group_inference=["fdr"], group_level_regressors=[],
               group_min_subjects=6).run(plugin="Linear")
    gdir = out / "group"
    stem = "task-flanker_hemi-{h}_space-fsaverage5_contrast-task_stat-%s_statmap.func.gii"
    n, z, tau2 = (_pair(gdir, stem % s) for s in ("n", "z", "tau2"))
    keep = ~wall
    assert np.all(n[gap & keep] == N - 2) and np.all(n[~gap & keep] == N) and np.all(z[wall] == 0)
    # the numeric core on the same arrays with the same per-location subject sets
    Y32, V32 = Y.astype(np.float32).astype(np.float64), V.astype(np.float32).astype(np.float64)
    present = (Y32 != 0)[:, keep]
    fit = cg.fit_group_model(Y32[:, keep], np.ones((N, 1)), model="mixed",
                             variances=np.where(present, V32[:, keep], 1.0), present=present)
    maps = cg.contrast_maps(fit, [1.0])
    assert np.abs(z[keep] - maps["z"]).max() <= 1e-4
    assert np.abs(tau2[keep] - fit.tau2).max() <= 1e-5 * max(1.0, np.abs(fit.tau2).max())
