"""Single-trial models (LSS, LSA) against a loop of nilearn FirstLevelModel fits, planted trial amplitudes,
beta-series connectivity against nilearn's masker + ConnectivityMeasure, bad input and caching."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel

from glmx_workflows.api import Subject
from glmx_workflows.core import single_trial as st
from glmx_workflows.core.design import build_design, frame_times
from glmx_workflows.engine import executed_nodes
from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.io.images import load_scaled_bold

TASK = "flanker"
SPACE = "MNI152NLin2009cAsym"
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
TR = 2.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("st") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=1, shape=(7, 8, 7), n_volumes=90, seed=4)
    return root


def _files(root):
    fp = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    stem = f"sub-01_task-{TASK}_run-1"
    if not (fp / f"{stem}_desc-confounds_timeseries.tsv").exists():
        stem = f"sub-01_task-{TASK}"
    return {"bold": fp / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz",
            "mask": fp / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz",
            "confounds": fp / f"{stem}_desc-confounds_timeseries.tsv",
            "events": root / "sub-01" / "func" / f"{stem}_events.tsv"}


def _kept(confounds, dummy, fd_threshold):
    fd = pd.read_csv(confounds, sep="\t", na_values="n/a")["framewise_displacement"].to_numpy()
    keep = np.arange(len(fd)) >= dummy
    if fd_threshold is not None:
        keep &= ~(np.nan_to_num(fd) > fd_threshold)
    return keep


def _reference_betas(files, keep, noise_model, method, others, hrf_model):
    """nilearn: one FirstLevelModel per trial (LSS) or one with every trial its own regressor (LSA).

    Returns {(condition, k-th trial in onset order): beta map (in-mask values)}."""
    events = pd.read_csv(files["events"], sep="\t")[["onset", "duration", "trial_type"]]
    conf = pd.read_csv(files["confounds"], sep="\t", na_values="n/a")[MOTION]
    conf = conf.fillna(conf.mean())
    bold = nb.load(str(files["bold"]))
    bold = nb.Nifti1Image(np.asarray(bold.dataobj), bold.affine, bold.header)  # read once
    mask_img = nb.load(str(files["mask"]))
    mask = np.asarray(mask_img.dataobj) > 0
    sample = None if keep.all() else np.flatnonzero(keep)

    def fit(ev):
        flm = FirstLevelModel(t_r=TR, mask_img=mask_img, noise_model=noise_model, hrf_model=hrf_model,
                              drift_model="cosine", high_pass=0.01, minimize_memory=True)
        return flm.fit(bold, events=ev, confounds=conf, sample_masks=sample)

    order = events.sort_values(["trial_type", "onset"], kind="stable").index
    rank = events.loc[order].groupby("trial_type").cumcount()
    names = {i: (events.trial_type[i], int(rank[i])) for i in order}
    out = {}
    if method == "lsa":
        ev = events.copy()
        ev["trial_type"] = [f"zz{i:03d}" for i in range(len(ev))]
        flm = fit(ev)
        for i in order:
            out[names[i]] = np.asarray(flm.compute_contrast(f"zz{i:03d}", output_type="effect_size").dataobj)[mask]
        return out
    for i in order:
        ev = events.copy()
        if others == "single":
            ev["trial_type"] = "others"
        ev.loc[i, "trial_type"] = "zztrial"
        out[names[i]] = np.asarray(fit(ev).compute_contrast("zztrial", output_type="effect_size").dataobj)[mask]
    return out


def _glmx_betas(files, keep, noise_model, method, others, hrf_model):
    """The package's single-trial core on the same run (design columns from its own build_design)."""
    raw_events = pd.read_csv(files["events"], sep="\t")
    events = raw_events[["onset", "duration", "trial_type"]].assign(modulation=1.0)
    conf = pd.read_csv(files["confounds"], sep="\t", na_values="n/a")[MOTION]
    conf = conf.fillna(conf.mean())
    n = len(conf)
    design = build_design(events, conf, n, TR, hrf_model)
    trials, _ = st.trial_table(events)
    nuisance = st.nuisance_columns(design, sorted(set(trials.trial_type)))
    raw = st.raw_trial_regressors(trials.onset, trials.duration, frame_times(n, TR), TR, hrf_model)
    Y, _, _, _ = load_scaled_bold(files["bold"], files["mask"], keep)
    if method == "lsa":
        lsa = st.lsa_design(raw, trials, nuisance).to_numpy(float)[keep]
        betas = st.fit_lsa(Y, lsa, len(trials), raw.shape[2], noise_model)
    else:
        groups, _ = st.trial_groups(trials, others)
        betas = st.fit_lss(Y, raw, groups, nuisance.to_numpy(float), keep, noise_model)
    rank = trials.groupby("trial_type").cumcount()
    return {(c, int(r)): b for c, r, b in zip(trials.trial_type, rank, betas)}


