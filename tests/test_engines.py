"""glmx on a real Slurm and a real Grid Engine (one node on localhost, started by
tools/cluster/slurm.sh and tools/cluster/sge.sh, which .ci/run runs) against MultiProc.

The CLI runs of the module are started together and each test waits for its own: they spend most of
their time waiting for job scheduling and Python start-up, so running them one after another would
cost the sum of those waits. Without a scheduler the tests that need it skip and say why.
"""

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

REPO = Path(__file__).resolve().parents[1]
SGE_ENV = {"SGE_ROOT": os.environ.get("SGE_ROOT", "/var/lib/gridengine"),
           "SGE_CELL": os.environ.get("SGE_CELL", "default")}
ENV = {**os.environ, **SGE_ENV}  # for Grid Engine's tools; harmless to Slurm's


def _query(cmd):
    """(stdout, None) of a scheduler command, or (None, why it gave no answer)."""
    if shutil.which(cmd[0]) is None:
        return None, f"`{cmd[0]}` not found"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=ENV)
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(cmd)}` did not answer within 10 s"
    if proc.returncode != 0:
        return None, f"`{' '.join(cmd)}` failed: {' '.join((proc.stderr or proc.stdout).split())[:200]}"
    return proc.stdout, None


def _slurm_down():
    out, why = _query(["sinfo", "-h", "-o", "%n %T"])
    if why is None and not re.search(r"\b(idle|mixed|allocated)", out or ""):
        why = f"no Slurm node takes jobs (sinfo: {out.strip() or 'no nodes'})"
    return why


def _sge_down():
    out, why = _query(["qstat", "-f"])
    # a queue instance line ends in its states; a(larm), u(nknown), d(isabled), E(rror) take no jobs
    open_queues = [ln for ln in (out or "").splitlines()
                   if re.match(r"^\S+@\S+\s", ln) and not re.search(r"\s[a-zA-Z]*[audE][a-zA-Z]*\s*$", ln)]
    if why is None and not open_queues:
        why = "no Grid Engine queue instance takes jobs (qstat -f)"
    note = Path("/var/tmp/glmx-sge-setup.txt")  # left by tools/ci/setup.d/10-schedulers.sh when SGE failed
    if why is not None and note.is_file():
        lines = note.read_text(errors="replace").strip().splitlines()
        why += f"; CI setup could not start it: {lines[-1] if lines else '(no output)'}"
    return why


SLURM_DOWN = _slurm_down()
SGE_DOWN = _sge_down()
needs_slurm = pytest.mark.skipif(SLURM_DOWN is not None,
                                 reason=f"no Slurm here: {SLURM_DOWN} (start one: tools/cluster/slurm.sh start)")
needs_sge = pytest.mark.skipif(SGE_DOWN is not None,
                               reason=f"no Grid Engine here: {SGE_DOWN} (start one: tools/cluster/sge.sh start)")


def _start_glmx(root, out, *extra):
    env = {**ENV, "PYTHONWARNINGS": "ignore"}
    env.pop("LOGNAME", None)  # as in CI containers and cron: the engine must cope without it
    return subprocess.Popen([sys.executable, "-m", "glmx_workflows.cli.run", str(root), str(out), "participant",
                             "--task", "flanker", "--quiet", "--work-dir", str(out) + "_work", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(out).parent)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every CLI run of this module, started at once: {name: (Popen, output dir)}."""
    tmp = tmp_path_factory.mktemp("engines")
    root = tmp / "bids"
    make_example_dataset(root, n_subjects=2, n_runs=1, shape=(10, 12, 10), n_volumes=60, seed=12)
    broken = tmp / "bids_broken"
    shutil.copytree(root, broken)
    bold = next((broken / "derivatives/fmriprep/sub-02/func").glob("*_desc-preproc_bold.nii.gz"))
    # corrupt inside the gzip stream: the header and size read, the data do not, so it fails inside fit_glm
    # (a file cut short is refused while planning, before any job: see test_error_classes)
    data = bytearray(bold.read_bytes())
    data[len(data) // 2: len(data) // 2 + 2000] = bytes(2000)
    bold.write_bytes(bytes(data))
    plan = {"MultiProc": (root, ["--plugin", "MultiProc"])}
    if SLURM_DOWN is None:
        plan["SLURM"] = (root, ["--plugin", "SLURM", "--plugin-args", str(REPO / "configs/slurm.yml")])
        plan["SLURMGraph-broken"] = (broken, ["--plugin", "SLURMGraph", "--plugin-args",
                                              str(REPO / "configs/slurm.yml")])
    if SGE_DOWN is None:
        plan["SGE"] = (root, ["--plugin", "SGE", "--plugin-args", str(REPO / "configs/sge.yml")])
    started = {name: (_start_glmx(data_root, tmp / name, *args), tmp / name)
               for name, (data_root, args) in plan.items()}
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(runs, name):
    proc, out = runs[name]
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, stdout, stderr, out


def _files(out):
    return sorted(p.relative_to(out) for p in Path(out).rglob("*")
                  if p.is_file() and p.name.endswith((".nii.gz", ".tsv")))


def _assert_same(a, b, rel):
    if rel.name.endswith(".nii.gz"):
        x, y = nb.load(a / rel), nb.load(b / rel)
        assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj), equal_nan=True), rel
        assert np.array_equal(x.affine, y.affine), rel
    else:
        assert pd.read_csv(a / rel, sep="\t").equals(pd.read_csv(b / rel, sep="\t")), rel


def _reference(runs):
    code, stdout, stderr, out = _finish(runs, "MultiProc")
    assert code == 0, stderr[-3000:]
    return out


def _check_cluster_run(runs, name):
    ref = _reference(runs)
    code, stdout, stderr, out = _finish(runs, name)
    assert code == 0, stderr[-3000:]
    assert "2 subject(s) done, 0 failed" in stdout
    files = _files(out)
    assert files == _files(ref) and len(files) > 50
    for rel in files:
        _assert_same(ref, out, rel)
    # every job ran this Python (the same installation of glmx)
    scripts = list(Path(str(out) + "_work").rglob("batchscript_*.sh"))
    assert scripts and all(s.read_text().strip().splitlines()[-1].split()[0] == sys.executable for s in scripts)
    return out


def _probe(marker_name):
    import os
    import sys

    return [sys.executable, os.environ.get("OMP_NUM_THREADS"), os.environ.get(marker_name)]


def _after(value):
    import time

    time.sleep(1)  # finishes well after the plugin has returned from submitting
    return value


def _fail(value):
    raise ValueError("planted failure")


@pytest.mark.parametrize("plugin", [pytest.param("SLURMGraph", marks=needs_slurm),
                                    pytest.param("SGEGraph", marks=needs_sge)])
def test_graph_plugin_jobs(runs, tmp_path, monkeypatch, plugin):
    """Through engine.run_workflow: the Graph plugins are waited for, report a failing job like the
    other plugins, and their jobs run this Python with this environment and BLAS threads pinned to
    the node's n_procs. (``runs`` only starts the module's CLI runs, so that they go on meanwhile.)"""
    from nipype.interfaces.utility import Function
    from nipype.pipeline import engine as pe
    from nipype.pipeline.engine.utils import load_resultfile

    from glmx_workflows.core.errors import GlmxError
    from glmx_workflows.engine.run import configure, run_workflow

    monkeypatch.delenv("LOGNAME", raising=False)
    for name, value in SGE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GLMX_ENGINE_PROBE", plugin)
    wf = pe.Workflow(name="probe_wf")
    probe = pe.Node(Function(input_names=["marker_name"], output_names=["seen"], function=_probe),
                    name="probe", n_procs=2, mem_gb=0.3)
    probe.inputs.marker_name = "GLMX_ENGINE_PROBE"
    after = pe.Node(Function(input_names=["value"], output_names=["value"], function=_after), name="after")
    fail = pe.Node(Function(input_names=["value"], output_names=["value"], function=_fail), name="fail")
    behind = pe.Node(Function(input_names=["value"], output_names=["value"], function=_after), name="behind_fail")
    wf.connect([(probe, after, [("seen", "value")]), (probe, fail, [("seen", "value")]),
                (fail, behind, [("value", "value")])])
    crash_dir = configure(wf, tmp_path / "work", plugin=plugin)
    args = {"sbatch_args": "--time=00:10:00"} if plugin == "SLURMGraph" else {"qsub_args": "-S /bin/bash"}
    with pytest.raises(GlmxError, match="planted failure") as err:
        run_workflow(wf, plugin, args)
    assert str(crash_dir) in str(err.value) and crash_dir == tmp_path / "work" / "crash"
    assert os.environ["LOGNAME"]
    node_dir = tmp_path / "work" / "probe_wf"
    executable, omp, marker = load_resultfile(next((node_dir / "probe").glob("result_*.pklz"))).outputs.seen
    assert (executable, omp, marker) == (sys.executable, "2", plugin)
    assert load_resultfile(next((node_dir / "after").glob("result_*.pklz"))).outputs.value[2] == plugin
    assert not _queued_scripts(plugin, node_dir / "batch")


def _queued_scripts(plugin, batch):
    """Batch scripts under ``batch`` of jobs still in the queue."""
    if plugin.startswith("SLURM"):
        scripts = subprocess.run(["squeue", "-h", "-o", "%o"], capture_output=True, text=True).stdout.split()
    else:
        ids = re.findall(r"<JB_job_number>(\d+)<", subprocess.run(["qstat", "-xml"], capture_output=True,
                                                                  text=True, env=ENV).stdout)
        detail = subprocess.run(["qstat", "-xml", "-j", ",".join(ids)], capture_output=True, text=True,
                                env=ENV).stdout if ids else ""
        scripts = re.findall(r"<JB_script_file>(.*?)</JB_script_file>", detail)
    return [s for s in scripts if s.startswith(str(batch))]


@needs_slurm
def test_slurm_outputs_equal_multiproc(runs):
    out = _check_cluster_run(runs, "SLURM")
    # each fit job asked for the memory and cores its node declared (nipype's plugin alone would not)
    jobs = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    fits = [ln for ln in jobs.splitlines() if "fit_glm" in ln and str(out) + "_work" in ln]
    assert len(fits) == 2, fits
    for ln in fits:
        assert int(re.search(r"MinMemoryNode=(\d+)M", ln).group(1)) >= 300, ln
        assert re.search(r"NumCPUs=1\b", ln), ln


@needs_sge
def test_sge_outputs_equal_multiproc(runs):
    _check_cluster_run(runs, "SGE")


@needs_slurm
def test_slurmgraph_waits_and_reports_the_failing_subject(runs):
    """SLURMGraph returns once every job has left the queue: sub-01's outputs are all there and equal
    MultiProc's, sub-02's broken BOLD run is named in the summary with its crash file, and the jobs
    that depended on its fit (which Slurm would keep pending forever) were cancelled."""
    ref = _reference(runs)
    code, stdout, stderr, out = _finish(runs, "SLURMGraph-broken")
    assert code == 1, stderr[-3000:]
    failed = [ln for ln in stdout.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and "sub-02" in failed[0], stdout
    crash = re.search(r"\[crash file: (.+?)\]", failed[0]).group(1)
    assert Path(crash).is_file() and Path(crash).parent == Path(str(out) + "_work") / "crash"
    sub01 = [rel for rel in _files(ref) if rel.parts[0] == "sub-01"]
    assert sub01 and [rel for rel in _files(out) if rel.parts[0] == "sub-01"] == sub01
    for rel in sub01:
        _assert_same(ref, out, rel)
    assert not _queued_scripts("SLURM", Path(str(out) + "_work") / "glmx_flanker" / "batch")


def test_configs_parse_to_plugin_arguments():
    """configs/*.yml are what --plugin-args reads: nipype's keys plus glmx's own, nothing else."""
    from glmx_workflows.engine.cluster import job_requests, parse_plugin_args, prepare_plugin

    slurm = parse_plugin_args(str(REPO / "configs/slurm.yml"))
    sge = parse_plugin_args(str(REPO / "configs/sge.yml"))
    assert set(slurm) == {"sbatch_args", "max_jobs", "dont_resubmit_completed_jobs"}
    assert set(sge) == {"qsub_args", "max_jobs", "memory_resource", "parallel_environment",
                        "dont_resubmit_completed_jobs"}
    assert "memory_resource" not in prepare_plugin("SGE", sge)
    assert job_requests(1.5, 4, "SLURM", slurm).split() == [
        "--mem=1536M", "--cpus-per-task=4", "--export=ALL,OMP_NUM_THREADS=4,OPENBLAS_NUM_THREADS=4,MKL_NUM_THREADS=4"]
    site = {**sge, "memory_resource": "h_vmem", "parallel_environment": "smp"}
    assert job_requests(1.5, 4, "SGE", site).split() == [
        "-l", "h_vmem=1.50G", "-pe", "smp", "4", "-v", "OMP_NUM_THREADS=4,OPENBLAS_NUM_THREADS=4,MKL_NUM_THREADS=4"]


@pytest.mark.parametrize("plugin", [pytest.param("SLURMGraph", marks=needs_slurm),
                                    pytest.param("SGEGraph", marks=needs_sge)])
def test_interrupted_cluster_run_cancels_its_jobs(tmp_path, plugin):
    """Ctrl-C while a Graph plugin's jobs are queued: glmx exits 130, says which jobs it cancelled, and no job
    of its batch folder is left in the queue (they would go on writing into the work directory)."""
    import signal
    import time

    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=1, shape=(8, 10, 8), n_volumes=40, seed=13)
    out = tmp_path / "out"
    config = REPO / "configs" / ("slurm.yml" if plugin.startswith("SLURM") else "sge.yml")
    proc = _start_glmx(root, out, "--plugin", plugin, "--plugin-args", str(config))
    batch = Path(str(out) + "_work") / "glmx_flanker" / "batch"
    try:
        deadline = time.monotonic() + 180
        while not _queued_scripts(plugin, batch):
            assert proc.poll() is None and time.monotonic() < deadline, "no job of the run was ever queued"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    line = [ln for ln in stderr.splitlines() if ln.startswith("glmx: interrupted")]
    assert line and re.search(r"\d+ cluster job\(s\) of this run cancelled", line[0]), stderr[-2000:]
    deadline = time.monotonic() + 60
    while _queued_scripts(plugin, batch) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _queued_scripts(plugin, batch)
