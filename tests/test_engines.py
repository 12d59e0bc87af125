"""The same two-subject dataset on a real Slurm and a real Grid Engine (started on localhost by
tools/cluster/*.sh, which .ci/run runs) gives the same outputs as MultiProc."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.io.example import make_example_dataset

SGE_ENV = {"SGE_ROOT": os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
           "SGE_CELL": os.environ.get("SGE_CELL", "default")}


def _answers(cmd, env=None):
    if shutil.which(cmd[0]) is None:
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10, env={**os.environ, **(env or {})}).returncode == 0
    except subprocess.TimeoutExpired:
        return False


SLURM_UP = _answers(["sinfo", "-h"])
SGE_UP = _answers(["qstat", "-f"], SGE_ENV)
needs = {
    "SLURM": pytest.mark.skipif(not SLURM_UP, reason="no Slurm answering here (start one: tools/cluster/slurm.sh)"),
    "SGE": pytest.mark.skipif(not SGE_UP, reason="no Grid Engine answering here (start one: tools/cluster/sge.sh)"),
}


def _glmx(root, out, *extra):
    env = {**os.environ, **SGE_ENV, "PYTHONWARNINGS": "ignore"}
    env.pop("LOGNAME", None)  # as in CI containers: the engine must cope without it
    return subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", str(root), str(out), "participant",
                           "--task", "flanker", "--quiet", "--work-dir", str(out) + "_work", *extra],
                          capture_output=True, text=True, env=env, cwd=Path(out).parent)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engines")
    root = tmp / "bids"
    make_example_dataset(root, n_subjects=2, n_runs=1, shape=(10, 12, 10), n_volumes=60, seed=12)
    out = tmp / "multiproc"
    proc = _glmx(root, out, "--plugin", "MultiProc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, out


def _files(out):
    return sorted(p.relative_to(out) for p in Path(out).rglob("*")
                  if p.is_file() and p.name.endswith((".nii.gz", ".tsv")))


def _same_outputs(a, b):
    assert _files(a) == _files(b) and _files(a)
    for rel in _files(a):
        if rel.name.endswith(".nii.gz"):
            x, y = nb.load(a / rel), nb.load(b / rel)
            assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)), rel
            assert np.array_equal(x.affine, y.affine), rel
        else:
            assert pd.read_csv(a / rel, sep="\t").equals(pd.read_csv(b / rel, sep="\t")), rel


@pytest.mark.parametrize("plugin", [
    pytest.param("SLURM", marks=needs["SLURM"]),
    pytest.param("SLURMGraph", marks=needs["SLURM"]),
    pytest.param("SGE", marks=needs["SGE"]),
    pytest.param("SGEGraph", marks=needs["SGE"]),
])
def test_cluster_outputs_equal_multiproc(reference, tmp_path, plugin):
    root, ref = reference
    out = tmp_path / plugin
    proc = _glmx(root, out, "--plugin", plugin, "--plugin-args", '{"max_jobs": 20}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 subject(s) done, 0 failed" in proc.stdout
    _same_outputs(ref, out)
    assert not list(tmp_path.glob("crash-*"))
    if plugin == "SLURM":
        # each job asked for the memory its node declared (nipype's plugin alone would not)
        jobs = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
        fits = [ln for ln in jobs.splitlines() if re.search(r"JobName=_?fit_glm", ln) and str(out) in ln]
        assert fits and all(re.search(r"MinMemoryNode=(\d+)M", ln) and
                            int(re.search(r"MinMemoryNode=(\d+)M", ln).group(1)) >= 300 for ln in fits), fits


@needs["SLURM"]
def test_graph_plugin_waits_and_reports_a_failing_subject(reference, tmp_path):
    root0, _ = reference
    root = tmp_path / "bids"
    shutil.copytree(root0, root)
    bold = next((root / "derivatives/fmriprep/sub-02/func").glob("*_desc-preproc_bold.nii.gz"))
    data = bold.read_bytes()
    bold.write_bytes(data[: len(data) // 2])  # header reads, data do not: fails inside fit_glm
    out = tmp_path / "out"
    proc = _glmx(root, out, "--plugin", "SLURMGraph")
    assert proc.returncode == 1, proc.stderr[-3000:]
    failed = [ln for ln in proc.stdout.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and "sub-02" in failed[0] and "[crash file: " in failed[0]
    assert len(list((out / "sub-01" / "func").glob("*_stat-z_statmap.nii.gz"))) > 3
    # nothing of ours is left in the queue (jobs behind the failed one were cancelled)
    queue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout.split()
    batch = (Path(str(out) + "_work") / "glmx_flanker" / "batch" / "submit_jobs.sh").read_text()
    assert not [j for j in queue if f" -J {j} " in batch]
