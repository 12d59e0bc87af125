"""First-level benchmark: read+mask, glmx's fit+contrasts and nilearn's FirstLevelModel on one large run.

Generates (seeded, once, cached in --data) an fmriprep-sized run: 97x115x97 voxels (MNI 2 mm), 300 volumes,
float32 .nii.gz (gzip level 1, as fmriprep writes), an ellipsoid brain mask of ~230k voxels, 3 conditions
with planted effects, AR(1) noise, 12 confounds; an int16 copy with scl_slope. Then times, in fresh
processes (cold: nothing cached but the OS page cache, interleaved so that machine noise hits all alike),
medians of --repeats:

* ``read``    -- ``load_masked_bold`` (the anchor: what any fit must pay);
* ``glmx``    -- read + percent signal change + ``core.glm.fit_glm`` (ar1) + 3 t contrasts with z maps;
* ``nilearn`` -- ``FirstLevelModel(noise_model="ar1").fit`` on the same image, mask and design + 3
  ``compute_contrast(..., "z_score")``;

without and with 6 mm smoothing and for the int16 file. Every child reports its wall time (after imports)
and its peak RSS (``resource.getrusage``). Prints ratios against the read and against nilearn and the
largest |z difference| in the mask. Not a test: run ``python benchmarks/first_level.py`` (takes minutes).

    python benchmarks/first_level.py [--data DIR] [--repeats 3] [--volumes 300] [--small]
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

SHAPE = (97, 115, 97)
TR = 2.0
THREADS = 1
CONDITIONS = ("faces", "houses", "scrambled")
CONTRASTS = {"faces": {"faces": 1.0}, "faces-houses": {"faces": 1.0, "houses": -1.0},
             "all": {"faces": 1.0, "houses": 1.0, "scrambled": 1.0}}


# ----------------------------------------------------------------------------------------------- data
def _mask(shape, radius=0.37):
    # an ellipsoid of ~230k voxels on the MNI 2 mm grid, like fmriprep's brain mask (radius 0.46: the head)
    g = np.indices(shape, dtype=np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = [radius * s for s in shape]
    return sum(((g[i] - c[i]) / r[i]) ** 2 for i in range(3)) <= 1.0


def _events(n_vol, rng):
    rows = []
    t = 10.0
    while t < n_vol * TR - 20:
        rows.append((t, 2.0, CONDITIONS[rng.integers(3)]))
        t += rng.uniform(4, 9)
    import pandas as pd

    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def generate(data_dir, n_vol, shape=SHAPE, seed=97):
    """Write bold.nii.gz (float32), bold_int16.nii.gz, mask.nii.gz, design.tsv; return their paths."""
    import nibabel as nb
    import pandas as pd
    from isal import igzip
    from nilearn.glm.first_level import make_first_level_design_matrix

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: data_dir / f for k, f in (("bold", "bold.nii.gz"), ("int16", "bold_int16.nii.gz"),
                                         ("mask", "mask.nii.gz"), ("design", "design.tsv"))}
    stamp = data_dir / "params.json"
    params = {"n_vol": n_vol, "shape": list(shape), "seed": seed, "version": 2}
    if stamp.exists() and json.loads(stamp.read_text()) == params and all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    affine = np.array([[-2.0, 0, 0, 96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])
    mask = _mask(shape)
    n_vox = int(mask.sum())
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), affine), str(paths["mask"]))

    frame_times = np.arange(n_vol) * TR
    confounds = pd.DataFrame(rng.standard_normal((n_vol, 12)).cumsum(0) * 0.05,
                             columns=[f"conf{i:02d}" for i in range(12)])
    X = make_first_level_design_matrix(frame_times, _events(n_vol, rng), hrf_model="glover",
                                       drift_model="cosine", high_pass=0.01, add_regs=confounds.to_numpy(),
                                       add_reg_names=list(confounds.columns))
    X.to_csv(paths["design"], sep="\t", index=False)

    baseline = rng.uniform(400, 1200, n_vox).astype(np.float32)
    betas = {c: (rng.standard_normal(n_vox) * 3).astype(np.float32) for c in CONDITIONS}
    rho = rng.uniform(0.0, 0.6, n_vox).astype(np.float32)
    conf_w = (rng.standard_normal((12, n_vox)) * 2).astype(np.float32)
    sig = np.column_stack([X[c] for c in CONDITIONS]).astype(np.float32)
    noise = np.zeros(n_vox, np.float32)
    idx = np.ravel_multi_index(np.nonzero(mask), shape, order="F")
    # fmriprep's MNI-space BOLD is not masked: skull and scalp carry noisy signal (as incompressible as
    # the brain's), only the corners of the box are zero -- this sets the .nii.gz size (~500 MB)
    head = _mask(shape, 0.46) & ~mask
    head_idx = np.ravel_multi_index(np.nonzero(head), shape, order="F")
    head_base = rng.uniform(20, 300, head_idx.size).astype(np.float32)

    hdr32 = nb.Nifti1Header()
    hdr32.set_data_shape(shape + (n_vol,))
    hdr32.set_data_dtype(np.float32)
    hdr32.set_qform(affine, 1)
    hdr32.set_sform(affine, 1)
    hdr32.set_xyzt_units("mm", "sec")
    hdr32["pixdim"][4] = TR
    hdr16 = hdr32.copy()
    hdr16.set_data_dtype(np.int16)
    slope = 1600.0 / 32000  # int16 range covers 0..1600
    hdr16["scl_slope"], hdr16["scl_inter"] = slope, 0.0

    def _header_bytes(h):
        h.set_data_offset(352)
        return h.binaryblock + b"\0" * 4

    vol = np.zeros(int(np.prod(shape)), np.float32)
    tmp32, tmp16 = paths["bold"].with_suffix(".part"), paths["int16"].with_suffix(".part")
    with igzip.open(tmp32, "wb", compresslevel=1) as f32, igzip.open(tmp16, "wb", compresslevel=1) as f16:
        f32.write(_header_bytes(hdr32))
        f16.write(_header_bytes(hdr16))
        for t in range(n_vol):
            noise = rho * noise + rng.standard_normal(n_vox, dtype=np.float32) * 8
            y = baseline * (1 + 0.01 * (sig[t] @ np.stack([betas[c] for c in CONDITIONS])))
            y += confounds.iloc[t].to_numpy(np.float32) @ conf_w + noise
            vol[idx] = y
            vol[head_idx] = head_base + rng.standard_normal(head_idx.size, dtype=np.float32) * 15
            f32.write(vol.tobytes())
            f16.write(np.clip(np.rint(vol / slope), -32768, 32767).astype(np.int16).tobytes())
    os.replace(tmp32, paths["bold"])
    os.replace(tmp16, paths["int16"])
    stamp.write_text(json.dumps(params))
    return paths


# ---------------------------------------------------------------------------------------------- children
def _child(what, bold, mask, design, fwhm, out):
    import pandas as pd

    if what == "read":
        from glmx_workflows.io.images import load_masked_bold

        t0 = time.perf_counter()
        Y, _, _ = load_masked_bold(bold, mask, None, fwhm)
        z = None
    elif what == "glmx":
        from glmx_workflows.core.formula import contrast_matrix
        from glmx_workflows.core.glm import contrast_statistics, estimate_contrast, fit_glm
        from glmx_workflows.io.images import load_scaled_bold

        t0 = time.perf_counter()
        X = pd.read_csv(design, sep="\t")
        Y, _, _, _ = load_scaled_bold(bold, mask, None, fwhm)  # as the fit_glm node reads and scales
        fit = fit_glm(Y, X.to_numpy(float), noise_model="ar1")
        del Y
        z = {}
        for name, weights in CONTRASTS.items():
            con = contrast_matrix([weights], list(X.columns))[0]
            z[name] = contrast_statistics(estimate_contrast(fit, con, stat_type="t"))["z"].astype(np.float32)
    else:
        import nibabel as nb
        from nilearn.glm.first_level import FirstLevelModel

        t0 = time.perf_counter()
        X = pd.read_csv(design, sep="\t")
        mask_img = nb.load(mask)
        flm = FirstLevelModel(t_r=TR, mask_img=mask_img, noise_model="ar1", smoothing_fwhm=fwhm,
                              minimize_memory=True)
        flm.fit(bold, design_matrices=[X])
        m = np.asarray(mask_img.dataobj) > 0
        z = {}
        for name, weights in CONTRASTS.items():
            con = np.array([weights.get(c, 0.0) for c in X.columns])
            z[name] = flm.compute_contrast(con, output_type="z_score").get_fdata(dtype=np.float32)[m]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KB -> GB on Linux
    if z is not None:
        np.savez(out + ".npz", **z)
    Path(out + ".json").write_text(json.dumps({"seconds": seconds, "peak_gb": peak}))


def _run_child(what, bold, paths, fwhm, out):
    return harness.run_child(__file__, [what, "--bold", bold, "--mask", paths["mask"], "--design", paths["design"]]
                             + (["--fwhm", fwhm] if fwhm else []), out, THREADS)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "glmx_bench_first_level"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--volumes", type=int, default=300)
    ap.add_argument("--small", action="store_true", help="a 40x48x40 grid for a quick check of the script")
    ap.add_argument("--only", default="plain,smooth6,int16", help="variants to run (comma-separated)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of every child (default 1)")
    harness.child_arguments(ap, "--mask")
    ap.add_argument("--fwhm", type=float)
    a = ap.parse_args()
    global THREADS
    THREADS = a.threads
    if a.child:
        return _child(a.child, a.bold, a.mask, a.design, a.fwhm, a.out)

    shape = (40, 48, 40) if a.small else SHAPE
    t0 = time.perf_counter()
    paths = generate(a.data + ("_small" if a.small else ""), a.volumes, shape)
    print(f"data ready in {time.perf_counter() - t0:.1f} s: {paths['bold']} "
          f"({paths['bold'].stat().st_size / 1e6:.0f} MB), int16 {paths['int16'].stat().st_size / 1e6:.0f} MB")
    import nibabel as nb

    n_vox = int((np.asarray(nb.load(str(paths["mask"])).dataobj) > 0).sum())
    print(f"grid {shape}, {a.volumes} volumes, {n_vox} in-mask voxels "
          f"(float32 in-mask data {n_vox * a.volumes * 4 / 1e9:.2f} GB), cpus {os.cpu_count()}")
    variants = {"plain": (paths["bold"], None), "smooth6": (paths["bold"], 6.0), "int16": (paths["int16"], None)}
    variants = {k: v for k, v in variants.items() if k in a.only.split(",")}
    results = {}
    outdir = Path(a.data + ("_small" if a.small else "")) / "runs"
    outdir.mkdir(exist_ok=True)
    for rep in range(a.repeats):  # interleaved: machine noise spreads over all measurements alike
        for v, (bold, fwhm) in variants.items():
            for what in ("read", "glmx", "nilearn"):
                r = _run_child(what, bold, paths, fwhm, str(outdir / f"{v}_{what}_{rep}"))
                results.setdefault((v, what), []).append(r)
                print(f"  rep {rep} {v:8s} {what:8s} {r['seconds']:7.2f} s  peak {r['peak_gb']:.2f} GB", flush=True)

    print(f"\nmedians of {a.repeats} cold runs, {THREADS} BLAS thread(s) (wall time after imports; peak RSS)")
    print(f"{'variant':9s} {'read s':>7s} {'glmx s':>7s} {'nilearn s':>9s} {'glmx/read':>9s} {'nilearn/glmx':>12s} "
          f"{'read GB':>7s} {'glmx GB':>7s} {'nilearn GB':>10s} {'max|dz|':>9s}")
    summary = {}
    for v in variants:
        med = {w: statistics.median(r["seconds"] for r in results[(v, w)]) for w in ("read", "glmx", "nilearn")}
        peak = {w: max(r["peak_gb"] for r in results[(v, w)]) for w in ("read", "glmx", "nilearn")}
        ours, ref = np.load(outdir / f"{v}_glmx_0.npz"), np.load(outdir / f"{v}_nilearn_0.npz")
        dz = max(float(np.max(np.abs(ours[k] - ref[k]))) for k in CONTRASTS)
        summary[v] = {"seconds": med, "peak_gb": peak, "max_abs_dz": dz}
        print(f"{v:9s} {med['read']:7.2f} {med['glmx']:7.2f} {med['nilearn']:9.2f} {med['glmx'] / med['read']:9.2f} "
              f"{med['nilearn'] / med['glmx']:12.1f} {peak['read']:7.2f} {peak['glmx']:7.2f} {peak['nilearn']:10.2f} "
              f"{dz:9.1e}")
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
