"""Surface features beyond the GLM: connectivity on fsaverage5 GIfTI pairs with a GIfTI label atlas per
hemisphere (parcel means against numpy on the GIfTI arrays, cleaned by nilearn), its bad inputs, and the
whole connectivity analysis end to end on the pair."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.io.example import make_example_dataset

TASK = "flanker"
TR = 2.0
PREP = "derivatives/fmriprep/sub-01/func"
CONFOUNDS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
N_VERTICES = 10242


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("surffeat") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(8, 10, 8), n_volumes=90, seed=5, surfaces=True)
    return root


def _label_file(path, labels, table, structure):
    """A .label.gii as FreeSurfer/Workbench write it: one int32 array, NIFTI_INTENT_LABEL, a label table."""
    img = nb.gifti.GiftiImage(meta=nb.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
    for key, name in table.items():
        lab = nb.gifti.GiftiLabel(key=key, red=0.5, green=0.5, blue=0.5, alpha=1.0)
        lab.label = name
        img.labeltable.labels.append(lab)
    img.add_gifti_data_array(nb.gifti.GiftiDataArray(np.asarray(labels, np.int32), intent="NIFTI_INTENT_LABEL",
                                                     datatype="NIFTI_TYPE_INT32"))
    nb.save(img, str(path))
    return path


def _toy_atlas(folder):
    """Parcels from the packaged fsaverage5 pial coordinates: 3 bands along y per hemisphere, medial wall 0.

    The two hemispheres share the names 'front' and 'back' (as Destrieux does) and have one own name each.
    """
    from glmx_workflows.io.example import surface_locations

    loc = surface_locations()["fsaverage5"]
    labels, paths = {}, {}
    tables = {"L": {0: "???", 1: "front", 2: "middleL", 3: "back", 7: "unused"},
              "R": {0: "???", 4: "front", 5: "middleR", 6: "back"}}
    keys = {"L": (1, 2, 3), "R": (4, 5, 6)}
    for h, structure in (("L", "CortexLeft"), ("R", "CortexRight")):
        y = loc[h][:, 1]
        cuts = np.quantile(y, [1 / 3, 2 / 3])
        lab = np.select([y > cuts[1], y > cuts[0]], [keys[h][0], keys[h][1]], keys[h][2])
        lab[loc["medial"][h]] = 0
        labels[h] = lab
        paths[h] = _label_file(folder / f"toy_hemi-{h}.label.gii", lab, tables[h], structure)
    return paths, labels


def _gifti_run(root, run):
    hemis = [nb.load(root / PREP / f"sub-01_task-{TASK}_run-{run}_hemi-{h}_space-fsaverage5_bold.func.gii")
             for h in "LR"]
    return [np.stack([d.data for d in g.darrays]).astype(np.float64) for g in hemis]


def _denoise_node(root, atlas, run=1, **extra):
    from glmx_workflows.interfaces.connectivity import DenoiseRun

    left = root / PREP / f"sub-01_task-{TASK}_run-{run}_hemi-L_space-fsaverage5_bold.func.gii"
    right = root / PREP / f"sub-01_task-{TASK}_run-{run}_hemi-R_space-fsaverage5_bold.func.gii"
    confounds = root / PREP / f"sub-01_task-{TASK}_run-{run}_desc-confounds_timeseries.tsv"
    return DenoiseRun(bold_file=str(left), mask_file=str(right), confounds_file=str(confounds),
                      atlas=json.dumps(atlas), space="fsaverage5", tr=TR, dummy_scans=2, min_volumes=40,
                      confound_preset="6P", run_entities={"run": str(run)}, **extra)


def test_gifti_label_atlas_parcel_means_equal_numpy(dataset, tmp_path):
    """denoise_run on an fsaverage5 pair: parcel means of the GIfTI arrays computed here with numpy, cleaned by
    nilearn's signal.clean with the node's settings, within 1e-6; names from the label tables (shared names
    prefixed by their hemisphere), left hemisphere first; centres on nilearn's fsaverage5 mesh."""
    from nilearn.signal import clean

    paths, labels = _toy_atlas(tmp_path)
    node = _denoise_node(dataset, {"name": "toy", "labels_img": {"L": str(paths["L"]), "R": str(paths["R"])}})
    (tmp_path / "node").mkdir()
    out = node.run(cwd=str(tmp_path / "node")).outputs
    ours = pd.read_csv(out.timeseries_file, sep="\t")
    assert list(ours.columns) == ["L_front", "middleL", "L_back", "R_front", "middleR", "R_back"]
    left, right = _gifti_run(dataset, 1)
    direct = np.column_stack([data[2:, labels[h] == k].mean(axis=1)
                              for h, data, keys in (("L", left, (1, 2, 3)), ("R", right, (4, 5, 6))) for k in keys])
    conf = pd.read_csv(dataset / PREP / f"sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")[CONFOUNDS].to_numpy()[2:]
    ref = clean(direct, confounds=conf, detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.08,
                t_r=TR)
    np.testing.assert_allclose(ours.to_numpy(), ref, atol=1e-6)
    regions = pd.read_csv(out.regions_file, sep="\t")
    assert np.isfinite(regions[["x", "y", "z"]].to_numpy()).all()
    assert (regions["x"][:3] < 0).all() and (regions["x"][3:] > 0).all()  # left hemisphere at negative x
    manifest = json.load(open(out.manifest_file))
    assert manifest[0]["entities"] == {"run": "1", "seg": "toy", "stat": "mean"}


