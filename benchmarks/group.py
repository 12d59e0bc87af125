"""Group permutation inference: glmx's vectorised sign flips against nilearn's non_parametric_inference.

20 subjects' maps on the MNI 2 mm grid (97 x 115 x 97, an ellipsoid "brain" of ~230k voxels, smooth
noise plus a planted effect), one-sample test, max-t FWE with 5000 sign flips, the same seed for both.
Each side runs in a cold subprocess; prints wall time, peak RSS, their ratio, and how far the two
FWE p maps are apart (they draw different flips, so they agree only within Monte Carlo error:
sd of a p near 0.05 with K flips is sqrt(0.05 * 0.95 / K)).

    python benchmarks/group.py [--subjects 20] [--permutations 5000] [--scale 1.0]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPE = (97, 115, 97)
AFFINE = np.array([[-2.0, 0, 0, 96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]])


def make_inputs(folder, n_subjects, scale, seed=0):
    import nibabel as nb
    from scipy import ndimage

    shape = tuple(max(int(round(s * scale)), 8) for s in SHAPE)
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) * np.array([0.40, 0.42, 0.40])
    mask = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    effect = np.zeros(shape)
    effect[tuple(slice(int(c - 4 * scale), int(c + 4 * scale) + 1) for c in centre)] = 0.8
    paths = []
    for s in range(n_subjects):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
        data = ((effect + noise / noise[mask].std()) * mask).astype(np.float32)
        path = os.path.join(folder, f"sub-{s:02d}.nii.gz")
        nb.save(nb.Nifti1Image(data, AFFINE), path)
        paths.append(path)
    mask_path = os.path.join(folder, "mask.nii.gz")
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_path)
    return paths, mask_path, int(mask.sum())


def run_glmx(paths, mask_path, n_perm, out):
    import nibabel as nb

    from glmx_workflows.core.group import permutation_inference

    mask = np.asarray(nb.load(mask_path).dataobj) > 0
    Y = np.stack([np.asarray(nb.load(p).dataobj)[mask] for p in paths])
    X = np.ones((len(paths), 1))
    res = permutation_inference(Y, X, np.array([1.0]), mask=mask, n_permutations=n_perm, seed=0)
    np.save(out, res["p_fwe"])


def run_nilearn(paths, mask_path, n_perm, out):
    import nibabel as nb
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference

    mask = np.asarray(nb.load(mask_path).dataobj) > 0
    design = pd.DataFrame({"intercept": np.ones(len(paths))})
    res = non_parametric_inference(paths, design_matrix=design, mask=mask_path, n_perm=n_perm, random_state=0,
                                   n_jobs=1)
    np.save(out, 10 ** -np.asarray(res.dataobj)[mask])


def child(which, paths, mask_path, n_perm, out):
    import resource

    start = time.perf_counter()
    (run_glmx if which == "glmx" else run_nilearn)(paths, mask_path, n_perm, out)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=5000)
    ap.add_argument("--scale", type=float, default=1.0, help="grid scale (1.0: MNI 2 mm)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        which, paths, mask_path, n_perm, out = args.child
        child(which, paths.split(","), mask_path, int(n_perm), out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths, mask_path, n_vox = make_inputs(tmp, args.subjects, args.scale)
        print(f"{args.subjects} subjects, {n_vox} voxels, {args.permutations} sign flips (max-t FWE)")
        results = {}
        for which in ("glmx", "nilearn"):
            out = os.path.join(tmp, f"{which}.npy")
            proc = subprocess.run([sys.executable, __file__, "--child", which, ",".join(paths), mask_path,
                                   str(args.permutations), out], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(proc.stderr)
            results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[which]["p"] = np.load(out)
            print(f"{which:8s} {results[which]['wall']:8.1f} s   peak RSS {results[which]['rss_gb']:.2f} GB")
        ratio = results["nilearn"]["wall"] / results["glmx"]["wall"]
        a, b = results["glmx"]["p"], results["nilearn"]["p"]
        near = (a < 0.2) | (b < 0.2)
        mc = 3 * np.sqrt(0.05 * 0.95 / args.permutations)
        print(f"speed-up (nilearn / glmx): {ratio:.1f}x")
        print(f"FWE p: max |diff| where either < 0.2: {np.abs(a - b)[near].max() if near.any() else 0:.4f} "
              f"(3 Monte Carlo sd at p = 0.05: {mc:.4f}); significant voxels (p < 0.05): glmx {(a < 0.05).sum()}, "
              f"nilearn {(b < 0.05).sum()}")


if __name__ == "__main__":
    main()
