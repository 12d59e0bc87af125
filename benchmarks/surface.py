"""Surface benchmark: one fsLR den-91k CIFTI run, glmx's fit against nilearn's array-level GLM.

Generates (seeded, once, cached in --data) a 91,282-grayordinate dense time series of 300 volumes (float32
``.dtseries.nii``, the HCP/fMRIPrep layout: 29,696 + 29,716 cortex vertices of the two 32k meshes and 31,870
subcortical voxels on the MNI 2 mm grid), 3 conditions with planted effects, AR(1) noise, 12 confounds. Then
times, in fresh processes (interleaved, BLAS pinned to --threads), medians of --repeats:

* ``read``    -- nibabel's read of the CIFTI (``nb.load`` + its data as a float32 (time × grayordinates) array): the
  anchor, what any tool pays to have the run in memory;
* ``bytes``   -- only the data block copied out of the file (``numpy.memmap``), no header parse: a floor, printed
  for reference;
* ``glmx``    -- end to end, the two nodes the first-level workflow runs for a run, ``FitGLM`` (read + percent
  signal change, AR(1) fit, goodness of fit, the run's mean map, the stored fit) then ``ComputeContrasts``
  (3 t contrasts: effect/variance/t/z/p maps and rSquare/logLikelihood, 17 ``.dscalar.nii`` files, and the
  estimates for fixed effects), called as the workflow calls them;
* ``nilearn`` -- nibabel's read, nilearn's ``mean_scaling``, ``run_glm(noise_model="ar1")`` and 3
  ``compute_contrast(...).z_score()`` on the same arrays and design (nilearn's FirstLevelModel takes no CIFTI;
  nothing is written, so the comparison leaves glmx the extra work).

Every child reports its wall time (after imports) and peak RSS. Prints ratios (glmx / read, nilearn / glmx, both
from the same run's medians) and the largest |z difference| between glmx's z maps (read back from its files) and
nilearn's.

    python benchmarks/surface.py [--data DIR] [--repeats 3] [--volumes 300] [--threads 1]
"""

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np

import harness  # the child runner, shared by the benchmarks

TR = 2.0
THREADS = 1
CONDITIONS = ("faces", "houses", "scrambled")
CONTRASTS = {"faces": {"faces": 1.0}, "faces-houses": {"faces": 1.0, "houses": -1.0},
             "all": {"faces": 1.0, "houses": 1.0, "scrambled": 1.0}}
N_CORTEX = {"CortexLeft": 29696, "CortexRight": 29716}
N_SUBCORTEX = 31870


def _axis(rng):
    """A brain-model axis of HCP's 91k sizes: two 32k cortex meshes minus a medial wall, subcortical voxels."""
    import nibabel as nb

    axis = None
    for name, n in N_CORTEX.items():
        vertices = np.sort(rng.choice(32492, n, replace=False))
        part = nb.cifti2.BrainModelAxis.from_surface(vertices, 32492, name)
        axis = part if axis is None else axis + part
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    g = np.indices((91, 109, 91), dtype=np.float32)
    r = sum(((g[i] - c) / s) ** 2 for i, (c, s) in enumerate(((45, 14), (60, 22), (36, 16))))
    order = np.argsort(r.ravel(), kind="stable")[:N_SUBCORTEX]  # the N_SUBCORTEX voxels nearest the centre
    vol = np.zeros(91 * 109 * 91, bool)
    vol[order] = True
    left = vol.reshape(91, 109, 91) & (np.arange(91)[:, None, None] >= 45)
    right = vol.reshape(91, 109, 91) & ~left
    for name, mask in (("ThalamusLeft", left), ("ThalamusRight", right)):
        axis = axis + nb.cifti2.BrainModelAxis.from_mask(mask, name, affine=affine)
    return axis


