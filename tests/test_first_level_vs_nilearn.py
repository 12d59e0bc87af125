"""The whole first-level path (pybids → Nipype workflow → BIDS outputs) against nilearn's FirstLevelModel
fed the same BOLD, mask, events and confound columns, built here independently of glmx's own code."""

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix

from glmx_workflows.api import Subject
from glmx_workflows.io.example import make_example_dataset, read_planted_effects

TASK = "flanker"
SPACE = "MNI152NLin2009cAsym"
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(14, 16, 14), n_volumes=100, seed=3)
    return root


@pytest.fixture(scope="module")
def dataset_int16(tmp_path_factory):
    """The two-run dataset with its BOLD stored as int16 + scl_slope / scl_inter, as some pipelines write it."""
    root = tmp_path_factory.mktemp("ds16") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(14, 16, 14), n_volumes=100, seed=3)
    for bold in (root / "derivatives" / "fmriprep").rglob("*_desc-preproc_bold.nii.gz"):
        img = nb.load(str(bold))
        data = img.get_fdata()
        inter = float(data.min())
        slope = float(data.max() - inter) / 32000
        out = nb.Nifti1Image(np.round((data - inter) / slope).astype(np.int16), img.affine, img.header)
        out.header.set_data_dtype(np.int16)
        out.header.set_slope_inter(slope, inter)
        nb.save(out, str(bold))
        assert nb.load(str(bold)).get_data_dtype() == np.int16
    return root


@pytest.fixture(scope="module")
def dataset_one_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds1") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=1, shape=(14, 16, 14), n_volumes=90, seed=5)
    return root


def _spec(root, tmp_path, **entry):
    base = {"confound_regressors": MOTION, "modulators": [], "block_identifier": None,
            "design_contrasts": {"incongruentVcongruent": "incongruent - congruent"}, "condition_maps": False}
    base.update(entry)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({TASK: base}))
    return path


def _runs(root):
    fp = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    out = []
    for r in (1, 2) if (fp / f"sub-01_task-{TASK}_run-2_desc-confounds_timeseries.tsv").exists() else (1,):
        stem = f"sub-01_task-{TASK}_run-{r}"
        out.append({"bold": fp / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz",
                    "mask": fp / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz",
                    "confounds": fp / f"{stem}_desc-confounds_timeseries.tsv",
                    "events": root / "sub-01" / "func" / f"{stem}_events.tsv"})
    return out


def _nilearn_events(runs, modulators=(), block=None):
    """Events for nilearn written from scratch: modulators centred per condition over both runs."""
    raw = [pd.read_csv(r["events"], sep="\t") for r in runs]
    for ev in raw:
        ev["cond"] = (ev[block] + "_" + ev["trial_type"]) if block else ev["trial_type"]
    allrows = pd.concat(raw)
    out = []
    for ev in raw:
        parts = [pd.DataFrame({"onset": ev.onset, "duration": ev.duration, "trial_type": ev.cond, "modulation": 1.0})]
        for m in modulators:
            means = allrows.groupby("cond")[m].mean()
            parts.append(pd.DataFrame({"onset": ev.onset, "duration": ev.duration,
                                       "trial_type": ev.cond + "_x_" + m, "modulation": ev[m] - ev.cond.map(means)}))
        out.append(pd.concat(parts, ignore_index=True))
    return out


def _nilearn_confounds(runs, columns=MOTION):
    out = []
    for r in runs:
        c = pd.read_csv(r["confounds"], sep="\t", na_values="n/a")[columns]
        out.append(c.fillna(c.mean()))
    return out


def _ours(out_dir, contrast, stat="z", run=None):
    name = f"sub-01_task-{TASK}" + (f"_run-{run}" if run else "") + f"_space-{SPACE}_contrast-{contrast}_stat-{stat}_statmap.nii.gz"
    return np.asarray(nb.load(out_dir / "sub-01" / "func" / name).dataobj)


def _compare(theirs_img, ours, mask):
    theirs = np.asarray(theirs_img.dataobj)
    return float(np.abs(theirs[mask] - ours[mask]).max())


