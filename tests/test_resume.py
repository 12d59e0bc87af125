"""Kill -9 in the middle of a dataset run, run the same command again: it completes, recomputes only
what had not finished, and the outputs equal those of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from glmx_workflows.engine.run import executed_nodes, finished_nodes
from glmx_workflows.io.atomic import TMP_PREFIX
from glmx_workflows.io.example import make_example_dataset

# nodes that run on every invocation by design (they copy only what differs)
ALWAYS = ("ds_", "gather_outputs", "report")


def _command(root, out):
    return [sys.executable, "-m", "glmx_workflows.cli.run", str(root), str(out), "participant", "--task",
            "flanker", "--quiet", "--n-procs", "2", "--work-dir", str(out) + "_work"]


def _modelling(nodes):
    return {n for n in nodes if not any(Path(n).parts[2].startswith(a) for a in ALWAYS if len(Path(n).parts) > 2)}


def _published(out):
    return sorted(p.relative_to(out) for p in Path(out).rglob("*") if p.is_file() and p.suffix in (".gz", ".tsv"))


def _equal(a, b):
    if a.name.endswith(".nii.gz"):
        x, y = nb.load(a), nb.load(b)
        return np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)) and np.allclose(x.affine, y.affine)
    return pd.read_csv(a, sep="\t").equals(pd.read_csv(b, sep="\t"))


def test_kill_then_resume(tmp_path):
    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=3, n_runs=2, shape=(18, 22, 18), n_volumes=120, seed=5)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    reference = tmp_path / "reference"
    done = subprocess.run(_command(root, reference), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "out"
    work = Path(str(out) + "_work")
    proc = subprocess.Popen(_command(root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    # kill as soon as the first GLM fit has saved its result: the rest of the dataset is still to do, and
    # the kill may fall between nipype's result file and its finished hash file (that node must rerun)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(work.rglob("result_fit_glm*.pklz")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished_nodes(work)
    total = finished_nodes(Path(str(reference) + "_work"))
    assert 0 < len(_modelling(before)) < len(_modelling(total))

    # whatever is under a published name after the kill is complete
    for path in _published(out):
        assert _equal(out / path, reference / path), path

    time.sleep(0.05)
    start = time.time()
    again = subprocess.run(_command(root, out), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    rerun = _modelling(executed_nodes(work, start))
    assert rerun, "the resumed run executed nothing"
    assert not rerun & _modelling(before), f"finished nodes ran again: {sorted(rerun & _modelling(before))}"
    assert _modelling(before) | rerun == _modelling(total)

    assert _published(out) == _published(reference)
    for path in _published(reference):
        assert _equal(out / path, reference / path), path
    assert not list(out.rglob(f"{TMP_PREFIX}*"))


def _double(x):
    return 2 * x


def test_a_node_killed_between_result_and_hash_file_is_not_finished(tmp_path):
    """nipype writes the result file before it marks the hash file finished; a kill in between leaves a
    node that nipype reruns, and ``finished_nodes`` must agree with nipype about it."""
    from nipype import Node, Workflow
    from nipype.interfaces.utility import Function

    def workflow():
        wf = Workflow("wf", base_dir=str(tmp_path))
        node = Node(Function(input_names=["x"], output_names=["y"], function=_double), name="double")
        node.inputs.x = 3
        wf.add_nodes([node])
        return wf

    workflow().run()
    assert finished_nodes(tmp_path) == {"wf/double"}

    (hashfile,) = (tmp_path / "wf" / "double").glob("_0x*.json")
    hashfile.rename(hashfile.with_name(hashfile.stem + "_unfinished.json"))
    assert (tmp_path / "wf" / "double" / "result_double.pklz").is_file()
    assert finished_nodes(tmp_path) == set()

    time.sleep(0.05)
    start = time.time()
    workflow().run()
    assert executed_nodes(tmp_path, start) == ["wf/double"]
    assert finished_nodes(tmp_path) == {"wf/double"}