def _events(n_vol, rng):
    import pandas as pd

    rows, t = [], 10.0
    while t < n_vol * TR - 20:
        rows.append((t, 2.0, CONDITIONS[rng.integers(3)]))
        t += rng.uniform(4, 9)
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def generate(data_dir, n_vol, seed=91):
    """Write bold.dtseries.nii and design.tsv; return their paths."""
    import nibabel as nb
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {"bold": data_dir / "bold.dtseries.nii", "design": data_dir / "design.tsv"}
    stamp = data_dir / "params.json"
    params = {"n_vol": n_vol, "seed": seed, "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == params and all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    axis = _axis(rng)
    n = len(axis)
    confounds = pd.DataFrame(rng.standard_normal((n_vol, 12)).cumsum(0) * 0.05,
                             columns=[f"conf{i:02d}" for i in range(12)])
    X = make_first_level_design_matrix(np.arange(n_vol) * TR, _events(n_vol, rng), hrf_model="glover",
                                       drift_model="cosine", high_pass=0.01, add_regs=confounds.to_numpy(),
                                       add_reg_names=list(confounds.columns))
    X.to_csv(paths["design"], sep="\t", index=False)
    baseline = rng.uniform(400, 1200, n).astype(np.float32)
    betas = np.stack([(rng.standard_normal(n) * 3).astype(np.float32) for _ in CONDITIONS])
    rho = rng.uniform(0.0, 0.6, n).astype(np.float32)
    conf_w = (rng.standard_normal((12, n)) * 2).astype(np.float32)
    sig = np.column_stack([X[c] for c in CONDITIONS]).astype(np.float32)
    data = np.empty((n_vol, n), np.float32)
    noise = np.zeros(n, np.float32)
    for t in range(n_vol):
        noise = rho * noise + rng.standard_normal(n, dtype=np.float32) * 8
        data[t] = baseline * (1 + 0.01 * (sig[t] @ betas)) + confounds.iloc[t].to_numpy(np.float32) @ conf_w + noise
    series = nb.cifti2.SeriesAxis(start=0.0, step=TR, size=n_vol, unit="SECOND")
    tmp = data_dir / "part.dtseries.nii"
    nb.save(nb.Cifti2Image(data, header=(series, axis)), str(tmp))
    os.replace(tmp, paths["bold"])
    stamp.write_text(json.dumps(params))
    return paths


def _child(what, bold, design, out):
    import pandas as pd

    if what == "read":
        import nibabel as nb

        t0, c0 = time.perf_counter(), time.process_time()
        Y = np.array(np.asanyarray(nb.load(bold).dataobj), dtype=np.float32, order="K")
        z = None
    elif what == "bytes":
        import nibabel as nb

        t0, c0 = time.perf_counter(), time.process_time()
        hdr = nb.Nifti2Header.from_fileobj(open(bold, "rb"))  # nibabel parses the CIFTI XML only when asked
        n = int(np.prod(hdr["dim"][1:hdr["dim"][0] + 1]))
        Y = np.array(np.memmap(bold, np.float32, "r", int(hdr["vox_offset"]), (n,)))
        z = None
    elif what == "glmx":
        import nibabel as nb  # noqa: F401 -- imported before the clock, as in the other children

        from glmx_workflows.interfaces.glm import ComputeContrasts, FitGLM

        work = Path(out + "_work")
        for step in ("fit", "contrasts"):
            (work / step).mkdir(parents=True, exist_ok=True)
        censor = work / "censor.tsv"
        pd.DataFrame({"volume": range(len(pd.read_csv(design, sep="\t"))), "kept": 1}).to_csv(censor, sep="\t",
                                                                                             index=False)
        specs = {name: {"label": name.replace("-", "Minus"), "rows": [weights], "type": "t"}
                 for name, weights in CONTRASTS.items()}
        FitGLM(), ComputeContrasts()  # nipype's once-per-process start-up (its version check) before the clock
        t0, c0 = time.perf_counter(), time.process_time()
        fit = FitGLM(bold_file=bold, mask_file=bold, design_file=design, censor_file=str(censor),
                     noise_model="ar1").run(cwd=str(work / "fit"))
        con = ComputeContrasts(fit_file=fit.outputs.fit_file, mask_file=fit.outputs.mask_file,
                               contrasts=specs).run(cwd=str(work / "contrasts"))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        manifest = json.loads(Path(con.outputs.manifest_file).read_text())
        files = {e["entities"]["contrast"]: e["path"] for e in manifest if e["entities"].get("stat") == "z"}
        z = {name: np.asarray(nb.load(files[s["label"]]).dataobj, np.float32)[0] for name, s in specs.items()}
    else:
        import nibabel as nb
        from nilearn.glm.contrasts import compute_contrast
        from nilearn.glm.first_level import run_glm
        from nilearn.glm.first_level.first_level import mean_scaling

        t0, c0 = time.perf_counter(), time.process_time()
        X = pd.read_csv(design, sep="\t")
        Y = np.array(np.asanyarray(nb.load(bold).dataobj), dtype=np.float32, order="K")
        Y, _ = mean_scaling(Y)
        labels, results = run_glm(Y, X.to_numpy(), noise_model="ar1")
        del Y
        z = {}
        for name, weights in CONTRASTS.items():
            con = np.array([weights.get(c, 0.0) for c in X.columns])
            z[name] = compute_contrast(labels, results, con).z_score().astype(np.float32)
    if what != "glmx":
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KB -> GB on Linux
    if z is not None:
        np.savez(out + ".npz", **z)
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "cpu": cpu, "peak_gb": peak}))


