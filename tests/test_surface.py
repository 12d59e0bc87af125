"""First level on surfaces: a simulated fsLR CIFTI dtseries and fsaverage5 GIfTI pairs, found through pybids,
fitted by the workflow, against nilearn's array-level GLM (``run_glm`` + contrasts) on the same data and a design
built here with nilearn; planted effects recovered; outputs in the input's own form; bad surface inputs refused."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.contrasts import compute_contrast, compute_fixed_effect_contrast
from nilearn.glm.first_level import make_first_level_design_matrix, run_glm
from nilearn.glm.first_level.first_level import mean_scaling

from glmx_workflows.api import Subject
from glmx_workflows.core.simulate import effect_weights_at
from glmx_workflows.io.example import make_example_dataset, surface_locations

TASK = "flanker"
TR = 2.0
PREP = "derivatives/fmriprep/sub-01/func"
CONFOUNDS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
CONTRASTS = {"incongruentVcongruent": "incongruent - congruent", "task": "0.5*congruent + 0.5*incongruent"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("surf") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(8, 10, 8), n_volumes=90, seed=4, surfaces=True)
    return root


def _spec(path, space, **extra):
    entry = {"confound_regressors": CONFOUNDS, "modulators": [], "block_identifier": None, "space": space,
             "design_contrasts": dict(CONTRASTS), "condition_maps": False, **extra}
    path.write_text(json.dumps({TASK: entry}))
    return path


def _run_subject(root, tmp, space, **extra):
    out = tmp / "out"
    Subject("01", TASK, root, spec=_spec(tmp / "spec.json", space, **extra), output_dir=out,
            work_dir=tmp / "work").run(plugin="Linear")
    return out / "sub-01" / "func"


def _nilearn_design(root, run, n_scans):
    """The run's design built by nilearn from the raw events and confounds (independently of glmx)."""
    ev = pd.read_csv(root / "sub-01" / "func" / f"sub-01_task-{TASK}_run-{run}_events.tsv", sep="\t")
    ev = ev[["onset", "duration", "trial_type"]]
    conf = pd.read_csv(root / PREP / f"sub-01_task-{TASK}_run-{run}_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")[CONFOUNDS]
    conf = conf.fillna(conf.mean())
    return make_first_level_design_matrix(np.arange(n_scans) * TR, ev, hrf_model="glover", drift_model="cosine",
                                          high_pass=0.01, add_regs=conf.to_numpy(), add_reg_names=CONFOUNDS)


def _con(design, formula):
    weights = {"incongruent - congruent": {"incongruent": 1, "congruent": -1},
               "0.5*congruent + 0.5*incongruent": {"congruent": 0.5, "incongruent": 0.5}}[formula]
    return np.array([weights.get(c, 0.0) for c in design.columns])


def _nilearn_z(root, series):
    """z of every contrast: per run and fixed effects over the runs, from ``run_glm`` on nilearn-scaled arrays."""
    fits = []
    for run, Y in series.items():
        X = _nilearn_design(root, run, Y.shape[0])
        labels, results = run_glm(mean_scaling(Y)[0], X.to_numpy(), noise_model="ar1")
        fits.append((X, labels, results))
    out = {}
    for name, formula in CONTRASTS.items():
        cons = [_con(X, formula) for X, _, _ in fits]
        out[name] = compute_fixed_effect_contrast([f[1] for f in fits], [f[2] for f in fits], cons).z_score()
        X, labels, results = fits[1]
        out[(name, 2)] = compute_contrast(labels, results, cons[1]).z_score()
    return out


def test_cifti_first_level_matches_nilearn_and_keeps_the_axis(dataset, tmp_path):
    func = _run_subject(dataset, tmp_path, "fsLR:den-91k")
    inputs = {r: nb.load(dataset / PREP / f"sub-01_task-{TASK}_run-{r}_space-fsLR_den-91k_bold.dtseries.nii")
              for r in (1, 2)}
    theirs = _nilearn_z(dataset, {r: np.asarray(img.dataobj) for r, img in inputs.items()})
    axis_in = inputs[1].header.get_axis(1)
    for name in CONTRASTS:
        for run in (None, 2):
            tag = f"_run-{run}" if run else ""
            img = nb.load(func / f"sub-01_task-{TASK}{tag}_space-fsLR_den-91k_contrast-{name}_stat-z_statmap.dscalar.nii")
            axis = img.header.get_axis(1)
            # the input's brain models exactly: structures, vertex and voxel indices, mesh sizes, volume grid
            assert axis == axis_in
            assert [n for n, _, _ in axis.iter_structures()] == [n for n, _, _ in axis_in.iter_structures()]
            assert np.array_equal(axis.vertex, axis_in.vertex) and np.array_equal(axis.voxel, axis_in.voxel)
            assert isinstance(img.header.get_axis(0), nb.cifti2.ScalarAxis)
            ours = np.asarray(img.dataobj)[0]
            ref = theirs[(name, run)] if run else theirs[name]
            assert np.abs(ours - ref).max() < 1e-3, (name, run, np.abs(ours - ref).max())
    # planted effects: the conflict's core grayordinates light up for incongruent - congruent, null ones do not
    z = np.asarray(nb.load(func / f"sub-01_task-{TASK}_space-fsLR_den-91k_contrast-incongruentVcongruent_stat-z_"
                                  "statmap.dscalar.nii").dataobj)[0]
    weights = effect_weights_at(surface_locations()["fsLR"]["xyz"])
    core, null = weights["conflict"] >= 0.5, np.all([w == 0 for w in weights.values()], axis=0)
    assert core.sum() >= 5 and np.median(z[core]) > 3.1
    assert (np.abs(z[null]) > 3.1).mean() < 0.01
    report = (func.parent / f"sub-01_task-{TASK}_report.html").read_text()
    assert "CORTEX_LEFT" in report and "THALAMUS_LEFT" in report


