"""Single-trial benchmark on surfaces: LSS on one fsLR den-91k CIFTI run, glmx against a loop of nilearn fits.

The run is surface.py's (generated once, seeded, cached in --data): 91,282 grayordinates × --volumes, float32
``.dtseries.nii``, 12 confounds. The single-trial model has 60 trials in 2 conditions (2 s, one every ~9 s,
seeded), the 12 confounds, cosine drifts, ar1. Each side runs in a fresh process (BLAS pinned to --threads),
interleaved over --repeats:

* ``read``    -- the anchor: the CIFTI's data into a float32 (time × grayordinates) array;
* ``glmx``    -- what the ``single_trial`` node does on a CIFTI run: ``io.geometry.read_run`` (read + percent
  signal change), the trial regressors, ``core.single_trial.fit_lss`` (ar1, all 60 trials) and
  ``io.map_series.write_series`` (one ``.dscalar.nii`` of 30 named maps per condition);
* ``nilearn`` -- the same read and nilearn's ``mean_scaling``, then per trial (the first --subset only) a design
  by ``make_first_level_design_matrix`` with that trial renamed, ``run_glm(noise_model="ar1")`` and the trial's
  ``compute_contrast(...).effect_size()``; the loop's time is the median per trial × 60 (scaled).

Prints wall times after imports, peak RSS, the ratios (nilearn loop / glmx; glmx / read) and the largest
|beta difference| of the subset trials relative to each map's SD. Not a test: it takes minutes.

    python benchmarks/surface_single_trial.py [--data DIR] [--repeats 1] [--subset 2] [--volumes 300] [--threads 1]
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import surface  # noqa: E402  (the CIFTI run generator, shared)

TR = surface.TR
N_TRIALS = 60
THREADS = 1


def _confounds(design):
    import pandas as pd

    return pd.read_csv(design, sep="\t").filter(like="conf")


def _child(what, bold, design, out, subset):
    events = harness.trial_events(surface_volumes(bold), TR, N_TRIALS, duration=2.0, conditions=("a", "b"))
    conf = _confounds(design)
    n = len(conf)
    betas = None
    if what == "read":
        import nibabel as nb

        t0 = time.perf_counter()
        Y = np.array(np.asanyarray(nb.load(bold).dataobj), dtype=np.float32, order="K")
    elif what == "glmx":
        from glmx_workflows.core import single_trial as st
        from glmx_workflows.core.design import build_design, frame_times
        from glmx_workflows.io.geometry import read_run
        from glmx_workflows.io.map_series import write_series

        t0 = time.perf_counter()
        ev = events.assign(modulation=1.0)
        Y, _, geometry = read_run(bold, bold)  # as the single_trial node reads a CIFTI run
        main = build_design(ev, conf, n, TR, "glover")
        trials, _ = st.trial_table(ev)
        nuisance = st.nuisance_columns(main, sorted(set(trials.trial_type)))
        raw = st.raw_trial_regressors(trials.onset, trials.duration, frame_times(n, TR), TR, "glover")
        groups, _ = st.trial_groups(trials, "condition")
        fitted = st.fit_lss(Y, raw, groups, nuisance.to_numpy(float), noise_model="ar1")
        del Y
        for cond in sorted(set(trials.trial_type)):
            rows = np.flatnonzero((trials.trial_type == cond).to_numpy())
            write_series(geometry, fitted[rows], f"{out}_{cond}", [f"trial-{i + 1:03d}" for i in range(len(rows))])
        # betas of the original events' first trials, for the comparison
        order = {(o, c): i for i, (o, c) in enumerate(zip(trials.onset, trials.trial_type))}
        betas = np.stack([fitted[order[(o, c)]] for o, c in zip(events.onset[:subset], events.trial_type[:subset])])
    else:
        import nibabel as nb
        from nilearn.glm.contrasts import compute_contrast
        from nilearn.glm.first_level import make_first_level_design_matrix, run_glm
        from nilearn.glm.first_level.first_level import mean_scaling

        t0 = time.perf_counter()
        Y = np.array(np.asanyarray(nb.load(bold).dataobj), dtype=np.float32, order="K")
        Y, _ = mean_scaling(Y)
        per_trial, out_betas = [], []
        for i in range(subset):
            t1 = time.perf_counter()
            ev = events.copy()
            ev.loc[i, "trial_type"] = "zztrial"
            X = make_first_level_design_matrix(np.arange(n) * TR, ev, hrf_model="glover", drift_model="cosine",
                                               high_pass=0.01, add_regs=conf.to_numpy(), add_reg_names=list(conf.columns))
            labels, results = run_glm(Y, X.to_numpy(), noise_model="ar1")
            out_betas.append(compute_contrast(labels, results, (X.columns == "zztrial").astype(float)).effect_size())
            per_trial.append(time.perf_counter() - t1)
        betas = np.stack(out_betas)
    seconds = time.perf_counter() - t0
    if what == "nilearn":  # the read and scaling once, then the loop scaled to every trial
        seconds = seconds - sum(per_trial) + statistics.median(per_trial) * N_TRIALS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    if betas is not None:
        np.save(out + ".npy", betas.astype(np.float64))
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "peak_gb": peak}))


def surface_volumes(bold):
    import nibabel as nb

    return nb.load(bold).shape[0]


def _run_child(what, paths, out, subset):
    return harness.run_child(__file__, [what, "--bold", paths["bold"], "--design", paths["design"], "--subset", subset],
                             out, THREADS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "glmx_bench_surface"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--subset", type=int, default=2)
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    harness.child_arguments(ap)
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    if a.child:
        return _child(a.child, a.bold, a.design, a.out, a.subset)
    paths = surface.generate(a.data, a.volumes)
    outdir = Path(a.data) / "single_trial_runs"
    outdir.mkdir(exist_ok=True)
    results = {}
    for rep in range(a.repeats):
        for what in ("read", "glmx", "nilearn"):
            r = _run_child(what, paths, str(outdir / f"{what}_{rep}"), a.subset)
            results.setdefault(what, []).append(r)
            print(f"  rep {rep} {what:8s} {r['seconds']:8.2f} s  peak {r['peak_gb']:.2f} GB", flush=True)
    med = {w: statistics.median(r["seconds"] for r in results[w]) for w in results}
    peak = {w: max(r["peak_gb"] for r in results[w]) for w in results}
    ours, ref = np.load(outdir / "glmx_0.npy"), np.load(outdir / "nilearn_0.npy")
    rel = max(float(np.max(np.abs(o - r)) / r.std()) for o, r in zip(ours, ref))
    print(f"\nLSS, {N_TRIALS} trials, 91k grayordinates x {a.volumes} volumes; medians of {a.repeats} cold run(s), "
          f"{THREADS} BLAS thread(s); nilearn's loop timed on {a.subset} trial(s), scaled to {N_TRIALS}")
    print(f"{'read s':>7s} {'glmx s':>7s} {'nilearn s':>9s} {'glmx/read':>9s} {'nilearn/glmx':>12s} "
          f"{'glmx GB':>7s} {'nilearn GB':>10s} {'max|db|/sd':>10s}")
    print(f"{med['read']:7.2f} {med['glmx']:7.2f} {med['nilearn']:9.1f} {med['glmx'] / med['read']:9.2f} "
          f"{med['nilearn'] / med['glmx']:12.1f} {peak['glmx']:7.2f} {peak['nilearn']:10.2f} {rel:10.1e}")


if __name__ == "__main__":
    main()
