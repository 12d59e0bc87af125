"""The fast path of a rerun (per-subject state records: plan and outputs under one key) gives up nothing of the cache's correctness:
an unchanged subject is not even built, any change sends its subject through nipype (which reruns only what
changed), and outputs are always those of a run from scratch. Asserted from nipype's own result files and the
outputs' modification times and contents."""

import json
import os
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.api import Aggregator
from glmx_workflows.engine.run import executed_nodes
from glmx_workflows.io.example import make_example_dataset

MODELLING = ("load_events", "select_confounds", "build_design", "fit_glm", "compute_contrasts", "fixed_effects")
Z_TASK = "sub-{}_task-flanker_space-MNI152NLin2009cAsym_contrast-task_stat-z_statmap.nii.gz"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerun") / "bids"
    make_example_dataset(root, n_subjects=2, n_runs=2, shape=(10, 12, 10), n_volumes=60, seed=7)
    return root


def _run(root, out, spec, done=("01", "02")):
    start = time.time()
    time.sleep(0.01)
    agg = Aggregator(root, "flanker", spec=spec, output_dir=out, work_dir=str(out) + "_work")
    report = agg.run(plugin="Linear", progress=False)
    assert report.done == list(done) and report.ok == (len(done) == 2), report.summary()
    nodes = executed_nodes(str(out) + "_work", start)
    return agg, report, nodes


def _steps(nodes):
    """'glmx_flanker/sub_01_flanker/fit_glm/mapflow/_fit_glm1' -> ('01', 'fit_glm'), modelling nodes only."""
    return {(n.split("/")[1].split("_")[1], n.split("/")[2]) for n in nodes if n.split("/")[2] in MODELLING}


def _subjects(nodes):
    return {n.split("/")[1].split("_")[1] for n in nodes}


def _snapshot(out, sub):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (out / f"sub-{sub}").rglob("*") if p.is_file()}


def _z(out, sub):
    return np.asarray(nb.load(out / f"sub-{sub}" / "func" / Z_TASK.format(sub)).dataobj)