CORE_CASES = [
    # (method, noise model, others, hrf, dummy scans, fd threshold)
    ("lss", "ar1", "condition", "glover", 0, None),
    ("lss", "ols", "condition", "glover", 0, None),
    ("lss", "ar1", "condition", "glover", 3, 0.25),
    ("lss", "ols", "condition", "glover", 3, 0.25),
    ("lss", "ar1", "single", "glover", 3, 0.25),
    ("lss", "ar1", "condition", "spm + derivative", 2, None),
    ("lsa", "ar1", "condition", "glover", 0, None),
    ("lsa", "ols", "condition", "glover", 0, None),
    ("lsa", "ar1", "condition", "glover", 3, 0.25),
    ("lsa", "ols", "condition", "glover", 3, 0.25),
]


@pytest.mark.parametrize("method, noise, others, hrf, dummy, fd", CORE_CASES)
def test_betas_equal_nilearn_loop(dataset, method, noise, others, hrf, dummy, fd):
    files = _files(dataset)
    keep = _kept(files["confounds"], dummy, fd)
    if dummy or fd:
        assert 0 < (~keep).sum() < len(keep) // 2
    ours = _glmx_betas(files, keep, noise, method, others, hrf)
    theirs = _reference_betas(files, keep, noise, method, others, hrf)
    assert set(ours) == set(theirs) and len(ours) >= 10
    for key, ref in theirs.items():
        tol = 1e-4 * ref.std()
        err = np.abs(ours[key] - ref).max()
        assert err < tol, f"{key}: max |diff| {err:.3g} > {tol:.3g}"


def test_planted_trial_amplitudes_recovered():
    """Simulated run: each trial has its own amplitude in a region; LSS and LSA recover them (AR(1) noise)."""
    rng = np.random.default_rng(7)
    n, n_trials = 300, 40  # a slow event-related run: 10 min, a trial every ~14 s
    onsets = np.sort(rng.choice(np.arange(10, 580, 14.0), n_trials, replace=False)) + rng.uniform(0, 3, n_trials)
    trials = pd.DataFrame({"onset": onsets, "duration": 1.0, "trial_type": np.where(np.arange(n_trials) % 2, "a", "b")})
    trials = trials.sort_values(["trial_type", "onset"], kind="stable").reset_index(drop=True)
    raw = st.raw_trial_regressors(trials.onset, trials.duration, frame_times(n, TR), TR, "glover")
    nuisance = build_design(trials.iloc[:0].assign(modulation=1.0), None, n, TR)
    amps = rng.normal(1.0, 0.6, n_trials)
    region, n_vox = 30, 200
    noise = np.empty((n, n_vox))
    noise[0] = rng.normal(size=n_vox)
    for t in range(1, n):
        noise[t] = 0.3 * noise[t - 1] + rng.normal(size=n_vox)
    Y = 0.2 * noise  # noise SD ~0.21 against a peak of ~0.34 for a 1-s trial of amplitude 1
    Y[:, :region] += raw[:, :, 0] @ amps[:, None] * rng.uniform(0.8, 1.2, region)
    groups, _ = st.trial_groups(trials, "condition")
    lss = st.fit_lss(Y, raw, groups, nuisance.to_numpy(float), noise_model="ar1")
    lsa = st.fit_lsa(Y, st.lsa_design(raw, trials, nuisance).to_numpy(float), n_trials, 1, "ar1")
    for betas in (lss, lsa):
        estimate = betas[:, :region].mean(axis=1)
        assert np.corrcoef(estimate, amps)[0, 1] > 0.9
        assert abs(np.corrcoef(betas[:, region:].mean(axis=1), amps)[0, 1]) < 0.5


def _labels_atlas(root, mask_path):
    """Four label blocks over the brain mask's grid, written beside the spec."""
    mask_img = nb.load(str(mask_path))
    shape = mask_img.shape[:3]
    labels = np.zeros(shape, np.int16)
    x, y = shape[0] // 2, shape[1] // 2
    labels[:x, :y], labels[x:, :y], labels[:x, y:], labels[x:, y:] = 1, 2, 3, 4
    img = nb.Nifti1Image(labels, mask_img.affine)
    path = root / "code" / "blocks.nii.gz"
    path.parent.mkdir(exist_ok=True)
    nb.save(img, str(path))
    return path


