"""Participant benchmark: where the time of a whole ``glmx BIDS OUT participant`` run goes.

Writes (seeded, cached in --data) the simulated flanker dataset of ``glmx example`` at a moderate size
(default one subject, two runs of 200 volumes on a 48x56x48 grid, ~4 mm voxels), then runs the CLI cold
(a fresh process, empty work and output folders; nothing cached but the OS page cache) with the Linear
plugin, so that node runtimes add up, and splits its wall time into:

* ``start+imports``  -- Python start and the imports a run needs (glmx's facades, nilearn, pybids, nipype),
  timed in its own cold process;
* ``bids index``     -- pybids ``BIDSLayout`` of the raw dataset + fmriprep derivatives (own cold process);
* ``planning``       -- the per-subject checks before any node runs (events, confounds, designs, contrasts);
* ``other setup``    -- the rest until the first node starts (spec, workflow construction, nipype start);
* node categories from the runtimes nipype stores in every node's ``result_*.pklz``: ``design``
  (events, confounds, design matrices), ``read+fit``, ``contrasts+maps`` (contrasts, fixed effects and
  writing their NIfTI maps), ``publish`` (copying outputs into OUTPUT_DIR), ``report`` (figures + HTML);
* ``nipype overhead`` -- between the first node's start and the last node's end, the time in no node
  (hashing inputs, writing result files, scheduling);
* ``after engine``   -- from the last node's end to the process exit: the dataset's index.html and the
  summary (tens of ms), then the interpreter's teardown (~0.8 s for a run that loaded nilearn, pybids,
  nipype and matplotlib; ``os._exit`` after flushing would skip it).

``benchmarks/end_to_end.py`` reuses :func:`measure` and ``ROWS`` for its breakdown.

Medians of --repeats runs. Not a test: ``python benchmarks/participant.py`` (takes a few minutes).

    python benchmarks/participant.py [--data DIR] [--repeats 3] [--shape 48 56 48] [--volumes 200]
                                     [--runs 2] [--subjects 1] [--plugin Linear]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

CATEGORIES = {  # node name -> category
    "load_events": "design", "select_confounds": "design", "build_design": "design",
    "fit_glm": "read+fit", "compute_contrasts": "contrasts+maps", "fixed_effects": "contrasts+maps",
    "ds_outputs": "publish", "ds_design": "publish", "ds_run_maps": "publish", "ds_subject_maps": "publish",
    "ds_report": "publish",
    "gather_outputs": "publish", "report": "report",
}
ROWS = ["start+imports", "bids index", "planning", "other setup", "design", "read+fit", "contrasts+maps",
        "publish", "report", "other nodes", "nipype overhead", "after engine"]


def generate(data_dir, subjects, runs, shape, volumes):
    """Write the example dataset once per parameter set; return its root."""
    from glmx_workflows.io.example import make_example_dataset

    params = {"subjects": subjects, "runs": runs, "shape": list(shape), "volumes": volumes, "seed": 0}
    root = Path(data_dir) / "bids"
    stamp = Path(data_dir) / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params and root.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    make_example_dataset(root, n_subjects=subjects, n_runs=runs, shape=tuple(shape), n_volumes=volumes, seed=0)
    stamp.write_text(json.dumps(params))
    return root


# ---------------------------------------------------------------------------------------------- children
def _child_setup(bids_root, task, out):
    """Cold timings of the imports, the pybids index and the planning of every subject."""
    t0 = time.perf_counter()
    # what a participant run imports before its first node: the facades (nilearn, pandas, scipy),
    # pybids, nipype's engine and the workflow builders
    import bids  # noqa: F401
    import nipype.pipeline.engine  # noqa: F401

    import glmx_workflows.api  # noqa: F401
    import glmx_workflows.cli.run  # noqa: F401
    import glmx_workflows.workflows.first_level  # noqa: F401
    from glmx_workflows.api.base import default_spec_path
    from glmx_workflows.io.bids import list_subjects, open_layout
    from glmx_workflows.planning import plan_subject
    from glmx_workflows.spec.model import load_spec, subject_settings, task_entry

    t1 = time.perf_counter()
    layout = open_layout(bids_root)
    subjects = list_subjects(layout)
    t2 = time.perf_counter()
    spec_path = default_spec_path(bids_root)
    entry = task_entry(load_spec(spec_path), task, spec_path)
    for sub in subjects:
        if sub not in entry["excludes"]:
            plan_subject(layout, entry, subject_settings(entry, sub))
    t3 = time.perf_counter()
    Path(out).write_text(json.dumps({"imports": t1 - t0, "index": t2 - t1, "planning": t3 - t2}))


def _python_start():
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


def _node_times(work_dir):
    """(category totals in s, first start, last end) from every executed node's result file."""
    from nipype.utils.filemanip import loadpkl

    totals, starts, ends = {}, [], []
    for res in Path(work_dir).rglob("result_*.pklz"):
        if (res.parent / "mapflow").is_dir():
            continue  # a MapNode's own result repeats its subnodes' runtimes
        runtime = loadpkl(str(res)).runtime
        node = res.parent.name
        if res.parent.parent.name == "mapflow":  # <node>/mapflow/_<node><i>
            node = res.parent.parent.parent.name
        cat = CATEGORIES.get(node, "other nodes")
        totals[cat] = totals.get(cat, 0.0) + float(runtime.duration)
        starts.append(datetime.fromisoformat(runtime.startTime).timestamp())
        ends.append(datetime.fromisoformat(runtime.endTime).timestamp())
    return totals, min(starts), max(ends)