def test_gifti_first_level_matches_nilearn_and_recovers_effects(dataset, tmp_path):
    func = _run_subject(dataset, tmp_path, "fsaverage5")
    series = {}
    for r in (1, 2):
        hemis = [nb.load(dataset / PREP / f"sub-01_task-{TASK}_run-{r}_hemi-{h}_space-fsaverage5_bold.func.gii")
                 for h in "LR"]
        series[r] = np.concatenate([np.stack([d.data for d in g.darrays]) for g in hemis], axis=1)
    kept = np.all([(Y.max(axis=0) > Y.min(axis=0)) for Y in series.values()], axis=0)
    assert 0 < (~kept).sum() < 1000  # the simulated medial wall (constant zeros) is left out
    theirs = _nilearn_z(dataset, {r: Y[:, kept] for r, Y in series.items()})
    for name in CONTRASTS:
        for run in (None, 2):
            tag = f"_run-{run}" if run else ""
            parts = []
            for h in "LR":
                g = nb.load(func / f"sub-01_task-{TASK}{tag}_hemi-{h}_space-fsaverage5_contrast-{name}_stat-z_statmap.func.gii")
                assert len(g.darrays) == 1 and g.darrays[0].data.shape == (10242,)
                parts.append(g.darrays[0].data)
            ours = np.concatenate(parts)
            ref = theirs[(name, run)] if run else theirs[name]
            assert np.abs(ours[kept] - ref).max() < 1e-3, (name, run, np.abs(ours[kept] - ref).max())
            assert np.all(ours[~kept] == 0)
    loc = surface_locations()["fsaverage5"]
    z = {h: nb.load(func / f"sub-01_task-{TASK}_hemi-{h}_space-fsaverage5_contrast-{c}_stat-z_statmap.func.gii")
         .darrays[0].data for h in "LR" for c in ["incongruentVcongruent"]}
    for h in "LR":
        w = effect_weights_at(loc[h])
        core = (w["conflict"] >= 0.5) & ~loc["medial"][h]
        null = np.all([v == 0 for v in w.values()], axis=0) & ~loc["medial"][h]
        assert core.sum() >= 10 and np.median(z[h][core]) > 3.1, h
        assert (np.abs(z[h][null]) > 3.1).mean() < 0.01, h
    report = (func.parent / f"sub-01_task-{TASK}_report.html").read_text()
    assert "inflated fsaverage5 mesh" in report and "data:image/png;base64" in report


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _other_density(root):
    path = root / PREP / f"sub-01_task-{TASK}_run-1_space-fsLR_den-91k_bold.dtseries.nii"
    img = nb.load(path, mmap=False)  # the file is rewritten in place: nothing may map it
    series = img.header.get_axis(0)
    axis = nb.cifti2.BrainModelAxis.from_surface(np.arange(50), 59292, "CortexLeft")
    nb.save(nb.Cifti2Image(np.array(img.dataobj)[:, :50], header=(series, axis)), path)
    return path


def _shorter_right(root):
    path = root / PREP / f"sub-01_task-{TASK}_run-1_hemi-R_space-fsaverage5_bold.func.gii"
    img = nb.load(path)
    img.darrays = img.darrays[:-3]
    nb.save(img, path)
    return path


def _no_right(root):
    (root / PREP / f"sub-01_task-{TASK}_run-2_hemi-R_space-fsaverage5_bold.func.gii").unlink()
    return root / PREP / f"sub-01_task-{TASK}_run-2_hemi-L_space-fsaverage5_bold.func.gii"


def _series_step(root):
    path = root / PREP / f"sub-01_task-{TASK}_run-1_space-fsLR_den-91k_bold.dtseries.nii"
    img = nb.load(path, mmap=False)
    series = img.header.get_axis(0)
    series.step = 1.5
    nb.save(nb.Cifti2Image(np.array(img.dataobj), header=(series, img.header.get_axis(1))), path)
    return path