@pytest.mark.parametrize("value, needle", [
    ({"method": "lsx"}, "t.single_trial"),
    ({"others": "all"}, "t.single_trial"),
    ({"conditions": []}, "t.single_trial"),
    ({"atlas": {"name": "x"}}, "t.single_trial"),
    ({"metod": "lss"}, "t.single_trial"),
])
def test_bad_single_trial_values_name_the_key(tmp_path, value, needle):
    from glmx_workflows.core.errors import GlmxError
    from glmx_workflows.spec.model import load_spec

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"t": {"single_trial": value}}))
    with pytest.raises(GlmxError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_trial_wise_condition_is_refused_at_planning(dataset, tmp_path):
    from glmx_workflows.core.errors import GlmxError

    spec = _spec(dataset, tmp_path / "spec.json", conditions=["neutral"])
    with pytest.raises(GlmxError, match="single_trial.conditions: condition 'neutral' is not modelled"):
        Subject("01", TASK, dataset, spec=spec, output_dir=tmp_path / "out").plan()


def _spec(root, path, **single):
    spec = json.loads((root / "task_information.json").read_text())
    spec[TASK].update({"confound_regressors": MOTION, "dummy_scans": 3, "fd_threshold": 0.25,
                       "single_trial": single or None})
    path.write_text(json.dumps(spec))
    return path


def test_workflow_outputs_match_nilearn_and_connectivity(dataset, tmp_path):
    """The whole path: beta series NIfTI + TSV as named, values equal the nilearn loop, and the atlas
    relmat equals NiftiLabelsMasker + ConnectivityMeasure on the written beta series."""
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiLabelsMasker
    from sklearn.covariance import EmpiricalCovariance

    files = _files(dataset)
    atlas = _labels_atlas(tmp_path, files["mask"])
    spec = _spec(dataset, tmp_path / "spec.json", method="lss",
                 atlas={"name": "blocks", "labels_img": str(atlas)})
    out = tmp_path / "out"
    Subject("01", TASK, dataset, spec=spec, output_dir=out, work_dir=tmp_path / "work").run(plugin="Linear")
    keep = _kept(files["confounds"], 3, 0.25)
    theirs = _reference_betas(files, keep, "ar1", "lss", "condition", "glover")
    mask = np.asarray(nb.load(str(files["mask"])).dataobj) > 0
    func = out / "sub-01" / "func"
    raw_events = pd.read_csv(files["events"], sep="\t")
    prefix = f"sub-01_task-{TASK}_space-{SPACE}" if "run-" not in files["bold"].name else \
        f"sub-01_task-{TASK}_run-1_space-{SPACE}"
    for cond in sorted(raw_events.trial_type.unique()):
        series = nb.load(str(func / f"{prefix}_desc-{cond}_betaseries.nii.gz"))
        table = pd.read_csv(func / f"{prefix}_desc-{cond}_betaseries.tsv", sep="\t")
        expected = raw_events[raw_events.trial_type == cond].sort_values("onset")
        assert series.shape[3] == len(table) == len(expected)
        assert np.allclose(table.onset, expected.onset) and (table.trial_type == cond).all()
        assert np.allclose(table.response_time, expected.response_time)  # the events' other columns follow
        data = np.asarray(series.dataobj)
        for k in range(len(table)):
            ref = theirs[(cond, k)]
            assert np.abs(data[..., k][mask] - ref).max() < 1e-4 * ref.std()
        masker = NiftiLabelsMasker(str(atlas), mask_img=str(files["mask"]))
        signals = masker.fit_transform(series)
        ref = ConnectivityMeasure(cov_estimator=EmpiricalCovariance(), kind="correlation",
                                  standardize=False).fit_transform([signals])[0]
        rel = pd.read_csv(func / f"{prefix}_seg-blocks_stat-pearsoncorrelation_desc-{cond}_relmat.tsv", sep="\t",
                          index_col=0)
        assert rel.shape == (4, 4) and list(rel.columns) == ["1", "2", "3", "4"]
        assert np.abs(rel.to_numpy() - ref).max() < 1e-6
        mean = pd.read_csv(func / f"{prefix}_seg-blocks_stat-mean_desc-{cond}_betaseries.tsv", sep="\t")
        assert np.abs(mean.to_numpy() - signals).max() < 1e-6
    report = next(out.glob("sub-01/*report.html")).read_text()
    assert "Single-trial models" in report


def test_changing_single_trial_reruns_only_single_trial_nodes(dataset, tmp_path):
    """Through the CLI's facade (Aggregator, MultiProc): the first run fits both, a change of single_trial
    alone reruns the single-trial node and never the main fit."""
    from glmx_workflows.api import Aggregator

    work = tmp_path / "work"

    def run(spec):
        start = time.time()
        time.sleep(0.01)
        agg = Aggregator(dataset, TASK, spec=spec, output_dir=tmp_path / "out", work_dir=work)
        report = agg.run(n_procs=2, progress=False)
        assert report.ok, report.summary()
        return {part for n in executed_nodes(work, start) for part in n.split("/")}

    first = run(_spec(dataset, tmp_path / "a.json", method="lss"))
    assert {"fit_glm", "compute_contrasts", "single_trial"} <= first
    second = run(_spec(dataset, tmp_path / "b.json", method="lsa"))
    assert "single_trial" in second
    assert not second & {"fit_glm", "compute_contrasts", "fixed_effects", "build_design", "select_confounds",
                         "load_events"}, second
    func = tmp_path / "out" / "sub-01" / "func"
    assert len(list(func.glob("*_betaseries.nii.gz"))) == 2


BAD = {
    # name: (events edit, spec single_trial, spec extra, needles)
    "one_trial_condition": (lambda ev: ev.drop(ev.index[ev.trial_type == "congruent"][1:]), {}, {},
                            ["events.tsv", "condition 'congruent'", "at least 2 trials"]),
    "trial_outside_run": (lambda ev: ev.assign(onset=ev.onset.where(ev.index != 3, -40.0)), {}, {},
                          ["events.tsv", "outside the run"]),
    "trial_wholly_censored": (lambda ev: ev.assign(onset=ev.onset.where(ev.index != 0, 1.0)), {}, {"dummy_scans": 4},
                              ["events.tsv", "wholly in censored volumes"]),
    # kept volumes between the main design's regressors and the LSA design's (set in the test)
    "lsa_too_many_regressors": (None, {"method": "lsa"}, {"dummy_scans": "BETWEEN"},
                                ["events.tsv", "LSA needs more kept volumes than regressors"]),
}


def test_bad_input_one_line_exit_2_nothing_written(dataset, tmp_path):
    import shutil

    def prepare(name):
        edit, single, extra, needles = BAD[name]
        root = tmp_path / name / "bids"
        shutil.copytree(dataset, root)
        ev_path = _files(root)["events"]
        if edit is not None:
            ev = pd.read_csv(ev_path, sep="\t", keep_default_na=False)
            edit(ev).to_csv(ev_path, sep="\t", index=False)
        spec = json.loads((root / "task_information.json").read_text())
        if extra.get("dummy_scans") == "BETWEEN":
            n_trials = len(pd.read_csv(ev_path, sep="\t"))
            n_main = len(Subject("01", TASK, root, spec=root / "task_information.json", modulators=[],
                                 design_contrasts={"c": "congruent"}).plan().run_regressors[0])
            assert n_trials > 4
            extra = {"dummy_scans": nb.load(str(_files(root)["bold"])).shape[3] - n_main - 2}
        spec[TASK].update({"single_trial": single, "modulators": [],
                           "design_contrasts": {"incongruentVcongruent": "incongruent - congruent"}, **extra})
        (root / "task_information.json").write_text(json.dumps(spec))
        out = tmp_path / name / "out"
        args = [str(root), str(out), "participant", "--task", TASK, "--quiet", "--work-dir", str(tmp_path / name / "w")]
        return out, args, needles

    prepared = {name: prepare(name) for name in BAD}

    def run(args):
        return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(prepared, pool.map(lambda item: run(item[1]), prepared.values())))
    for name, proc in procs.items():
        out, _, needles = prepared[name]
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (name, proc.stderr[-800:])
        assert len(lines) == 1 and lines[0].startswith("glmx: error: "), (name, proc.stderr[-800:])
        for needle in needles:
            assert needle in lines[0], (name, needle, lines[0])
        assert not (out / "sub-01").exists(), name


def test_outlier_trials_flag_a_planted_outlier_only():
    rng = np.random.default_rng(3)
    betas = rng.normal(size=(20, 500))
    betas[7] *= 6.0  # one trial with a much larger beta map (e.g. a motion spike inside its response)
    rms, z, flagged = st.outlier_trials(betas)
    assert np.flatnonzero(flagged).tolist() == [7]
    assert np.allclose(rms, np.sqrt((betas ** 2).mean(axis=1))) and z[7] > 3.5
