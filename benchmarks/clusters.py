"""Cluster tables: glmx's one cluster table (core.clusters.cluster_table, used by the first-level reports
and the group level) against nilearn's get_clusters_table, the anchor, on the same maps in the same run.

Maps: smooth Gaussian noise on the MNI 2 mm grid (97 x 115 x 97), scaled to unit sd, at each smoothness
(sigma in voxels); height |z| > 3.09, clusters of at least 5 voxels, two-sided, 8 mm sub-peak distance.
Each side runs in a cold subprocess per map, interleaved; prints wall times, their ratio and whether the
two tables agree row for row (ids, coordinates, peak values, sizes).

    python benchmarks/clusters.py [--sigmas 2.0 1.0] [--repeats 3]
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
HEIGHT, EXTENT = 3.09, 5

CHILD = r"""
import json, sys, time, warnings
import nibabel as nb
import numpy as np
side, path, out = sys.argv[1:4]
img = nb.load(path)
img.get_fdata()  # the read is not timed
if side == "nilearn":
    from nilearn.reporting import get_clusters_table
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = get_clusters_table(img, stat_threshold=%(h)r, cluster_threshold=%(e)r, two_sided=True)
    wall = time.perf_counter() - t
else:
    from glmx_workflows.reports.first_level import cluster_table
    t = time.perf_counter()
    table = cluster_table(img, %(h)r, %(e)r, two_sided=True)
    wall = time.perf_counter() - t
json.dump({"wall": wall, "rows": table.astype(str).values.tolist()}, open(out, "w"))
""" % {"h": HEIGHT, "e": EXTENT}


def make_map(folder, sigma, seed=0):
    import nibabel as nb
    from scipy import ndimage

    data = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(SHAPE), sigma)
    path = os.path.join(folder, f"z_sigma{sigma}.nii.gz")
    nb.save(nb.Nifti1Image((data / data.std()).astype(np.float32), AFFINE), path)
    return path


def run(side, path, folder):
    out = os.path.join(folder, f"{side}.json")
    subprocess.run([sys.executable, "-c", CHILD, side, path, out], check=True)
    with open(out) as fh:
        return json.load(fh)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 1.0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("| sigma (voxels) | clusters | rows | nilearn s | glmx s | nilearn / glmx | same rows |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for sigma in args.sigmas:
            path = make_map(folder, sigma)
            walls = {"nilearn": [], "glmx": []}
            rows = {}
            for _ in range(args.repeats):
                for side in ("nilearn", "glmx"):
                    res = run(side, path, folder)
                    walls[side].append(res["wall"])
                    rows[side] = res["rows"]
            med = {k: float(np.median(v)) for k, v in walls.items()}
            n_clusters = sum(1 for r in rows["nilearn"] if r[-1] != "")
            print(f"| {sigma:g} | {n_clusters} | {len(rows['nilearn'])} | {med['nilearn']:.2f} | {med['glmx']:.3f} | "
                  f"{med['nilearn'] / med['glmx']:.1f} | {rows['nilearn'] == rows['glmx']} |", flush=True)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"(total {time.perf_counter() - t0:.0f} s)")
