"""group_model 'mixed' end to end: example dataset → first level → GroupLevel / ``glmx ... group --group-model
mixed``; the written maps against PyMARE's REML estimator on the subjects' written effect and variance maps,
the sidecars and report naming the model, and bad variance maps refused naming the file."""

import json
import shutil
import subprocess
import sys

import nibabel as nb
import numpy as np
import pytest

from glmx_workflows.api import Aggregator, GroupLevel
from glmx_workflows.io.example import make_example_dataset

SPACE = "MNI152NLin2009cAsym"
N_SUBJECTS = 6


@pytest.fixture(scope="module")
def first_level(tmp_path_factory):
    root = tmp_path_factory.mktemp("group_mixed")
    bids = make_example_dataset(root / "bids", n_subjects=N_SUBJECTS, n_runs=1, n_volumes=80)
    out = root / "out"
    report = Aggregator(bids, "flanker", output_dir=out, work_dir=root / "work").run(n_procs=2, progress=False)
    assert report.ok, report.summary()
    return bids, out


def _group_file(out, contrast, stat=None, desc=None, suffix="statmap", ext=".nii.gz"):
    name = f"task-flanker_space-{SPACE}_contrast-{contrast}" + (f"_stat-{stat}" if stat else "") \
        + (f"_desc-{desc}" if desc else "") + f"_{suffix}{ext}"
    return out / "group" / name


def _subject_map(out, sub, contrast, stat):
    return out / f"sub-{sub}" / "func" / f"sub-{sub}_task-flanker_space-{SPACE}_contrast-{contrast}_stat-{stat}_statmap.nii.gz"


def test_mixed_group_maps_equal_pymare_and_say_which_model(first_level, tmp_path):
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    bids, out = first_level
    GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work", contrasts=["incongruentVcongruent"],
               group_model="mixed", group_inference=["fdr"], group_contrasts={"older": "age"}).run(plugin="Linear")
    subjects = [f"{i + 1:02d}" for i in range(N_SUBJECTS)]
    con = "incongruentVcongruent"
    mask = nb.load(_group_file(out, con, "z")).get_fdata() != 0
    Y = np.stack([nb.load(_subject_map(out, s, con, "effect")).get_fdata()[mask] for s in subjects])
    V = np.stack([nb.load(_subject_map(out, s, con, "variance")).get_fdata()[mask] for s in subjects])
    ages = np.loadtxt(bids / "participants.tsv", skiprows=1, usecols=1, dtype=str)
    ages = np.array([float(a) for a in ages])
    X = np.column_stack([np.ones(N_SUBJECTS), ages - ages.mean()])
    # PyMARE's default Knapp-Hartung covariance: what the variance and t maps hold (README.rst)
    est = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="knapp-hartung", xtol=1e-12,
                                           maxiter=200)
    est.fit(Y, V, X)
    beta, cov, tau2 = est.params_["fe_params"], est.params_["inv_cov"], est.params_["tau2"][0]
    # maps are stored as float32: compare relative to the map's range at 1e-5 (float32 resolution plus
    # PyMARE's search bracket, see test_group_mixed.py)
    tau2_map = nb.load(_group_file(out, con, "tau2")).get_fdata()[mask]
    assert np.abs(tau2_map - tau2).max() <= 1e-5 * tau2.max()
    assert (tau2_map == 0).any() and (tau2_map > 0).any()
    for j, desc in ((0, None), (1, "older")):
        t_ref = beta[j] / np.sqrt(cov[j, j])
        for stat, ref in (("effect", beta[j]), ("variance", cov[j, j]), ("t", t_ref)):
            ours = nb.load(_group_file(out, con, stat, desc)).get_fdata()[mask]
            assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max(), (desc, stat)
        side = json.loads(_group_file(out, con, "t", desc, ext=".json").read_text())
        assert side["GroupModel"] == "mixed" and "REML" in side["GroupModelDescription"]
        assert side["MixedEffectsTest"] == "knapp-hartung"
    report = (out / "group" / "task-flanker_report.html").read_text()
    assert "Group model: mixed" in report

    # the model-based test of FLAME1 (group_mixed_test 'wald', from the command line): PyMARE's Wald covariance
    proc = _glmx(bids, out, "group", "--task", "flanker", "--contrast", con, "--group-model", "mixed",
                 "--group-mixed-test", "wald", "--inference", "fdr", "--quiet", "--work-dir", tmp_path / "work",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wald = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="wald", xtol=1e-12, maxiter=200)
    wald.fit(Y, V, X)
    beta, cov = wald.params_["fe_params"], wald.params_["inv_cov"]
    t_ref = beta[0] / np.sqrt(cov[0, 0])
    ours = nb.load(_group_file(out, con, "t")).get_fdata()[mask]
    assert np.abs(ours - t_ref).max() <= 1e-5 * np.abs(t_ref).max()
    variance = nb.load(_group_file(out, con, "variance")).get_fdata()[mask]
    assert np.abs(variance - cov[0, 0]).max() <= 1e-5 * np.abs(cov[0, 0]).max()
    side = json.loads(_group_file(out, con, "t", ext=".json").read_text())
    assert side["MixedEffectsTest"] == "wald" and "FLAME1" in side["MixedEffectsTestDescription"]


