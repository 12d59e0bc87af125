"""One rule per fact (issue 18): each fact that used to be computed twice, with different rules, is one
function now. These tests pin the rule chosen and check that every caller gets the same answer."""

import json
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.core.clusters import cluster_extent_mask, cluster_table
from glmx_workflows.core.confounds import censor_table, censoring
from glmx_workflows.core.design import build_design, run_design
from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.group import INFERENCE_DESC, INFERENCE_METHODS, PARAMETRIC_METHODS, PERMUTATION_METHODS
from glmx_workflows.core.timing import TR_RTOL, resolve_tr, same_tr
from glmx_workflows.io.example import make_example_dataset

AFFINE = np.array([[2.0, 0, 0, -20], [0, 2, 0, -20], [0, 0, 2, -20], [0, 0, 0, 1]])


# ---------------------------------------------------------------------------------------------- clusters


def _planted_map():
    """A ridge with four bumps (the third 4 mm from the top one, 14 mm from the second), a flat cluster,
    a negative blob: it tells nilearn's sub-peak paring (from the last kept peak) and plateau rule (centre
    of mass) from the rule the group level used before (from every kept peak; every plateau voxel a peak)."""
    shape = (24, 12, 12)
    grid = np.indices(shape).astype(float)
    data = np.zeros(shape)
    data[2:20, 5:8, 5:8] = 3.5
    for centre, height in (((8, 6, 6), 10.0), ((13, 6, 6), 9.0), ((6, 6, 6), 8.0), ((18, 6, 6), 7.0)):
        bump = height * np.exp(-sum((grid[i] - centre[i]) ** 2 for i in range(3)) / 2)
        data = np.maximum(data, bump)
    data[2:5, 9:11, 2:4] = 5.0
    data[15:18, 1:3, 8:11] = -6.0
    data[16, 2, 9] = -7.5
    return data.astype(np.float32)


