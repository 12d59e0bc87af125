"""A cached rerun of a 20-subject dataset with nothing changed: how long it takes, and that the engine
executed no modelling node (from nipype's own result files).

    python benchmarks/rerun.py [--subjects 20] [--n-procs 2] [--repeats 3] [--dir DIR]

The first run plans every subject, fits it and writes each subject's state record; a rerun with nothing
changed reads the records (no pybids indexing, no nipype workflow built) and only
rewrites the dataset index. ``--dir`` keeps the dataset and outputs in DIR (made once, reused by later
invocations: only the reruns are then timed).
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glmx_workflows.engine.run import executed_nodes
from glmx_workflows.io.example import make_example_dataset

MODELLING = ("load_events", "select_confounds", "build_design", "fit_glm", "compute_contrasts", "fixed_effects")


def glmx(root, out, n_procs):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", str(root), str(out), "participant",
                           "--task", "flanker", "--quiet", "--n-procs", str(n_procs)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return start, time.time() - start


def bench(folder, subjects, n_procs, repeats):
    root, out = Path(folder) / "bids", Path(folder) / "out"
    first = None
    if not (root / "dataset_description.json").is_file():
        make_example_dataset(root, n_subjects=subjects, n_runs=2, shape=(23, 27, 23), n_volumes=140)
    if not out.is_dir():
        _, first = glmx(root, out, n_procs)
    times, ran, modelling = [], set(), set()
    for _ in range(repeats):
        start, again = glmx(root, out, n_procs)
        times.append(again)
        nodes = executed_nodes(str(out) + "_work", start)
        ran.update(nodes)
        modelling.update(n for n in nodes if any(f"/{m}" in f"/{n}" for m in MODELLING))
    again = statistics.median(times)
    head = f"{subjects} subjects x 2 runs: " + (f"first run {first:.1f} s, " if first is not None else "")
    print(head + f"cached rerun {again:.2f} s (median of {repeats}: {', '.join(f'{t:.2f}' for t in times)})"
          + (f", ratio {first / again:.0f}x" if first is not None else "")
          + f"; modelling nodes executed on the reruns: {len(modelling)} (nodes of any kind: {len(ran)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--n-procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="reruns timed (the median is reported)")
    ap.add_argument("--dir", type=Path, help="keep the dataset and outputs here and reuse them")
    args = ap.parse_args()
    if args.dir:
        bench(args.dir, args.subjects, args.n_procs, args.repeats)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bench(tmp, args.subjects, args.n_procs, args.repeats)


if __name__ == "__main__":
    main()