def _relabel(path, n):
    img = nb.load(str(path))
    data = np.asarray(img.darrays[0].data)
    img.darrays[0] = nb.gifti.GiftiDataArray(data[:n].astype(np.int32), intent="NIFTI_INTENT_LABEL",
                                             datatype="NIFTI_TYPE_INT32")
    nb.save(img, str(path))


BAD_ATLAS = {
    # name: (spec from the paths {'L', 'R'}, mutate(paths), the file named, substrings)
    "other_vertex_count": (lambda p: {"labels_img": {"L": str(p["L"]), "R": str(p["R"])}},
                           lambda p: _relabel(p["R"], 2562), "R", ["2562 vertices", "10242", "another mesh"]),
    "one_hemisphere_given": (lambda p: {"labels_img": {"L": str(p["L"])}}, lambda p: None, "L",
                             ["both hemispheres"]),
    "one_label_file_only": (lambda p: {"labels_img": str(p["L"])}, lambda p: None, "L", ["both hemispheres"]),
    "hemisphere_file_missing": (lambda p: {"labels_img": {"L": str(p["L"]), "R": str(p["R"])}},
                                lambda p: p["R"].unlink(), "R", ["not found"]),
}


@pytest.mark.parametrize("name", sorted(BAD_ATLAS))
def test_bad_gifti_label_atlas_is_one_line_naming_the_file(dataset, tmp_path, name):
    from glmx_workflows.core.errors import GlmxError

    spec_of, mutate, named, needles = BAD_ATLAS[name]
    paths, _ = _toy_atlas(tmp_path)
    mutate(paths)
    (tmp_path / "node").mkdir()
    with pytest.raises(GlmxError) as err:
        _denoise_node(dataset, spec_of(paths)).run(cwd=str(tmp_path / "node"))
    message = str(err.value)
    assert "\n" not in message and str(paths[named]) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_connectivity_on_gifti_pairs_end_to_end(dataset, tmp_path):
    """The connectivity analysis on fsaverage5 pairs, through the CLI: per-run and subject relmats with the
    label-table names, refusing a label file of another mesh at planning (exit 2, nothing written)."""
    root = tmp_path / "bids"
    shutil.copytree(dataset, root)
    paths, _ = _toy_atlas(tmp_path)
    entry = {"analysis": "connectivity", "space": "fsaverage5", "confound_preset": "6P", "min_volumes": 40,
             "dummy_scans": 2, "atlas": {"name": "toy", "labels_img": {"L": paths["L"].name, "R": paths["R"].name}},
             "connectivity_kinds": ["pearsoncorrelation"], "seeds": {"front": "L_front"}}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({TASK: entry}))
    out = tmp_path / "out"
    proc = _cli([str(root), str(out), "participant", "--task", TASK, "--quiet", "--spec", str(spec),
                 "--work-dir", str(tmp_path / "work")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-1500:]
    func = out / "sub-01" / "func"
    rel = pd.read_csv(func / f"sub-01_task-{TASK}_space-fsaverage5_seg-toy_stat-pearsoncorrelation_relmat.tsv",
                      sep="\t", index_col=0)
    assert list(rel.columns) == ["L_front", "middleL", "L_back", "R_front", "middleR", "R_back"]
    assert np.allclose(np.diag(rel.to_numpy()), 1.0)
    for run in (1, 2):
        assert (func / f"sub-01_task-{TASK}_run-{run}_space-fsaverage5_seg-toy_stat-mean_timeseries.tsv").is_file()
    # the parcel seed's map on every vertex, per hemisphere: Fisher z of the correlation of nilearn-cleaned series
    from nilearn.signal import clean

    def cleaned(x, run):
        conf = pd.read_csv(root / PREP / f"sub-01_task-{TASK}_run-{run}_desc-confounds_timeseries.tsv", sep="\t",
                           na_values="n/a")[CONFOUNDS].to_numpy()[2:]
        return clean(x[2:], confounds=conf, detrend=True, standardize="zscore_sample", high_pass=0.01,
                     low_pass=0.08, t_r=TR)

    labels = {h: nb.load(str(paths[h])).darrays[0].data for h in "LR"}
    refs = []
    for run in (1, 2):
        left, right = _gifti_run(root, run)
        Y = np.concatenate([left, right], axis=1)
        seed = cleaned(left[:, labels["L"] == 1].mean(axis=1, keepdims=True), run)[:, 0]
        varying = np.flatnonzero(Y.max(axis=0) > Y.min(axis=0))[::50]
        V = cleaned(Y[:, varying], run)
        r = np.array([np.corrcoef(seed, v)[0, 1] for v in V.T])
        refs.append((varying, np.arctanh(r)))
        maps = np.concatenate([nb.load(func / f"sub-01_task-{TASK}_run-{run}_hemi-{h}_space-fsaverage5_stat-z_"
                                               "desc-front_boldmap.func.gii").darrays[0].data for h in "LR"])
        assert maps.shape == (2 * N_VERTICES,)
        np.testing.assert_allclose(maps[varying], np.arctanh(r), atol=1e-4)
    mean = np.concatenate([nb.load(func / f"sub-01_task-{TASK}_hemi-{h}_space-fsaverage5_stat-z_desc-front_boldmap"
                                          ".func.gii").darrays[0].data for h in "LR"])
    np.testing.assert_allclose(mean[refs[0][0]], (refs[0][1] + refs[1][1]) / 2, atol=1e-4)

    _relabel(paths["L"], 642)
    out2 = tmp_path / "out2"
    proc = _cli([str(root), str(out2), "participant", "--task", TASK, "--quiet", "--spec", str(spec),
                 "--work-dir", str(tmp_path / "work2")], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-1500:]
    assert str(paths["L"]) in lines[0] and "642 vertices" in lines[0], lines[0]
    assert not (out2 / "sub-01").exists()


@pytest.mark.parametrize("seeds, needles", [
    ({"pcc": [0.0, -52.0, 26.0]}, ["seed 'pcc' is MNI coordinates", "names a parcel"]),
    ({"pcc": "nowhere"}, ["parcel 'nowhere'", "L_front"]),
])
def test_bad_surface_seeds_refused_at_planning(dataset, tmp_path, seeds, needles):
    from glmx_workflows.api import RestingState
    from glmx_workflows.core.errors import GlmxError

    paths, _ = _toy_atlas(tmp_path)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({TASK: {"analysis": "connectivity", "space": "fsaverage5", "min_volumes": 40,
                                       "confound_preset": "6P", "seeds": seeds,
                                       "atlas": {"labels_img": {"L": str(paths["L"]), "R": str(paths["R"])}}}}))
    with pytest.raises(GlmxError) as err:
        RestingState("01", TASK, dataset, spec=spec, output_dir=tmp_path / "out").runs()
    message = str(err.value)
    assert str(spec) in message and f"{TASK}.seeds.pcc" in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


