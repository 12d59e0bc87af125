"""Each class of bad input through the real CLI: exit 2, ONE stderr line naming the file and the field,
nothing written in OUTPUT_DIR; relative paths for every command; the resting-state group level on a
dataset with sessions."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.io.example_rest import add_rest_runs

TASK = "flanker"
SPACE = "MNI152NLin2009cAsym"
EV1 = f"sub-01/func/sub-01_task-{TASK}_run-1_events.tsv"
CONF1 = f"derivatives/fmriprep/sub-01/func/sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv"
BOLD1 = f"derivatives/fmriprep/sub-01/func/sub-01_task-{TASK}_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"
REST_CONF1 = "derivatives/fmriprep/sub-01/func/sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"


def _spec(task=TASK, **entry):
    def edit(root):
        path = root / "task_information.json"
        spec = json.loads(path.read_text())
        spec[task].update(entry)
        path.write_text(json.dumps(spec))
    return edit


def _events(edit):
    def apply(root):
        for path in root.glob(f"sub-*/func/*task-{TASK}_*events.tsv"):
            table = pd.read_csv(path, sep="\t", keep_default_na=False)
            edit(table)
            table.to_csv(path, sep="\t", index=False)
    return apply


def _rename_condition(old, new):
    return _events(lambda t: t.__setitem__("trial_type", t["trial_type"].replace({old: new})))


def _sidecars_ms(root):
    # every sidecar of the task in milliseconds, as some converters write it
    for path in [root / f"task-{TASK}_bold.json", *root.rglob(f"sub-*/**/*task-{TASK}_*bold.json")]:
        meta = json.loads(path.read_text())
        meta["RepetitionTime"] = 2000
        path.write_text(json.dumps(meta))


def _inherited_ms(root):
    # only the top-level sidecar sets RepetitionTime (BIDS inheritance): the message names that file
    _spec(tr=None)(root)
    (root / f"task-{TASK}_bold.json").write_text(json.dumps({"RepetitionTime": 2000, "TaskName": TASK}))
    for path in root.rglob(f"sub-*/**/*task-{TASK}_*bold.json"):
        meta = json.loads(path.read_text())
        meta.pop("RepetitionTime", None)
        path.write_text(json.dumps(meta))


def _latin1_spec(root):
    path = root / "task_information.json"
    spec = json.loads(path.read_text())
    spec[TASK]["description"] = "caf\u00e9 au lait"
    path.write_bytes(json.dumps(spec, ensure_ascii=False).encode("latin-1"))


def _truncate(root):
    data = (root / BOLD1).read_bytes()
    (root / BOLD1).write_bytes(data[: len(data) * 2 // 3])


def _modulator_twin(root):
    _events(lambda t: t.__setitem__("response time", t["response_time"]))(root)
    _spec(modulators=["response_time", "response time"])(root)


def _sidecar_not_json(root):
    sidecar = root / BOLD1.replace("_bold.nii.gz", "_bold.json")
    sidecar.write_text('{"RepetitionTime": 2.0,,}')


def _plugin_yaml_latin1(root):
    (root.parent / "sge.yml").write_bytes("qsub_args: '-q caf\u00e9'\n".encode("latin-1"))


def _plugin_yaml(root):
    (root.parent / "slurm.yml").write_text("plugin_args:\n  sbatch_args: --mem=4G\n  max_jobs: lots\n")


# name: (edit of the dataset, extra CLI args, substrings the one line must hold); paths starting with
# 'sub-' or 'derivatives/' are under the dataset, 'PARENT/' beside it
CASES = {
    # a TR that cannot be seconds
    "sidecar_tr_in_ms": (_sidecars_ms, [], ["_bold.json", "RepetitionTime", "2000 ms would be 2 s"]),
    "inherited_sidecar_tr_in_ms": (_inherited_ms, [], [f"task-{TASK}_bold.json", "RepetitionTime", "milliseconds"]),
    "spec_tr_in_ms": (_spec(tr=2000), [], ["task_information.json", f"{TASK}.tr", "milliseconds"]),
    "spec_tr_tiny": (_spec(tr=0.0002), [], ["task_information.json", f"{TASK}.tr", "cannot be a TR in seconds"]),
    "override_tr_absurd": (_spec(overrides={"sub-01": {"tr": 900}}), [],
                           ["task_information.json", f"{TASK}.overrides.sub-01.tr", "cannot be a TR"]),
    # text inputs that are not UTF-8 or not JSON
    "spec_not_utf8": (_latin1_spec, [], ["task_information.json", "not UTF-8"]),
    "plugin_args_yaml_not_utf8": (_plugin_yaml_latin1, ["--plugin", "SGE", "--plugin-args", "PARENT/sge.yml"],
                                  ["PARENT/sge.yml", "not UTF-8"]),
    "sidecar_not_json": (_sidecar_not_json, [], [BOLD1.replace("_bold.nii.gz", "_bold.json"), "not valid JSON"]),
    # a condition named like another design column
    "condition_named_constant": (_rename_condition("congruent", "constant"), [],
                                 [EV1, "column 'trial_type'", "constant"]),
    "condition_named_drift": (_rename_condition("congruent", "drift_1"), [], [EV1, "column 'trial_type'", "drift_1"]),
    "condition_named_confound": (_rename_condition("congruent", "rot_z"), [], [EV1, "column 'trial_type'", "rot_z"]),
    "condition_named_modulator_regressor": (_rename_condition("congruent", "incongruent_x_response_time"), [],
                                            [EV1, "column 'trial_type'", "incongruent_x_response_time"]),
    # labels that sanitise to one regressor (merged silently before)
    "conditions_sanitise_alike": (_events(lambda t: t.__setitem__("trial_type", t["trial_type"].replace(
        {"congruent": "in cong", "incongruent": "in-cong"}))), [], [EV1, "column 'trial_type'", "'in_cong'"]),
    "modulators_sanitise_alike": (_modulator_twin, [], [EV1, "modulators", "response_time"]),
    # contrasts: named like a condition (replaced its map before), too long for a file name (failed after the fit)
    "contrast_named_like_condition": (_spec(design_contrasts={"congruent": "incongruent - congruent"}), [],
                                      ["task_information.json", "design_contrasts.congruent", "condition"]),
    "contrast_name_too_long": (_spec(design_contrasts={"x" * 240: "incongruent - congruent"}), [],
                               ["task_information.json", "design_contrasts", "file system"]),
    # execution options of the wrong type
    "plugin_args_inline_type": (None, ["--plugin-args", '{"n_procs": "four"}'], ["--plugin-args n_procs", "integer"]),
    "plugin_args_yaml_type": (_plugin_yaml, ["--plugin", "SLURM", "--plugin-args", "PARENT/slurm.yml"],
                              ["PARENT/slurm.yml", "max_jobs", "integer"]),
    "n_procs_zero": (None, ["--n-procs", "0"], ["--n-procs", ">= 1"]),
    # a BOLD cut short: refused while planning, naming the file
    "bold_truncated": (_truncate, [], [BOLD1, "cut short"]),
    # dummy scans longer than the run: named as dummy_scans (it said fd_threshold), for both analyses
    "dummy_scans_beyond_run": (_spec(dummy_scans=500), [], ["task_information.json", f"{TASK}.dummy_scans", CONF1]),
    "rest_dummy_scans_beyond_run": (_spec("rest", dummy_scans=500), ["--task", "rest"],
                                    ["task_information.json", "rest.dummy_scans", REST_CONF1]),
    # a spec error in a dataset run (every subject): once, exit 2, before any node
    "dataset_run_spec_error": (_spec(design_contrasts={"x": "incongruent - nosuch"}), ["ALL"],
                               ["task_information.json", "design_contrasts.x", "nosuch"]),
    "dataset_run_dummy_scans": (_spec(dummy_scans=45), ["ALL"], ["task_information.json", f"{TASK}.dummy_scans"]),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes") / "base"
    make_example_dataset(root, n_subjects=2, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=5)
    add_rest_runs(root, n_volumes=60, n_runs=1, seed=5)
    return root


def _glmx(args, cwd):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _prepare(base, tmp, name):
    root = tmp / name / "bids"
    shutil.copytree(base, root)
    edit, extra, needles = CASES[name]
    if edit is not None:
        edit(root)
    out = tmp / name / "out"
    args = [root, out, "participant", "--task", TASK, "--quiet", "--work-dir", tmp / name / "work"]
    extra = [str(a).replace("PARENT/", f"{root.parent}/") for a in extra]
    if extra == ["ALL"]:
        extra = []
    else:
        args += ["--participant-label", "01"]
    if "--task" in extra:  # replaces the default task
        i = extra.index("--task")
        args[4] = extra[i + 1]
        del extra[i:i + 2]
    needles = [str(root / n) if n.startswith(("sub-", "derivatives/")) else n.replace("PARENT/", f"{root.parent}/")
               for n in needles]
    return out, args + extra, needles


def _one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit code {proc.returncode}")
    if len(lines) != 1 or not lines[0].startswith("glmx: error: "):
        problems.append(f"stderr is not one error line: {proc.stderr[-800:]!r}")
    return (lines[-1] if lines else ""), problems


def test_error_classes(base, tmp_path):
    prepared = {name: _prepare(base, tmp_path, name) for name in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(prepared, pool.map(lambda item: _glmx(item[1], tmp_path), prepared.values())))
    failures = []
    for name, proc in procs.items():
        out, _, needles = prepared[name]
        message, problems = _one_line_error(proc)
        problems += [f"message lacks {n!r}" for n in needles if n not in message]
        if out.exists():
            problems.append(f"OUTPUT_DIR written: {sorted(p.name for p in out.iterdir())}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)} | {message}")
    assert not failures, "\n".join(failures)


def test_validate_checks_connectivity_entries(base, tmp_path):
    proc = _glmx(["validate", base], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rest sub-01:" in proc.stdout and "rest sub-02:" in proc.stdout
    assert "4 subject-task pair(s) ok, 0 problem(s)" in proc.stdout
    root = tmp_path / "bids"
    shutil.copytree(base, root)
    _spec("rest", dummy_scans=500)(root)
    proc = _glmx(["validate", root], tmp_path)
    assert proc.returncode == 1
    problems = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBLEM")]
    assert len(problems) == 2 and all("rest" in ln and "dummy_scans" in ln for ln in problems), proc.stdout


def test_design_dir_condition_maps_or_why(base, tmp_path):
    from nilearn.glm.first_level import make_first_level_design_matrix

    from glmx_workflows.api import Subject

    designs = tmp_path / "designs"
    designs.mkdir()
    events = pd.read_csv(base / EV1, sep="\t")
    n = 40
    design = make_first_level_design_matrix(np.arange(n) * 2.0, events[["onset", "duration", "trial_type"]],
                                            drift_model="polynomial", drift_order=1)
    design.to_csv(designs / f"sub-01_task-{TASK}_run-1_design.tsv", sep="\t", index=False)
    subject = Subject("01", TASK, base, work_dir=tmp_path / "work", modulators=[],
                      design_contrasts={"incongruentVcongruent": "incongruent - congruent"})
    plan = subject.plan(designs)
    # the events' conditions are columns of the user's design: their maps are written
    assert {"congruent", "incongruent"} <= set(plan.contrasts) and not plan.notes
    design.rename(columns={"congruent": "A", "incongruent": "B"}).to_csv(
        designs / f"sub-01_task-{TASK}_run-1_design.tsv", sep="\t", index=False)
    subject = Subject("01", TASK, base, work_dir=tmp_path / "work", modulators=[], design_contrasts={"BvA": "B - A"})
    plan = subject.plan(designs)
    assert set(plan.contrasts) == {"BvA"}
    assert len(plan.notes) == 1 and "condition maps not written" in plan.notes[0] and "congruent" in plan.notes[0]


@pytest.fixture(scope="module")
def sessions_base(tmp_path_factory):
    """Task runs without sessions, rest runs in two sessions; a spec small enough for a quick group."""
    root = tmp_path_factory.mktemp("sessions") / "bids"
    make_example_dataset(root, n_subjects=2, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=9)
    add_rest_runs(root, n_volumes=60, n_runs=1, seed=9, sessions=["1", "2"])
    _spec(group_level_regressors=[], design_contrasts={"incongruentVcongruent": "incongruent - congruent"},
          modulators=[], condition_maps=False)(root)
    _spec("rest", connectivity_kinds=["pearsoncorrelation"], seeds={}, connectivity_group_column=None)(root)
    return root


def test_every_command_with_relative_paths_and_rest_group_with_sessions(sessions_base, tmp_path):
    shutil.copytree(sessions_base, tmp_path / "data" / "bids")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    rel = Path("..") / "data"
    common = ["--spec", rel / "bids" / "task_information.json", "--derivatives", rel / "bids" / "derivatives" / "fmriprep"]
    runs = {
        "participant task": [rel / "bids", rel / "out", "participant", "--task", TASK, "--quiet",
                             "--work-dir", rel / "work", *common],
        "group task": [rel / "bids", rel / "out", "group", "--task", TASK, "--quiet", "--work-dir", rel / "work",
                       "--spec", rel / "bids" / "task_information.json"],
        "participant rest": [rel / "bids", rel / "out", "participant", "--task", "rest", "--quiet",
                             "--work-dir", rel / "work", *common],
        "group rest": [rel / "bids", rel / "out", "group", "--task", "rest", "--quiet", "--work-dir", rel / "work",
                       "--spec", rel / "bids" / "task_information.json"],
        "validate": ["validate", rel / "bids", *common],
        "init": ["init", rel / "bids", "--spec", rel / "starter.json", "--derivatives",
                 rel / "bids" / "derivatives" / "fmriprep"],
        "example": ["example", rel / "example", "--subjects", "1"],
    }
    for what, args in runs.items():
        proc = _glmx(args, cwd)
        assert proc.returncode == 0, f"{what}: {proc.stderr[-1500:]}"
    out = tmp_path / "data" / "out"
    assert list((out / "sub-01" / "func").glob(f"*task-{TASK}_*contrast-incongruentVcongruent_stat-z_statmap.nii.gz"))
    assert list((out / "group").glob(f"task-{TASK}_*contrast-incongruentVcongruent_*stat-z_statmap.nii.gz"))
    # the rest group found each subject's matrix although every run carries a session
    for sub in ("01", "02"):
        assert len(list(out.glob(f"sub-{sub}/ses-*/func/*task-rest_*stat-pearsoncorrelation_relmat.tsv"))) == 2
    assert list((out / "group").glob("task-rest_*stat-pearsoncorrelation_desc-mean_relmat.tsv"))
    assert (tmp_path / "data" / "starter.json").is_file()
    assert (tmp_path / "data" / "example" / "task_information.json").is_file()
    assert not [p for p in cwd.rglob("*")], "files written into the working directory"
