"""The bad-input matrix: each case through the real CLI must exit non-zero with ONE line on stderr naming
the file and the field at fault, no traceback, and no output for the failing subject."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.io.example import make_example_dataset

TASK = "flanker"
SPACE = "MNI152NLin2009cAsym"
FUNC = "sub-01/func"
PREP = "derivatives/fmriprep/sub-01/func"
EV1 = f"{FUNC}/sub-01_task-{TASK}_run-1_events.tsv"
CONF1 = f"{PREP}/sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv"
BOLD1 = f"{PREP}/sub-01_task-{TASK}_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"
MASK1 = f"{PREP}/sub-01_task-{TASK}_run-1_space-{SPACE}_desc-brain_mask.nii.gz"


def _events(root, edit, runs=(1,)):
    for run in runs:
        path = root / EV1.replace("run-1", f"run-{run}")
        table = pd.read_csv(path, sep="\t", keep_default_na=False)
        edit(table)
        table.to_csv(path, sep="\t", index=False)


def _confounds(root, edit):
    path = root / CONF1
    table = pd.read_csv(path, sep="\t", keep_default_na=False)
    edit(table)
    table.to_csv(path, sep="\t", index=False)


def _spec(**entry):
    def apply(root, spec):
        spec[TASK].update(entry)
    return apply


def _mask(root, data=None, affine=None):
    img = nb.load(root / MASK1)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj) if data is None else data(np.asarray(img.dataobj)),
                           img.affine if affine is None else affine(img.affine)), root / MASK1)


def _bold3d(root):
    img = nb.load(root / BOLD1)
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), root / BOLD1)


def _raw(root, text):
    (root / "task_information.json").write_text(text)


def _no_desc(root):
    (root / "derivatives" / "fmriprep" / "dataset_description.json").unlink()


def _shorter_confounds(root):
    path = root / CONF1
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-5]) + "\n")


# name: (mutate(root, spec) or None, extra CLI args, substrings the one line must hold)
CASES = {
    "spec_not_json": (lambda r, s: _raw(r, "{not json"), [], ["task_information.json", "not valid JSON"]),
    "spec_trailing_comma": (lambda r, s: _raw(r, '{"flanker": {"tr": 2.0,}}'), [],
                            ["task_information.json", "line 1 column"]),
    "spec_missing": (lambda r, s: (r / "task_information.json").unlink(), [], ["task_information.json", "not found"]),
    "unknown_key": (_spec(noise_modle="ols"), [], ["task_information.json", "did you mean 'noise_model'"]),
    "unknown_override_key": (_spec(overrides={"sub-01": {"trr": 2}}), [],
                             ["task_information.json", "flanker.overrides.sub-01", "did you mean 'tr'"]),
    "wrong_type": (_spec(tr="fast"), [], ["task_information.json", "flanker.tr", "expected"]),
    "task_missing": (None, ["--task", "flanke"], ["task_information.json", "task 'flanke'", "did you mean"]),
    "contrast_unknown_regressor": (_spec(design_contrasts={"x": "incongruent - nosuch"}), [],
                                   ["task_information.json", "design_contrasts.x", "nosuch"]),
    "contrast_bad_syntax": (_spec(design_contrasts={"x": "incongruent -"}), [],
                            ["task_information.json", "design_contrasts.x", "syntax"]),
    "contrast_duplicate_name": (lambda r, s: _raw(r, json.dumps(s).replace(
        '"design_contrasts": {', '"design_contrasts": {"task": "congruent", ')), [],
        ["task_information.json", "'task' appears twice"]),
    "contrast_label_clash": (_spec(design_contrasts={"a_b": "congruent", "aB": "incongruent"}), [],
                             ["task_information.json", "both give the output label"]),
    "tr_disagrees_with_sidecar": (_spec(tr=1.5), [], ["task_information.json", "flanker.tr", "RepetitionTime is 2"]),
    "events_missing_onset": (lambda r, s: _events(r, lambda t: t.drop(columns="onset", inplace=True)), [],
                             [EV1, "column 'onset'"]),
    "events_missing_duration": (lambda r, s: _events(r, lambda t: t.drop(columns="duration", inplace=True)), [],
                                [EV1, "column 'duration'"]),
    "events_missing_condition": (lambda r, s: _events(r, lambda t: t.rename(columns={"trial_type": "tt"},
                                                                            inplace=True)), [],
                                 [EV1, "column 'trial_type'"]),
    "events_onset_not_numeric": (lambda r, s: _events(r, lambda t: t.__setitem__("onset", "soon")), [],
                                 [EV1, "column 'onset'", "non-numeric"]),
    "events_negative_duration": (lambda r, s: _events(r, lambda t: t.__setitem__("duration", -1.0)), [],
                                 [EV1, "column 'duration'", "negative"]),
    "events_beyond_run": (lambda r, s: _events(r, lambda t: t.__setitem__("onset", t["onset"] + 1000)), [],
                          [EV1, "column 'onset'", "beyond the end"]),
    "modulator_with_nan": (lambda r, s: _events(r, lambda t: t.__setitem__("response_time", "n/a")), [],
                           [EV1, "column 'response_time'", "n/a"]),
    "modulator_constant": (lambda r, s: _events(r, lambda t: t.__setitem__("response_time", 0.5), runs=(1, 2)), [],
                           ["column 'response_time'", "constant"]),
    "events_unreadable": (lambda r, s: (r / EV1).write_bytes(b"\x00\xff\xfe" * 50), [], [EV1]),
    "confounds_missing": (lambda r, s: (r / CONF1).unlink(), [], [BOLD1, "no confounds file"]),
    "confound_pattern_matches_nothing": (_spec(confound_regressors=["trans_*", "wm_*"]), [],
                                         [CONF1, "pattern 'wm_*'"]),
    "confounds_shorter_than_bold": (lambda r, s: _shorter_confounds(r), [], [CONF1, "rows", "volumes"]),
    "confound_all_nan": (lambda r, s: _confounds(r, lambda t: t.__setitem__("trans_x", "n/a")), [],
                         [CONF1, "column 'trans_x'", "every value is n/a"]),
    "bold_3d": (lambda r, s: _bold3d(r), [], [BOLD1, "expected a 4D run"]),
    "mask_other_shape": (lambda r, s: _mask(r, data=lambda d: d[:-1]), [], [MASK1, "does not match the BOLD grid"]),
    "mask_other_affine": (lambda r, s: _mask(r, affine=lambda a: a @ np.diag([2.0, 2, 2, 1])), [],
                          [MASK1, "does not match the BOLD grid"]),
    "mask_empty": (lambda r, s: _mask(r, data=lambda d: np.zeros_like(d)), [], [MASK1, "mask is empty"]),
    "subject_does_not_exist": (None, ["--participant-label", "99"], ["sub-99", "not found"]),
    "no_bold_in_space": (_spec(space="T1w"), [], ["sub-01", "no preprocessed BOLD", "space 'T1w'"]),
    "derivatives_missing": (lambda r, s: shutil.rmtree(r / "derivatives"), [], ["derivatives", "no fmriprep"]),
    "derivatives_without_description": (lambda r, s: _no_desc(r), [],
                                        ["fmriprep", "no dataset_description.json"]),
    "derivatives_option_missing": (None, ["--derivatives", "/nonexistent/fmriprep"],
                                   ["/nonexistent/fmriprep", "--derivatives"]),
    "not_a_bids_dataset": (lambda r, s: (r / "dataset_description.json").unlink(), [],
                           ["dataset_description.json", "BIDS_DIR"]),
    "output_inside_raw_bids": (None, ["OUT_IN_BIDS"], ["OUTPUT_DIR", "inside the raw BIDS"]),
    "output_unwritable": (None, ["OUT_UNWRITABLE"], ["OUTPUT_DIR", "not writable"]),
    "design_rank_deficient": (lambda r, s: _confounds(r, lambda t: t.__setitem__("trans_y", t["trans_x"])), [],
                              [BOLD1, "rank-deficient", "trans_x", "trans_y"]),
    "fewer_volumes_than_regressors": (_spec(confound_regressors=["*"]), [], [BOLD1, "usable volumes"]),
    "scrubbing_leaves_too_few": (_spec(fd_threshold=0.0001), [], [CONF1, "fd_threshold", "volumes remain"]),
    "design_dir_missing_file": (None, ["--design-dir", "DESIGN_DIR"], ["--design-dir", "no design file"]),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "base"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(8, 10, 8), n_volumes=50, seed=11)
    return root


def _prepare(base, tmp, name):
    root = tmp / name / "bids"
    shutil.copytree(base, root)
    mutate, extra, needles = CASES[name]
    spec = json.loads((root / "task_information.json").read_text())
    if mutate is not None:
        mutate(root, spec)
        if mutate.__name__ == "apply":  # a spec edit
            (root / "task_information.json").write_text(json.dumps(spec))
    out = tmp / name / "out"
    args = [str(root), str(out), "participant", "--task", TASK, "--quiet", "--participant-label", "01",
            "--work-dir", str(tmp / name / "work")]
    extra = list(extra)
    if extra == ["OUT_IN_BIDS"]:
        out = root / "sub-01" / "out"
        args[1], extra = str(out), []
    elif extra == ["OUT_UNWRITABLE"]:
        out = Path("/proc/glmx_out")
        args[1], extra = str(out), []
    elif extra == ["--design-dir", "DESIGN_DIR"]:
        (tmp / name / "designs").mkdir()
        extra = ["--design-dir", str(tmp / name / "designs")]
    if "--participant-label" in extra:
        i = args.index("--participant-label")
        del args[i:i + 2]
    return root, out, args + extra, needles


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_bad_input_matrix(base, tmp_path):
    assert len(CASES) >= 30
    prepared = {name: _prepare(base, tmp_path, name) for name in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(prepared, pool.map(lambda item: _run(item[2], tmp_path), prepared.values())))
    failures = []
    for name, proc in procs.items():
        root, out, _, needles = prepared[name]
        lines = proc.stderr.strip().splitlines()
        message = lines[-1] if lines else ""
        needles = [str(root / n) if n.startswith(("sub-01/", "derivatives/")) else n for n in needles]
        problems = []
        if proc.returncode == 0:
            problems.append("exit code 0")
        if len(lines) != 1 or not message.startswith("glmx: error: "):
            problems.append(f"stderr is not one error line: {proc.stderr[-600:]!r}")
        if "Traceback" in proc.stderr:
            problems.append("traceback shown")
        problems += [f"message lacks {n!r}" for n in needles if n not in message]
        if Path(out / "sub-01").exists():
            problems.append("partial outputs written")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)} | {message}")
    assert not failures, "\n".join(failures)


def test_debug_shows_the_traceback(base, tmp_path):
    root, out, args, _ = _prepare(base, tmp_path, "mask_empty")
    proc = _run(args + ["--debug"], tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "GlmxError" in proc.stderr


def test_inputs_never_modified_and_nothing_written_into_raw_bids(base, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(base, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    proc = _run([str(root), str(tmp_path / "out"), "participant", "--task", TASK, "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert before == after


GROUP_CASES = {
    # name: (edit of participants.tsv or spec, substrings of the one line)
    "covariate_value_missing": (lambda root: _participants(root, lambda t: t.__setitem__("age", "n/a")),
                                ["participants.tsv", "sub-01", "'age'"]),
    "covariate_column_missing": (lambda root: _participants(root, lambda t: t.drop(columns="age", inplace=True)),
                                 ["participants.tsv", "'age'"]),
}


def _participants(root, edit):
    path = root / "participants.tsv"
    table = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    edit(table)
    table.to_csv(path, sep="\t", index=False)


@pytest.fixture(scope="module")
def base_with_maps(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("group_bad")
    root = tmp / "bids"
    shutil.copytree(base, root)
    out = tmp / "out"
    proc = _run([str(root), str(out), "participant", "--task", TASK, "--quiet", "--work-dir", str(tmp / "work")], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, out


@pytest.mark.parametrize("name", sorted(GROUP_CASES))
def test_group_bad_input(base_with_maps, tmp_path, name):
    root0, out0 = base_with_maps
    root, out = tmp_path / "bids", tmp_path / "out"
    shutil.copytree(root0, root)
    shutil.copytree(out0, out)
    edit, needles = GROUP_CASES[name]
    edit(root)
    proc = _run([str(root), str(out), "group", "--task", TASK, "--quiet", "--work-dir", str(tmp_path / "work")],
                tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("glmx: error: "), proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not list(out.glob("group/*")), "partial group outputs written"


@pytest.fixture(scope="module")
def rest_base(tmp_path_factory):
    from glmx_workflows.io.example_rest import add_rest_runs

    root = tmp_path_factory.mktemp("rest_bad") / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=13)
    add_rest_runs(root, n_volumes=60, n_runs=1, seed=13)
    mask = nb.load(next((root / "derivatives/fmriprep/sub-01/func").glob("*rest*_desc-brain_mask.nii.gz")))
    labels = (np.asarray(mask.dataobj) > 0).astype(np.int16)
    labels[: labels.shape[0] // 2] *= 2
    nb.save(nb.Nifti1Image(labels, mask.affine), root / "code" / "atlas_bold_grid.nii.gz")
    nb.save(nb.Nifti1Image(labels[:, :-2], mask.affine), root / "code" / "atlas_other_grid.nii.gz")
    (root / "code" / "atlas.tsv").write_text("index\tname\n1\tright\n2\tleft\n")
    return root


REST_CASES = {
    "atlas_on_another_grid": ({"name": "halves", "labels_img": "code/atlas_other_grid.nii.gz",
                               "labels_tsv": "code/atlas.tsv"}, ["atlas_other_grid.nii.gz", "does not match the grid"]),
    "atlas_in_another_space": ({"name": "halves", "labels_img": "code/atlas_bold_grid.nii.gz",
                                "labels_tsv": "code/atlas.tsv", "space": "MNI152NLin6Asym"},
                               ["atlas.space", "MNI152NLin6Asym", "MNI152NLin2009cAsym"]),
}


@pytest.mark.parametrize("name", sorted(REST_CASES))
def test_rest_bad_atlas(rest_base, tmp_path, name):
    root = tmp_path / "bids"
    shutil.copytree(rest_base, root)
    atlas, needles = REST_CASES[name]
    spec = json.loads((root / "task_information.json").read_text())
    spec["rest"]["atlas"] = atlas
    (root / "task_information.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = _run([str(root), str(out), "participant", "--task", "rest", "--quiet", "--work-dir", str(tmp_path / "w")],
                tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("glmx: error: "), proc.stderr[-1500:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (out / "sub-01").exists()