CASES = {
    "ar1_two_runs": dict(entry={}, runs=2, modulators=(), block=None),
    "ols_one_run": dict(entry={"noise_model": "ols"}, runs=1, modulators=(), block=None),
    "ar1_modulators_blocks": dict(
        entry={"modulators": ["response_time"], "block_identifier": "block",
               "design_contrasts": {"AincVcong": "A_incongruent - A_congruent",
                                    "rtB": "B_incongruent_x_response_time + B_congruent_x_response_time"}},
        runs=2, modulators=("response_time",), block="block"),
    # censoring: nilearn drops the same rows of a design built on every frame (its sample_masks)
    "ar1_dummy_scans_fd_censoring": dict(entry={"dummy_scans": 3, "fd_threshold": 0.25}, runs=2, modulators=(),
                                         block=None),
    "ar1_smoothing": dict(entry={"smoothing_fwhm": 5.0}, runs=2, modulators=(), block=None),
    "nilearn_estimator": dict(entry={"estimator": "nilearn"}, runs=2, modulators=(), block=None),
    # int16 + scl_slope: nilearn reads float64 values; glmx keeps the integers and hands the fit the same numbers
    "ar1_int16_scaled": dict(entry={}, runs=2, modulators=(), block=None, int16=True),
}


def _sample_masks(runs, entry):
    """Kept volumes per run, from the raw confounds table (None when nothing is censored)."""
    if not entry.get("dummy_scans") and entry.get("fd_threshold") is None:
        return None
    out = []
    for r in runs:
        fd = pd.read_csv(r["confounds"], sep="\t", na_values="n/a")["framewise_displacement"].to_numpy()
        keep = np.arange(len(fd)) >= entry.get("dummy_scans", 0)
        if entry.get("fd_threshold") is not None:
            keep &= ~(np.nan_to_num(fd) > entry["fd_threshold"])
        assert 0 < (~keep).sum() < len(keep) // 2
        out.append(np.flatnonzero(keep))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_z_maps_match_nilearn(dataset, dataset_one_run, dataset_int16, tmp_path, case):
    cfg = CASES[case]
    root = dataset_int16 if cfg.get("int16") else dataset if cfg["runs"] == 2 else dataset_one_run
    runs = _runs(root)
    spec = _spec(root, tmp_path, **cfg["entry"])
    out = tmp_path / "out"
    Subject("01", TASK, root, spec=spec, output_dir=out, work_dir=tmp_path / "work").run(
        plugin="MultiProc" if cfg["runs"] == 2 else "Linear", n_procs=2)

    mask_img = nb.load(runs[0]["mask"])
    mask = np.asarray(mask_img.dataobj) > 0
    masks = _sample_masks(runs, cfg["entry"])
    fwhm = cfg["entry"].get("smoothing_fwhm")
    flm = FirstLevelModel(t_r=2.0, mask_img=mask_img, noise_model=cfg["entry"].get("noise_model", "ar1"),
                          hrf_model="glover", drift_model="cosine", high_pass=0.01, smoothing_fwhm=fwhm,
                          minimize_memory=True)
    flm.fit([str(r["bold"]) for r in runs], events=_nilearn_events(runs, cfg["modulators"], cfg["block"]),
            confounds=_nilearn_confounds(runs), sample_masks=masks)
    contrasts = cfg["entry"].get("design_contrasts", {"incongruentVcongruent": "incongruent - congruent"})
    for name, formula in contrasts.items():
        for stat, kind in (("z", "z_score"), ("t", "stat"), ("effect", "effect_size")):
            theirs = flm.compute_contrast(formula, output_type=kind)
            diff = _compare(theirs, _ours(out, name, stat), mask)
            tol = 1e-3 if stat in ("z", "t") else 1e-3 * float(np.abs(np.asarray(theirs.dataobj)).max())
            assert diff < tol, f"{case} {name} {stat}: max |diff| {diff}"
        if cfg["runs"] == 2:  # per-run maps against a one-run nilearn model
            single = FirstLevelModel(t_r=2.0, mask_img=mask_img, noise_model=flm.noise_model, smoothing_fwhm=fwhm,
                                     minimize_memory=True)
            single.fit(str(runs[1]["bold"]), events=_nilearn_events(runs, cfg["modulators"], cfg["block"])[1],
                       confounds=_nilearn_confounds(runs)[1], sample_masks=None if masks is None else masks[1])
            diff = _compare(single.compute_contrast(formula, output_type="z_score"), _ours(out, name, "z", run=2), mask)
            assert diff < 1e-3, f"{case} {name} run-2 z: max |diff| {diff}"