# name: (space, mutate(root) -> the file the message must name (None: the spec), spec keys, substrings)
BAD = {
    "dtseries_other_density": ("fsLR:den-91k", _other_density, {}, ["den-91k", "59292"]),
    "hemispheres_differ_in_length": ("fsaverage5", _shorter_right, {}, ["different lengths", "87 in this file"]),
    "hemisphere_missing": ("fsaverage5", _no_right, {}, ["no hemi-R file"]),
    "series_step_disagrees_with_sidecar": ("fsLR", _series_step, {}, ["RepetitionTime is 2", "step is 1.5"]),
    "smoothing_on_surface": ("fsaverage5", lambda root: None, {"smoothing_fwhm": 6.0},
                             ["smoothing_fwhm", "surface", "geodesic"]),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_surface_input(dataset, tmp_path, name):
    space, mutate, extra, needles = BAD[name]
    root = tmp_path / "bids"
    shutil.copytree(dataset, root)
    named = mutate(root)
    spec = _spec(tmp_path / "spec.json", space, **extra)
    out = tmp_path / "out"
    proc = _cli([str(root), str(out), "participant", "--task", TASK, "--quiet", "--spec", str(spec),
                 "--work-dir", str(tmp_path / "work")], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("glmx: error: "), proc.stderr[-800:]
    for needle in needles + [str(named if named is not None else spec)]:
        assert needle in lines[0], (needle, lines[0])
    assert not (out / "sub-01").exists()


def _dlabel(path, axis, labels, names):
    label_axis = nb.cifti2.LabelAxis(["parcels"], [{0: ("???", (0, 0, 0, 0)),
                                                    **{k + 1: (n, (1, 0, 0, 1)) for k, n in enumerate(names)}}])
    nb.save(nb.Cifti2Image(labels[None].astype(np.float32), header=(label_axis, axis)), path)
    return path


def test_connectivity_with_a_dlabel_atlas_equals_direct_parcel_means(dataset, tmp_path):
    """denoise_run on the CIFTI with a .dlabel.nii: parcel means computed here from the dtseries, cleaned by
    nilearn's signal.clean with the node's settings; a dlabel on other grayordinates is refused naming it."""
    from nilearn.signal import clean

    from glmx_workflows.core.errors import GlmxError
    from glmx_workflows.interfaces.connectivity import DenoiseRun

    bold = dataset / PREP / f"sub-01_task-{TASK}_run-1_space-fsLR_den-91k_bold.dtseries.nii"
    confounds = dataset / PREP / f"sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv"
    img = nb.load(bold)
    axis = img.header.get_axis(1)
    labels = np.zeros(len(axis), int)
    for k, (name, sl, _) in enumerate(axis.iter_structures()):  # two parcels per structure, some background
        idx = np.arange(len(axis))[sl]
        labels[idx[: len(idx) // 3]] = 2 * k + 1
        labels[idx[len(idx) // 3: 2 * len(idx) // 3]] = 2 * k + 2
    names = [f"p{i}" for i in range(1, labels.max() + 1)]
    atlas = _dlabel(tmp_path / "parcels.dlabel.nii", axis, labels, names)
    node = DenoiseRun(bold_file=str(bold), mask_file=str(bold), confounds_file=str(confounds),
                      atlas=json.dumps({"name": "parcels", "labels_img": str(atlas)}), space="fsLR", tr=TR,
                      dummy_scans=2, min_volumes=40, confound_preset="6P", run_entities={"run": "1"})
    (tmp_path / "node").mkdir()
    (tmp_path / "node2").mkdir()
    out = node.run(cwd=str(tmp_path / "node")).outputs
    ours = pd.read_csv(out.timeseries_file, sep="\t")
    assert list(ours.columns) == names
    data = np.asarray(img.dataobj, np.float64)[2:]
    direct = np.column_stack([data[:, labels == k].mean(axis=1) for k in range(1, labels.max() + 1)])
    conf = pd.read_csv(confounds, sep="\t", na_values="n/a")[CONFOUNDS].to_numpy()[2:]
    ref = clean(direct, confounds=conf, detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.08,
                t_r=TR)
    np.testing.assert_allclose(ours.to_numpy(), ref, atol=1e-6)
    other = nb.cifti2.BrainModelAxis.from_surface(np.arange(len(axis)), 59292, "CortexLeft")
    bad = _dlabel(tmp_path / "other.dlabel.nii", other, labels, names)
    node.inputs.atlas = json.dumps({"labels_img": str(bad)})
    with pytest.raises(GlmxError, match="another grayordinate set") as err:
        node.run(cwd=str(tmp_path / "node2"))
    assert str(bad) in str(err.value)
