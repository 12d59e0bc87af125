"""Outputs the current spec no longer produces are not served as current: a rerun deletes the files glmx
recorded for a subject (or a group contrast) that it no longer produces, and only those; the dataset index
and the group level use only what the latest run produced; the run summary counts only the files a run
wrote; and a contrast-only change redraws only the new contrast's part of the subject reports.

Asserted on real files of a simulated dataset: the outputs on disk, the index page, the group plan,
nipype's own result files (which nodes ran) and the report parts' files (which were drawn again).
"""

import json
import re
import time

import pytest

from glmx_workflows.api import Aggregator, GroupLevel
from glmx_workflows.engine import executed_nodes
from glmx_workflows.io.derivatives import output_record_path, record_outputs, retire_outputs
from glmx_workflows.io.example import make_example_dataset

SUBJECTS = ("01", "02", "03")  # the example spec's group model (intercept + age) needs three


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stale") / "bids"
    make_example_dataset(root, n_subjects=len(SUBJECTS), n_runs=2, shape=(10, 12, 10), n_volumes=60, seed=3)
    return root


def _spec(data, path, edit=None):
    spec = json.loads((data / "task_information.json").read_text())
    if edit:
        edit(spec["flanker"])
    path.write_text(json.dumps(spec))
    return path


def _run(data, spec, out):
    start = time.time()
    time.sleep(0.01)
    report = Aggregator(data, "flanker", spec=spec, output_dir=out, work_dir=str(out) + "_work").run(
        plugin="Linear", progress=False)
    assert report.ok and report.done == list(SUBJECTS), report.summary()
    return report, executed_nodes(str(out) + "_work", start)


def _maps(out, contrast):
    return sorted(out.glob(f"sub-*/func/*_contrast-{contrast}_*statmap.nii.gz"))


def _index_columns(out):
    page = (out / "index.html").read_text()
    table = page[page.index('id="task-flanker"'):page.index('id="group"')]
    return re.findall(r"<th>([^<]*)</th>", table)


def test_removed_and_renamed_contrasts_leave_outputs_index_and_group(data, tmp_path):
    spec = _spec(data, tmp_path / "spec.json")
    out = tmp_path / "out"
    first, _ = _run(data, spec, out)
    assert _maps(out, "task") and _maps(out, "rt")
    assert {"task", "rt"} <= set(_index_columns(out))
    # files glmx did not write, one of them named like a glmx map: never touched
    user_note = out / "sub-01" / "func" / "sub-01_task-flanker_contrast-rt_notes.txt"
    user_note.write_text("mine")
    lookalike = (out / "sub-02" / "func"
                 / "sub-02_task-flanker_space-MNI152NLin2009cAsym_contrast-old_stat-z_statmap.nii.gz")
    lookalike.write_bytes(_maps(out, "task")[0].read_bytes())

    # 'task' renamed, 'rt' removed
    def edit(entry):
        contrasts = entry["design_contrasts"]
        contrasts["taskRenamed"] = contrasts.pop("task")
        del contrasts["rt"]

    _spec(data, spec, edit)
    report, _ = _run(data, spec, out)
    assert _maps(out, "task") == [] and _maps(out, "rt") == []
    assert _maps(out, "taskRenamed")
    gone = {p for p in first.outputs if "_contrast-task_" in p or "_contrast-rt_" in p}
    assert gone and set(report.removed) == gone
    assert not set(report.outputs) & gone
    assert user_note.read_text() == "mine" and lookalike.is_file()
    assert "outdated file(s) removed" in report.summary()

    # the index lists the contrasts of the current spec only, and no dead link
    columns = _index_columns(out)
    assert "taskRenamed" in columns and "task" not in columns and "rt" not in columns and "old" not in columns
    page = (out / "index.html").read_text()
    for href in re.findall(r'href="([^"#]+)', page):
        assert (out / href).exists(), href

    # the group level models only what the current spec produces
    group = GroupLevel("flanker", data, spec=spec, output_dir=out, work_dir=tmp_path / "gwork")
    plan = group.plan()
    assert "taskRenamed" in plan.contrasts and not {"task", "rt", "old"} & set(plan.contrasts)
    with pytest.raises(Exception, match="no subject maps of contrast"):
        GroupLevel("flanker", data, spec=spec, output_dir=out, work_dir=tmp_path / "gwork", contrasts=["rt"]).plan()

    # a rerun with nothing changed writes nothing and says so
    again, nodes = _run(data, spec, out)
    assert again.written == [] and again.removed == []
    assert "; 0 file(s) written" in again.summary()
    assert sorted(again.outputs) == sorted(report.outputs)


