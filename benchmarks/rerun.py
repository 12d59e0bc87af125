"""A cached rerun of a 20-subject dataset with nothing changed: how long it takes, and that the engine
executed no modelling node (from nipype's own result files).

    python benchmarks/rerun.py [--subjects 20] [--n-procs 2]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glmx_workflows.engine import executed_nodes
from glmx_workflows.io.example import make_example_dataset

MODELLING = ("load_events", "select_confounds", "build_design", "fit_glm", "compute_contrasts", "fixed_effects")


def glmx(root, out, n_procs):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", str(root), str(out), "participant",
                           "--task", "flanker", "--quiet", "--n-procs", str(n_procs)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return start, time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--n-procs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_example_dataset(Path(tmp) / "bids", n_subjects=args.subjects, n_runs=2, shape=(23, 27, 23),
                                    n_volumes=140)
        out = Path(tmp) / "out"
        _, first = glmx(root, out, args.n_procs)
        start, again = glmx(root, out, args.n_procs)
        ran = [n for n in executed_nodes(str(out) + "_work", start) if any(f"/{m}" in f"/{n}" for m in MODELLING)]
        print(f"{args.subjects} subjects x 2 runs: first run {first:.1f} s, cached rerun {again:.1f} s "
              f"(ratio {first / again:.1f}x); modelling nodes executed on the rerun: {len(ran)}")


if __name__ == "__main__":
    main()
