"""A BOLD file truly cut short (its gzip stream ends early) in a dataset run fails that subject only: the
others run, the cut subject is listed as failed in the report, the status file, the index and the summary
with one line naming the file, and the run exits 1 (README: "a problem with one subject's files fails that
subject only"). The refusal comes from planning (``io.images.check_complete``), before any node runs; a
dataset run that was complete before the file was cut (its subjects' state records valid) is covered too."""

import json
import os
import subprocess
import sys

import pytest

from glmx_workflows.api import Aggregator
from glmx_workflows.api.rest import RestingStateDataset
from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.io.example_rest import add_rest_runs
from glmx_workflows.reports.index import read_status

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cut") / "bids"
    make_example_dataset(root, n_subjects=3, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=3)
    add_rest_runs(root, n_volumes=60, n_runs=1, seed=3)
    return root


def _bold(root, task):
    return root / "derivatives" / "fmriprep" / "sub-02" / "func" / \
        f"sub-02_task-{task}_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"


def _cut(path):
    """Cut the file to two thirds of its bytes (a copy that stopped); returns the original bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return data


def _assert_cut_subject_failed(failed, done, bold):
    assert done == ["01", "03"] and set(failed) == {"02"}
    reason, crash = failed["02"]
    assert str(bold) in reason and "cut short" in reason and "\n" not in reason
    assert crash is None  # refused while planning: no node ran, no crash file


def test_cut_bold_fails_its_subject_in_a_dataset_run(dataset, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    first = Aggregator(dataset, "flanker", output_dir=out, work_dir=work).run(plugin="Linear", progress=False)
    assert first.ok and first.done == ["01", "02", "03"]
    bold = _bold(dataset, "flanker")
    original = _cut(bold)
    try:
        # through the facade, after a complete run (the cut subject's state record no longer valid)
        report = Aggregator(dataset, "flanker", output_dir=out, work_dir=work).run(plugin="Linear", progress=False)
        _assert_cut_subject_failed(report.failed, report.done, bold)
        status = read_status(out, "flanker")
        assert {s: v["status"] for s, v in status.items()} == {"01": "done", "02": "failed", "03": "done"}
        assert str(bold) in status["02"]["reason"]
        assert "sub-02 FAILED: " + str(bold) in report.summary()

        # through the CLI, a fresh OUTPUT_DIR, no --participant-label: the others run, exit 1
        cli_out = tmp_path / "cli_out"
        proc = subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", str(dataset), str(cli_out),
                               "participant", "--task", "flanker", "--quiet", "--plugin", "Linear"],
                              capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "2 subject(s) done, 1 failed" in proc.stdout
        failed_lines = [ln for ln in proc.stdout.splitlines() if "FAILED" in ln]
        assert len(failed_lines) == 1 and failed_lines[0].strip().startswith(f"sub-02 FAILED: {bold}")
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("glmx: error: 1 of 3 subject(s) failed: sub-02: ")
        assert str(bold) in err[0] and "Traceback" not in proc.stderr
        for sub in ("01", "03"):
            assert list((cli_out / f"sub-{sub}" / "func").glob("*_stat-z_statmap.nii.gz"))
        assert not (cli_out / "sub-02").exists()
        status = json.loads((cli_out / "logs" / "task-flanker_status.json").read_text())["subjects"]
        assert status["02"]["status"] == "failed" and str(bold) in status["02"]["reason"]
        assert "cut short" in (cli_out / "index.html").read_text()
    finally:
        bold.write_bytes(original)


def test_cut_rest_bold_fails_its_subject_in_a_dataset_run(dataset, tmp_path):
    bold = _bold(dataset, "rest")
    original = _cut(bold)
    try:
        report = RestingStateDataset(dataset, "rest", output_dir=tmp_path / "out", work_dir=tmp_path / "work") \
            .run(plugin="Linear", progress=False)
        _assert_cut_subject_failed(report.failed, report.done, bold)
        status = read_status(tmp_path / "out", "rest")
        assert {s: v["status"] for s, v in status.items()} == {"01": "done", "02": "failed", "03": "done"}
    finally:
        bold.write_bytes(original)
