"""A BIDS Stats Models Subject node of ``Type: glm`` (an OLS over the runs' effect maps, as fitlins'
SecondLevelModel) with the Run → Subject edge's Filter, checked against nilearn's SecondLevelModel fed the
run-level effect maps glmx published and an intercept design written here."""

import json
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from glmx_workflows.cli.run import main
from glmx_workflows.io.example import make_example_dataset

MODEL = Path(__file__).parent / "data" / "bsm" / "model-flanker_smdl.json"
SPACE = "MNI152NLin2009cAsym"


def test_subject_glm_over_runs_matches_second_level_model(tmp_path):
    from nilearn.glm.second_level import SecondLevelModel

    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=3, shape=(9, 11, 9), n_volumes=70, seed=8)
    model = json.loads(MODEL.read_text())
    model["Nodes"][1]["Model"]["Type"] = "glm"
    model["Edges"][0]["Filter"] = {"contrast": ["incongruent_vs_congruent", "trial_type.incongruent"]}
    path = tmp_path / "model-subjectGlm_smdl.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--model", str(path), "--quiet", "--plugin", "Linear"]) == 0
    folder = out / "node-subject" / "sub-01" / "func"
    # the edge's Filter: only the two contrasts reach the Subject node (the run level keeps all four)
    assert {p.name.split("contrast-")[1].split("_")[0] for p in folder.glob("*contrast-*")} == \
        {"incongruentVsCongruent", "trialTypeIncongruent"}
    assert list((out / "node-run" / "sub-01" / "func").glob("*run-3*contrast-conditions_stat-F_statmap.nii.gz"))
    for label in ("incongruentVsCongruent", "trialTypeIncongruent"):
        runs = [str(out / "node-run" / "sub-01" / "func" /
                    f"sub-01_task-flanker_run-{r}_space-{SPACE}_contrast-{label}_stat-effect_statmap.nii.gz")
                for r in (1, 2, 3)]
        name = f"sub-01_task-flanker_space-{SPACE}_contrast-{label}_stat-{{}}_statmap.nii.gz"
        z = nb.load(str(folder / name.format("z"))).get_fdata()
        mask = z != 0
        assert mask.sum() > 100
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slm = SecondLevelModel(mask_img=nb.Nifti1Image(mask.astype(np.uint8), nb.load(runs[0]).affine)).fit(
                runs, design_matrix=pd.DataFrame({"intercept": np.ones(3)}))
            ref = slm.compute_contrast("intercept", output_type="all")
        for stat, key in (("effect", "effect_size"), ("variance", "effect_variance"), ("t", "stat"),
                          ("z", "z_score")):
            ours = nb.load(str(folder / name.format(stat))).get_fdata()
            assert np.abs(ours - ref[key].get_fdata())[mask].max() < 1e-4, (label, stat)


def _into_sessions(root, sessions):
    """Move each run's raw and fMRIPrep files into its session (``{run: session}``), renaming them as BIDS does."""
    for base in (root, root / "derivatives" / "fmriprep"):
        for sub in base.glob("sub-*"):
            for f in sorted((sub / "func").glob("*_run-*")):
                run = int(f.name.split("_run-")[1].split("_")[0])
                ses = sessions[run]
                target = sub / f"ses-{ses}" / "func" / f.name.replace(f"{sub.name}_", f"{sub.name}_ses-{ses}_", 1)
                target.parent.mkdir(parents=True, exist_ok=True)
                f.rename(target)
            (sub / "func").rmdir()