def test_group_outputs_of_dropped_inference_and_removed_contrasts_are_deleted(data, tmp_path):
    spec = _spec(data, tmp_path / "spec.json")
    out = tmp_path / "out"
    _run(data, spec, out)
    group_dir = out / "group"
    kw = dict(spec=spec, output_dir=out, work_dir=tmp_path / "gwork", contrasts=["task", "rt"],
              group_n_permutations=20)
    GroupLevel("flanker", data, group_inference=["uncorrected", "tfce"], **kw).run(plugin="Linear")
    tfce = sorted(group_dir.glob("*tfce*"))
    assert tfce and sorted(group_dir.glob("*_contrast-rt_*"))
    kept = sorted(set(group_dir.glob("*")) - set(tfce))
    user_file = group_dir / "task-flanker_contrast-rt_mynotes.txt"
    user_file.write_text("mine")

    result = GroupLevel("flanker", data, group_inference=["uncorrected"], **kw).run(plugin="Linear")
    assert sorted(group_dir.glob("*tfce*")) == []
    assert sorted(result.removed) == [str(p) for p in tfce]
    assert all(p.is_file() for p in kept) and user_file.is_file()
    assert "outdated file(s) removed" in result.summary()

    # 'rt' leaves the spec: after the first level's rerun, a group run drops its group outputs too
    _spec(data, spec, lambda e: e["design_contrasts"].pop("rt"))
    _run(data, spec, out)
    kw["contrasts"] = None
    result = GroupLevel("flanker", data, group_inference=["uncorrected"], **kw).run(plugin="Linear")
    assert not [p for p in group_dir.glob("*_contrast-rt_*") if p != user_file]
    assert user_file.is_file()
    assert sorted(group_dir.glob("*_contrast-task_*"))


def test_a_group_design_retires_the_per_contrast_group_outputs_and_back(data, tmp_path):
    """A paired group_design replaces the one model per contrast: the earlier per-contrast group maps are no
    longer what the spec produces, and going back to per-contrast models deletes the paired maps."""
    spec = _spec(data, tmp_path / "spec.json")
    out = tmp_path / "out"
    _run(data, spec, out)
    group_dir = out / "group"
    kw = dict(spec=spec, output_dir=out, work_dir=tmp_path / "gwork", group_inference=["uncorrected"])
    GroupLevel("flanker", data, **kw).run(plugin="Linear")
    per_contrast = sorted(group_dir.glob("*_contrast-task_*")) + sorted(group_dir.glob("*_contrast-rt_*"))
    assert per_contrast
    user_file = group_dir / "task-flanker_contrast-task_mynotes.txt"
    user_file.write_text("mine")

    paired = {"type": "paired", "contrasts": ["incongruent", "congruent"]}
    _spec(data, spec, lambda e: (e.pop("group_level_regressors", None), e.update(group_design=paired)))
    result = GroupLevel("flanker", data, **kw).run(plugin="Linear")
    left = sorted(p.name for p in group_dir.iterdir() if p.name != "task-flanker_report.html")
    assert left and all("_contrast-incongruentVscongruent_" in n for n in left if n != user_file.name), left
    assert set(map(str, per_contrast)) <= set(result.removed)
    assert user_file.is_file()

    _spec(data, spec)
    GroupLevel("flanker", data, **kw).run(plugin="Linear")
    assert not list(group_dir.glob("*_contrast-incongruentVscongruent_*"))
    assert sorted(group_dir.glob("*_contrast-task_*")) and user_file.is_file()