def measure(bids_root, task, plugin, n_procs, scratch):
    """One cold CLI run plus the cold setup timings; returns {row: seconds} and the total."""
    setup_out = scratch / "setup.json"
    subprocess.run([sys.executable, __file__, "--child-setup", str(bids_root), "--task", task,
                    "--out", str(setup_out)], check=True)
    setup = json.loads(setup_out.read_text())
    start = _python_start()
    out_dir, work_dir = scratch / "out", scratch / "work"
    cmd = [sys.executable, "-m", "glmx_workflows.cli.run", str(bids_root), str(out_dir), "participant",
           "--task", task, "--work-dir", str(work_dir), "--plugin", plugin, "--quiet"]
    if plugin == "MultiProc":
        cmd += ["--n-procs", str(n_procs)]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    t1 = time.time()
    totals, first, last = _node_times(work_dir)
    in_nodes = sum(totals.values())
    rows = {"start+imports": start + setup["imports"], "bids index": setup["index"], "planning": setup["planning"]}
    rows["other setup"] = max(first - t0 - sum(rows.values()), 0.0)
    for cat in ROWS[4:10]:
        rows[cat] = totals.get(cat, 0.0)
    # with a parallel plugin nodes overlap: the overhead is then the span not covered by any node
    rows["nipype overhead"] = max((last - first) - in_nodes, 0.0) if plugin == "Linear" else float("nan")
    rows["after engine"] = t1 - last
    n_maps = sum(1 for _ in out_dir.rglob("*_statmap.nii.gz"))
    return rows, t1 - t0, n_maps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "glmx_bench_participant"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 56, 48])
    ap.add_argument("--volumes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--subjects", type=int, default=1)
    ap.add_argument("--plugin", default="Linear", choices=["Linear", "MultiProc"])
    ap.add_argument("--n-procs", type=int, default=2)
    ap.add_argument("--task", default="flanker")
    ap.add_argument("--child-setup")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child_setup:
        return _child_setup(a.child_setup, a.task, a.out)

    t = time.perf_counter()
    root = generate(a.data, a.subjects, a.runs, a.shape, a.volumes)
    import nibabel as nb
    import numpy as np

    bold = sorted(root.rglob("*_desc-preproc_bold.nii.gz"))[0]
    mask = sorted(root.rglob("*_desc-brain_mask.nii.gz"))[0]
    n_vox = int((np.asarray(nb.load(str(mask)).dataobj) > 0).sum())
    print(f"dataset ready in {time.perf_counter() - t:.1f} s: {a.subjects} subject(s) x {a.runs} run(s) of "
          f"{a.volumes} volumes, grid {tuple(a.shape)}, {n_vox} in-mask voxels, "
          f"{bold.stat().st_size / 1e6:.1f} MB per run; plugin {a.plugin}; cpus {os.cpu_count()}")
    results, walls = [], []
    for rep in range(a.repeats):
        with tempfile.TemporaryDirectory(dir=a.data) as scratch:
            rows, wall, n_maps = measure(root, a.task, a.plugin, a.n_procs, Path(scratch))
        results.append(rows)
        walls.append(wall)
        print(f"  rep {rep}: {wall:6.2f} s, {n_maps} maps  "
              + "  ".join(f"{k} {v:.2f}" for k, v in rows.items()), flush=True)
    wall = statistics.median(walls)
    print(f"\nmedians of {a.repeats} cold runs: participant run {wall:.2f} s wall")
    print(f"{'part':17s} {'s':>7s} {'share':>6s}")
    summary = {"wall": wall}
    for row in ROWS:
        vals = [r[row] for r in results]
        med = float("nan") if any(v != v for v in vals) else statistics.median(vals)
        summary[row] = med
        print(f"{row:17s} {med:7.2f} {med / wall:6.1%}")
    accounted = sum(v for k, v in summary.items() if k != "wall" and v == v)
    print(f"{'(sum of parts)':17s} {accounted:7.2f} {accounted / wall:6.1%}  ('other setup' is the remainder "
          "before the first node: the first three rows are timed in separate cold processes)")
    Path(a.data, "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
