"""Real BOLD with real events (Haxby 2001, subject 1, 12 runs, TR 2.5 s, space T1w, subject label '1',
zero-padded runs): the whole first level against nilearn's FirstLevelModel on the same inputs, and the
reference figures measured with nilearn and recorded beside the data."""

import json

import nibabel as nb
import numpy as np
import pandas as pd
from nilearn.glm.first_level import FirstLevelModel

from glmx_workflows.api import Subject

TASK = "objectviewing"
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
CATEGORIES = ["bottle", "cat", "chair", "face", "house", "scissors", "scrambledpix", "shoe"]
CONTRASTS = {"faceVhouse": "face - house", "all": " + ".join(f"0.125*{c}" for c in CATEGORIES)}


def test_haxby_first_level_matches_nilearn(shared_data, tmp_path):
    root = shared_data / "haxby2001"
    before = sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*"))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({TASK: {"confound_regressors": ["trans_?", "rot_?"], "space": "T1w",
                                       "design_contrasts": CONTRASTS, "condition_maps": False}}))
    out = tmp_path / "out"
    Subject("sub-1", TASK, root, spec=spec, output_dir=out, work_dir=tmp_path / "work").run()
    assert sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*")) == before  # input untouched

    fp = root / "derivatives/fmriprep/sub-1/func"
    runs = [f"{i:02d}" for i in range(1, 13)]
    stems = [f"sub-1_task-{TASK}_run-{r}" for r in runs]
    imgs = [str(fp / f"{s}_space-T1w_desc-preproc_bold.nii.gz") for s in stems]
    events = [pd.read_csv(root / "sub-1/func" / f"{s}_events.tsv", sep="\t") for s in stems]
    confounds = [pd.read_csv(fp / f"{s}_desc-confounds_timeseries.tsv", sep="\t")[MOTION] for s in stems]
    mask = str(fp / f"{stems[0]}_space-T1w_desc-brain_mask.nii.gz")
    model = FirstLevelModel(t_r=2.5, mask_img=mask, noise_model="ar1", hrf_model="glover", drift_model="cosine",
                            high_pass=0.01, minimize_memory=False).fit(imgs, events=events, confounds=confounds)
    inside = np.asarray(nb.load(mask).dataobj) > 0
    vt = np.asarray(nb.load(fp / "sub-1_space-T1w_label-VT_mask.nii.gz").dataobj) > 0
    z = {}
    for name, formula in CONTRASTS.items():
        ref = np.asarray(model.compute_contrast(formula, output_type="z_score").dataobj)
        hits = list(out.rglob(f"sub-1_task-{TASK}_space-T1w_contrast-{name}_stat-z_statmap.nii.gz"))
        assert len(hits) == 1, name
        z[name] = np.asarray(nb.load(hits[0]).dataobj)
        assert np.abs(z[name][inside] - ref[inside]).max() < 1e-3, name
        # one map per run too, with the zero-padded run labels
        assert len(list(out.rglob(f"sub-1_task-{TASK}_run-??_space-T1w_contrast-{name}_stat-z_statmap.nii.gz"))) == 12

    # figures recorded with nilearn beside the data (shared/data/README.md)
    assert abs(z["faceVhouse"][vt].item() - -0.37) < 0.01
    assert abs(z["all"][vt].item() - 15.6) < 0.05
    assert abs(z["faceVhouse"][inside].max() - 3.75) < 0.01 and abs(z["faceVhouse"][inside].min() - -6.93) < 0.01