# ------------------------------------------------------------------------------------------ single trial
CONTRASTS = {"incongruentVcongruent": "incongruent - congruent"}


def _run_single_trial(root, tmp, space, single_trial):
    from glmx_workflows.api import Subject

    entry = {"confound_regressors": CONFOUNDS, "modulators": [], "block_identifier": None, "space": space,
             "design_contrasts": dict(CONTRASTS), "condition_maps": False, "single_trial": single_trial}
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({TASK: entry}))
    out = tmp / "out"
    Subject("01", TASK, root, spec=spec, output_dir=out, work_dir=tmp / "work").run(plugin="Linear")
    return out / "sub-01" / "func"


def _nilearn_trial_betas(root, Y, onsets, method):
    """Betas of the trials at ``onsets`` from nilearn's array GLM on ``Y`` (run 1): one run_glm per trial
    (LSS: the trial its own regressor, the others grouped by condition) or one fit with every trial its own
    regressor (LSA); design by nilearn from the raw events and motion confounds."""
    from nilearn.glm.contrasts import compute_contrast
    from nilearn.glm.first_level import make_first_level_design_matrix, run_glm
    from nilearn.glm.first_level.first_level import mean_scaling

    events = pd.read_csv(root / "sub-01" / "func" / f"sub-01_task-{TASK}_run-1_events.tsv",
                         sep="\t")[["onset", "duration", "trial_type"]]
    conf = pd.read_csv(root / PREP / f"sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")[CONFOUNDS]
    conf = conf.fillna(conf.mean())
    scaled = mean_scaling(Y)[0]

    def fit(ev):
        X = make_first_level_design_matrix(np.arange(len(Y)) * TR, ev, hrf_model="glover", drift_model="cosine",
                                           high_pass=0.01, add_regs=conf.to_numpy(), add_reg_names=CONFOUNDS)
        labels, results = run_glm(scaled, X.to_numpy(), noise_model="ar1")
        return X, labels, results

    def beta(X, labels, results, column):
        return compute_contrast(labels, results, (X.columns == column).astype(float)).effect_size()

    index = [int(np.flatnonzero(np.isclose(events["onset"], o))[0]) for o in onsets]
    if method == "lsa":
        ev = events.copy()
        ev["trial_type"] = [f"zz{i:03d}" for i in range(len(ev))]
        X, labels, results = fit(ev)
        return [beta(X, labels, results, f"zz{i:03d}") for i in index]
    out = []
    for i in index:
        ev = events.copy()
        ev.loc[i, "trial_type"] = "zztrial"
        out.append(beta(*fit(ev), "zztrial"))
    return out


