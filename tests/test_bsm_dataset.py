"""BIDS Stats Models above the Subject level: Dataset-node F contrasts, participants.tsv covariates transformed
by the Dataset node (pybids' Scale), and the Subject → Dataset edge's Filter, each checked against nilearn's
SecondLevelModel fed an explicit design built here from participants.tsv (not from glmx or pybids)."""

import json
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.cli.run import main
from glmx_workflows.io.example import make_example_dataset

DATA = Path(__file__).parent / "data" / "bsm"
MODEL = DATA / "model-flanker_smdl.json"
SPACE = "MNI152NLin2009cAsym"
SUBJECTS = ["01", "02", "03", "04"]


@pytest.fixture(scope="module")
def participant(tmp_path_factory):
    """The Run and Subject nodes of the flanker model, fitted once for every variant of its Dataset node."""
    root = tmp_path_factory.mktemp("bsmds") / "bids"
    make_example_dataset(root, n_subjects=len(SUBJECTS), n_runs=2, shape=(9, 11, 9), n_volumes=70, seed=5)
    out = root.parent / "out"
    assert main([str(root), str(out), "participant", "--model", str(MODEL), "--quiet", "--plugin", "Linear"]) == 0
    return root, out


def _variant(tmp_path, name, dataset_node, edge_filter):
    model = json.loads(MODEL.read_text())
    model["Nodes"][2] = {"Level": "Dataset", "Name": name, "GroupBy": ["contrast"], **dataset_node}
    model["Edges"][1] = {"Source": "subject", "Destination": name, "Filter": edge_filter}
    path = tmp_path / f"model-{name}_smdl.json"
    path.write_text(json.dumps(model))
    return path


def _subject_maps(out, contrast, subjects):
    return [str(out / "node-subject" / f"sub-{s}" / "func" /
                f"sub-{s}_task-flanker_space-{SPACE}_contrast-{contrast}_stat-effect_statmap.nii.gz") for s in subjects]


def _one(folder, pattern):
    hits = sorted(folder.glob(pattern))
    assert len(hits) == 1, (pattern, [h.name for h in folder.iterdir()])
    return nb.load(str(hits[0])).get_fdata()


def _second_level(maps, design, mask, contrast, stat):
    from nilearn.glm.second_level import SecondLevelModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SecondLevelModel(mask_img=nb.Nifti1Image(mask.astype(np.uint8), nb.load(maps[0]).affine)).fit(
            maps, design_matrix=design)
        return {k: v.get_fdata() for k, v in model.compute_contrast(contrast, second_level_stat_type=stat,
                                                                    output_type="all").items()}


def test_dataset_f_contrast_and_scaled_age_covariate(participant, tmp_path):
    root, out = participant
    node = {"Transformations": {"Transformer": "pybids-transforms-v1",
                                "Instructions": [{"Name": "Scale", "Input": ["age"]}]},
            "Model": {"Type": "glm", "X": [1, "age"]},
            "Contrasts": [{"Name": "ageF", "ConditionList": ["intercept", "age"], "Weights": [[1, 0], [0, 1]],
                           "Test": "F"}],
            "DummyContrasts": {"Contrasts": ["intercept", "age"], "Test": "t"}}
    path = _variant(tmp_path, "ageModel", node, {"contrast": ["incongruent_vs_congruent"]})
    assert main([str(root), str(out), "group", "--model", str(path), "--inference", "uncorrected",
                 "--plugin", "Linear"]) == 0
    folder = out / "node-ageModel"
    # the edge's Filter kept one contrast
    labels = {p.name.split("contrast-")[1].split("_")[0] for p in folder.glob("*contrast-*")}
    assert labels == {"incongruentVsCongruent"}
    # the explicit design: participants.tsv's age standardised over the dataset's participants (pybids' Scale:
    # demean, divide by the sample standard deviation), and an intercept
    age = pd.read_csv(root / "participants.tsv", sep="\t")["age"].to_numpy(float)
    design = pd.DataFrame({"intercept": np.ones(len(age)), "age": (age - age.mean()) / age.std(ddof=1)})
    ours = pd.read_csv(folder / f"task-flanker_space-{SPACE}_contrast-incongruentVsCongruent_design.tsv", sep="\t")
    assert list(ours.columns) == ["participant_id", "intercept", "age"]
    assert np.abs(ours[["intercept", "age"]].to_numpy() - design.to_numpy()).max() < 1e-9
    maps = _subject_maps(out, "incongruentVsCongruent", SUBJECTS)
    z_mean = _one(folder, "*contrast-incongruentVsCongruent_stat-z_statmap.nii.gz")
    mask = z_mean != 0
    assert mask.sum() > 100
    ref = _second_level(maps, design, mask, [[1, 0], [0, 1]], "F")
    for stat, key in (("F", "stat"), ("z", "z_score"), ("p", "p_value")):
        got = _one(folder, f"*contrast-incongruentVsCongruent_stat-{stat}_desc-ageF_statmap.nii.gz")
        assert np.abs(got - ref[key])[mask].max() < 1e-4, stat
    ref = _second_level(maps, design, mask, [0, 1], "t")
    for stat, key in (("t", "stat"), ("z", "z_score"), ("effect", "effect_size")):
        got = _one(folder, f"*contrast-incongruentVsCongruent_stat-{stat}_desc-age_statmap.nii.gz")
        assert np.abs(got - ref[key])[mask].max() < 1e-4, stat
    ref = _second_level(maps, design, mask, [1, 0], "t")
    assert np.abs(z_mean - ref["z_score"])[mask].max() < 1e-4


