"""BIDS Stats Models benchmark: glmx against fitlins 0.11 on the same model and dataset, end to end.

The dataset is the one ``glmx example`` writes (4 subjects x 2 runs by default, seeded, cached in --data);
the model is ``tests/data/bsm/model-flanker_smdl.json`` (Run: Factor, Scale, Convolve, motion, fMRIPrep's
cosines, t/F/dummy contrasts; Subject: fixed effects; Dataset: one-sample t). Both sides are timed as
whole cold processes (Python start and imports included; empty work and output folders), interleaved
over --repeats, medians reported, each with BLAS/OpenMP pinned to one thread and one worker:

* ``glmx``    -- ``glmx BIDS OUT participant --model M --plugin Linear`` then
  ``glmx BIDS OUT group --model M --inference uncorrected --plugin Linear`` (maps, designs, reports);
* ``fitlins`` -- ``fitlins BIDS OUT dataset -m M -d derivatives/fmriprep --space MNI152NLin2009cAsym
  --n-cpus 1 -w WORK`` (every node of the model, its own reports), from its own virtual environment.

fitlins 0.11 no longer installs on a current stack; its venv was made as a new user would, with the pins
it needs (recorded here, and printed with the installed versions):

    python -m venv /tmp/fitlins-venv
    /tmp/fitlins-venv/bin/pip install "fitlins==0.11.0" "numpy<2" "pandas<3" "matplotlib<3.9"

Wall time and peak memory (the largest sum of resident set sizes over the process tree, sampled every
0.1 s from /proc) of each side are printed with the fitlins/glmx ratios. At the end the two sides'
dataset-level z maps are correlated, so that the timing compares the same analysis.

    python benchmarks/bsm.py [--data DIR] [--subjects 4] [--repeats 3] [--fitlins /tmp/fitlins-venv/bin/fitlins]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "data" / "bsm" / "model-flanker_smdl.json"
FITLINS_PINS = ("fitlins==0.11.0", "numpy<2", "pandas<3", "matplotlib<3.9")
SPACE = "MNI152NLin2009cAsym"


def _children(pid):
    """Every descendant pid of ``pid`` (from /proc/<pid>/task/*/children, else a /proc scan)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    kids += [int(k) for k in fh.read().split()]
        except OSError:
            pass
        out += kids
        todo += kids
    return out


def _rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(cmd, env):
    """Run ``cmd``; return (wall seconds, peak tree RSS in GB). A failure stops the benchmark.

    Output goes to a file, not a pipe: fitlins logs more than a pipe holds, and its workers would block
    writing to a pipe read only at the end.
    """
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, sum(_rss_kb(p) for p in [proc.pid, *_children(proc.pid)]))
            time.sleep(0.1)
        wall = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, peak / 1024**2


def run_glmx(bids, out, env):
    work = Path(str(out) + "_work")
    for d in (out, work):
        shutil.rmtree(d, ignore_errors=True)
    glmx = [sys.executable, "-m", "glmx_workflows.cli.run"]
    w1, m1 = timed([*glmx, str(bids), str(out), "participant", "--model", str(MODEL), "--plugin", "Linear",
                    "--quiet"], env)
    w2, m2 = timed([*glmx, str(bids), str(out), "group", "--model", str(MODEL), "--inference", "uncorrected",
                    "--plugin", "Linear"], env)
    return w1 + w2, max(m1, m2), {"participant": w1, "group": w2}


def run_fitlins(fitlins, bids, out, env):
    work = Path(str(out) + "_work")
    for d in (out, work):
        shutil.rmtree(d, ignore_errors=True)
    wall, mem = timed([fitlins, str(bids), str(out), "dataset", "-m", str(MODEL), "-d",
                       str(bids / "derivatives" / "fmriprep"), "--space", SPACE, "--n-cpus", "1", "-w", str(work)],
                      env)
    return wall, mem


def _versions(fitlins):
    py = Path(fitlins).parent / "python"
    code = ("import importlib.metadata as m; print(' '.join(f'{d}=={m.version(d)}' for d in "
            "('fitlins', 'pybids', 'nilearn', 'nipype', 'numpy', 'pandas', 'matplotlib')))")
    return subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()


def compare(glmx_out, fitlins_out):
    """Correlation and max |dz| of the two sides' dataset-level z maps of the incongruent > congruent contrast."""
    import nibabel as nb
    import numpy as np

    ours = next((glmx_out / "node-dataset").glob("*contrast-incongruentVsCongruent_stat-z_statmap.nii.gz"))
    theirs = sorted(fitlins_out.rglob("*node-dataset*/*contrast-incongruentVsCongruent*stat-z*_statmap.nii.gz")) \
        or sorted(fitlins_out.rglob("*contrast-incongruentVsCongruent*stat-z*_statmap.nii.gz"))
    theirs = [p for p in theirs if "sub-" not in p.name]
    if not theirs:
        return None
    a, b = nb.load(str(ours)).get_fdata(), nb.load(str(theirs[0])).get_fdata()
    inside = (a != 0) & (b != 0) & np.isfinite(b)
    return float(np.corrcoef(a[inside], b[inside])[0, 1]), float(np.abs(a - b)[inside].max()), theirs[0].name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "glmx-bsm-bench")
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fitlins", default="/tmp/fitlins-venv/bin/fitlins")
    args = p.parse_args(argv)

    from glmx_workflows.io.example import make_example_dataset

    bids = args.data / f"bids{args.subjects}"
    if not (bids / "dataset_description.json").is_file():
        make_example_dataset(bids, n_subjects=args.subjects, seed=0)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    fenv = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    print(f"dataset: {bids} ({args.subjects} subjects x 2 runs); model: {MODEL.name}")
    print(f"fitlins venv pins: {' '.join(FITLINS_PINS)}; installed: {_versions(args.fitlins)}")
    rows = {"glmx": [], "fitlins": []}
    for i in range(args.repeats):
        g = run_glmx(bids, args.data / "out-glmx", env)
        f = run_fitlins(args.fitlins, bids, args.data / "out-fitlins", fenv)
        rows["glmx"].append(g[:2])
        rows["fitlins"].append(f)
        print(f"repeat {i + 1}: glmx {g[0]:.1f} s (participant {g[2]['participant']:.1f} + group {g[2]['group']:.1f}), "
              f"{g[1]:.2f} GB; fitlins {f[0]:.1f} s, {f[1]:.2f} GB; ratio {f[0] / g[0]:.1f}x", flush=True)
    gw, gm = (statistics.median(x[k] for x in rows["glmx"]) for k in (0, 1))
    fw, fm = (statistics.median(x[k] for x in rows["fitlins"]) for k in (0, 1))
    print(f"\nmedian of {args.repeats}: glmx {gw:.1f} s, peak {gm:.2f} GB | fitlins {fw:.1f} s, peak {fm:.2f} GB")
    print(f"fitlins / glmx: wall {fw / gw:.1f}x, peak memory {fm / gm:.1f}x")
    same = compare(args.data / "out-glmx", args.data / "out-fitlins")
    if same:
        print(f"dataset-level z ({same[2]}): correlation {same[0]:.4f}, max |dz| {same[1]:.3f}")
    print(json.dumps({"glmx_s": gw, "glmx_gb": gm, "fitlins_s": fw, "fitlins_gb": fm, "ratio": fw / gw}))


if __name__ == "__main__":
    main()