def test_single_trial_on_gifti_pairs_equals_nilearn_loop(dataset, tmp_path):
    """LSS on fsaverage5 pairs through the first-level workflow: per hemisphere a .func.gii with one data array
    of 10242 vertices per trial (named by trial and onset), equal to a loop of nilearn run_glm fits on the
    same arrays (kept vertices), zero on the left-out medial wall."""
    paths, labels = _toy_atlas(tmp_path)
    func = _run_single_trial(dataset, tmp_path, "fsaverage5", {
        "method": "lss", "conditions": ["incongruent"],
        "atlas": {"name": "toy", "labels_img": {"L": str(paths["L"]), "R": str(paths["R"])}}})
    stem = f"sub-01_task-{TASK}_run-1"
    table = pd.read_csv(func / f"{stem}_space-fsaverage5_desc-incongruent_betaseries.tsv", sep="\t")
    parts = []
    for h in "LR":
        img = nb.load(func / f"{stem}_hemi-{h}_space-fsaverage5_desc-incongruent_betaseries.func.gii")
        assert len(img.darrays) == len(table) >= 5
        assert all(d.data.shape == (N_VERTICES,) for d in img.darrays)
        names = [d.meta["Name"] for d in img.darrays]
        assert names[0] == f"trial-001_onset-{table['onset'][0]:g}"
        parts.append(np.stack([d.data for d in img.darrays]))
    ours = np.concatenate(parts, axis=1)
    left, right = _gifti_run(dataset, 1)
    Y = np.concatenate([left, right], axis=1)
    kept = Y.max(axis=0) > Y.min(axis=0)
    assert 0 < (~kept).sum() < 1000 and np.all(ours[:, ~kept] == 0)
    # beta-series connectivity over the GIfTI label parcels: the correlation of the parcel means of these maps
    rel = pd.read_csv(func / f"{stem}_space-fsaverage5_seg-toy_stat-pearsoncorrelation_desc-incongruent_relmat.tsv",
                      sep="\t", index_col=0)
    assert list(rel.columns) == ["L_front", "middleL", "L_back", "R_front", "middleR", "R_back"]
    both = np.concatenate([labels["L"], labels["R"]])
    means = np.column_stack([ours[:, both == k].mean(axis=1) for k in range(1, 7)])
    np.testing.assert_allclose(rel.to_numpy(), np.corrcoef(means.T), atol=1e-5)
    theirs = _nilearn_trial_betas(dataset, Y[:, kept], table["onset"][:3], "lss")
    for k, ref in enumerate(theirs):
        # nilearn bins the AR(1) coefficients (100 bins); over 20k vertices read as float32 (glmx) or float64
        # (here) a vertex or two may fall in the neighbouring bin: those differ by < 2 % of the maps' sd
        diff = np.abs(ours[k, kept] - ref)
        assert (diff > 1e-4 * ref.std()).sum() <= 3 and diff.max() < 2e-2 * ref.std(), (k, diff.max(), ref.std())


