"""The simulated example dataset (glmx_workflows.io.example / core.simulate)."""

import hashlib
import json
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.core import simulate as sim
from glmx_workflows.core.errors import GlmxError
from glmx_workflows.io.example import SPACE, TASK, make_example_dataset, read_planted_effects

N_VOLUMES = 100
MOTION = sim.MOTION_COLUMNS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two subjects, two runs, default grid (8 mm), 100 volumes."""
    return make_example_dataset(tmp_path_factory.mktemp("example") / "ds", n_subjects=2, n_runs=2,
                                n_volumes=N_VOLUMES, seed=0)


def _func(root, sub, run, suffix, deriv=True):
    base = root / "derivatives" / "fmriprep" if deriv else root
    return base / f"sub-{sub}" / "func" / f"sub-{sub}_task-{TASK}_run-{run}_{suffix}"


def _confounds(root, sub, run):
    return pd.read_csv(_func(root, sub, run, "desc-confounds_timeseries.tsv"), sep="\t", na_values="n/a")


# ------------------------------------------------------------------------------------------------
# layout and metadata
# ------------------------------------------------------------------------------------------------

def test_bids_layout_finds_everything(dataset):
    import bids

    layout = bids.BIDSLayout(dataset, derivatives=[dataset / "derivatives" / "fmriprep"], validate=False)
    assert layout.get_subjects() == ["01", "02"]
    assert layout.get_tasks() == [TASK]
    for sub in ["01", "02"]:
        common = dict(subject=sub, task=TASK, return_type="file")
        preproc = layout.get(space=SPACE, desc="preproc", suffix="bold", extension=".nii.gz", **common)
        masks = layout.get(space=SPACE, desc="brain", suffix="mask", extension=".nii.gz", **common)
        confounds = layout.get(desc="confounds", suffix="timeseries", extension=".tsv", **common)
        events = layout.get(suffix="events", extension=".tsv", **common)
        raw = layout.get(suffix="bold", extension=".nii.gz", scope="raw", **common)
        for files in (preproc, masks, confounds, events, raw):
            assert len(files) == 2, files
        assert layout.get_runs(subject=sub, task=TASK) == [1, 2]
        for f in preproc + raw:
            assert layout.get_metadata(f)["RepetitionTime"] == 2.0
        img = nib.load(preproc[0])
        assert img.shape[3] == N_VOLUMES and img.get_data_dtype() == np.float32
        assert np.allclose(img.header.get_zooms(), (8, 8, 8, 2.0))
        assert nib.load(masks[0]).get_data_dtype() == np.uint8
        assert nib.load(raw[0]).shape == img.shape

    # the grid sits over the MNI brain
    mask_img = nib.load(_func(dataset, "01", 1, f"space-{SPACE}_desc-brain_mask.nii.gz"))
    mask = np.asarray(mask_img.dataobj).astype(bool)
    xyz = sim.voxel_coordinates(mask.shape, mask_img.affine)[mask]
    assert 2000 < mask.sum() <= 10_000
    assert xyz.min(axis=0)[0] < -60 and xyz.max(axis=0)[0] > 60
    assert xyz.min(axis=0)[1] < -95 and xyz.max(axis=0)[1] > 60
    assert xyz.min(axis=0)[2] < -35 and xyz.max(axis=0)[2] > 70
    # BOLD: realistic baseline in the mask, zero outside
    data = np.asarray(nib.load(_func(dataset, "01", 1, f"space-{SPACE}_desc-preproc_bold.nii.gz")).dataobj)
    means = data[mask].mean(axis=1)
    assert 500 < means.min() and means.max() < 1500 and means.std() > 30
    assert not data[~mask].any()


def test_top_level_files(dataset):
    desc = json.loads((dataset / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["BIDSVersion"] and desc["Name"]
    ddesc = json.loads((dataset / "derivatives" / "fmriprep" / "dataset_description.json").read_text())
    assert ddesc["DatasetType"] == "derivative"
    assert ddesc["GeneratedBy"][0]["Name"] == "fMRIPrep"
    assert "simulated" in json.dumps(ddesc["GeneratedBy"]).lower()
    assert json.loads((dataset / f"task-{TASK}_bold.json").read_text()) == {"RepetitionTime": 2.0,
                                                                        "TaskName": TASK}
    assert (dataset / "README").read_text().strip()

    parts = pd.read_csv(dataset / "participants.tsv", sep="\t")
    assert list(parts.columns) == ["participant_id", "age", "group"]
    assert list(parts.participant_id) == ["sub-01", "sub-02"]
    assert pd.api.types.is_numeric_dtype(parts.age)
    assert set(parts.group) == {"control", "patient"}

    def no_constants(name):
        raise ValueError(name)

    info = json.loads((dataset / "task_information.json").read_text(), parse_constant=no_constants)
    assert info == {TASK: {
        "tr": 2.0, "excludes": [], "condition_identifier": "trial_type",
        "confound_regressors": ["trans_?", "rot_?", "framewise_displacement"],
        "modulators": ["response_time"], "block_identifier": None,
        "design_contrasts": {"incongruentVcongruent": "incongruent - congruent",
                             "task": "0.5*congruent + 0.5*incongruent",
                             "rt": "incongruent_x_response_time + congruent_x_response_time"},
        "group_level_regressors": ["age"]}}


def test_events(dataset):
    all_events = []
    for sub in ["01", "02"]:
        for run in [1, 2]:
            path = _func(dataset, sub, run, "events.tsv", deriv=False)
            assert path.read_text().splitlines()[0] == "onset\tduration\ttrial_type\tresponse_time\tblock"
            ev = pd.read_csv(path, sep="\t", na_values="n/a")
            assert not ev.isna().any().any()
            assert (np.diff(ev.onset) > ev.duration.to_numpy()[:-1]).all()  # no overlap, jittered gaps
            assert len(set(np.round(np.diff(ev.onset), 1))) > 5
            assert ev.duration.between(1.0, 3.0).all()
            assert ev.onset.iloc[0] > 0 and (ev.onset + ev.duration).iloc[-1] < N_VOLUMES * 2.0
            counts = ev.trial_type.value_counts()
            assert set(counts.index) == {"congruent", "incongruent"} and abs(counts.iloc[0] - counts.iloc[1]) <= 1
            assert set(ev.block) == {"A", "B"}
            assert ev.response_time.between(0.15, 2.0).all() and ev.response_time.std() > 0.03
            all_events.append(ev)
    ev = pd.concat(all_events)
    rt = ev.groupby("trial_type").response_time.mean()
    assert rt["incongruent"] > rt["congruent"] + 0.03


# ------------------------------------------------------------------------------------------------
# confounds
# ------------------------------------------------------------------------------------------------

def test_confounds_follow_fmriprep(dataset):
    expected = ["global_signal", "csf", "white_matter", "std_dvars", "dvars", "framewise_displacement",
                *MOTION, *[f"a_comp_cor_{i:02d}" for i in range(6)], "cosine00", "non_steady_state_outlier00"]
    expected += [f"{c}_{s}" for c in ["global_signal", "csf", "white_matter", *MOTION]
                 for s in ["derivative1", "power2", "derivative1_power2"]]
    n_outlier_runs = 0
    for sub in ["01", "02"]:
        for run in [1, 2]:
            path = _func(dataset, sub, run, "desc-confounds_timeseries.tsv")
            first_row = path.read_text().splitlines()[1].split("\t")
            conf = _confounds(dataset, sub, run)
            assert len(conf) == N_VOLUMES
            assert set(expected) <= set(conf.columns)
            nan_first = {"framewise_displacement", "dvars", "std_dvars"} | {
                c for c in conf.columns if "derivative1" in c}
            assert set(conf.columns[conf.iloc[0].isna()]) == nan_first
            assert [v == "n/a" for v in first_row] == [c in nan_first for c in conf.columns]
            assert not conf.iloc[1:].isna().any().any()
            # Power FD from the motion columns (rotations in radians, 50 mm head)
            d = conf[MOTION].diff().abs()
            fd = d[MOTION[:3]].sum(axis=1) + 50 * d[MOTION[3:]].sum(axis=1)
            np.testing.assert_allclose(conf.framewise_displacement[1:], fd[1:], rtol=1e-10, atol=1e-12)
            assert conf.framewise_displacement[1:].median() < 0.3
            np.testing.assert_allclose(conf.trans_x_power2, conf.trans_x ** 2, rtol=1e-10)
            np.testing.assert_allclose(conf.rot_z_derivative1[1:], np.diff(conf.rot_z), rtol=1e-10, atol=1e-15)
            # one-hot outlier columns
            nss = [c for c in conf.columns if c.startswith("non_steady_state_outlier")]
            assert 1 <= len(nss) <= 2
            for j, c in enumerate(nss):
                assert conf[c].tolist() == [int(i == j) for i in range(N_VOLUMES)]
            outliers = [c for c in conf.columns if c.startswith("motion_outlier")]
            high = np.flatnonzero(conf.framewise_displacement.fillna(0) > 0.5)
            assert len(outliers) == len(high)
            for c, vol in zip(outliers, high):
                assert conf[c].sum() == 1 and conf[c].iloc[vol] == 1
            n_outlier_runs += bool(outliers)
            meta = json.loads(path.with_suffix(".json").read_text())
            for i in range(6):
                m = meta[f"a_comp_cor_{i:02d}"]
                assert m["Method"] == "aCompCor" and m["Retained"] is True
                assert {"Mask", "SingularValue", "VarianceExplained"} <= set(m)
    assert n_outlier_runs >= 1  # motion spikes in some runs


def test_power_fd_by_hand():
    motion = np.zeros((3, 6))
    motion[1] = [0.1, -0.2, 0.0, 0.001, 0.0, -0.002]
    fd = sim.framewise_displacement(motion)
    assert np.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], [0.3 + 50 * 0.003, 0.3 + 50 * 0.003])


def test_default_grid_is_8mm_over_mni():
    affine = sim.mni_grid((23, 27, 23))
    np.testing.assert_allclose(affine[:3, :3], 8 * np.eye(3))
    np.testing.assert_allclose(affine[:3, 3], [-88, -122, -70])
    anatomy = sim.brain_anatomy((23, 27, 23), affine)
    assert 2000 < anatomy["mask"].sum() <= 10_000
    assert not (anatomy["csf"] & anatomy["wm"]).any() and anatomy["csf"].any() and anatomy["wm"].any()


def test_bad_arguments(tmp_path):
    with pytest.raises(GlmxError):
        make_example_dataset(tmp_path, n_subjects=0)
    with pytest.raises(GlmxError):
        make_example_dataset(tmp_path, n_volumes=5)


# ------------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------------

def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    kw = dict(n_subjects=1, n_runs=2, shape=(10, 12, 10), n_volumes=30)
    a = _digest(make_example_dataset(tmp_path / "a", seed=3, **kw))
    b = _digest(make_example_dataset(tmp_path / "b", seed=3, **kw))
    c = _digest(make_example_dataset(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert len(a) > 15
    bold = f"derivatives/fmriprep/sub-01/func/sub-01_task-{TASK}_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"
    assert a[bold] != c[bold]
    header = (tmp_path / "a" / bold).read_bytes()[:10]
    assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert header[3] & 0x08 == 0  # no file name stored


# ------------------------------------------------------------------------------------------------
# planted effects
# ------------------------------------------------------------------------------------------------

def _fit(root, sub, t_r, modulators=False):
    from nilearn.glm.first_level import FirstLevelModel

    imgs, events, confounds = [], [], []
    raw_events = [pd.read_csv(_func(root, sub, run, "events.tsv", deriv=False), sep="\t") for run in [1, 2]]
    allev = pd.concat(raw_events)
    for run, ev in zip([1, 2], raw_events):
        imgs.append(str(_func(root, sub, run, f"space-{SPACE}_desc-preproc_bold.nii.gz")))
        table = ev[["onset", "duration", "trial_type"]].assign(modulation=1.0)
        if modulators:
            rows = [table]
            for cond in sim.CONDITIONS:
                sel = ev[ev.trial_type == cond]
                centred = sel.response_time - allev[allev.trial_type == cond].response_time.mean()
                rows.append(pd.DataFrame({"onset": sel.onset, "duration": sel.duration,
                                          "trial_type": f"{cond}_x_response_time", "modulation": centred}))
            table = pd.concat(rows, ignore_index=True)
        events.append(table)
        confounds.append(_confounds(root, sub, run)[MOTION].fillna(0))
    mask = str(_func(root, sub, 1, f"space-{SPACE}_desc-brain_mask.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FirstLevelModel(t_r=t_r, mask_img=mask, minimize_memory=True).fit(
            imgs, events=events, confounds=confounds)


@pytest.fixture(scope="module")
def truth(dataset):
    record = read_planted_effects(dataset)
    record["by_name"] = {e["name"]: e for e in record["effects"]}
    mask = np.asarray(nib.load(_func(dataset, "01", 1, f"space-{SPACE}_desc-brain_mask.nii.gz")).dataobj) > 0
    record["null_mask"] = mask & (record["labels"] == 0)
    return record


def test_planted_effects_record(dataset, truth):
    assert {e["name"] for e in truth["effects"]} == {"visual", "conflict", "rt"}
    assert truth["parameters"]["tr"] == 2.0 and truth["parameters"]["n_volumes"] == N_VOLUMES
    assert set(truth["subjects"]) == {"sub-01", "sub-02"}
    for eff in truth["effects"]:
        assert eff["core_mask"].sum() >= 3
        assert (eff["core_mask"] <= eff["support_mask"]).all()
    assert truth["null_mask"].sum() > 2000


def test_incongruent_vs_congruent_recovered_at_true_tr_only(dataset, truth):
    core = truth["by_name"]["conflict"]["core_mask"]
    null = truth["null_mask"]
    z2 = _fit(dataset, "01", 2.0).compute_contrast("incongruent - congruent").get_fdata()
    assert z2[core].mean() > 3.5 and z2[core].max() > 5
    assert abs(z2[null].mean()) < 0.3 and 0.8 < z2[null].std() < 1.25
    assert np.quantile(np.abs(z2[null]), 0.99) < 3.2 and np.abs(z2[null]).max() < 5.5
    # visual blob: both conditions respond equally, so no difference there
    assert abs(z2[truth["by_name"]["visual"]["core_mask"]].mean()) < 2

    z1 = _fit(dataset, "01", 1.0).compute_contrast("incongruent - congruent").get_fdata()
    assert z1[core].mean() < 2 and z1[core].mean() < 0.5 * z2[core].mean()


def test_task_and_rt_effects_recovered(dataset, truth):
    model = _fit(dataset, "02", 2.0, modulators=True)
    z_task = model.compute_contrast("0.5*congruent + 0.5*incongruent").get_fdata()
    assert z_task[truth["by_name"]["visual"]["core_mask"]].mean() > 3.5
    z_rt = model.compute_contrast("congruent_x_response_time + incongruent_x_response_time").get_fdata()
    assert z_rt[truth["by_name"]["rt"]["core_mask"]].mean() > 3
    assert abs(z_rt[truth["null_mask"]].mean()) < 0.3


def test_rewriting_an_example_with_fewer_subjects_or_runs_is_refused(tmp_path):
    """Files of the same names are replaced, so a smaller example written over a larger one would leave the
    larger one's subjects and runs beside a participants.tsv that lacks them: refused, nothing changed. The
    same or a larger example may be written over it (every file it keeps is rewritten)."""
    root = tmp_path / "ds"
    make_example_dataset(root, n_subjects=3, n_runs=2, shape=(6, 7, 6), n_volumes=40)
    make_example_dataset(root, n_subjects=3, n_runs=2, shape=(6, 7, 6), n_volumes=40, seed=1)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    with pytest.raises(GlmxError, match=r"--subjects: this folder already holds an example dataset .*sub-03"):
        make_example_dataset(root, n_subjects=2, n_runs=2, shape=(6, 7, 6), n_volumes=40)
    with pytest.raises(GlmxError, match=r"n_runs: this folder already holds an example dataset .*_run-2_"):
        make_example_dataset(root, n_subjects=3, n_runs=1, shape=(6, 7, 6), n_volumes=40)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    make_example_dataset(root, n_subjects=4, n_runs=2, shape=(6, 7, 6), n_volumes=40)
    table = pd.read_csv(root / "participants.tsv", sep="\t")
    assert table["participant_id"].tolist() == [f"sub-0{i}" for i in range(1, 5)]
