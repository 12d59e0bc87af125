import numpy as np
import pandas as pd
import pytest

from glmx_workflows.core.confounds import censor_mask, fill_nans, match_patterns, select_confounds
from glmx_workflows.core.design import build_design, check_design, collinear_sets, variance_inflation
from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.events import check_events_fit_run, normalize_events


def _events(rt, cond=("a", "b", "a", "b"), block=("x", "x", "y", "y")):
    return pd.DataFrame({"onset": [0, 10, 20, 30], "duration": [1, 1, 1, 1], "trial_type": list(cond),
                         "rt": rt, "blk": list(block)})


def test_modulators_centred_within_condition_across_runs():
    runs = normalize_events([_events([1.0, 2.0, 3.0, 4.0]), _events([5.0, 6.0, 7.0, 8.0])], ["r1", "r2"],
                            "trial_type", ["rt"])
    allrows = pd.concat(runs)
    mods = allrows[allrows.trial_type.str.endswith("_x_rt")]
    # condition a: values 1, 3, 5, 7 → mean 4; condition b: 2, 4, 6, 8 → mean 5
    assert mods.groupby("trial_type")["modulation"].sum().abs().max() < 1e-12
    a = mods[mods.trial_type == "a_x_rt"]["modulation"].tolist()
    assert a == [-3.0, -1.0, 1.0, 3.0]
    assert set(runs[0].trial_type) == {"a", "b", "a_x_rt", "b_x_rt"}


def test_blocks_split_conditions_and_drop():
    (run,) = normalize_events([_events([1, 2, 3, 4])], ["r1"], "trial_type", [], "blk", drop_conditions=["b"])
    assert sorted(set(run.trial_type)) == ["x_a", "y_a"]


@pytest.mark.parametrize("frame, field", [
    (pd.DataFrame({"onset": [0], "trial_type": ["a"]}), "duration"),
    (pd.DataFrame({"onset": ["zero"], "duration": [1], "trial_type": ["a"]}), "onset"),
    (pd.DataFrame({"onset": [0], "duration": [-1], "trial_type": ["a"]}), "duration"),
    (pd.DataFrame({"onset": [0], "duration": [1], "cond": ["a"]}), "trial_type"),
])
def test_bad_events(frame, field):
    with pytest.raises(GlmxError) as err:
        normalize_events([frame], ["ev.tsv"], "trial_type")
    assert "ev.tsv" in str(err.value) and field in str(err.value)


def test_constant_or_missing_modulator():
    with pytest.raises(GlmxError, match="constant"):
        normalize_events([_events([1, 1, 1, 1])], ["ev.tsv"], "trial_type", ["rt"])
    with pytest.raises(GlmxError, match="n/a"):
        normalize_events([_events([1, np.nan, 2, 3])], ["ev.tsv"], "trial_type", ["rt"])


def test_events_beyond_run():
    ev = normalize_events([_events([1, 2, 3, 4])], ["ev.tsv"], "trial_type")[0]
    check_events_fit_run(ev, 20, 2.0, "ev.tsv")
    with pytest.raises(GlmxError, match="beyond the end"):
        check_events_fit_run(ev, 10, 2.0, "ev.tsv")


def test_confound_patterns_fill_and_censor():
    table = pd.DataFrame({"trans_x": [0, 1, 2.0], "trans_x_derivative1": [np.nan, 1, 1.0],
                          "framewise_displacement": [np.nan, 0.2, 0.9], "a_comp_cor_00": [1, 2, 3.0],
                          "a_comp_cor_07": [1, 2, 4.0], "motion_outlier00": [0, 0, 1]})
    assert match_patterns(list(table), ["trans_*", "a_comp_cor_0[0-4]"]) == ["trans_x", "trans_x_derivative1",
                                                                              "a_comp_cor_00"]
    with pytest.raises(GlmxError, match="rot_"):
        match_patterns(list(table), ["rot_*"], "conf.tsv")
    out = select_confounds(table, ["trans_x*", "framewise_displacement"], include_motion_outliers=True)
    assert list(out) == ["trans_x", "trans_x_derivative1", "framewise_displacement", "motion_outlier00"]
    assert out["trans_x_derivative1"][0] == 1.0 and out["framewise_displacement"][0] == pytest.approx(0.55)
    with pytest.raises(GlmxError, match="every value is n/a"):
        fill_nans(pd.DataFrame({"x": [np.nan, np.nan]}))
    keep = censor_mask(3, dummy_scans=1, fd=table["framewise_displacement"], fd_threshold=0.5)
    assert keep.tolist() == [False, True, False]


def test_design_alignment_at_tr2_matches_nilearn_frame_times():
    events = pd.DataFrame({"onset": [10.0], "duration": [1.0], "trial_type": ["a"], "modulation": [1.0]})
    conf = pd.DataFrame({"spike": np.eye(50)[20]})
    design = build_design(events, conf, 50, 2.0)
    # the confound's row 20 is volume 20 (t = 40 s), whatever the TR
    assert design["spike"].to_numpy().argmax() == 20
    # HRF peak ~5 s after onset 10 s → volume ~7 at TR 2 (not ~15 as at TR 1)
    assert 6 <= design["a"].to_numpy().argmax() <= 8


def test_rank_deficiency_names_regressors():
    events = pd.DataFrame({"onset": [0.0, 20.0], "duration": [1.0, 1.0], "trial_type": ["a", "b"],
                           "modulation": [1.0, 1.0]})
    design = build_design(events, None, 40, 2.0)
    design["a_copy"] = design["a"] * 2
    assert any({"a", "a_copy"} <= set(g) for g in collinear_sets(design))
    with pytest.raises(GlmxError, match="a_copy"):
        check_design(design)
    with pytest.raises(GlmxError, match="usable volumes"):
        check_design(design.iloc[:3])
    vif = variance_inflation(build_design(events, None, 40, 2.0), ["a", "b"])
    assert (vif >= 1).all()