def test_single_trial_on_cifti_equals_nilearn_lsa_and_keeps_the_axis(dataset, tmp_path):
    """LSA on the fsLR dtseries with a dlabel atlas: a .dscalar.nii with one named map per trial on the input's
    brain-model axis, equal to nilearn's LSA fit on the same arrays; the beta-series relmat over the parcels."""
    bold = dataset / PREP / f"sub-01_task-{TASK}_run-1_space-fsLR_den-91k_bold.dtseries.nii"
    img = nb.load(bold)
    axis = img.header.get_axis(1)
    labels = np.zeros(len(axis), int)
    for k, (_, sl, _) in enumerate(axis.iter_structures()):
        labels[np.arange(len(axis))[sl]] = k + 1
    names = [f"s{k + 1}" for k in range(labels.max())]
    label_axis = nb.cifti2.LabelAxis(["parcels"], [{0: ("???", (0, 0, 0, 0)),
                                                    **{k + 1: (n, (1, 0, 0, 1)) for k, n in enumerate(names)}}])
    atlas = tmp_path / "structures.dlabel.nii"
    nb.save(nb.Cifti2Image(labels[None].astype(np.float32), header=(label_axis, axis)), atlas)
    func = _run_single_trial(dataset, tmp_path, "fsLR:den-91k",
                             {"method": "lsa", "atlas": {"name": "structures", "labels_img": str(atlas)}})
    stem = f"sub-01_task-{TASK}_run-1"
    for cond in ("congruent", "incongruent"):
        table = pd.read_csv(func / f"{stem}_space-fsLR_den-91k_desc-{cond}_betaseries.tsv", sep="\t")
        out = nb.load(func / f"{stem}_space-fsLR_den-91k_desc-{cond}_betaseries.dscalar.nii")
        assert out.header.get_axis(1) == axis
        scalar = out.header.get_axis(0)
        assert isinstance(scalar, nb.cifti2.ScalarAxis) and len(scalar) == len(table) >= 5
        assert scalar.name[1] == f"trial-002_onset-{table['onset'][1]:g}"
        ours = np.asarray(out.dataobj)
        theirs = _nilearn_trial_betas(dataset, np.asarray(img.dataobj, np.float64), table["onset"], "lsa")
        for k, ref in enumerate(theirs):
            err = np.abs(ours[k] - ref).max()
            assert err < 1e-4 * ref.std(), (cond, k, err, ref.std())
        rel = pd.read_csv(func / f"{stem}_space-fsLR_den-91k_seg-structures_stat-pearsoncorrelation_desc-{cond}_"
                                 "relmat.tsv", sep="\t", index_col=0)
        assert list(rel.columns) == names
        parcel_means = np.column_stack([ours[:, labels == k].mean(axis=1) for k in range(1, labels.max() + 1)])
        np.testing.assert_allclose(rel.to_numpy(), np.corrcoef(parcel_means.T), atol=1e-5)