def test_contrast_only_change_draws_only_the_new_contrast(data, tmp_path):
    spec = _spec(data, tmp_path / "spec.json")
    out = tmp_path / "out"
    _run(data, spec, out)
    parts = out.parent / "out_work" / "report_parts"
    before = {p: p.stat().st_mtime_ns for p in parts.rglob("*.html")}
    assert {p.name.split("-")[0] for p in before} == {"run", "contrast"}

    _spec(data, spec, lambda e: e["design_contrasts"].update(newOne="incongruent - 0.5*congruent"))
    _, nodes = _run(data, spec, out)
    steps = {n.split("/")[2] for n in nodes}
    assert "report" in steps and not {"load_events", "select_confounds", "build_design", "fit_glm"} & steps
    after = {p: p.stat().st_mtime_ns for p in parts.rglob("*.html")}
    # every part drawn before is read back, untouched; the only parts drawn are the new contrast's
    assert {p: after.get(p) for p in before} == before
    new = sorted(p.relative_to(parts).as_posix() for p in set(after) - set(before))
    assert len(new) == len(SUBJECTS)
    for s, name in zip(SUBJECTS, new):
        assert re.fullmatch(f"task-flanker_sub-{s}/contrast-newOne-[0-9a-f]{{40}}\\.html", name), name
    for s in SUBJECTS:
        assert 'id="contrast-newOne"' in (out / f"sub-{s}" / f"sub-{s}_task-flanker_report.html").read_text()

    # the contrast leaves the spec again: its parts are pruned with the next rebuild
    _spec(data, spec)
    _run(data, spec, out)
    assert not list(parts.rglob("contrast-newOne-*"))


def test_records_delete_only_recorded_files_inside_output_dir(tmp_path):
    out = tmp_path / "out"
    (out / "sub-01" / "func").mkdir(parents=True)
    a, b = out / "sub-01" / "func" / "a.tsv", out / "sub-01" / "func" / "b.tsv"
    outside = tmp_path / "outside.tsv"
    for p in (a, b, outside):
        p.write_text("x")
    assert record_outputs(out, "task-t_sub-01", [a, b]) == []
    # a record edited to name a file outside OUTPUT_DIR and the logs: neither is ever deleted
    record = json.loads(output_record_path(out, "task-t_sub-01").read_text())
    record["files"] += ["../outside.tsv", "logs/outputs/task-t_sub-01.json"]
    output_record_path(out, "task-t_sub-01").write_text(json.dumps(record))
    assert record_outputs(out, "task-t_sub-01", [a]) == [str(b)]
    assert a.is_file() and not b.exists() and outside.is_file()
    assert retire_outputs(out, "task-t_sub-01") == [str(a)]
    assert not (out / "sub-01").exists() and outside.is_file()
    assert not output_record_path(out, "task-t_sub-01").exists()


def test_rest_group_outputs_of_settings_no_longer_asked_for_are_deleted(tmp_path):
    """The resting-state group level follows the task group level's rule: the edge comparison's matrices of
    a ``connectivity_group_column`` since removed from the spec are deleted by the next group run (and only
    they: the mean matrices stay, a file glmx did not write stays)."""
    from glmx_workflows.api.rest import RestingStateDataset, RestingStateGroup
    from glmx_workflows.io.example_rest import add_rest_runs

    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=4, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=4)
    add_rest_runs(root, n_volumes=60, n_runs=1, seed=4)
    entry = json.loads((root / "task_information.json").read_text())
    assert entry["rest"]["connectivity_group_column"] == "group"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(entry))
    out, work = tmp_path / "out", tmp_path / "work"
    report = RestingStateDataset(root, "rest", spec=spec, output_dir=out, work_dir=work).run(
        plugin="Linear", progress=False)
    assert report.ok, report.summary()
    group_dir = out / "group"
    RestingStateGroup("rest", root, spec=spec, output_dir=out, work_dir=work).run(plugin="Linear")
    comparison = sorted(group_dir.glob("*_stat-q_*")) + sorted(group_dir.glob("*_stat-t_*"))
    means = sorted(group_dir.glob("*_desc-mean_relmat.tsv"))
    assert comparison and means
    user_file = group_dir / "task-rest_mynotes.txt"
    user_file.write_text("mine")

    entry["rest"]["connectivity_group_column"] = None
    spec.write_text(json.dumps(entry))
    group = RestingStateGroup("rest", root, spec=spec, output_dir=out, work_dir=work)
    group.run(plugin="Linear")
    assert not any(p.is_file() for p in comparison)
    assert set(map(str, comparison)) <= set(group.removed)
    assert all(p.is_file() for p in means) and user_file.is_file()
