"""Single-trial benchmark: glmx LSS (and LSA) against a loop of nilearn FirstLevelModel fits, one per trial.

The run is first_level.py's (generated once, seeded, cached in --data): 97x115x97 voxels (MNI 2 mm), 300
volumes, float32 .nii.gz, ~230k in-mask voxels, AR(1) noise, 12 confounds. The single-trial model here has
60 trials in 2 conditions (1 s, one every ~9.7 s, seeded), the 12 confounds, cosine drifts, ar1. Each side
runs in a fresh process (BLAS pinned to --threads), interleaved over --repeats:

* ``fit``     -- the anchor: read + percent signal change + ``core.glm.fit_glm`` (ar1) of the run's ordinary
  first-level design (one regressor per condition): what one first-level fit of this run costs;
* ``lss``     -- read + percent signal change + the trial-wise designs + ``core.single_trial.fit_lss``
  (ar1): all 60 trial betas, each from its own model;
* ``lsa``     -- the same with ``fit_lsa`` (one model, 60 trial regressors);
* ``nilearn`` -- nilearn's LSS loop (its gallery example's recipe: for each trial, rename it and refit
  ``FirstLevelModel(noise_model="ar1")``, take the trial's effect size) on the first --subset trials only,
  the image loaded once beforehand; the time per trial is the median of all its fits (every repeat) and
  the whole loop is that times 60 (stated as scaled when --subset < 60).

Prints wall times after imports, peak RSS (``resource.getrusage``), the ratios (nilearn per trial / glmx
per trial; LSS / fit) and the largest |beta difference| of the subset trials relative to each map's SD.
Not a test: ``python benchmarks/single_trial.py`` takes minutes.

    python benchmarks/single_trial.py [--data DIR] [--repeats 3] [--subset 3] [--threads 1] [--small]
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
import first_level  # noqa: E402  (the run generator, shared)
import harness  # noqa: E402

TR = first_level.TR
N_TRIALS = 60
THREADS = 1


def _inputs(design_path, n_vol):
    import pandas as pd

    design = pd.read_csv(design_path, sep="\t")
    confounds = design[[c for c in design.columns if c.startswith("conf")]]
    return harness.trial_events(n_vol, TR, N_TRIALS), confounds


# ---------------------------------------------------------------------------------------------- children
def _child(what, bold, mask, design, subset, out):
    from glmx_workflows.core import single_trial as st
    from glmx_workflows.core.design import build_design, frame_times
    from glmx_workflows.io.images import load_scaled_bold

    import nibabel as nb

    n_vol = nb.load(bold).shape[3]
    events, confounds = _inputs(design, n_vol)
    trials, _ = st.trial_table(events.assign(modulation=1.0))
    result = {}
    if what in ("fit", "lss", "lsa"):
        from glmx_workflows.core.glm import fit_glm

        t0 = time.perf_counter()
        Y, _, _, _ = load_scaled_bold(bold, mask)
        t_read = time.perf_counter() - t0
        main = build_design(events.assign(modulation=1.0), confounds, n_vol, TR)
        if what == "fit":
            fit_glm(Y, main.to_numpy(float), noise_model="ar1")
            betas = None
        else:
            nuisance = st.nuisance_columns(main, sorted(set(trials.trial_type)))
            raw = st.raw_trial_regressors(trials.onset, trials.duration, frame_times(n_vol, TR), TR, "glover")
            if what == "lss":
                groups, _ = st.trial_groups(trials, "condition")
                betas = st.fit_lss(Y, raw, groups, nuisance.to_numpy(float), noise_model="ar1")
            else:
                design_lsa = st.lsa_design(raw, trials, nuisance).to_numpy(float)
                betas = st.fit_lsa(Y, design_lsa, len(trials), 1, "ar1")
        result["read_seconds"] = t_read
    else:
        from nilearn.glm.first_level import FirstLevelModel

        img = nb.load(bold)
        img = nb.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)  # loaded once, outside the loop
        mask_img = nb.load(mask)
        m = np.asarray(mask_img.dataobj) > 0
        t0 = time.perf_counter()
        per_trial, betas = [], []
        for j in range(subset):
            t1 = time.perf_counter()
            ev = events.copy()
            ev.loc[events.index[trials.row[j]], "trial_type"] = "zztrial"
            flm = FirstLevelModel(t_r=TR, mask_img=mask_img, noise_model="ar1", hrf_model="glover",
                                  drift_model="cosine", high_pass=0.01, minimize_memory=True)
            flm.fit(img, events=ev, confounds=confounds)
            betas.append(flm.compute_contrast("zztrial", output_type="effect_size").get_fdata()[m])
            per_trial.append(time.perf_counter() - t1)
        betas = np.array(betas)
        result["per_trial"] = per_trial
    result["seconds"] = time.perf_counter() - t0
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    if betas is not None:
        np.save(out + ".npy", np.asarray(betas[:max(subset, 1)], dtype=np.float64))
    Path(out + ".json").write_text(json.dumps(result))


def _run_child(what, paths, subset, out):
    return harness.run_child(__file__, [what, "--bold", paths["bold"], "--mask", paths["mask"], "--design",
                                        paths["design"], "--subset", subset], out, THREADS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "glmx_bench_first_level"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--subset", type=int, default=3, help="trials fitted by the nilearn loop (scaled to 60)")
    ap.add_argument("--small", action="store_true", help="a 40x48x40 grid for a quick check of the script")
    ap.add_argument("--threads", type=int, default=1)
    harness.child_arguments(ap, "--mask")
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    if a.child:
        return _child(a.child, a.bold, a.mask, a.design, a.subset, a.out)

    shape = (40, 48, 40) if a.small else first_level.SHAPE
    data = a.data + ("_small" if a.small else "")
    t0 = time.perf_counter()
    paths = first_level.generate(data, a.volumes, shape)
    import nibabel as nb

    n_vox = int((np.asarray(nb.load(str(paths["mask"])).dataobj) > 0).sum())
    print(f"data ready in {time.perf_counter() - t0:.1f} s: grid {shape}, {a.volumes} volumes, {n_vox} in-mask "
          f"voxels, {N_TRIALS} trials in 2 conditions, ar1, {THREADS} BLAS thread(s), cpus {os.cpu_count()}",
          flush=True)
    outdir = Path(data) / "single_trial_runs"
    outdir.mkdir(exist_ok=True)
    results = {}
    sides = ("fit", "lss", "lsa", "nilearn")
    for rep in range(a.repeats):
        for what in sides:
            r = _run_child(what, paths, a.subset, str(outdir / f"{what}_{rep}"))
            results.setdefault(what, []).append(r)
            extra = f" ({statistics.median(r['per_trial']):.2f} s per trial)" if "per_trial" in r else ""
            print(f"  rep {rep} {what:8s} {r['seconds']:7.2f} s{extra}  peak {r['peak_gb']:.2f} GB", flush=True)

    med = {w: statistics.median(r["seconds"] for r in results[w]) for w in sides}
    peak = {w: max(r["peak_gb"] for r in results[w]) for w in sides}
    nl_trial = statistics.median(t for r in results["nilearn"] for t in r["per_trial"])
    ours = np.load(outdir / "lss_0.npy")[:a.subset]
    ref = np.load(outdir / "nilearn_0.npy")
    rel = max(float(np.abs(o - t).max() / t.std()) for o, t in zip(ours, ref))
    lss_trial = med["lss"] / N_TRIALS
    summary = {
        "seconds": med, "peak_gb": peak, "nilearn_per_trial": nl_trial,
        "nilearn_loop_scaled": nl_trial * N_TRIALS, "nilearn_trials_fitted": a.subset,
        "lss_per_trial": lss_trial, "nilearn_over_lss_per_trial": nl_trial / lss_trial,
        "lss_over_fit": med["lss"] / med["fit"], "lsa_over_fit": med["lsa"] / med["fit"],
        "max_abs_diff_over_sd": rel, "in_mask_voxels": n_vox, "repeats": a.repeats,
    }
    print(f"\nmedians of {a.repeats} cold runs (wall time after imports, reading included; peak RSS)")
    print(f"  one first-level fit (anchor)  {med['fit']:7.2f} s   peak {peak['fit']:.2f} GB")
    print(f"  glmx LSS, {N_TRIALS} trials          {med['lss']:7.2f} s   peak {peak['lss']:.2f} GB   "
          f"= {summary['lss_over_fit']:.2f} x the fit, {lss_trial:.3f} s per trial")
    print(f"  glmx LSA, {N_TRIALS} trials          {med['lsa']:7.2f} s   peak {peak['lsa']:.2f} GB   "
          f"= {summary['lsa_over_fit']:.2f} x the fit")
    print(f"  nilearn loop, per trial       {nl_trial:7.2f} s   peak {peak['nilearn']:.2f} GB   "
          f"(measured on {a.subset} trials; whole loop scaled to {N_TRIALS}: {nl_trial * N_TRIALS:.0f} s)")
    print(f"  nilearn per trial / glmx LSS per trial: {summary['nilearn_over_lss_per_trial']:.0f} x")
    print(f"  max |beta glmx - beta nilearn| / SD of the map, {a.subset} trials: {rel:.1e}")
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
