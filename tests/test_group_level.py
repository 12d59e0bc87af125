"""Group level end to end: example dataset → first level (Aggregator) → GroupLevel / ``glmx ... group``.

Checked against nilearn's SecondLevelModel on the same subject maps, against the planted effects of
the simulated dataset, and for the subjects the spec excludes or that lack a map.
"""

import json
import re
import shutil
import warnings

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.api import Aggregator, GroupLevel
from glmx_workflows.cli.run import main
from glmx_workflows.core.errors import GlmxError
from glmx_workflows.io.example import make_example_dataset, read_planted_effects

SPACE = "MNI152NLin2009cAsym"
N_SUBJECTS = 6  # 2**6 sign flips: the smallest FWE p-value is 1/64 < 0.05


@pytest.fixture(scope="module")
def first_level(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    bids = make_example_dataset(root / "bids", n_subjects=N_SUBJECTS, n_runs=1, n_volumes=100)
    out = root / "out"
    report = Aggregator(bids, "flanker", output_dir=out, work_dir=root / "work").run(n_procs=2, progress=False)
    assert report.ok, report.summary()
    return bids, out


def _group_file(out, contrast, stat=None, desc=None, suffix="statmap", ext=".nii.gz"):
    name = f"task-flanker_space-{SPACE}_contrast-{contrast}" + (f"_stat-{stat}" if stat else "") \
        + (f"_desc-{desc}" if desc else "") + f"_{suffix}{ext}"
    return out / "group" / name


def _subject_maps(out, contrast, subjects):
    name = "sub-{s}_task-flanker_space-" + SPACE + "_contrast-" + contrast + "_stat-effect_statmap.nii.gz"
    return [out / f"sub-{s}" / "func" / name.format(s=s) for s in subjects]


def test_cli_group_recovers_planted_effect_with_fwe_and_writes_offline_report(first_level, tmp_path, capsys):
    bids, out = first_level
    code = main([str(bids), str(out), "group", "--task", "flanker", "--contrast", "task", "--inference", "fdr",
                 "perm_fwe", "tfce", "--n-permutations", "1000", "--work-dir", str(tmp_path / "work"), "--quiet"])
    assert code == 0
    planted = read_planted_effects(bids)
    mask = nb.load(_group_file(out, "task", "z")).get_fdata() != 0
    for desc in ("permFWE", "tfce"):
        p = nb.load(_group_file(out, "task", "p", desc)).get_fdata()
        significant = (p <= 0.05) & mask
        visual = next(e for e in planted["effects"] if e["name"] == "visual")
        # the planted effect survives FWE correction; no significant voxel lies outside the planted effects
        assert (significant & visual["support_mask"]).any(), desc
        assert not (significant & (planted["labels"] == 0)).any(), desc
        thresholded = nb.load(_group_file(out, "task", "z", desc)).get_fdata()
        assert np.array_equal(thresholded != 0, significant)
    for stat in ("effect", "variance", "t", "z", "p"):
        assert _group_file(out, "task", stat).is_file()
    assert _group_file(out, "task", "p", "fdr").is_file() and _group_file(out, "task", "tfce", "tfce").is_file()
    clusters = pd.read_csv(_group_file(out, "task", suffix="clusters", ext=".tsv"), sep="\t")
    assert {"cluster_id", "x", "y", "z", "peak_z", "size_voxels", "size_mm3", "p_permFWE", "p_tfce"} <= set(clusters)
    top = clusters.iloc[0]
    assert planted["labels"][int(top["i"]), int(top["j"]), int(top["k"])] > 0
    design = pd.read_csv(_group_file(out, "task", suffix="design", ext=".tsv"), sep="\t")
    assert design.columns.tolist() == ["participant_id", "intercept", "age"]
    assert _group_file(out, "task", suffix="design", ext=".svg").is_file()
    assert _group_file(out, "task", desc="subjects", suffix="mosaic", ext=".png").is_file()
    report = (out / "group" / "task-flanker_report.html").read_text()
    assert "data:image/png;base64," in report and "<svg" in report and "sub-06" in report
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", report), "report loads something remote"
    assert "<script" not in report and "<link" not in report
    first_row = pd.read_csv(_group_file(out, "task", suffix="clusters", ext=".tsv"), sep="\t", dtype=str).iloc[0]
    assert f"<td>{first_row['peak_z']}</td>" in report  # the cluster table is in the report


def test_group_maps_match_second_level_model(first_level, tmp_path):
    from nilearn.glm.second_level import SecondLevelModel

    bids, out = first_level
    group = GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work", contrasts=["incongruentVcongruent"],
                       group_inference=["uncorrected"], group_contrasts={"older": "age"}, group_smoothing_fwhm=8.0)
    group.run(plugin="Linear")
    subjects = [f"{i + 1:02d}" for i in range(N_SUBJECTS)]
    z_path = _group_file(out, "incongruentVcongruent", "z")
    mask = nb.load(z_path).get_fdata() != 0
    mask_img = nb.Nifti1Image(mask.astype(np.uint8), nb.load(z_path).affine)
    ages = pd.read_csv(bids / "participants.tsv", sep="\t")["age"].to_numpy(float)
    design = pd.DataFrame({"intercept": np.ones(N_SUBJECTS), "age": ages - ages.mean()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SecondLevelModel(mask_img=mask_img, smoothing_fwhm=8.0).fit(
            [str(p) for p in _subject_maps(out, "incongruentVcongruent", subjects)], design_matrix=design)
    for weights, desc in (([1, 0], None), ([0, 1], "older")):
        ref = model.compute_contrast(np.array(weights, float), output_type="all")
        for stat, key in (("z", "z_score"), ("t", "stat"), ("effect", "effect_size")):
            ours = nb.load(_group_file(out, "incongruentVcongruent", stat, desc)).get_fdata()[mask]
            assert np.abs(ours - ref[key].get_fdata()[mask]).max() < 1e-4, (desc, stat)


def _small_bids(bids, tmp_path, participants=None, spec_changes=None):
    """A BIDS root with what the group level reads: participants.tsv, the spec, the subject folders."""
    root = tmp_path / "bids"
    root.mkdir()
    table = pd.read_csv(bids / "participants.tsv", sep="\t") if participants is None else participants
    table.to_csv(root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    spec = json.loads((bids / "task_information.json").read_text())
    spec["flanker"].update(spec_changes or {})
    (root / "task_information.json").write_text(json.dumps(spec))
    for sub in table["participant_id"]:
        (root / sub).mkdir()
    return root


def test_excluded_and_mapless_subjects_are_left_out_and_logged(first_level, tmp_path, capsys):
    bids, out = first_level
    root = _small_bids(bids, tmp_path, spec_changes={"excludes": ["sub-02"]})
    partial = tmp_path / "out"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("group"))
    for path in (partial / "sub-05" / "func").glob("*_contrast-task_stat-effect_statmap.nii.gz"):
        path.unlink()
    code = main([str(root), str(partial), "group", "--task", "flanker", "--contrast", "task", "incongruent",
                 "--inference", "uncorrected", "--work-dir", str(tmp_path / "work"), "--quiet", "--plugin", "Linear"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "excluded by the spec (left out of every group model): sub-02" in printed
    assert "contrast task: no subject-level stat-effect map for sub-05; left out" in printed
    task = pd.read_csv(_group_file(partial, "task", suffix="design", ext=".tsv"), sep="\t")
    incongruent = pd.read_csv(_group_file(partial, "incongruent", suffix="design", ext=".tsv"), sep="\t")
    assert task["participant_id"].tolist() == ["sub-01", "sub-03", "sub-04", "sub-06"]
    assert incongruent["participant_id"].tolist() == ["sub-01", "sub-03", "sub-04", "sub-05", "sub-06"]
    # age is centred on the subjects actually modelled
    assert abs(task["age"].mean()) < 1e-9 and abs(incongruent["age"].mean()) < 1e-9
    report = (partial / "group" / "task-flanker_report.html").read_text()
    assert "Subjects excluded by the spec: sub-02" in report and "no subject-level map" in report


def test_missing_covariate_is_a_one_line_error(first_level, tmp_path, capsys):
    bids, out = first_level
    table = pd.read_csv(bids / "participants.tsv", sep="\t")
    table.loc[table["participant_id"] == "sub-03", "age"] = np.nan
    root = _small_bids(bids, tmp_path, participants=table)
    code = main([str(root), str(out), "group", "--task", "flanker", "--work-dir", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("glmx: error: ") and "sub-03" in err[-1] and "'age'" in err[-1]
    assert "participants.tsv" in err[-1]
    # the same subject excluded: no error at planning
    root2 = tmp_path / "again"
    root2.mkdir()
    shutil.copytree(root, root2 / "bids")
    spec = json.loads((root2 / "bids" / "task_information.json").read_text())
    spec["flanker"]["excludes"] = ["03"]
    (root2 / "bids" / "task_information.json").write_text(json.dumps(spec))
    plan = GroupLevel("flanker", root2 / "bids", output_dir=out).plan()
    assert all("03" not in c["subjects"] for c in plan.contrasts.values())


def test_workflow_nodes_and_bad_group_settings(first_level, tmp_path):
    bids, out = first_level
    group = GroupLevel("flanker", bids, output_dir=out, contrasts=["task"], group_inference=["fdr", "tfce"])
    wf = group.workflow()
    names = {n.fullname.split(".")[-1] for n in wf._create_flat_graph().nodes()}
    assert {"load_maps", "build_design", "fit_group", "compute_contrasts", "threshold_maps", "permute",
            "cluster_tables", "plot_figures", "ds_group", "group_report", "ds_report"} <= names
    assert "permute" not in {n.fullname.split(".")[-1] for n in GroupLevel(
        "flanker", bids, output_dir=out, contrasts=["task"], group_inference=["fdr"]).workflow()._create_flat_graph()
        .nodes()}
    with pytest.raises(GlmxError, match="group_inference"):
        GroupLevel("flanker", bids, output_dir=out, group_inference=["fwe"])
    with pytest.raises(GlmxError, match="group_contrasts.bad"):
        GroupLevel("flanker", bids, output_dir=out, group_contrasts={"bad": "age *"})
    with pytest.raises(GlmxError, match=r"flanker\.group_contrasts\.x: group contrast 'x' uses 'agee', not a column"):
        GroupLevel("flanker", bids, output_dir=out, group_contrasts={"x": "agee"}).plan()
    with pytest.raises(GlmxError, match="no subject maps of contrast"):
        GroupLevel("flanker", bids, output_dir=out, contrasts=["nope"]).plan()
    assert main([str(bids), str(out), "participant", "--task", "flanker", "--n-permutations", "10"]) == 2