@pytest.mark.parametrize("two_sided", [False, True])
def test_one_cluster_table_equals_nilearns_on_a_planted_map(two_sided):
    from nilearn.reporting import get_clusters_table

    from glmx_workflows.reports.first_level import cluster_table as report_table

    data = _planted_map()
    img = nb.Nifti1Image(data, AFFINE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's note on the plateau's centre of mass
        ref = get_clusters_table(img, stat_threshold=3.09, cluster_threshold=5, two_sided=two_sided, min_distance=8)
    ours = cluster_table(data, AFFINE, 3.09, min_size=5, two_sided=two_sided, min_distance=8.0)
    assert len(ours) == len(ref) == (6 if two_sided else 5)
    assert list(ours["cluster_id"]) == [str(c) for c in ref["Cluster ID"]]
    assert np.array_equal(ours[["x", "y", "z"]].to_numpy(float), ref[["X", "Y", "Z"]].to_numpy(float))
    assert np.array_equal(ours["peak_stat"].to_numpy(float), ref["Peak Stat"].to_numpy(float))
    main = ours["size_mm3"].notna().to_numpy()
    assert np.array_equal(ours["size_mm3"][main].astype(int).to_numpy(),
                          ref["Cluster Size (mm3)"][main].astype(int).to_numpy())
    assert "1b" in set(ours["cluster_id"])  # kept by nilearn's paring, dropped by the old group rule
    # the sub-peak the old rule dropped: 4 mm from the top peak, 14 mm from the last kept one
    assert ours.set_index("cluster_id").loc["1b", "i"] == 6
    # the report's table is the same table in nilearn's layout, string for string
    report = report_table(img, 3.09, 5, two_sided=two_sided)
    assert (report.astype(str).to_numpy() == ref.astype(str).to_numpy()).all()


def test_cluster_table_lists_the_clusters_of_the_extent_mask_and_reads_values_at_peaks():
    data = _planted_map().astype(np.float64)
    table = cluster_table(data, AFFINE, 3.09, min_size=20, values={"index": np.arange(data.size).reshape(data.shape)})
    kept = cluster_extent_mask(data, 3.09, 20)
    assert table["size_voxels"].sum() == kept.sum()  # the flat 12-voxel cluster is left out by both
    peak = table.iloc[0]
    assert peak["index"] == np.ravel_multi_index((peak["i"], peak["j"], peak["k"]), data.shape)
    assert table.attrs["n_clusters"] == 1


# ---------------------------------------------------------------------------------------------- censoring


def test_one_censoring_rule_for_task_and_rest():
    fd = np.array([np.nan, 0.1, 0.9, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    table = pd.DataFrame({"framewise_displacement": fd, "trans_x": np.zeros(fd.size)})
    out = censor_table(table, fd.size, dummy_scans=1, fd_threshold=0.5, min_volumes=5)
    assert out["reason"].tolist()[:6] == ["dummy", "n/a", "fd", "n/a", "fd", "n/a"]
    assert out["censored"].sum() == 3
    # the rest node and the task node call the same function (connectivity re-exports it)
    from glmx_workflows.core import connectivity

    assert connectivity.censoring is censoring
    # nilearn's sample_mask convention: the kept volumes' indices
    assert np.flatnonzero(out["censored"].to_numpy() == 0).tolist() == [1, 3] + list(range(5, 14))


def test_censoring_names_the_field_that_emptied_the_run():
    fd = np.zeros(30)
    with pytest.raises(GlmxError) as err:
        censoring(30, dummy_scans=25, fd=fd, fd_threshold=0.5, min_volumes=10, source="c.tsv")
    assert err.value.one_line().startswith("c.tsv: dummy_scans: only 5 of 30 volumes remain")
    fd[:25] = 1.0
    with pytest.raises(GlmxError) as err:
        censoring(30, dummy_scans=2, fd=fd, fd_threshold=0.5, min_volumes=10, source="c.tsv")
    assert err.value.one_line().startswith("c.tsv: fd_threshold: only 5 of 30 volumes remain")
    with pytest.raises(GlmxError, match="framewise_displacement"):
        censor_table(pd.DataFrame({"x": np.zeros(30)}), 30, fd_threshold=0.5)


# ---------------------------------------------------------------------------------------------- TR


def test_tr_rule():
    assert same_tr(0.72, float(np.float32(0.72)))  # a header's float32 TR is the same TR
    assert not same_tr(2.0, 2.0005)  # half a millisecond is not (the rest path accepted up to 1 ms)
    assert TR_RTOL * 2.0 < 1e-3
    assert resolve_tr([2.0, 2.0], spec_tr=2.0) == 2.0
    assert resolve_tr([2.0, float(np.float32(2.0000001))]) == 2.0
    assert resolve_tr([1.0, 3.0], spec_tr=2.0, override_tr=2.5) == 2.5  # an override corrects the sidecars
    assert resolve_tr([None], spec_tr=1.5) == 1.5
    with pytest.raises(GlmxError, match="RepetitionTime is 2.0005 s in a.json"):
        resolve_tr([2.0005], spec_tr=2.0, sources=["a.json"], spec_file="spec.json", spec_field="t.tr")
    with pytest.raises(GlmxError, match="different RepetitionTime"):
        resolve_tr([2.0, 2.5], sources=["a", "b"])
    with pytest.raises(GlmxError, match="no RepetitionTime"):
        resolve_tr([2.0, None], sources=["a", "b"])


@pytest.fixture(scope="module")
def task_and_rest(tmp_path_factory):
    from glmx_workflows.io.example_rest import add_rest_runs

    root = tmp_path_factory.mktemp("one_rule") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=21)
    add_rest_runs(root, n_volumes=40, n_runs=1, seed=21)
    return root


def _set_sidecar_tr(root, tr):
    for path in Path(root).rglob("*_bold.json"):
        meta = json.loads(path.read_text())
        meta["RepetitionTime"] = tr
        path.write_text(json.dumps(meta))


@pytest.mark.parametrize("sidecar_tr, ok", [(float(np.float32(2.0000001)), True), (2.0005, False)])
def test_task_plan_and_rest_discovery_apply_the_same_tr_rule(task_and_rest, tmp_path, sidecar_tr, ok):
    import shutil

    from glmx_workflows.api.rest import RestingState
    from glmx_workflows.api.subject import Subject

    root = tmp_path / "bids"
    shutil.copytree(task_and_rest, root)
    _set_sidecar_tr(root, sidecar_tr)
    out = tmp_path / "out"
    task = Subject("01", "flanker", root, output_dir=out)
    # runs() checks the runs as the workflow will: this fixture's 40-volume runs need a lower floor
    rest = RestingState("01", "rest", root, output_dir=out, min_volumes=20)
    if ok:
        assert task.plan().settings["tr"] == 2.0
        assert {r.tr for r in rest.runs()} == {2.0}
    else:
        for call in (task.plan, rest.runs):
            with pytest.raises(GlmxError, match="RepetitionTime is 2.0005 s"):
                call()
        # a per-subject tr corrects the sidecars, in both analyses
        task = Subject("01", "flanker", root, output_dir=out, tr=2.0005)
        rest = RestingState("01", "rest", root, output_dir=out, tr=2.0005, min_volumes=20)
        assert task.plan().settings["tr"] == 2.0005
        assert {r.tr for r in rest.runs()} == {2.0005}


# ---------------------------------------------------------------------------------------------- design


def test_one_design_check_for_plan_and_node():
    events = pd.DataFrame({"onset": [10.0, 50.0], "duration": [2.0, 2.0], "trial_type": ["a", "a"],
                           "modulation": [1.0, 1.0]})
    design = run_design(60, 2.0, np.ones(60, bool), events, None)
    pd.testing.assert_frame_equal(design, build_design(events, None, 60, 2.0))
    with pytest.raises(GlmxError, match="design matrix has 59 rows"):
        run_design(60, 2.0, user_design=design.iloc[1:], design_source="d.tsv")
    bad = design.copy()
    bad["a"] = bad["a"].astype(object)
    bad.iloc[3, list(bad.columns).index("a")] = "x"
    with pytest.raises(GlmxError, match="column 'a'"):
        run_design(60, 2.0, user_design=bad, design_source="d.tsv")
    with pytest.raises(GlmxError, match="beyond the end of the run"):
        run_design(20, 2.0, events=events)
    keep = np.zeros(60, bool)
    keep[:3] = True
    with pytest.raises(GlmxError, match="3 usable volumes"):
        run_design(60, 2.0, keep, events)


# ---------------------------------------------------------------------------------------------- inference methods


def test_one_list_of_inference_methods():
    import argparse

    from glmx_workflows.cli.group import add_group_arguments
    from glmx_workflows.spec.keys import TASK_KEYS

    assert INFERENCE_METHODS == PARAMETRIC_METHODS + PERMUTATION_METHODS
    assert set(INFERENCE_DESC) == set(INFERENCE_METHODS)
    assert TASK_KEYS["group_inference"][0]["items"]["enum"] == list(INFERENCE_METHODS)
    parser = argparse.ArgumentParser()
    add_group_arguments(parser)
    action = next(a for a in parser._actions if "--inference" in a.option_strings)
    assert list(action.choices) == list(INFERENCE_METHODS)


def test_group_and_first_level_designs_share_the_rank_rule():
    from glmx_workflows.core.design import check_design as check_run_design
    from glmx_workflows.core.group import check_design as check_group_design

    rng = np.random.default_rng(4)
    age = rng.normal(30, 5, 12)
    design = pd.DataFrame({"intercept": np.ones(12), "age": age - age.mean(),
                           "age_days": (age - age.mean()) * 365.25})
    for check in (check_group_design, check_run_design):
        with pytest.raises(GlmxError, match=r"rank-deficient: collinear regressors \{age, age_days\}"):
            check(design)


def test_every_permutation_method_has_its_p_values():
    from glmx_workflows.core.group import PERMUTATION_P, permutation_inference

    rng = np.random.default_rng(0)
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    Y = rng.standard_normal((8, int(mask.sum())))
    out = permutation_inference(Y, np.ones((8, 1)), [1.0], mask=mask, n_permutations=20, seed=1,
                                methods=PERMUTATION_METHODS, cluster_threshold=1.0, tfce_steps=5)
    assert set(PERMUTATION_P) == set(PERMUTATION_METHODS)
    for method in PERMUTATION_METHODS:
        assert out[PERMUTATION_P[method]].shape == (mask.sum(),)