def test_edge_filter_selects_subjects_and_contrasts(participant, tmp_path):
    root, out = participant
    node = {"Model": {"Type": "glm", "X": [1]}, "DummyContrasts": {"Test": "t"}}
    path = _variant(tmp_path, "firstThree", node, {"contrast": ["trial_type.incongruent"],
                                                   "subject": ["01", "02", "03"]})
    assert main([str(root), str(out), "group", "--model", str(path), "--inference", "uncorrected",
                 "--plugin", "Linear"]) == 0
    folder = out / "node-firstThree"
    assert {p.name.split("contrast-")[1].split("_")[0] for p in folder.glob("*contrast-*")} == {"trialTypeIncongruent"}
    design = pd.read_csv(folder / f"task-flanker_space-{SPACE}_contrast-trialTypeIncongruent_design.tsv", sep="\t")
    assert list(design["participant_id"]) == ["sub-01", "sub-02", "sub-03"]
    z = _one(folder, "*contrast-trialTypeIncongruent_stat-z_statmap.nii.gz")
    mask = z != 0
    ref = _second_level(_subject_maps(out, "trialTypeIncongruent", SUBJECTS[:3]),
                        pd.DataFrame({"intercept": np.ones(3)}), mask, [1], "t")
    assert np.abs(z - ref["z_score"])[mask].max() < 1e-4


def test_run_f_contrast_reaching_the_dataset_node_is_refused(participant, tmp_path, capsys):
    root, out = participant
    model = json.loads(MODEL.read_text())
    del model["Edges"][1]["Filter"]
    path = tmp_path / "model-noFilter_smdl.json"
    path.write_text(json.dumps(model))
    before = sorted(p.name for p in out.iterdir())
    assert main([str(root), str(out), "group", "--model", str(path), "--plugin", "Linear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Nodes[0].Contrasts[1]" in err[0] and "Edges[1].Filter" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == before


def test_dataset_factor_of_group_two_sample(participant, tmp_path):
    """participants.tsv's ``group`` through pybids' Factor: a two-sample design; the published design writes
    ``group.patient`` as ``group_patient`` (an identifier for the group level's contrast formulas)."""
    root, out = participant
    node = {"Transformations": {"Transformer": "pybids-transforms-v1",
                                "Instructions": [{"Name": "Factor", "Input": ["group"]}]},
            "Model": {"Type": "glm", "X": [1, "group.patient"]},
            "Contrasts": [{"Name": "patient_vs_control", "ConditionList": ["group.patient"], "Weights": [1],
                           "Test": "t"}]}
    path = _variant(tmp_path, "groups", node, {"contrast": ["trial_type.congruent"]})
    assert main([str(root), str(out), "group", "--model", str(path), "--inference", "uncorrected",
                 "--plugin", "Linear"]) == 0
    folder = out / "node-groups"
    groups = pd.read_csv(root / "participants.tsv", sep="\t")["group"]
    design = pd.DataFrame({"intercept": np.ones(len(groups)), "patient": (groups == "patient").astype(float)})
    ours = pd.read_csv(folder / f"task-flanker_space-{SPACE}_contrast-trialTypeCongruent_design.tsv", sep="\t")
    assert list(ours.columns) == ["participant_id", "intercept", "group_patient"]
    assert np.abs(ours[["intercept", "group_patient"]].to_numpy() - design.to_numpy()).max() == 0
    z = _one(folder, "*contrast-trialTypeCongruent_stat-z_desc-patientVsControl_statmap.nii.gz")
    mask = _one(folder, "*contrast-trialTypeCongruent_stat-z_statmap.nii.gz") != 0
    ref = _second_level(_subject_maps(out, "trialTypeCongruent", SUBJECTS), design, mask, [0, 1], "t")
    assert np.abs(z - ref["z_score"])[mask].max() < 1e-4