def _run_child(what, paths, out):
    return harness.run_child(__file__, [what, "--bold", paths["bold"], "--design", paths["design"]], out, THREADS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "glmx_bench_surface"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of every child (default 1)")
    harness.child_arguments(ap)
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    if a.child:
        return _child(a.child, a.bold, a.design, a.out)
    t0 = time.perf_counter()
    paths = generate(a.data, a.volumes)
    import nibabel as nb

    n = nb.load(str(paths["bold"])).shape[1]
    print(f"data ready in {time.perf_counter() - t0:.1f} s: {paths['bold']} ({paths['bold'].stat().st_size / 1e6:.0f} MB), "
          f"{n} grayordinates x {a.volumes} volumes, cpus {os.cpu_count()}")
    outdir = Path(a.data) / "runs"
    outdir.mkdir(exist_ok=True)
    results = {}
    for rep in range(a.repeats):
        for what in ("read", "bytes", "glmx", "nilearn"):
            r = _run_child(what, paths, str(outdir / f"{what}_{rep}"))
            results.setdefault(what, []).append(r)
            print(f"  rep {rep} {what:8s} {r['seconds']:7.2f} s  cpu {r['cpu']:7.2f} s  peak {r['peak_gb']:.2f} GB",
                  flush=True)
    med = {w: statistics.median(r["seconds"] for r in results[w]) for w in results}
    peak = {w: max(r["peak_gb"] for r in results[w]) for w in results}
    ours, ref = np.load(outdir / "glmx_0.npz"), np.load(outdir / "nilearn_0.npz")
    dz = max(float(np.max(np.abs(ours[k] - ref[k]))) for k in CONTRASTS)
    print(f"\nmedians of {a.repeats} cold runs, {THREADS} BLAS thread(s) (wall time after imports; peak RSS)")
    print(f"{'read s':>7s} {'bytes s':>7s} {'glmx s':>7s} {'nilearn s':>9s} {'glmx/read':>9s} {'nilearn/glmx':>12s} "
          f"{'glmx GB':>7s} {'nilearn GB':>10s} {'max|dz|':>9s}")
    print(f"{med['read']:7.2f} {med['bytes']:7.2f} {med['glmx']:7.2f} {med['nilearn']:9.2f} "
          f"{med['glmx'] / med['read']:9.2f} {med['nilearn'] / med['glmx']:12.1f} {peak['glmx']:7.2f} "
          f"{peak['nilearn']:10.2f} {dz:9.1e}")
    cpu = {w: statistics.median(r["cpu"] for r in results[w]) for w in results}
    print(f"CPU seconds (process time; steadier than wall time when the machine is shared): read {cpu['read']:.2f}, "
          f"glmx {cpu['glmx']:.2f}, nilearn {cpu['nilearn']:.2f}; glmx/read {cpu['glmx'] / cpu['read']:.2f}, "
          f"nilearn/glmx {cpu['nilearn'] / cpu['glmx']:.1f}")
    print(f"targets (wall): nilearn/glmx >= 6 ({'met' if med['nilearn'] / med['glmx'] >= 6 else 'NOT met'}), glmx/read <= 1.5 "
          f"({'met' if med['glmx'] / med['read'] <= 1.5 else 'NOT met'}), glmx peak <= 1 GB "
          f"({'met' if peak['glmx'] <= 1 else 'NOT met'})")
    (outdir / "summary.json").write_text(json.dumps({"seconds": med, "cpu": cpu, "peak_gb": peak, "max_abs_dz": dz},
                                                        indent=1))


if __name__ == "__main__":
    main()
