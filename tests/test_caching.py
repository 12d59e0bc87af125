"""Cached reruns, asserted from nipype's own record: the result files of the nodes it executed."""

import json
import time

import pytest

from glmx_workflows.api import Aggregator
from glmx_workflows.engine.run import executed_nodes
from glmx_workflows.io.example import make_example_dataset

MODELLING = ("load_events", "select_confounds", "build_design", "fit_glm", "compute_contrasts", "fixed_effects")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache") / "bids"
    make_example_dataset(root, n_subjects=3, n_runs=2, shape=(10, 12, 10), n_volumes=60, seed=2)
    return root


def _run(root, out, spec, subjects):
    start = time.time()
    time.sleep(0.01)
    agg = Aggregator(root, "flanker", spec=spec, output_dir=out, work_dir=str(out) + "_work",
                     participant_label=subjects)
    report = agg.run(n_procs=2, progress=False)
    assert report.ok, report.summary()
    # the progress display knew beforehand how many node executions the engine would report
    assert agg.progress.done == agg.progress.total and agg.progress.pending == 0
    nodes = executed_nodes(str(out) + "_work", start)
    return {n for n in nodes if any(f"/{m}" in f"/{n}" for m in MODELLING)}


def _steps(nodes):
    """'glmx_flanker/sub_01_flanker/fit_glm/mapflow/_fit_glm1' → ('01', 'fit_glm')."""
    out = set()
    for n in nodes:
        parts = n.split("/")
        out.add((parts[1].split("_")[1], parts[2]))
    return out


def test_reruns_recompute_only_what_changed(data, tmp_path):
    spec = tmp_path / "spec.json"
    entry = json.loads((data / "task_information.json").read_text())
    spec.write_text(json.dumps(entry))
    out = tmp_path / "out"

    first = _run(data, out, spec, ["01", "02"])
    assert {s for _, s in _steps(first)} == set(MODELLING)

    # nothing changed: no modelling node runs
    assert _run(data, out, spec, ["01", "02"]) == set()

    # a deleted output is written again although everything is cached
    z = next(out.rglob("sub-01_task-flanker_space-*_contrast-task_stat-z_statmap.nii.gz"))
    z.unlink()
    assert _run(data, out, spec, ["01", "02"]) == set() and z.is_file()

    # only design_contrasts changed: contrast nodes (and what consumes them) only
    entry["flanker"]["design_contrasts"]["congruentOnly"] = "congruent"
    spec.write_text(json.dumps(entry))
    assert {s for _, s in _steps(_run(data, out, spec, ["01", "02"]))} == {"compute_contrasts", "fixed_effects"}
    assert next(out.rglob("sub-02_task-flanker_space-*_contrast-congruentOnly_stat-z_statmap.nii.gz")).is_file()

    # confound_regressors changed: from confound selection on, events untouched
    entry["flanker"]["confound_regressors"] = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    spec.write_text(json.dumps(entry))
    assert {s for _, s in _steps(_run(data, out, spec, ["01", "02"]))} == {
        "select_confounds", "build_design", "fit_glm", "compute_contrasts", "fixed_effects"}

    # a new subject: only that subject runs
    added = _steps(_run(data, out, spec, None))
    assert {sub for sub, _ in added} == {"03"} and {s for _, s in added} == set(MODELLING)
