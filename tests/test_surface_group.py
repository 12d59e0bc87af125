"""Group level on fsaverage5 GIfTI pairs: 8 simulated subjects through the first level (Aggregator) and the
group level (GroupLevel), z equal to nilearn's OLS (``run_glm`` + ``compute_contrast``, what SecondLevelModel
runs) on the same arrays, outputs one GIfTI per hemisphere, TFCE and cluster extent along the mesh edges."""

import json

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import run_glm

from glmx_workflows.api import Aggregator, GroupLevel
from glmx_workflows.core.simulate import effect_weights_at
from glmx_workflows.io.example import make_example_dataset, surface_locations

N = 8
SPACE = "fsaverage5"


@pytest.fixture(scope="module")
def first_level(tmp_path_factory):
    root = tmp_path_factory.mktemp("surfgroup")
    bids = make_example_dataset(root / "bids", n_subjects=N, n_runs=1, n_volumes=70, shape=(8, 10, 8), seed=2,
                                surfaces=True)
    spec = json.loads((bids / "task_information.json").read_text())
    spec["flanker"].update(space=SPACE, modulators=[], confound_regressors=["trans_*", "rot_*"],
                           design_contrasts={"task": "0.5*congruent + 0.5*incongruent"})
    (bids / "task_information.json").write_text(json.dumps(spec))
    out = root / "out"
    report = Aggregator(bids, "flanker", output_dir=out, work_dir=root / "work").run(n_procs=2, progress=False)
    assert report.ok, report.summary()
    return bids, out


def _pair(folder, stem):
    return np.concatenate([nb.load(folder / stem.format(h=h)).darrays[0].data for h in "LR"]).astype(np.float64)


def test_group_on_fsaverage5_matches_nilearn_and_clusters_follow_the_mesh(first_level, tmp_path):
    bids, out = first_level
    group = GroupLevel("flanker", bids, output_dir=out, work_dir=tmp_path / "work", contrasts=["task"],
                       group_inference=["uncorrected", "fdr", "cluster", "tfce"], group_n_permutations=100,
                       group_cluster_extent=5)
    group.run(plugin="Linear")
    subjects = [f"{i + 1:02d}" for i in range(N)]
    Y = np.stack([_pair(out / f"sub-{s}" / "func",
                        f"sub-{s}_task-flanker_hemi-{{h}}_space-{SPACE}_contrast-task_stat-effect_statmap.func.gii")
                  for s in subjects])
    gdir = out / "group"
    z = _pair(gdir, f"task-flanker_hemi-{{h}}_space-{SPACE}_contrast-task_stat-z_statmap.func.gii")
    for h in "LR":
        g = nb.load(gdir / f"task-flanker_hemi-{h}_space-{SPACE}_contrast-task_stat-z_statmap.func.gii")
        assert len(g.darrays) == 1 and g.darrays[0].data.shape == (10242,)
    mask = np.all(Y != 0, axis=0)
    assert 19000 < mask.sum() < 20484 and np.all(z[~mask] == 0)  # the medial wall is left out
    ages = pd.read_csv(bids / "participants.tsv", sep="\t")["age"].to_numpy(float)
    X = np.column_stack([np.ones(N), ages - ages.mean()])
    labels, results = run_glm(Y[:, mask], X, noise_model="ols")
    ref = compute_contrast(labels, results, np.array([1.0, 0.0])).z_score()
    assert np.abs(z[mask] - ref).max() < 1e-4
    # planted effects: what TFCE (along mesh edges) finds lies in the planted supports
    loc = surface_locations()["fsaverage5"]
    support = np.concatenate([np.max([w for w in effect_weights_at(loc[h]).values()], axis=0) > 0 for h in "LR"])
    visual = np.concatenate([effect_weights_at(loc[h])["visual"] >= 0.5 for h in "LR"])
    p_tfce = _pair(gdir, f"task-flanker_hemi-{{h}}_space-{SPACE}_contrast-task_stat-p_desc-tfce_statmap.func.gii")
    hit = (p_tfce <= 0.05) & mask
    assert hit[visual].mean() > 0.5 and not (hit & ~support).any()
    # cluster extent on the mesh: every kept vertex is in a cluster of >= 5 vertices joined by mesh edges
    zc = _pair(gdir, f"task-flanker_hemi-{{h}}_space-{SPACE}_contrast-task_stat-z_desc-cluster_statmap.func.gii")
    kept = zc != 0
    assert kept[visual].any() and np.all(z[kept] > 3.0)
    report = (gdir / "task-flanker_report.html").read_text()
    assert "data:image/png;base64," in report
