"""Nothing a user does writes into an input, two runs never share a folder, and an interruption is not a failure.

Every case runs the real ``glmx`` command in a subprocess on a dataset written by ``glmx example``.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

TASK = "flanker"


def _glmx(*args, cwd=None, **popen):
    cmd = [sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, **popen)


def _start(*args, cwd=None):
    """A running ``glmx`` process, with SIGINT handled as in a terminal (a shell script's background job
    would start it with SIGINT ignored, which glmx respects)."""
    cmd = [sys.executable, "-m", "glmx_workflows.cli.run", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _snapshot(*folders):
    """{path: sha1 of the bytes, or the link target} of every file, folder and link under ``folders``."""
    out = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_symlink():
                out[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                out[str(path)] = "dir"
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """An example dataset (task and rest, two subjects) and a copy of its fmriprep folder elsewhere."""
    tmp = tmp_path_factory.mktemp("safety")
    root = tmp / "ds"
    proc = _glmx("example", root, "--subjects", "2", "--rest")
    assert proc.returncode == 0, proc.stderr[-2000:]
    elsewhere = tmp / "preproc" / "fmriprep"
    shutil.copytree(root / "derivatives" / "fmriprep", elsewhere)
    return root, elsewhere


def _cases(root, elsewhere, tmp):
    """name: (argv, cwd). Every one writes into an input if glmx let it."""
    fmriprep = root / "derivatives" / "fmriprep"
    link = tmp / "link_to_fmriprep_sub"
    if not link.exists():
        link.symlink_to(fmriprep / "sub-01")
    link_out = tmp / "out_with_link"
    if not link_out.exists():
        link_out.mkdir()
        (link_out / "sub-01").symlink_to(fmriprep / "sub-01")
    one = ["--participant-label", "01", "--quiet"]
    work = ["--work-dir", tmp / "work"]
    return {
        "output_is_raw_bids": ([root, root, "participant", "--task", TASK, *one, *work], None),
        "output_inside_raw_bids": ([root, root / "sub-01" / "glmx", "participant", "--task", TASK, *one, *work],
                                   None),
        "output_is_derivatives_folder_of_raw_bids": ([root, root / "derivatives", "participant", "--task", TASK,
                                                      *one, *work], None),
        "output_is_found_fmriprep": ([root, fmriprep, "participant", "--task", TASK, *one, *work], None),
        "output_inside_found_fmriprep": ([root, fmriprep / "glmx", "participant", "--task", TASK, *one, *work],
                                         None),
        "output_is_given_derivatives": ([root, elsewhere, "participant", "--task", TASK, "--derivatives", elsewhere,
                                         *one, *work], None),
        "output_inside_given_derivatives": ([root, elsewhere / "sub-01" / "out", "participant", "--task", TASK,
                                             "--derivatives", elsewhere, *one, *work], None),
        "output_contains_raw_bids": ([root, root.parent, "participant", "--task", TASK, *one, *work], None),
        "output_contains_given_derivatives": ([root, elsewhere.parent.parent, "participant", "--task", TASK,
                                               "--derivatives", elsewhere, *one, *work], None),
        "output_through_symlink_into_fmriprep": ([root, link / "glmx", "participant", "--task", TASK, *one, *work],
                                                 None),
        "output_holding_symlink_into_fmriprep": ([root, link_out, "participant", "--task", TASK, *one, *work], None),
        "output_relative_into_fmriprep": (["ds", "ds/derivatives/fmriprep", "participant", "--task", TASK, *one,
                                           "--work-dir", "work"], root.parent),
        "work_dir_inside_fmriprep": ([root, tmp / "out", "participant", "--task", TASK, *one,
                                      "--work-dir", fmriprep / "work"], None),
        "work_dir_inside_raw_bids": ([root, tmp / "out", "participant", "--task", TASK, *one,
                                      "--work-dir", root / "code" / "work"], None),
        "work_dir_is_given_derivatives": ([root, tmp / "out", "participant", "--task", TASK, "--derivatives",
                                           elsewhere, *one, "--work-dir", elsewhere], None),
        "group_output_is_fmriprep": ([root, fmriprep, "group", "--task", TASK, *work], None),
        "rest_output_is_fmriprep": ([root, fmriprep, "participant", "--task", "rest", *one, *work], None),
        "rest_group_output_inside_raw_bids": ([root, root / "sub-02", "group", "--task", "rest", *work], None),
        "init_spec_into_fmriprep": (["init", root, "--spec", fmriprep / "task_information.json"], None),
        "init_spec_over_raw_description": (["init", root, "--spec", root / "dataset_description.json", "--force"],
                                           None),
        "example_into_fmriprep": (["example", fmriprep, "--subjects", "1"], None),
        "example_inside_given_derivatives": (["example", elsewhere / "ex", "--subjects", "1"], None),
    }


def test_nothing_is_written_into_any_input(dataset, tmp_path):
    root, elsewhere = dataset
    cases = _cases(root, elsewhere, tmp_path)
    before = _snapshot(root, elsewhere)
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(cases, pool.map(lambda case: _glmx(*case[0], cwd=case[1] or tmp_path), cases.values())))
    failures = []
    for name, proc in procs.items():
        lines = proc.stderr.strip().splitlines()
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit code {proc.returncode}")
        if len(lines) != 1 or not lines[0].startswith("glmx: error: ") or "refusing to write" not in lines[0]:
            problems.append(f"stderr is not one refusal line: {proc.stderr[-500:]!r}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)
    assert _snapshot(root, elsewhere) == before
    # refused before anything was written: no work directory, no OUTPUT_DIR
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link_to_fmriprep_sub", "out_with_link"]
    assert sorted(p.name for p in root.parent.iterdir()) == ["ds", "preproc"]


def test_a_folder_under_derivatives_is_allowed_and_inputs_stay_identical(dataset, tmp_path):
    """The default place, BIDS_DIR/derivatives/glmx, is not an input: the run writes there and nowhere else."""
    root0, _ = dataset
    root = tmp_path / "ds"
    shutil.copytree(root0, root, symlinks=True)
    before = _snapshot(root)
    out = root / "derivatives" / "glmx"
    proc = _glmx(root, out, "participant", "--task", TASK, "--participant-label", "01", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = _snapshot(root)
    written = {p for p in set(after) - set(before)}
    assert written and all(p.startswith((str(out), str(out) + "_work")) for p in written)
    assert {p: h for p, h in after.items() if p in before} == before


def _status(out):
    path = Path(out) / "logs" / f"task-{TASK}_status.json"
    return json.loads(path.read_text())["subjects"] if path.is_file() else {}


def _failed_cells(index):
    """Table cells the dataset index marks as failed."""
    return index.read_text().count('<td class="failed">')


def _wait_for_nodes(work, proc, timeout=120):
    """Block until the run has finished some node (its work directory holds a result file)."""
    start = time.time()
    while not any(Path(work).rglob("result_*.pklz")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < timeout, "the run did not start"
        time.sleep(0.1)


def test_ctrl_c_is_an_interruption_not_a_failure(dataset, tmp_path):
    root, _ = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _start(root, out, "participant", "--task", TASK, "--participant-label", "01", "--work-dir", work)
    _wait_for_nodes(work, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("glmx: interrupted"), err[-2000:]
    assert "failed" not in json.dumps(_status(out))
    index = out / "index.html"
    assert not index.exists() or _failed_cells(index) == 0
    # the lock went with the run, and no worker process was left behind writing
    assert not list(out.glob(".glmx.lock*")) and not list(work.glob(".glmx.lock*"))
    listing = _snapshot(out, work)
    time.sleep(1.0)
    assert _snapshot(out, work) == listing


def test_a_second_run_on_the_same_folders_is_refused_and_the_first_is_unharmed(dataset, tmp_path):
    root, _ = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    # both subjects: the first run must outlast three refused starts (about 2 s after its first node; one
    # subject left it under 2 s of margin)
    first = _start(root, out, "participant", "--task", TASK, "--work-dir", work, "--quiet")
    _wait_for_nodes(work, first)
    # the same OUTPUT_DIR with another work directory, and another OUTPUT_DIR with the same work directory
    others = [[root, out, "participant", "--task", TASK, "--participant-label", "02", "--quiet",
               "--work-dir", tmp_path / "work2"],
              [root, tmp_path / "out2", "participant", "--task", TASK, "--participant-label", "02", "--quiet",
               "--work-dir", work],
              [root, out, "group", "--task", TASK, "--work-dir", tmp_path / "work3"]]
    with ThreadPoolExecutor(max_workers=3) as pool:
        same_out, same_work, group = pool.map(lambda argv: _glmx(*argv), others)
    assert first.poll() is None, "the first run ended before the others were tried: nothing was tested"
    for proc, field in ((same_out, "OUTPUT_DIR"), (same_work, "--work-dir"), (group, "OUTPUT_DIR")):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and "another glmx run is using this folder" in lines[0] and field in lines[0], lines
        assert f"pid {first.pid}" in lines[0]
    # the refused runs wrote nothing: not even their own new folders
    assert not (tmp_path / "work2").exists() and not (tmp_path / "out2").exists()
    assert not (tmp_path / "work3").exists()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert _status(out) == {s: {"status": "done", "reason": "", "crash": ""} for s in ("01", "02")}
    assert _failed_cells(out / "index.html") == 0
    assert not list(out.glob(".glmx.lock*"))


def test_a_killed_run_does_not_lock_the_folder_forever(dataset, tmp_path):
    root, _ = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    args = [root, out, "participant", "--task", TASK, "--participant-label", "01", "--work-dir", work, "--quiet"]
    killed = _start(*args)
    _wait_for_nodes(work, killed)
    killed.kill()  # SIGKILL: nothing of glmx runs, the lock file stays
    killed.communicate(timeout=60)
    lock = json.loads((out / ".glmx.lock").read_text())
    assert lock["pid"] == killed.pid
    proc = _glmx(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _status(out) == {"01": {"status": "done", "reason": "", "crash": ""}}
    assert not (out / ".glmx.lock").exists()
