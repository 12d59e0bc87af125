"""Every key of a task entry changes the planned model the way its documentation says (planning only:
designs are built and checked, nothing is fitted)."""

import json
import shutil

import pandas as pd
import pytest

from glmx_workflows.api import Aggregator, Subject
from glmx_workflows.io.example import make_example_dataset

TASK = "flanker"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys") / "bids"
    make_example_dataset(root, n_subjects=2, n_runs=2, shape=(8, 10, 8), n_volumes=60, seed=1)
    return root


def _plan(root, tmp_path, sub="01", **entry):
    spec = json.loads((root / "task_information.json").read_text())
    spec[TASK].update(entry)
    path = tmp_path / f"spec_{len(list(tmp_path.glob('spec_*')))}.json"
    path.write_text(json.dumps(spec))
    return Subject(sub, TASK, root, spec=path, output_dir=tmp_path / "out").plan()


def _columns(plan, run=0):
    return set(plan.run_regressors[run])


def test_defaults(base, tmp_path):
    plan = _plan(base, tmp_path)
    cols = _columns(plan)
    assert {"congruent", "incongruent", "congruent_x_response_time", "trans_x", "constant"} <= cols
    assert any(c.startswith("drift_") for c in cols)  # cosine drift at high_pass 0.01
    assert {"congruent", "incongruent"} <= set(plan.contrasts)  # condition_maps default true


@pytest.mark.parametrize("entry, check", [
    ({"modulators": [], "design_contrasts": {"inc": "incongruent"}},
     lambda c, p: "congruent_x_response_time" not in c),
    ({"block_identifier": "block", "design_contrasts": {"a": "A_congruent"}},
     lambda c, p: {"A_congruent", "B_incongruent"} <= c and "congruent" not in c),
    ({"conditions": ["incongruent"], "modulators": [], "design_contrasts": {"inc": "incongruent"}},
     lambda c, p: "incongruent" in c and "congruent" not in c),
    ({"drop_conditions": ["congruent"], "modulators": [], "design_contrasts": {"inc": "incongruent"}},
     lambda c, p: "incongruent" in c and "congruent" not in c),
    ({"confound_regressors": ["trans_x", "a_comp_cor_0[0-2]"]},
     lambda c, p: {"trans_x", "a_comp_cor_00", "a_comp_cor_02"} <= c and "a_comp_cor_03" not in c
     and "trans_y" not in c),
    ({"hrf_model": "glover + derivative"}, lambda c, p: "congruent_derivative" in c),
    ({"drift_model": "polynomial", "drift_order": 3},
     lambda c, p: {"drift_1", "drift_2", "drift_3"} <= c and "drift_4" not in c),
    ({"high_pass": 0.03}, lambda c, p: sum(x.startswith("drift_") for x in c) > 2),
    ({"non_steady_state": True}, lambda c, p: "non_steady_state_outlier00" in c),
    ({"condition_maps": False}, lambda c, p: "congruent" not in p.contrasts and "rt" in p.contrasts),
    ({"design_contrasts": "default"}, lambda c, p: "congruentVincongruent" in p.contrasts),
    ({"design_contrasts": {"both": ["congruent", "incongruent"]}}, lambda c, p: p.contrasts["both"]["type"] == "F"),
    ({"overrides": {"sub-01": {"tr": 2.5, "confound_regressors": ["rot_x"]}}},
     lambda c, p: p.settings["tr"] == 2.5 and "rot_x" in c and "trans_x" not in c),
    ({"dummy_scans": 4}, lambda c, p: p.settings["dummy_scans"] == 4),
], ids=lambda x: next(iter(x)) if isinstance(x, dict) else "")
def test_key_changes_the_model(base, tmp_path, entry, check):
    plan = _plan(base, tmp_path, **entry)
    assert check(_columns(plan), plan), sorted(_columns(plan))


def test_override_is_per_subject(base, tmp_path):
    entry = {"overrides": {"sub-01": {"tr": 2.5}}}
    assert _plan(base, tmp_path, "01", **entry).settings["tr"] == 2.5
    assert _plan(base, tmp_path, "02", **entry).settings["tr"] == 2.0


def test_high_pass_sets_the_number_of_cosines(base, tmp_path):
    low = sum(c.startswith("drift_") for c in _columns(_plan(base, tmp_path, high_pass=0.01)))
    high = sum(c.startswith("drift_") for c in _columns(_plan(base, tmp_path, high_pass=0.03)))
    assert high > low


def test_motion_outliers_from_fmriprep_columns(base, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(base, root)
    path = next((root / "derivatives/fmriprep/sub-01/func").glob("*run-1_desc-confounds_timeseries.tsv"))
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    spike = [0] * len(table)
    spike[20] = 1
    table["motion_outlier00"] = spike
    table.to_csv(path, sep="\t", index=False)
    assert "motion_outlier00" not in _columns(_plan(root, tmp_path))
    assert "motion_outlier00" in _columns(_plan(root, tmp_path, include_motion_outliers=True))


def test_excludes_accept_both_forms(base, tmp_path):
    for label in ("02", "sub-02"):
        spec = json.loads((base / "task_information.json").read_text())
        spec[TASK]["excludes"] = [label]
        path = tmp_path / f"spec_ex_{label}.json"
        path.write_text(json.dumps(spec))
        assert Aggregator(base, TASK, spec=path, output_dir=tmp_path / "o").subjects() == (["01"], ["02"])