def _glmx(*args, cwd):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize("case", ["zero_variance", "nan_variance", "missing_variance"])
def test_bad_variance_map_is_one_line_naming_the_file(first_level, tmp_path, case):
    bids, out0 = first_level
    out = tmp_path / "out"
    shutil.copytree(out0, out, ignore=shutil.ignore_patterns("group"))
    path = _subject_map(out, "03", "task", "variance")
    if case == "missing_variance":
        path.unlink()
        named = _subject_map(out, "03", "task", "effect").name
    else:
        img = nb.load(path)
        data = np.asarray(img.get_fdata())
        inside = np.argwhere(data > 0)[len(np.argwhere(data > 0)) // 2]
        data[tuple(inside)] = 0.0 if case == "zero_variance" else np.nan
        nb.save(nb.Nifti1Image(data.astype(np.float32), img.affine), path)
        named = path.name
    proc = _glmx(bids, out, "group", "--task", "flanker", "--contrast", "task", "--group-model", "mixed",
                 "--inference", "fdr", "--quiet", "--work-dir", tmp_path / "work", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("glmx: error:"), proc.stderr[-2000:]
    assert named in lines[0] and "group_model" in lines[0], lines[0]
    assert not list(out.glob("group/*")), "partial group outputs written"
    # 'ols' does not need the variances and keeps working (the broken map only narrows its mask)
    if case == "missing_variance":
        proc = _glmx(bids, out, "group", "--task", "flanker", "--contrast", "task", "--inference", "fdr", "--quiet",
                     "--work-dir", tmp_path / "work", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_min_subjects_above_the_subject_count_is_refused_before_running(first_level, tmp_path):
    bids, out0 = first_level
    out = tmp_path / "out"
    shutil.copytree(out0, out, ignore=shutil.ignore_patterns("group"))
    spec = tmp_path / "spec.json"
    entry = json.loads((bids / "task_information.json").read_text())
    entry["flanker"]["group_min_subjects"] = N_SUBJECTS + 1
    spec.write_text(json.dumps(entry))
    proc = _glmx(bids, out, "group", "--task", "flanker", "--contrast", "task", "--spec", spec, "--quiet",
                 "--work-dir", tmp_path / "work", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"{spec}: flanker.group_min_subjects: group_min_subjects is {N_SUBJECTS + 1} but contrast task has " \
           f"{N_SUBJECTS} subject map(s)" in lines[0], lines[0]
    assert not list(out.glob("group/*")) and not (tmp_path / "work").exists()


def test_paired_design_end_to_end_equals_nilearn(first_level, tmp_path):
    import pandas as pd
    from nilearn.glm.second_level import SecondLevelModel

    bids, out = first_level
    group = GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work", group_inference=["fdr"],
                       group_level_regressors=[], group_model="mixed",
                       group_design={"type": "paired", "contrasts": ["incongruent", "congruent"], "name": "incVsCon"})
    group.run(plugin="Linear")
    subjects = [f"{i + 1:02d}" for i in range(N_SUBJECTS)]
    design = pd.read_csv(_group_file(out, "incVsCon", suffix="design", ext=".tsv"), sep="\t")
    assert design["first_level_contrast"].tolist() == ["incongruent"] * N_SUBJECTS + ["congruent"] * N_SUBJECTS
    side = json.loads(_group_file(out, "incVsCon", "t", ext=".json").read_text())
    assert side["GroupModel"] == "mixed"
    # OLS run of the same design against nilearn's explicit design (condition and subject indicators)
    GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work2",
               group_inference=["fdr"], group_level_regressors=[],
               group_design={"type": "paired", "contrasts": ["incongruent", "congruent"], "name": "incVsConOls"}
               ).run(plugin="Linear")
    z_path = _group_file(out, "incVsConOls", "z")
    mask = nb.load(z_path).get_fdata() != 0
    files = [str(_subject_map(out, s, c, "effect")) for c in ("incongruent", "congruent") for s in subjects]
    explicit = pd.DataFrame({"incongruent": [1.0] * N_SUBJECTS + [0.0] * N_SUBJECTS,
                             **{f"s{s}": [float(i % N_SUBJECTS == j) for i in range(2 * N_SUBJECTS)]
                                for j, s in enumerate(subjects)}})
    model = SecondLevelModel(mask_img=nb.Nifti1Image(mask.astype(np.uint8), nb.load(z_path).affine))
    model.fit(files, design_matrix=explicit)
    ref = model.compute_contrast(np.eye(explicit.shape[1])[0], output_type="z_score").get_fdata()[mask]
    assert np.abs(nb.load(z_path).get_fdata()[mask] - ref).max() < 1e-4


def test_paired_permutations_end_to_end_are_sign_flips_of_the_differences(first_level, tmp_path):
    """perm_fwe on a paired design swaps each subject's two maps (exhaustive: 2^6 - 1): the FWE p map equals the
    one-sample sign-flip test of the subjects' differences."""
    from glmx_workflows.core.group import permutation_inference

    bids, out = first_level
    GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work", group_inference=["perm_fwe"],
               group_level_regressors=[], group_n_permutations=1000,
               group_design={"type": "paired", "contrasts": ["incongruent", "congruent"], "name": "incVsConPerm"}
               ).run(plugin="Linear")
    mask = nb.load(_group_file(out, "incVsConPerm", "z")).get_fdata() != 0
    subjects = [f"{i + 1:02d}" for i in range(N_SUBJECTS)]
    d = np.stack([nb.load(_subject_map(out, s, "incongruent", "effect")).get_fdata()[mask]
                  - nb.load(_subject_map(out, s, "congruent", "effect")).get_fdata()[mask] for s in subjects])
    ref = permutation_inference(d, np.ones((N_SUBJECTS, 1)), [1.0], n_permutations=1000)
    assert ref["exhaustive"]
    ours = nb.load(_group_file(out, "incVsConPerm", "p", "permFWE")).get_fdata()[mask]
    assert np.allclose(ours, ref["p_fwe"], atol=1e-6)


def test_repeated_design_report_names_subjects_once_and_says_f_has_no_permutations(first_level, tmp_path):
    """The report of a repeated-measures model lists each subject once (a design row per subject and
    contrast), and says that the asked-for TFCE was not applied to its F test instead of leaving it out
    silently."""
    bids, out = first_level
    result = GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work",
                        group_inference=["uncorrected", "tfce"], group_level_regressors=[], group_n_permutations=20,
                        group_design={"type": "repeated", "contrasts": ["incongruent", "congruent", "task"],
                                      "name": "rep"}).run(plugin="Linear")
    assert "contrast rep: tfce not applied to F test 'mean' (permutation methods test t contrasts only; " \
           "parametric inference)" in result.log
    assert _group_file(out, "rep", "F").is_file()
    assert not list((out / "group").glob("*contrast-rep_*tfce*"))
    report = (out / "group" / "task-flanker_report.html").read_text()
    subjects = ", ".join(f"sub-{i + 1:02d}" for i in range(N_SUBJECTS))
    assert f"{N_SUBJECTS} subject(s), 3 maps each: {subjects}." in report
    assert "tfce: not applied, permutation methods test t contrasts only" in report