# ------------------------------------------------------------------------- fsLR meshes from fMRIPrep's anat
N_FSLR = 32492  # vertices of an fsLR den-32k hemisphere


@pytest.fixture(scope="module")
def fslr_group(tmp_path_factory):
    """A BIDS skeleton of 4 subjects, their subject-level fsLR effect/variance maps (a planted patch on the
    mesh), and fMRIPrep-style fsLR midthickness meshes: 32492 vertices whose first 10242 carry nilearn's
    fsaverage5 triangles (jittered per subject), the CIFTI maps on those 10242 vertices of each hemisphere."""
    from glmx_workflows.io.meshes import packaged_mesh

    root = tmp_path_factory.mktemp("fslrgroup")
    bids = make_example_dataset(root / "bids", n_subjects=4, n_runs=1, shape=(6, 6, 6), n_volumes=30, seed=1)
    spec = json.loads((bids / "task_information.json").read_text())
    spec[TASK].update(space="fsLR", group_level_regressors=[])
    (bids / "task_information.json").write_text(json.dumps(spec))
    mesh = packaged_mesh("fsaverage5")
    axis = (nb.cifti2.BrainModelAxis.from_surface(np.arange(N_VERTICES), N_FSLR, "CortexLeft")
            + nb.cifti2.BrainModelAxis.from_surface(np.arange(N_VERTICES), N_FSLR, "CortexRight")
            + nb.cifti2.BrainModelAxis.from_mask(np.ones((3, 3, 3), bool), "ThalamusLeft", affine=np.eye(4)))
    coords = mesh["L"][0]
    patch = np.linalg.norm(coords - coords[100], axis=1) < 20  # left hemisphere, connected on the mesh
    rng = np.random.default_rng(3)
    out = root / "out"
    subjects = ["01", "02", "03", "04"]
    for i, sub in enumerate(subjects):
        func = out / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        effect = rng.normal(0, 1, len(axis))
        effect[:N_VERTICES][patch] = rng.normal(6.0, 0.3, patch.sum())  # t of 3 dof: a clear effect
        for stat, values in (("effect", effect), ("variance", np.ones(len(axis)))):
            nb.save(nb.Cifti2Image(values[None].astype(np.float32), header=(nb.cifti2.ScalarAxis(["map"]), axis)),
                    func / f"sub-{sub}_task-{TASK}_space-fsLR_den-91k_contrast-task_stat-{stat}_statmap.dscalar.nii")
        anat = bids / "derivatives" / "fmriprep" / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for h in "LR":
            xyz = np.zeros((N_FSLR, 3), np.float32)
            xyz[:N_VERTICES] = mesh[h][0] + rng.normal(0, 0.5, (N_VERTICES, 3))
            img = nb.gifti.GiftiImage()
            img.add_gifti_data_array(nb.gifti.GiftiDataArray(xyz, intent="NIFTI_INTENT_POINTSET",
                                                             datatype="NIFTI_TYPE_FLOAT32"))
            img.add_gifti_data_array(nb.gifti.GiftiDataArray(mesh[h][1].astype(np.int32),
                                                             intent="NIFTI_INTENT_TRIANGLE", datatype="NIFTI_TYPE_INT32"))
            nb.save(img, str(anat / f"sub-{sub}_hemi-{h}_space-fsLR_den-32k_midthickness.surf.gii"))
            # fMRIPrep's native-space mesh beside it: other vertices, never taken for the fsLR template
            nb.save(nb.gifti.GiftiImage(darrays=[
                nb.gifti.GiftiDataArray(np.zeros((5, 3), np.float32), intent="NIFTI_INTENT_POINTSET"),
                nb.gifti.GiftiDataArray(np.array([[0, 1, 2]], np.int32), intent="NIFTI_INTENT_TRIANGLE")]),
                str(anat / f"sub-{sub}_hemi-{h}_midthickness.surf.gii"))
    return bids, out, subjects, patch


