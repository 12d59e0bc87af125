"""Reruns: a cached rerun of a 20-subject dataset with nothing changed (how long it takes, and that the
engine executed no modelling node, from nipype's own result files); with ``--contrast``, the example
dataset's first run against a rerun after adding one contrast to the spec and a no-op rerun.

    python benchmarks/rerun.py [--subjects 20] [--n-procs 2] [--repeats 3] [--dir DIR]
    python benchmarks/rerun.py --contrast [--n-procs 2] [--repeats 3]

With ``--contrast``, each repeat makes a fresh copy of the example dataset (``glmx example``: 4
subjects x 2 runs), runs it, adds the contrast ``incongruentOnly`` to task_information.json, runs
again, then runs once more with nothing changed; the ratios first / add-one-contrast and first / no-op
are printed (medians over the repeats). Only the new contrast's maps are computed and only its parts of
the subject reports drawn on the add-one-contrast rerun (the others come from the contrast parts and the
report's figure cache in the work directory).

The first run plans every subject, fits it and writes each subject's state record; a rerun with nothing
changed reads the records (no pybids indexing, no nipype workflow built) and only
rewrites the dataset index. ``--dir`` keeps the dataset and outputs in DIR (made once, reused by later
invocations: only the reruns are then timed).
"""

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glmx_workflows.engine.run import executed_nodes
from glmx_workflows.io.example import make_example_dataset

MODELLING = ("load_events", "select_confounds", "build_design", "fit_glm", "compute_contrasts", "fixed_effects")


def glmx(root, out, n_procs, cpu=None):
    start = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "glmx_workflows.cli.run", str(root), str(out), "participant",
                           "--task", "flanker", "--quiet", "--n-procs", str(n_procs)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:  # CPU seconds of the run and its workers: steadier than wall time on a shared machine
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
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


def add_contrast(spec_file, name="incongruentOnly", formula="incongruent"):
    spec = json.loads(Path(spec_file).read_text())
    spec["flanker"]["design_contrasts"][name] = formula
    Path(spec_file).write_text(json.dumps(spec, indent=2))


def bench_contrast(folder, n_procs, repeats):
    template = Path(folder) / "template"
    make_example_dataset(template)
    first, added, noop, counts = [], [], [], []
    cpu = {"first": [], "added": [], "noop": []}
    for i in range(repeats):
        root = Path(folder) / f"bids{i}"
        shutil.copytree(template, root)
        out = root / "derivatives" / "glmx"
        first.append(glmx(root, out, n_procs, cpu["first"])[1])
        add_contrast(root / "task_information.json")
        start, t = glmx(root, out, n_procs, cpu["added"])
        added.append(t)
        counts.append(len(executed_nodes(str(out) + "_work", start)))
        noop.append(glmx(root, out, n_procs, cpu["noop"])[1])
    f, a, n = (statistics.median(x) for x in (first, added, noop))
    cf, ca, cn = (statistics.median(cpu[k]) for k in ("first", "added", "noop"))
    print(f"example dataset (4 subjects x 2 runs, --n-procs {n_procs}), median of {repeats}:\n"
          f"  first run              {f:6.1f} s wall ({cf:5.1f} s CPU)\n"
          f"  add-one-contrast rerun {a:6.1f} s wall ({ca:5.1f} s CPU): {a / f:.2f} of the first run "
          f"({ca / cf:.2f} in CPU); nodes executed: {statistics.median(counts):.0f}\n"
          f"  no-op rerun            {n:6.2f} s wall ({cn:5.2f} s CPU): {n / f:.2f} of the first run\n"
          f"  wall times: first {', '.join(f'{t:.1f}' for t in first)}; added {', '.join(f'{t:.1f}' for t in added)}; "
          f"no-op {', '.join(f'{t:.2f}' for t in noop)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--n-procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="reruns timed (the median is reported)")
    ap.add_argument("--dir", type=Path, help="keep the dataset and outputs here and reuse them")
    ap.add_argument("--contrast", action="store_true",
                    help="the example dataset: first run vs add-one-contrast rerun vs no-op rerun")
    args = ap.parse_args()
    if args.contrast:
        with tempfile.TemporaryDirectory() as tmp:
            bench_contrast(tmp, args.n_procs, args.repeats)
    elif args.dir:
        bench(args.dir, args.subjects, args.n_procs, args.repeats)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            bench(tmp, args.subjects, args.n_procs, args.repeats)


if __name__ == "__main__":
    main()