def test_within_design_refuses_regressors(first_level, tmp_path):
    from glmx_workflows.core.errors import GlmxError

    bids, out = first_level
    design = {"type": "paired", "contrasts": ["incongruent", "congruent"]}
    with pytest.raises(GlmxError, match="group_level_regressors"):
        GroupLevel("flanker", bids, output_dir=out, group_design=design, group_level_regressors=["age"])


def test_min_subjects_models_each_voxel_with_its_subjects_and_writes_the_count(first_level, tmp_path):
    import pandas as pd
    from nilearn.glm.second_level import SecondLevelModel

    bids, out0 = first_level
    out = tmp_path / "out"
    shutil.copytree(out0, out, ignore=shutil.ignore_patterns("group"))
    subjects = [f"{i + 1:02d}" for i in range(N_SUBJECTS)]
    # sub-02's map loses a slab at the edge of the brain (as a smaller subject mask would)
    path = _subject_map(out, "02", "task", "effect")
    img = nb.load(path)
    data = np.asarray(img.get_fdata())
    inside = np.argwhere(data != 0)
    cut = inside[:, 0] <= np.percentile(inside[:, 0], 20)
    data[tuple(inside[cut].T)] = 0.0
    nb.save(nb.Nifti1Image(data.astype(np.float32), img.affine), path)
    GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work", contrasts=["task"],
               group_inference=["fdr"], group_level_regressors=[], group_min_subjects=5).run(plugin="Linear")
    n_map = nb.load(_group_file(out, "task", "n")).get_fdata()
    z = nb.load(_group_file(out, "task", "z")).get_fdata()
    slab = n_map == 5
    full = n_map == N_SUBJECTS
    assert slab.sum() > 50 and full.sum() > 50 and set(np.unique(n_map)) == {0, 5, 6}
    for keep, where in (([s for s in subjects if s != "02"], slab), (subjects, full)):
        mask_img = nb.Nifti1Image(where.astype(np.uint8), img.affine)
        files = [str(_subject_map(out, s, "task", "effect")) for s in keep]
        model = SecondLevelModel(mask_img=mask_img).fit(files, design_matrix=pd.DataFrame({"i": np.ones(len(keep))}))
        ref = model.compute_contrast(np.array([1.0]), output_type="z_score").get_fdata()[where]
        assert np.abs(z[where] - ref).max() < 1e-4
