"""BIDS layouts found by entities, not file-name substrings: sessions, zero-padded runs, res-/den-
entities, single-run subjects. The same data under another layout must give the same maps."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from glmx_workflows.api import Subject
from glmx_workflows.core.errors import GlmxError
from glmx_workflows.io.example import make_example_dataset

TASK = "flanker"
SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants") / "plain"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(9, 11, 9), n_volumes=60, seed=8)
    out = root.parent / "plain_out"
    Subject("01", TASK, root, output_dir=out, work_dir=root.parent / "plain_work").run()
    return root, out


def _rename_tree(root, rename):
    """Move every file of sub-01 (raw and derivatives) to the name ``rename(relative path)`` gives."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and "sub-01" in path.parts:
            target = root / rename(str(path.relative_to(root)))
            if target != path:
                target.parent.mkdir(parents=True, exist_ok=True)
                path.rename(target)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _sessions_padded_res(rel):
    m = re.search(r"_run-(\d+)_", rel)
    if not m:
        return rel
    ses = "a" if m.group(1) == "1" else "b"
    rel = rel.replace("sub-01/func/", f"sub-01/ses-{ses}/func/")
    rel = rel.replace("sub-01_task", f"sub-01_ses-{ses}_task").replace(m.group(0), f"_run-0{m.group(1)}_")
    return rel.replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-2_")


def _z(out, pattern):
    hits = sorted(Path(out).rglob(pattern))
    assert len(hits) == 1, (pattern, hits)
    return np.asarray(nb.load(hits[0]).dataobj)


def test_sessions_zero_padded_runs_and_res(plain, tmp_path):
    root0, out0 = plain
    root = tmp_path / "bids"
    shutil.copytree(root0, root)
    _rename_tree(root, _sessions_padded_res)
    out = tmp_path / "out"
    Subject("sub-01", TASK, root, output_dir=out, work_dir=tmp_path / "work").run()

    for ses, run in (("a", "1"), ("b", "2")):
        z = _z(out, f"sub-01/ses-{ses}/func/sub-01_ses-{ses}_task-{TASK}_run-0{run}_space-{SPACE}_res-2_"
                    "contrast-incongruentVcongruent_stat-z_statmap.nii.gz")
        ref = _z(out0, f"sub-01_task-{TASK}_run-{run}_space-{SPACE}_contrast-incongruentVcongruent_stat-z_"
                       "statmap.nii.gz")
        np.testing.assert_array_equal(z, ref)
    # runs of both sessions combined by fixed effects, as in the one-session layout
    z = _z(out, f"sub-01_task-{TASK}_space-{SPACE}_res-2_contrast-incongruentVcongruent_stat-z_statmap.nii.gz")
    np.testing.assert_array_equal(z, _z(out0, f"sub-01_task-{TASK}_space-{SPACE}_contrast-incongruentVcongruent_"
                                              "stat-z_statmap.nii.gz"))


def test_two_resolutions_need_a_modifier(plain, tmp_path):
    root0, _ = plain
    root = tmp_path / "bids"
    shutil.copytree(root0, root)
    func = root / "derivatives/fmriprep/sub-01/func"
    for path in list(func.glob(f"*_space-{SPACE}_*")):
        shutil.copy(path, path.with_name(path.name.replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-1_")))
        path.rename(path.with_name(path.name.replace(f"_space-{SPACE}_", f"_space-{SPACE}_res-2_")))
    with pytest.raises(GlmxError, match="narrow 'space'"):
        Subject("01", TASK, root, output_dir=tmp_path / "o1", work_dir=tmp_path / "w1").plan()
    plan = Subject("01", TASK, root, output_dir=tmp_path / "o2", work_dir=tmp_path / "w2",
                   space=f"{SPACE}:res-1").plan()
    assert all("_res-1_" in Path(r.bold).name and "_res-1_" in Path(r.mask).name for r in plan.runs)


def test_single_run_subject(plain, tmp_path):
    root0, out0 = plain
    root = tmp_path / "bids"
    shutil.copytree(root0, root)
    for path in list(root.rglob("*_run-2_*")):
        path.unlink()
    for path in list(root.rglob("*_run-1_*")):
        path.rename(path.with_name(path.name.replace("_run-1_", "_")))
    # one run: the modulator is now centred within that run alone, which moves the condition columns'
    # betas but not the modulator's own (same column space), so the modulator map must equal run 1's
    out = tmp_path / "out"
    Subject("01", TASK, root, output_dir=out, work_dir=tmp_path / "work").run()
    name = "contrast-incongruentXResponseTime_stat-z_statmap.nii.gz"
    z = _z(out, f"sub-01_task-{TASK}_space-{SPACE}_{name}")
    ref = _z(out0, f"sub-01_task-{TASK}_run-1_space-{SPACE}_{name}")
    mask = ref != 0
    assert mask.sum() > 100
    np.testing.assert_allclose(z[mask], ref[mask], atol=1e-3)
    assert not list(out.rglob("*_run-*_statmap.nii.gz"))
    # the run's model maps have no subject-level twin: published under the run's own (run-less) entities
    for stat in ("rSquare", "logLikelihood"):
        assert len(list(out.rglob(f"sub-01_task-{TASK}_space-{SPACE}_stat-{stat}_statmap.nii.gz"))) == 1
    spec = json.loads((root / "task_information.json").read_text())
    assert spec[TASK]["modulators"]  # the modulator path was exercised