def test_fslr_meshes_found_in_fmriprep_anat_and_averaged(fslr_group, tmp_path):
    from glmx_workflows.io.bids import open_layout
    from glmx_workflows.io.meshes import find_fslr_meshes, group_fslr_meshes, read_mesh

    bids, _, subjects, _ = fslr_group
    layout = open_layout(bids)
    found = find_fslr_meshes(layout, subjects)
    assert sorted(found) == subjects
    assert all(p.endswith(f"sub-{s}_hemi-{h}_space-fsLR_den-32k_midthickness.surf.gii")
               for s, hemis in found.items() for h, p in hemis.items())
    meshes, used = group_fslr_meshes(layout, subjects, tmp_path / "meshes")
    assert used == subjects
    for h in "LR":
        coords, faces = read_mesh(meshes[h])
        sources = [read_mesh(found[s][h]) for s in subjects]
        np.testing.assert_allclose(coords, np.mean([c for c, _ in sources], axis=0), atol=1e-5)
        assert np.array_equal(faces, sources[0][1])


def test_group_cluster_on_fslr_uses_the_fmriprep_meshes(fslr_group, tmp_path):
    """Without 'surface_meshes' the group's cluster extent on fsLR takes its neighbours from fMRIPrep's anat
    meshes: the same maps as with the meshes given explicitly; the planted patch is the one cluster; without
    meshes in the derivatives the method is refused before any work, saying what to provide."""
    from glmx_workflows.api import GroupLevel
    from glmx_workflows.core.errors import GlmxError

    bids, out, subjects, patch = fslr_group
    kwargs = dict(contrasts=["task"], group_inference=["cluster"], group_cluster_extent=10)
    found = GroupLevel(TASK, bids, output_dir=out, work_dir=tmp_path / "work", **kwargs)
    result = found.run(plugin="Linear")
    assert any("average midthickness of 4 subject(s)" in line for line in result.log)
    name = f"task-{TASK}_space-fsLR_den-91k_contrast-task_stat-z_desc-cluster_statmap.dscalar.nii"
    auto = np.asarray(nb.load(out / "group" / name).dataobj)[0]
    kept = auto[:N_VERTICES] != 0
    assert kept[patch].mean() > 0.9 and not kept[~patch].any()

    anat = bids / "derivatives" / "fmriprep" / "sub-01" / "anat"
    given = {h: str(anat / f"sub-01_hemi-{h}_space-fsLR_den-32k_midthickness.surf.gii") for h in "LR"}
    explicit_out = tmp_path / "explicit"
    shutil.copytree(out, explicit_out, ignore=shutil.ignore_patterns("group"))
    GroupLevel(TASK, bids, output_dir=explicit_out, work_dir=tmp_path / "work2", surface_meshes=given,
               **kwargs).run(plugin="Linear")
    np.testing.assert_array_equal(np.asarray(nb.load(explicit_out / "group" / name).dataobj)[0], auto)

    bare = tmp_path / "bare"
    shutil.copytree(bids, bare, ignore=shutil.ignore_patterns("*midthickness.surf.gii"))
    bare_out = tmp_path / "bare_out"
    shutil.copytree(out, bare_out, ignore=shutil.ignore_patterns("group"))
    with pytest.raises(GlmxError) as err:
        GroupLevel(TASK, bare, output_dir=bare_out, work_dir=tmp_path / "work3", **kwargs).run(plugin="Linear")
    message = str(err.value)
    assert "surface_meshes" in message and "space-fsLR_den-32k_midthickness.surf.gii" in message, message
    assert not (bare_out / "group").exists()


def test_connectome_figure_of_a_few_parcels(tmp_path):
    """The report's glass-brain connectome of a 6-parcel surface atlas (two tight hemispheric blocks: nilearn's
    '98%' string threshold keeps no edge there and fails) draws its strongest edges; an all-zero matrix draws
    the nodes alone."""
    from glmx_workflows.reports.rest import plot_connectome_glass

    block = np.full((3, 3), 0.9997)
    m = np.block([[block, np.full((3, 3), 0.87)], [np.full((3, 3), 0.87), block]])
    np.fill_diagonal(m, 1.0)
    centres = np.array([[-30, 20, 10], [-35, -20, 20], [-30, -60, 20], [30, 20, 10], [35, -20, 20], [30, -60, 20.0]])
    for name, matrix in (("blocks", m), ("zeros", np.zeros((6, 6)))):
        path = plot_connectome_glass(matrix, centres, tmp_path / f"{name}.png", name)
        assert path.stat().st_size > 1000
