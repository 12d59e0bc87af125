"""The glmx command end to end, through a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.spec.keys import TASK_KEYS

ROOT = Path(__file__).resolve().parents[1]


def glmx(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "bids"
    make_example_dataset(root, n_subjects=2, n_runs=2, shape=(10, 12, 10), n_volumes=60, seed=1)
    return root


def test_participant_run_writes_bids_derivatives(small, tmp_path):
    out = tmp_path / "out"
    proc = glmx(small, out, "participant", "--task", "flanker", "--n-procs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 subject(s) done, 0 failed" in proc.stdout
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    func = out / "sub-02" / "func"
    for stat in ("effect", "variance", "t", "z", "p"):
        assert (func / f"sub-02_task-flanker_space-MNI152NLin2009cAsym_contrast-incongruentVcongruent_stat-{stat}"
                       "_statmap.nii.gz").is_file()
    assert (func / "sub-02_task-flanker_run-2_space-MNI152NLin2009cAsym_contrast-rt_stat-z_statmap.nii.gz").is_file()
    assert (func / "sub-02_task-flanker_run-1_design.tsv").is_file()
    assert (func / "sub-02_task-flanker_run-1_design.svg").is_file()
    assert not list(out.rglob(".tmp-*")), "temporary files left behind"
    # published files are readable by the lab, not private to the writer (atomic writes go through mkstemp)
    umask = os.umask(0o022)
    os.umask(umask)
    for path in out.rglob("*.nii.gz"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


@pytest.mark.parametrize("edit, needle", [
    ({"noise_modle": "ols"}, "did you mean 'noise_model'"),
    ({"tr": 1.0}, "RepetitionTime is 2"),
    ({"confound_regressors": ["nonexistent_*"]}, "pattern 'nonexistent_*' matches no column"),
    ({"design_contrasts": {"bad": "incongruent - missing"}}, "missing"),
    ({"modulators": ["no_such_column"]}, "column 'no_such_column' not found"),
])
def test_bad_spec_gives_one_line_and_no_outputs(small, tmp_path, edit, needle):
    spec = json.loads((small / "task_information.json").read_text())
    spec["flanker"].update(edit)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    proc = glmx(small, out, "participant", "--task", "flanker", "--spec", path, "--participant-label", "01")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("glmx: error:") and needle in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "sub-01").exists()


def test_example_command_and_readme(tmp_path):
    proc = glmx("example", tmp_path / "ex", "--subjects", "1")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ex" / "task_information.json").is_file()
    readme = (ROOT / "README.rst").read_text()
    for key in TASK_KEYS:
        assert f"``{key}``" in readme, f"README lacks the spec key {key}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q tests" in readme and "python -m pytest -q tests" in ci


def test_output_read_by_a_closed_pipe_ends_without_traceback(tmp_path):
    """``glmx ... | head``: when the reader of stdout has gone, the command still does its work, drops the rest
    of its output and exits with a SIGPIPE's code (141), not a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "glmx_workflows.cli.run", "example", str(tmp_path / "ex"),
                             "--subjects", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (tmp_path / "ex" / "dataset_description.json").is_file()