def test_session_node_then_subject_node_match_nilearn_fixed_effects(tmp_path):
    """Run → Session (fixed effects of each session's runs) → Subject (fixed effects of the sessions), with
    sessions of one and two runs, so the nested combination differs from pooling the three runs."""
    from nilearn.glm.contrasts import compute_fixed_effects
    from nilearn.glm.first_level import FirstLevelModel

    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=3, shape=(9, 11, 9), n_volumes=70, seed=9)
    _into_sessions(root, {1: "a", 2: "b", 3: "b"})
    model = json.loads(MODEL.read_text())
    model["Nodes"][0]["GroupBy"] = ["run", "session", "subject"]
    model["Nodes"].insert(1, {"Level": "Session", "Name": "session", "GroupBy": ["subject", "session", "contrast"],
                              "Model": {"Type": "meta", "X": [1]}, "DummyContrasts": {"Test": "t"}})
    model["Edges"] = [{"Source": "run", "Destination": "session",
                       "Filter": {"contrast": ["incongruent_vs_congruent"]}},
                      {"Source": "session", "Destination": "subject"},
                      {"Source": "subject", "Destination": "dataset"}]
    path = tmp_path / "model-sessions_smdl.json"
    path.write_text(json.dumps(model))
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--model", str(path), "--quiet", "--plugin", "Linear"]) == 0
    label = "incongruentVsCongruent"
    fmriprep = root / "derivatives" / "fmriprep" / "sub-01"
    designs = {}
    for ses, run in (("a", 1), ("b", 2), ("b", 3)):
        designs.setdefault(ses, []).append(
            (str(fmriprep / f"ses-{ses}" / "func" /
                 f"sub-01_ses-{ses}_task-flanker_run-{run}_space-{SPACE}_desc-preproc_bold.nii.gz"),
             pd.read_csv(out / "node-run" / "sub-01" / f"ses-{ses}" / "func" /
                         f"sub-01_ses-{ses}_task-flanker_run-{run}_design.tsv", sep="\t")))
    mask_file = str(fmriprep / "ses-a" / "func" /
                    f"sub-01_ses-a_task-flanker_run-1_space-{SPACE}_desc-brain_mask.nii.gz")
    inside = nb.load(mask_file).get_fdata() > 0
    effects, variances, dofs = [], [], []
    for ses, pairs in designs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flm = FirstLevelModel(mask_img=mask_file, noise_model="ar1").fit(
                [b for b, _ in pairs], design_matrices=[X for _, X in pairs])
            w = [np.array([1.0 if c == "trial_type.incongruent" else -1.0 if c == "trial_type.congruent" else 0.0
                           for c in X.columns]) for _, X in pairs]
            ref = flm.compute_contrast(w, output_type="all")
        ours = {stat: nb.load(str(out / "node-session" / "sub-01" / f"ses-{ses}" / "func" /
                                  f"sub-01_ses-{ses}_task-flanker_space-{SPACE}_contrast-{label}_stat-{stat}"
                                  "_statmap.nii.gz")).get_fdata() for stat in ("effect", "variance", "z")}
        for stat, key in (("effect", "effect_size"), ("variance", "effect_variance"), ("z", "z_score")):
            assert np.abs(ours[stat] - ref[key].get_fdata())[inside].max() < 1e-3, (ses, stat)
        effects.append(ref["effect_size"])
        variances.append(ref["effect_variance"])
        dofs.append(sum(len(X) - np.linalg.matrix_rank(X.to_numpy(float)) for _, X in pairs))
    effect, variance, t, z = compute_fixed_effects(effects, variances, mask=mask_file, dofs=dofs)
    name = f"sub-01_task-flanker_space-{SPACE}_contrast-{label}_stat-{{}}_statmap.nii.gz"
    folder = out / "node-subject" / "sub-01" / "func"
    for stat, ref in (("effect", effect), ("variance", variance), ("t", t), ("z", z)):
        ours = nb.load(str(folder / name.format(stat))).get_fdata()
        assert np.abs(ours - ref.get_fdata())[inside].max() < 1e-3, stat
    # the Run → Session edge's Filter: only that contrast above the Run level
    assert {p.name.split("contrast-")[1].split("_")[0] for p in folder.glob("*contrast-*")} == {label}


def test_sessions_need_the_run_node_grouped_by_session(tmp_path, capsys):
    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(9, 11, 9), n_volumes=70, seed=9)
    _into_sessions(root, {1: "a", 2: "b"})
    before = sorted(p for p in root.rglob("*"))
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--model", str(MODEL), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Nodes[0].GroupBy" in err[0] and "session" in err[0], err
    assert not out.exists() and not Path(str(out) + "_work").exists()
    assert sorted(p for p in root.rglob("*")) == before
