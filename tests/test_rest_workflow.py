"""Resting state end to end: simulated rest runs with planted networks, the CLI at both levels, outputs
against nilearn's NiftiSpheresMasker, scrubbing, the offline report, and refusals."""

import json
import subprocess
import sys

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.maskers import NiftiSpheresMasker

from glmx_workflows.core import connectivity as cc
from glmx_workflows.io import atlases
from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.io.example_rest import NETWORKS, add_rest_runs

SPACE = "MNI152NLin2009cAsym"
SEG = "Dosenbach2010"


def glmx(*args):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def rest_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest") / "bids"
    make_example_dataset(root, n_subjects=4, n_runs=1, n_volumes=40)
    planted = add_rest_runs(root, n_volumes=120, n_runs=2, seed=0)
    return root, planted


@pytest.fixture(scope="module")
def participant_run(rest_dataset):
    root, planted = rest_dataset
    out = root.parent / "out"
    proc = glmx(root, out, "participant", "--task", "rest", "--quiet", "--n-procs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, out, planted, proc


def _func(root, sub):
    return root / "derivatives" / "fmriprep" / f"sub-{sub}" / "func"


def test_outputs_have_xcpd_names_and_square_labelled_matrices(participant_run):
    root, out, planted, proc = participant_run
    func = out / "sub-01" / "func"
    for run in ("_run-1", "_run-2", ""):
        for kind in ("pearsoncorrelation", "covariance"):
            assert (func / f"sub-01_task-rest{run}_space-{SPACE}_seg-{SEG}_stat-{kind}_relmat.tsv").is_file()
        assert (func / f"sub-01_task-rest{run}_space-{SPACE}_stat-z_desc-PCC_boldmap.nii.gz").is_file()
    for run in ("_run-1", "_run-2"):
        assert (func / f"sub-01_task-rest{run}_space-{SPACE}_seg-{SEG}_stat-mean_timeseries.tsv").is_file()
        assert (func / f"sub-01_task-rest{run}_outliers.tsv").is_file()
    frame = pd.read_csv(func / f"sub-01_task-rest_space-{SPACE}_seg-{SEG}_stat-pearsoncorrelation_relmat.tsv",
                        sep="\t", index_col=0, na_values="n/a")
    assert frame.shape == (160, 160) and list(frame.index) == list(frame.columns)
    assert frame.columns[0] == "1_vmPFC"
    m = frame.to_numpy()
    assert np.allclose(m, m.T, equal_nan=True)
    # the subject matrix is the runs' average in Fisher z
    runs = [pd.read_csv(func / f"sub-01_task-rest_run-{r}_space-{SPACE}_seg-{SEG}_stat-pearsoncorrelation_relmat.tsv",
                        sep="\t", index_col=0, na_values="n/a").to_numpy() for r in (1, 2)]
    expected = np.tanh((np.arctanh(np.clip(runs[0], -0.999999, 0.999999)) +
                        np.arctanh(np.clip(runs[1], -0.999999, 0.999999))) / 2)
    off = ~np.eye(160, dtype=bool) & np.isfinite(m)
    np.testing.assert_allclose(m[off], expected[off], atol=1e-6)
    assert "4 subject(s) done, 0 failed" in proc.stdout


def test_timeseries_equal_nilearn_spheres_masker_on_the_same_inputs(participant_run):
    root, out, planted, _ = participant_run
    func = _func(root, "02")
    bold = func / f"sub-02_task-rest_run-2_space-{SPACE}_desc-preproc_bold.nii.gz"
    mask = func / f"sub-02_task-rest_run-2_space-{SPACE}_desc-brain_mask.nii.gz"
    table = pd.read_csv(func / "sub-02_task-rest_run-2_desc-confounds_timeseries.tsv", sep="\t", na_values="n/a")
    cols = [f"{m}{s}" for m in cc.MOTION for s in ("", "_derivative1", "_power2", "_derivative1_power2")]
    conf = table[cols].fillna(table[cols].mean()).to_numpy()
    fd = table["framewise_displacement"].to_numpy()
    keep = np.flatnonzero(np.nan_to_num(fd[1:]) <= 0.5)  # dummy_scans 1, fd_threshold 0.5
    ours = pd.read_csv(out / "sub-02" / "func" /
                       f"sub-02_task-rest_run-2_space-{SPACE}_seg-{SEG}_stat-mean_timeseries.tsv", sep="\t",
                       na_values="n/a")
    coords, names, _ = atlases.read_coordinates(atlases.packaged_coordinates_file("dosenbach_2010"))
    inside = [i for i in range(160) if ours.iloc[:, i].notna().all()]
    assert 140 <= len(inside) < 160
    img = nb.load(bold)
    masker = NiftiSpheresMasker([tuple(c) for c in coords[inside]], radius=5.0, mask_img=str(mask),
                                allow_overlap=True, detrend=True, standardize="zscore_sample", high_pass=0.01,
                                low_pass=0.08, t_r=2.0)
    data = np.asarray(img.dataobj, dtype=np.float64)[..., 1:]  # float64 like ours, so rounding cannot differ
    ref = masker.fit_transform(nb.Nifti1Image(data, img.affine), confounds=conf[1:],
                               sample_mask=keep)
    np.testing.assert_allclose(ours.to_numpy()[:, inside], ref, atol=1e-6)
    assert len(ours) == len(keep)


def test_planted_networks_recovered_in_every_subject(participant_run):
    root, out, planted, _ = participant_run
    a = [n - 1 for n in NETWORKS["default"]]
    b = [n - 1 for n in NETWORKS["sensorimotor"]]
    for sub in ("01", "02", "03", "04"):
        r = pd.read_csv(out / f"sub-{sub}" / "func" /
                        f"sub-{sub}_task-rest_space-{SPACE}_seg-{SEG}_stat-pearsoncorrelation_relmat.tsv",
                        sep="\t", index_col=0, na_values="n/a").to_numpy()
        within = np.mean([r[i, j] for g in (a, b) for i in g for j in g if i < j])
        between = np.mean([r[i, j] for i in a for j in b])
        assert within > 0.6 and within - between > 0.4, (sub, within, between)


def test_outliers_list_dummy_and_planted_spikes(participant_run):
    root, out, planted, _ = participant_run
    table = pd.read_csv(out / "sub-03" / "func" / "sub-03_task-rest_run-1_outliers.tsv", sep="\t",
                        keep_default_na=False)
    spikes = planted["subjects"]["sub-03"]["run-1"]["spike_volumes"]
    assert len(spikes) >= 3
    assert list(table.loc[table["reason"] == "fd", "volume"]) == spikes
    assert list(table.loc[table["reason"] == "dummy", "volume"]) == [0]
    assert table["censored"].sum() == len(spikes) + 1


def test_scrubbing_removes_planted_spike_artefact(rest_dataset):
    """The spikes add an artefact shared by both networks: scrubbing lowers their correlation (6P, no band-pass,
    so that only censoring can remove the spikes)."""
    root, planted = rest_dataset
    a = [n - 1 for n in NETWORKS["default"]]
    b = [n - 1 for n in NETWORKS["sensorimotor"]]
    effect = []
    for sub in ("01", "02", "03", "04"):
        for run in (1, 2):
            func = _func(root, sub)
            img = nb.load(func / f"sub-{sub}_task-rest_run-{run}_space-{SPACE}_desc-preproc_bold.nii.gz")
            mask = np.asarray(nb.load(func / f"sub-{sub}_task-rest_run-{run}_space-{SPACE}_desc-brain_mask.nii.gz"
                                      ).dataobj) > 0
            table = pd.read_csv(func / f"sub-{sub}_task-rest_run-{run}_desc-confounds_timeseries.tsv", sep="\t",
                                na_values="n/a")
            atlas = atlases.load_atlas(None, img, "bold", SPACE)
            raw, _ = atlases.region_signals(atlas, np.asarray(img.dataobj), img.affine, mask)
            conf = cc.select_rest_confounds(table, "6P")
            between = []
            for threshold in (None, 0.5):
                outliers = cc.censoring(len(table), 1, table["framewise_displacement"], threshold, 40)
                r = cc.connectivity(cc.denoise(raw, conf, 2.0, outliers, high_pass=None, low_pass=None),
                                    "pearsoncorrelation")
                between.append(np.mean([r[i, j] for i in a for j in b]))
            effect.append(between[0] - between[1])
    assert np.mean(effect) > 0.15 and np.mean(np.array(effect) > 0) >= 0.75, effect


def test_seed_map_peaks_in_its_network(participant_run):
    root, out, planted, _ = participant_run
    img = nb.load(out / "sub-01" / "func" / f"sub-01_task-rest_space-{SPACE}_stat-z_desc-PCC_boldmap.nii.gz")
    z = np.asarray(img.dataobj)
    coords, _, _ = atlases.read_coordinates(atlases.packaged_coordinates_file("dosenbach_2010"))
    inv = np.linalg.inv(img.affine)

    def at(number):
        ijk = np.round(inv[:3, :3] @ coords[number - 1] + inv[:3, 3]).astype(int)
        return z[tuple(ijk)]

    default = [at(n) for n in NETWORKS["default"] if n != 105]  # 105 is the seed itself
    motor = [at(n) for n in NETWORKS["sensorimotor"]]
    assert min(default) > 0.5 and np.mean(default) - np.mean(motor) > 0.5, (default, motor)


def test_report_is_self_contained(participant_run):
    root, out, planted, _ = participant_run
    page = (out / "sub-01" / "func" / "sub-01_task-rest_desc-connectivity_report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_group_level_mean_tangent_and_edge_comparison(participant_run):
    root, out, planted, _ = participant_run
    proc = glmx(root, out, "group", "--task", "rest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    group = out / "group"
    mean = pd.read_csv(group / f"task-rest_space-{SPACE}_seg-{SEG}_stat-pearsoncorrelation_desc-mean_relmat.tsv",
                       sep="\t", index_col=0, na_values="n/a").to_numpy()
    subjects = [pd.read_csv(out / f"sub-{s}" / "func" /
                            f"sub-{s}_task-rest_space-{SPACE}_seg-{SEG}_stat-pearsoncorrelation_relmat.tsv",
                            sep="\t", index_col=0, na_values="n/a").to_numpy() for s in ("01", "02", "03", "04")]
    z = np.mean([np.arctanh(np.clip(m, -0.999999, 0.999999)) for m in subjects], axis=0)
    off = ~np.eye(160, dtype=bool) & np.isfinite(mean)
    np.testing.assert_allclose(mean[off], np.tanh(z)[off], atol=1e-6)
    assert (group / f"task-rest_space-{SPACE}_seg-{SEG}_stat-tangent_desc-mean_relmat.tsv").is_file()
    participants = pd.read_csv(root / "participants.tsv", sep="\t")
    a, b = sorted(participants["group"].unique())
    q = pd.read_csv(group / f"task-rest_space-{SPACE}_seg-{SEG}_stat-q_desc-{a}V{b}_relmat.tsv", sep="\t",
                    index_col=0, na_values="n/a").to_numpy()
    assert np.nanmin(q) > 0.05  # no planted group difference: nothing survives FDR


def test_scrubbing_refusal_through_the_cli(rest_dataset, tmp_path):
    root, _ = rest_dataset
    spec = json.loads((root / "task_information.json").read_text())
    spec["rest"]["fd_threshold"] = 0.05
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    proc = glmx(root, tmp_path / "out", "participant", "--task", "rest", "--spec", path, "--participant-label",
                "01", "--quiet")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("glmx: error:") and "volumes remain after 1 dummy scan(s) and FD scrubbing" in last
    assert "at least 40 are needed" in last and "Traceback" not in proc.stderr


def test_workflow_nodes_and_example_config(rest_dataset):
    from glmx_workflows.api import RestingState
    from glmx_workflows.spec.model import load_spec

    root, _ = rest_dataset
    wf = RestingState("01", "rest", root).workflow()
    names = {n.split(".")[-1] for n in wf.list_node_names()}
    assert {"denoise_run", "compute_connectivity", "rest_report", "ds_rest"} <= names
    from pathlib import Path

    entry = load_spec(Path(__file__).resolve().parents[1] / "configs" / "rest.json")["rest"]
    assert entry["analysis"] == "connectivity" and entry["description"]
    with pytest.raises(Exception, match="not a connectivity analysis"):
        RestingState("01", "flanker", root)


def _run_node(interface, cwd):
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return interface.run().outputs
    finally:
        os.chdir(old)


def test_denoise_run_with_labels_and_maps_atlases_equals_nilearn(rest_dataset, tmp_path):
    """Atlas files given in the spec (labels image + TSV, 4D maps) through the denoise_run node."""
    from nilearn.maskers import NiftiLabelsMasker, NiftiMapsMasker

    from glmx_workflows.interfaces.connectivity import DenoiseRun

    root, _ = rest_dataset
    func = _func(root, "01")
    bold = func / f"sub-01_task-rest_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"
    mask = func / f"sub-01_task-rest_run-1_space-{SPACE}_desc-brain_mask.nii.gz"
    confounds = func / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"
    img = nb.load(bold)
    ijk = np.indices(img.shape[:3])
    labels = (1 + (ijk[0] > img.shape[0] // 2) + 2 * (ijk[1] > img.shape[1] // 2)) * (ijk[2] > img.shape[2] // 2)
    nb.save(nb.Nifti1Image(labels.astype(np.int16), img.affine), tmp_path / "lab.nii.gz")
    pd.DataFrame({"index": [1, 2, 3, 4], "name": ["LP", "RP", "LA", "RA"]}).to_csv(tmp_path / "lab.tsv", sep="\t",
                                                                                  index=False)
    maps = np.stack([labels == k for k in (1, 2, 3, 4)], axis=-1) * (1.0 + ijk[0][..., None] / 10.0)
    nb.save(nb.Nifti1Image(maps.astype(np.float32), img.affine), tmp_path / "maps.nii.gz")
    table = pd.read_csv(confounds, sep="\t", na_values="n/a")
    conf = table[cc.MOTION].to_numpy()
    data = nb.Nifti1Image(np.asarray(img.dataobj, dtype=np.float64)[..., 2:], img.affine)
    clean = dict(detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.08, t_r=2.0)
    for spec, masker, header in (
            ({"name": "quad", "labels_img": "lab.nii.gz", "labels_tsv": "lab.tsv"},
             NiftiLabelsMasker(str(tmp_path / "lab.nii.gz"), mask_img=str(mask), **clean), ["LP", "RP", "LA", "RA"]),
            ({"name": "quadmaps", "maps_img": str(tmp_path / "maps.nii.gz")},
             NiftiMapsMasker(str(tmp_path / "maps.nii.gz"), mask_img=str(mask), **clean), ["1", "2", "3", "4"])):
        cwd = tmp_path / spec["name"]
        cwd.mkdir()
        out = _run_node(DenoiseRun(bold_file=str(bold), mask_file=str(mask), confounds_file=str(confounds),
                                   atlas=json.dumps(spec), atlas_base_dir=str(tmp_path), space=SPACE, tr=2.0,
                                   dummy_scans=2, min_volumes=40, confound_preset="6P", run_entities={"run": "1"}),
                        cwd)
        ours = pd.read_csv(out.timeseries_file, sep="\t")
        assert list(ours.columns) == header
        np.testing.assert_allclose(ours.to_numpy(), masker.fit_transform(data, confounds=conf[2:]), atol=1e-6)
        manifest = json.loads(open(out.manifest_file).read())
        assert manifest[0]["entities"] == {"run": "1", "seg": spec["name"], "stat": "mean"}


def test_run_combinations_concatenate_and_separate(tmp_path):
    from glmx_workflows.interfaces.connectivity import ComputeConnectivity, read_matrix

    rng = np.random.default_rng(3)
    files, seeds = [], []
    runs = [rng.standard_normal((60, 5)), rng.standard_normal((50, 5))]
    for i, ts in enumerate(runs):
        path = tmp_path / f"ts{i}.tsv"
        pd.DataFrame(ts, columns=list("abcde")).to_csv(path, sep="\t", index=False)
        files.append(str(path))
        seeds.append(str(tmp_path / f"seeds{i}.json"))
        (tmp_path / f"seeds{i}.json").write_text(json.dumps({"atlas": "toy", "maps": {}}))
    ents = [{"run": "1"}, {"run": "2"}]
    for combination in ("concatenate", "separate", "average"):
        cwd = tmp_path / combination
        cwd.mkdir()
        out = _run_node(ComputeConnectivity(timeseries_files=files, seeds_files=seeds, run_entities=ents,
                                            kinds=["pearsoncorrelation", "partialcorrelation"],
                                            run_combination=combination), cwd)
        items = json.loads(open(out.matrices_file).read())
        levels = sorted({i["level"] for i in items})
        subject = {i["kind"]: read_matrix(i["path"])[0] for i in items if i["level"] == "subject"}
        if combination == "concatenate":
            assert levels == ["subject"]
            np.testing.assert_allclose(subject["pearsoncorrelation"], np.corrcoef(np.concatenate(runs).T),
                                       atol=1e-10)
        elif combination == "separate":
            assert levels == ["run-1", "run-2"]
        else:
            assert levels == ["run-1", "run-2", "subject"]
            expected = np.tanh(np.mean([np.arctanh(np.clip(np.corrcoef(r.T), -1, 1 - 1e-12)) for r in runs], axis=0))
            off = ~np.eye(5, dtype=bool)
            np.testing.assert_allclose(subject["pearsoncorrelation"][off], expected[off], atol=1e-8)


def test_example_command_writes_rest_runs(tmp_path):
    proc = glmx("example", tmp_path / "ex", "--subjects", "1", "--rest")
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((tmp_path / "ex" / "task_information.json").read_text())
    assert spec["rest"]["analysis"] == "connectivity" and "flanker" in spec
    func = tmp_path / "ex" / "derivatives" / "fmriprep" / "sub-01" / "func"
    assert (func / f"sub-01_task-rest_run-1_space-{SPACE}_desc-preproc_bold.nii.gz").is_file()
    assert (tmp_path / "ex" / "code" / "planted_rest.json").is_file()


def test_real_haxby_runs_through_resting_state(shared_data, tmp_path):
    """Real BOLD (Haxby 2001, 12 runs, TR 2.5, T1w) through RestingState with a labels atlas on its grid,
    runs concatenated after per-run denoising; run series equal NiftiLabelsMasker, the matrix
    ConnectivityMeasure on the concatenation."""
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.maskers import NiftiLabelsMasker
    from sklearn.covariance import EmpiricalCovariance

    from glmx_workflows.api import RestingState

    root = shared_data / "haxby2001"
    func = root / "derivatives" / "fmriprep" / "sub-1" / "func"
    mask_path = sorted(func.glob("*run-01_*desc-brain_mask.nii.gz"))[0]
    mask = nb.load(mask_path)
    ijk = np.indices(mask.shape)
    labels = np.where(np.asarray(mask.dataobj) > 0, 1 + (ijk[2] >= 5) + 2 * (ijk[1] >= 5), 0)
    nb.save(nb.Nifti1Image(labels.astype(np.int16), mask.affine), tmp_path / "quad.nii.gz")
    spec = {"objectviewing": {"analysis": "connectivity", "space": "T1w", "tr": 2.5, "confound_preset": "6P",
                              "atlas": {"name": "quad", "labels_img": "quad.nii.gz"}, "fd_threshold": 0.5,
                              "min_volumes": 40, "run_combination": "concatenate"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    files = RestingState("1", "objectviewing", root, spec=tmp_path / "spec.json", output_dir=out,
                         work_dir=tmp_path / "work").run(plugin="Linear")
    names = sorted(p.split("/")[-1] for p in files)
    run_series = [n for n in names if "_run-" in n and n.endswith("_stat-mean_timeseries.tsv")]
    assert len(run_series) == 12
    # run 1 against nilearn on the same inputs
    bold = sorted(func.glob("*run-01_*desc-preproc_bold.nii.gz"))[0]
    table = pd.read_csv(sorted(func.glob("*run-01_*confounds_timeseries.tsv"))[0], sep="\t", na_values="n/a")
    keep = np.flatnonzero(~(np.nan_to_num(table["framewise_displacement"].to_numpy()) > 0.5))
    img = nb.load(bold)
    masker = NiftiLabelsMasker(str(tmp_path / "quad.nii.gz"), mask_img=str(mask_path), detrend=True,
                               standardize="zscore_sample", high_pass=0.01, low_pass=0.08, t_r=2.5)
    ref = masker.fit_transform(nb.Nifti1Image(np.asarray(img.dataobj, dtype=np.float64), img.affine),
                               confounds=table[cc.MOTION].to_numpy(), sample_mask=keep)
    ours = pd.read_csv(out / "sub-1" / "func" / run_series[0], sep="\t").to_numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    joined = np.concatenate([pd.read_csv(out / "sub-1" / "func" / n, sep="\t").to_numpy() for n in run_series])
    subject = pd.read_csv(out / "sub-1" / "func" / "sub-1_task-objectviewing_space-T1w_seg-quad_stat-"
                          "pearsoncorrelation_relmat.tsv", sep="\t", index_col=0).to_numpy()
    expected = ConnectivityMeasure(cov_estimator=EmpiricalCovariance(), kind="correlation",
                                   standardize=False).fit_transform([joined])[0]
    np.testing.assert_allclose(subject, expected, atol=1e-6)