def test_f_contrast_matches_nilearn(dataset, tmp_path):
    runs = _runs(dataset)
    spec = _spec(dataset, tmp_path, design_contrasts={"anyTask": ["congruent", "incongruent"]})
    out = tmp_path / "out"
    Subject("01", TASK, dataset, spec=spec, output_dir=out, work_dir=tmp_path / "work").run(n_procs=2)
    mask_img = nb.load(runs[0]["mask"])
    mask = np.asarray(mask_img.dataobj) > 0
    flm = FirstLevelModel(t_r=2.0, mask_img=mask_img, minimize_memory=True)
    flm.fit([str(r["bold"]) for r in runs], events=_nilearn_events(runs), confounds=_nilearn_confounds(runs))
    designs = flm.design_matrices_
    con = [np.vstack([(d.columns == "congruent"), (d.columns == "incongruent")]).astype(float) for d in designs]
    for stat, kind in (("z", "z_score"), ("F", "stat"), ("p", "p_value")):
        theirs = flm.compute_contrast(con, stat_type="F", output_type=kind)
        assert _compare(theirs, _ours(out, "anyTask", stat), mask) < 1e-3, stat


def test_user_designs_match_nilearn(dataset, tmp_path):
    runs = _runs(dataset)
    designs = []
    for r, ev, conf in zip(runs, _nilearn_events(runs), _nilearn_confounds(runs, ["trans_x", "rot_z"])):
        n = nb.load(r["bold"]).shape[3]
        designs.append(make_first_level_design_matrix(np.arange(n) * 2.0, ev, drift_model="polynomial",
                                                      drift_order=2, add_regs=conf.to_numpy(),
                                                      add_reg_names=list(conf.columns)))
    spec = _spec(dataset, tmp_path)
    out = tmp_path / "out"
    Subject("01", TASK, dataset, spec=spec, output_dir=out, work_dir=tmp_path / "work").run(design_matrices=designs)
    mask_img = nb.load(runs[0]["mask"])
    flm = FirstLevelModel(t_r=2.0, mask_img=mask_img, minimize_memory=True)
    flm.fit([str(r["bold"]) for r in runs], design_matrices=designs)
    theirs = flm.compute_contrast("incongruent - congruent", output_type="z_score")
    assert _compare(theirs, _ours(out, "incongruentVcongruent"), np.asarray(mask_img.dataobj) > 0) < 1e-3
    written = pd.read_csv(out / "sub-01" / "func" / f"sub-01_task-{TASK}_run-1_design.tsv", sep="\t")
    np.testing.assert_allclose(written.to_numpy(), designs[0].to_numpy(), atol=1e-12)


def test_confounds_aligned_at_tr2_and_planted_effects_recovered(dataset, tmp_path):
    spec = _spec(dataset, tmp_path, modulators=["response_time"],
                 design_contrasts={"incongruentVcongruent": "incongruent - congruent"})
    out = tmp_path / "out"
    Subject("01", TASK, dataset, spec=spec, output_dir=out, work_dir=tmp_path / "work").run(n_procs=2)
    runs = _runs(dataset)
    design = pd.read_csv(out / "sub-01" / "func" / f"sub-01_task-{TASK}_run-1_design.tsv", sep="\t")
    conf = _nilearn_confounds(runs)[0]
    n = nb.load(runs[0]["bold"]).shape[3]
    assert len(design) == n
    # row i of the design is volume i, whose confounds are row i of fmriprep's table (any TR)
    np.testing.assert_allclose(design[MOTION].to_numpy(), conf.to_numpy(), atol=1e-10)
    truth = read_planted_effects(dataset)
    z = _ours(out, "incongruentVcongruent")
    conflict = next(e for e in truth["effects"] if e["name"] == "conflict")
    brain = np.asarray(nb.load(runs[0]["mask"]).dataobj) > 0
    null = brain & (truth["labels"] == 0)
    assert z[conflict["core_mask"]].mean() > 3
    assert abs(z[null].mean()) < 0.5 and np.percentile(np.abs(z[null]), 99) < 3.5