def test_rerun_skips_only_what_is_unchanged(data, tmp_path, monkeypatch):
    spec = tmp_path / "spec.json"
    entry = json.loads((data / "task_information.json").read_text())
    spec.write_text(json.dumps(entry))
    out = tmp_path / "out"

    _, first, nodes = _run(data, out, spec)
    assert {s for _, s in _steps(nodes)} == set(MODELLING) and _subjects(nodes) == {"01", "02"}
    before = {s: _snapshot(out, s) for s in ("01", "02")}
    z_before = {s: _z(out, s) for s in ("01", "02")}

    # nothing changed: no node runs at all (not even the sinks), the dataset is not indexed, outputs untouched
    agg, report, nodes = _run(data, out, spec)
    assert nodes == []
    assert agg._layout is None, "an unchanged dataset was indexed with pybids again"
    assert {s: _snapshot(out, s) for s in ("01", "02")} == before
    assert sorted(report.outputs) == sorted(first.outputs)
    # the same, named with paths relative to another working directory
    monkeypatch.chdir(data.parent)
    rel_out = Path(os.path.relpath(out, data.parent))
    _, _, nodes = _run(Path("bids"), rel_out, Path(os.path.relpath(spec, data.parent)))
    assert nodes == []
    monkeypatch.chdir(tmp_path)

    # one subject's events change: that subject reruns (from its events on), its maps change; the other is
    # not built and its files keep their times
    events = data / "sub-02" / "func" / "sub-02_task-flanker_run-1_events.tsv"
    original = events.read_text()
    table = pd.read_csv(events, sep="\t")
    table["onset"] = table["onset"] + 4.0
    table.to_csv(events, sep="\t", index=False)
    try:
        _, _, nodes = _run(data, out, spec)
        assert _subjects(nodes) == {"02"}
        # from the events on: the confounds' selection stays cached
        assert {s for _, s in _steps(nodes)} == set(MODELLING) - {"select_confounds"}
        assert _snapshot(out, "01") == before["01"]
        assert not np.allclose(_z(out, "02"), z_before["02"])
    finally:
        events.write_text(original)

    # sub-01: an input with a new mtime and the same content; sub-02: its events back as in the first run and
    # its BOLD cut short (the header reads, the data do not: the fit fails). sub-01 goes through nipype
    # (timestamp hashing reruns the nodes reading the events) and its maps are those of the first run; its
    # stamp is recorded from the sinks' result files although the run as a whole failed
    events_01 = data / "sub-01" / "func" / "sub-01_task-flanker_run-2_events.tsv"
    events_01.touch()
    bold = next((data / "derivatives" / "fmriprep" / "sub-02" / "func").glob("*run-2*_desc-preproc_bold.nii.gz"))
    bold_bytes = bold.read_bytes()
    broken = bytearray(bold_bytes)  # corrupt inside the gzip stream (a file cut short is refused at planning)
    broken[len(broken) // 2: len(broken) // 2 + 2000] = bytes(2000)
    bold.write_bytes(bytes(broken))
    try:
        _, report, nodes = _run(data, out, spec, done=("01",))
        assert set(report.failed) == {"02"}
        assert ("01", "load_events") in _steps(nodes) and ("01", "select_confounds") not in _steps(nodes)
        assert np.array_equal(_z(out, "01"), z_before["01"])
        before["01"] = _snapshot(out, "01")
        # still failing: only the failing subject is tried again
        _, _, nodes = _run(data, out, spec, done=("01",))
        assert _subjects(nodes) == {"02"} and _snapshot(out, "01") == before["01"]
    finally:
        bold.write_bytes(bold_bytes)
    _, _, nodes = _run(data, out, spec)
    assert _subjects(nodes) == {"02"} and ("02", "fit_glm") in _steps(nodes)
    assert np.array_equal(_z(out, "02"), z_before["02"])
    # and the stamps are recorded again: the next run does nothing
    _, _, nodes = _run(data, out, spec)
    assert nodes == []
    before["02"] = _snapshot(out, "02")

    # a deleted output and an overwritten one are written again, by the sinks only; the other subject is skipped
    z = out / "sub-01" / "func" / Z_TASK.format("01")
    z.unlink()
    report_html = out / "sub-01" / "sub-01_task-flanker_report.html"
    html = report_html.read_bytes()
    report_html.write_bytes(b"<html>edited</html>")
    _, _, nodes = _run(data, out, spec)
    assert np.array_equal(_z(out, "01"), z_before["01"]) and report_html.read_bytes() == html
    assert _subjects(nodes) == {"01"} and _steps(nodes) == set()
    assert _snapshot(out, "02") == before["02"]

    # an upgrade: sub-01's node cache was written by other code (here a cached result written before its
    # interface gained an output, which nipype would stop on with a KeyError). Its state record says so: the
    # subject reruns from scratch with this code, the other subject is not built
    from nipype.utils.filemanip import loadpkl, savepkl

    from glmx_workflows.engine.state import UnitState
    from glmx_workflows.interfaces.glm import FitGLM

    result_file = Path(str(out) + "_work") / "glmx_flanker" / "sub_01_flanker" / "fit_glm" / "result_fit_glm.pklz"
    result = loadpkl(str(result_file))
    vars(result.outputs).pop(sorted(FitGLM.output_spec().copyable_trait_names())[0])
    savepkl(str(result_file), result)
    record = UnitState(str(out) + "_work", "glmx_flanker", "sub_01_flanker")
    record.data.update(code="another version", key="made by another version", outputs_key="made by another version")
    record._code_checked = True
    record.save()
    _, _, nodes = _run(data, out, spec)
    assert _subjects(nodes) == {"01"} and {s for _, s in _steps(nodes)} == set(MODELLING)
    assert np.array_equal(_z(out, "01"), z_before["01"]) and _snapshot(out, "02") == before["02"]

    # a file added to a subject's folder is seen: the dataset is indexed and that subject planned again (a raw
    # events file without a preprocessed BOLD adds no run: same plan, nothing runs)
    extra = data / "sub-01" / "func" / "sub-01_task-flanker_run-3_events.tsv"
    extra.write_text(original)
    try:
        agg, _, nodes = _run(data, out, spec)
        assert agg._layout is not None and nodes == []
    finally:
        extra.unlink()

    # the spec's contrasts change: every subject reruns its contrasts (and what consumes them), not its fit
    entry["flanker"]["design_contrasts"]["congruentOnly"] = "congruent"
    spec.write_text(json.dumps(entry))
    _, _, nodes = _run(data, out, spec)
    assert _steps(nodes) == {(s, n) for s in ("01", "02") for n in ("compute_contrasts", "fixed_effects")}
    for s in ("01", "02"):
        assert (out / f"sub-{s}" / "func" / Z_TASK.format(s).replace("contrast-task", "contrast-congruentOnly")).is_file()
        assert np.array_equal(_z(out, s), z_before[s])
    _, _, nodes = _run(data, out, spec)
    assert nodes == []



def test_code_fingerprint_covers_every_module():
    """The code part of every state record's key lists each module of the package (an edited core/glm.py
    makes the next run plan again and drops the node cache), not only the engine's own."""
    from glmx_workflows.engine.state import code_fingerprint

    pkg = Path(__import__("glmx_workflows").__file__).resolve().parent
    listed = {name for name, _, _ in code_fingerprint()[2]}
    modules = {str(p.relative_to(pkg)) for p in pkg.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules == listed
    assert {"core/glm.py", "interfaces/glm.py", "engine/state.py"} <= listed


def test_cli_start_imports_no_model_libraries(tmp_path):
    """A rerun with nothing changed only parses the command line, reads the spec and the state records:
    none of that imports scipy.stats, pandas or nipype (each a large share of such a rerun's time)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from glmx_workflows.cli.run import _app_parser\n"
            "from glmx_workflows.spec.model import load_spec\n"
            "from glmx_workflows.io.derivatives import current_contrasts\n"
            "_app_parser().parse_args(['b', 'o', 'participant', '--task', 't', '--inference', 'fdr'])\n"
            f"load_spec({str(tmp_path / 'spec.json')!r})\n"
            "print(sorted(m for m in ('scipy.stats', 'pandas', 'nipype') if m in sys.modules))\n")
    (tmp_path / "spec.json").write_text(json.dumps({"flanker": {"tr": 2.0, "design_contrasts": {}}}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_an_add_one_contrast_rerun_leaves_the_report_libraries_to_the_workers(data, tmp_path):
    """The process that runs an add-one-contrast rerun on MultiProc (no planning: the plan is the recorded one)
    never imports scipy.stats and matplotlib (the report's, imported by the workers as they start) nor IPython
    (nipype's IPython plugin, which glmx never uses); the rerun still draws the new contrast into the report."""
    import subprocess
    import sys

    spec, out = tmp_path / "spec.json", tmp_path / "out"
    entry = json.loads((data / "task_information.json").read_text())
    spec.write_text(json.dumps(entry))
    args = dict(spec=spec, output_dir=out, work_dir=str(out) + "_work", participant_label=["01"])
    assert Aggregator(data, "flanker", **args).run(plugin="Linear", progress=False).ok
    entry["flanker"]["design_contrasts"]["incongruentOnly"] = "incongruent"
    spec.write_text(json.dumps(entry))
    kwargs = {k: str(v) if isinstance(v, Path) else v for k, v in args.items()}
    code = ("import sys\n"
            "from glmx_workflows.api import Aggregator\n"
            f"report = Aggregator({str(data)!r}, 'flanker', **{kwargs!r}).run(plugin='MultiProc', n_procs=2,\n"
            "                                                             progress=False)\n"
            "assert report.ok, report.summary()\n"
            "print(sorted(m for m in ('scipy.stats', 'matplotlib', 'IPython') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
    assert "incongruentOnly" in (out / "sub-01" / "sub-01_task-flanker_report.html").read_text()


def _parts(work):
    """{entry folder relative to contrast_parts: mtime_ns} of the kept contrast maps."""
    root = Path(str(work)) / "contrast_parts"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("*/*/*") if p.is_dir()}


def _maps(out):
    return {p.relative_to(out): np.asarray(nb.load(p).dataobj) for p in (out / "sub-01").rglob("*_statmap.nii.gz")}


def test_contrast_only_change_computes_only_that_contrast(data, tmp_path):
    """Adding a contrast reruns compute_contrasts and fixed_effects (nipype), which take every other contrast's
    maps back from the kept parts (io.parts) and compute only the new one; the maps equal a run from scratch.
    A contrast removed from the spec leaves neither maps nor kept parts; a redefined one is computed again."""
    spec = tmp_path / "spec.json"
    entry = json.loads((data / "task_information.json").read_text())
    spec.write_text(json.dumps(entry))
    out, work = tmp_path / "out", tmp_path / "work"

    def run(out_dir, work_dir):
        report = Aggregator(data, "flanker", spec=spec, output_dir=out_dir, work_dir=work_dir,
                            participant_label=["01"]).run(plugin="Linear", progress=False)
        assert report.ok, report.summary()

    run(out, work)
    kept = _parts(work)
    assert {k.split("/")[-1].split("-")[0] for k in kept} >= {"task", "rt", "incongruentVcongruent", "model"}

    entry["flanker"]["design_contrasts"]["incongruentOnly"] = "incongruent"
    spec.write_text(json.dumps(entry))
    run(out, work)
    now = _parts(work)
    new = {k for k in now if k not in kept or now[k] != kept[k]}
    # one new entry per run and one for the subject, all of the new contrast; the others untouched
    assert new and {k.split("/")[-1].split("-")[0] for k in new} == {"incongruentOnly"}
    assert len(new) == len({k.split("/")[-1] for k in kept if k.split("/")[-1].startswith("model-")}) + 1
    assert {k: now[k] for k in kept} == kept

    # the same maps as a run from scratch with the new spec
    fresh = tmp_path / "fresh"
    run(fresh, tmp_path / "fresh_work")
    ours, theirs = _maps(out), _maps(fresh)
    assert ours.keys() == theirs.keys() and any("incongruentOnly" in str(k) for k in ours)
    for key in ours:
        assert np.array_equal(ours[key], theirs[key], equal_nan=True), key

    # removed: its maps and its kept parts go; redefined: computed again (a new map)
    before = _maps(out)
    del entry["flanker"]["design_contrasts"]["rt"]
    entry["flanker"]["design_contrasts"]["incongruentOnly"] = "2*incongruent"
    spec.write_text(json.dumps(entry))
    run(out, work)
    assert not any(k.split("/")[-1].startswith("rt-") for k in _parts(work))
    after = _maps(out)
    assert not any("contrast-rt_" in str(k) for k in after)
    z_only = [k for k in after if "contrast-incongruentOnly_stat-effect" in str(k)]
    assert z_only and all(np.allclose(after[k], 2 * before[k], equal_nan=True) for k in z_only)


def test_new_state_record_retires_the_former_formats_files(tmp_path):
    """Writing a subject's state record deletes what the former format kept for it (the task's plan cache and
    the subject's done stamp), and nothing else: another subject's stamp stays until its own record is
    written, a file glmx did not write stays, and the folder goes once empty."""
    from glmx_workflows.engine.state import UnitState

    former = tmp_path / "glmx_state" / "task-flanker"
    former.mkdir(parents=True)
    for name in ("plans.pkl", "sub-01_done.json", "sub-02_done.json"):
        (former / name).write_bytes(b"old")
    other_task = tmp_path / "glmx_state" / "task-rest"
    other_task.mkdir()
    (other_task / "sub-01_done.json").write_bytes(b"old")

    assert UnitState(tmp_path, "glmx_flanker", "sub_01_flanker").save()
    assert sorted(p.name for p in former.iterdir()) == ["sub-02_done.json"]
    assert (other_task / "sub-01_done.json").is_file()
    (former / "notes.txt").write_text("mine")
    assert UnitState(tmp_path, "glmx_flanker", "sub_02_flanker").save()
    assert sorted(p.name for p in former.iterdir()) == ["notes.txt"]
    (former / "notes.txt").unlink()
    assert UnitState(tmp_path, "glmx_flanker", "sub_02_flanker").save()
    assert not former.exists() and (tmp_path / "glmx_state" / "glmx_flanker" / "sub_02_flanker.pkl").is_file()


def _published(out):
    """{path relative to OUTPUT_DIR: array (NIfTI) or bytes} of everything a run published, but the dataset
    description (which names the input dataset's folder); the index's title (OUTPUT_DIR's name) is blanked."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "dataset_description.json":
            files[p.relative_to(out)] = (np.asarray(nb.load(p).dataobj) if p.name.endswith(".nii.gz")
                                         else p.read_bytes().replace(f"glmx outputs: {out.name}<".encode(), b"<"))
    return files


def test_add_one_contrast_on_multiproc_runs_only_its_nodes_and_equals_a_fresh_run(data, tmp_path):
    """On MultiProc (the default engine, with its in-process look-ahead and gc freezing in engine.run), adding a
    contrast executes only the nodes fed by the contrasts list (compute_contrasts, fixed_effects, the report) and
    the subject's one sink; the nodes before them are taken from the cache. Every published file (maps, tables,
    reports, designs) equals that of a run from scratch with the edited spec, and the sink lists them all."""
    spec = tmp_path / "spec.json"
    entry = json.loads((data / "task_information.json").read_text())
    spec.write_text(json.dumps(entry))

    def run(out):
        start = time.time()
        time.sleep(0.01)
        report = Aggregator(data, "flanker", spec=spec, output_dir=out, work_dir=str(out) + "_work").run(
            plugin="MultiProc", n_procs=2, progress=False)
        assert report.ok and report.done == ["01", "02"], report.summary()
        return report, executed_nodes(str(out) + "_work", start)

    out = tmp_path / "out"
    _, first = run(out)
    entry["flanker"]["design_contrasts"]["incongruentOnly"] = "incongruent"
    spec.write_text(json.dumps(entry))
    report, again = run(out)
    steps = {(n.split("/")[1], n.split("/")[2]) for n in again}
    expected = {"compute_contrasts", "fixed_effects", "report", "ds_outputs"}
    assert steps == {(f"sub_{s}_flanker", step) for s in ("01", "02") for step in expected}
    assert len(again) < len(first) / 2

    fresh = tmp_path / "fresh"
    fresh_report, _ = run(fresh)
    ours, theirs = _published(out), _published(fresh)
    assert ours.keys() == theirs.keys()
    assert any("contrast-incongruentOnly" in str(k) for k in ours)
    for key in ours:
        assert np.array_equal(ours[key], theirs[key], equal_nan=True) if isinstance(ours[key], np.ndarray) \
            else ours[key] == theirs[key], key
    # what the sinks said they published is what the folder holds (besides the dataset's own files)
    listed = {Path(f).relative_to(out) for f in report.outputs}
    assert listed == {k for k in ours if k.parts[0].startswith("sub-")}
    assert {Path(f).relative_to(fresh) for f in fresh_report.outputs} == listed
