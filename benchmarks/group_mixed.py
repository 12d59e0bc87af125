"""Mixed-effects group fit: glmx's vectorised REML against PyMARE, and against glmx's own OLS group fit.

20 subjects' effect and variance arrays the size of an MNI 2 mm brain (--voxels, default 300,000; arrays,
no files: the fit is what is measured), first-level variances log-uniform over two decades, a
between-subject variance that is 0 in a third of the voxels (REML optimum on the boundary), one-sample
design plus a covariate. Sides, each in a fresh process, BLAS pinned to one thread, median of --repeats:

* ``ols``    (the anchor): ``fit_group_model(Y, X)`` + the two contrasts' t/z/p (today's group fit);
* ``mixed``: ``fit_group_model(Y, X, 'mixed', V)`` + the same two contrasts, every voxel;
* ``pymare``: ``VarianceBasedLikelihoodEstimator(method='REML')`` (its default Knapp-Hartung covariance, as glmx's
  maps) on a random
  subset of --pymare-voxels voxels (vectorised over voxels as PyMARE does it; its per-voxel cost is what
  is compared), and ``pymare_loop``: the same estimator fitted voxel by voxel on a smaller subset (how a
  user would run a meta-analysis package per voxel), per-voxel cost.

* ``wf_ols`` / ``wf_mixed``: the group workflow's own nodes on files (``LoadGroupMaps`` reading the 20 effect
  maps, and for 'mixed' the 20 variance maps, as NIfTI on a 91 x 109 x 91 grid whose mask holds the voxels;
  ``FitGroup``; ``ComputeGroupContrasts`` writing every map), each stage timed: where the whole group step's
  time goes besides the fit.

Prints wall times, per-voxel costs, the ratios (mixed / ols; pymare per voxel / mixed per voxel; the workflow
stages), and how far glmx's tau2 and t are from PyMARE's on the subset.

    python benchmarks/group_mixed.py [--voxels 300000] [--subjects 20] [--pymare-voxels 20000] [--repeats 3]
                                     [--baseline REV]

``--baseline REV`` adds the side ``mixed@REV``: the same mixed fit with the package as it was at git revision REV
(extracted with ``git archive``), interleaved with the others: what a change of the fit gained, measured in
the same run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def make_arrays(folder, n_subjects, n_voxels, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n_subjects), rng.standard_normal(n_subjects)])
    V = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (n_subjects, 1))) * rng.uniform(0.8, 1.25,
                                                                                      (n_subjects, n_voxels))
    tau2 = rng.choice([0.0, 0.5, 2.0], n_voxels)
    Y = 0.3 + rng.standard_normal((n_subjects, n_voxels)) * np.sqrt(V + tau2)
    path = os.path.join(folder, "arrays.npz")
    np.savez(path, Y=Y.astype(np.float32), V=V.astype(np.float32), X=X)
    return path


def make_files(folder, path):
    """The arrays as NIfTI maps on an MNI 2 mm sized grid (an ellipsoid mask with the arrays' voxel count), a
    design TSV and the contrasts JSON the workflow's design node writes."""
    import nibabel as nb
    import pandas as pd

    with np.load(path) as data:
        Y, V, X = data["Y"], data["V"], data["X"]
    shape = (91, 109, 91)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid ** 2).sum(axis=0))
    mask = radius <= np.quantile(radius, Y.shape[1] / radius.size)
    mask.ravel()[np.flatnonzero(mask)[Y.shape[1]:]] = False
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {"effect": [], "variance": []}
    for i in range(Y.shape[0]):
        for kind, arr in (("effect", Y), ("variance", V)):
            vol = np.zeros(shape, np.float32)
            vol[mask] = arr[i]
            name = os.path.join(folder, f"sub-{i:02d}_{kind}.nii.gz")
            nb.Nifti1Image(vol, affine).to_filename(name)
            files[kind].append(name)
    design = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(Y.shape[0])], "intercept": X[:, 0],
                           "covariate": X[:, 1]})
    design.to_csv(os.path.join(folder, "design.tsv"), sep="\t", index=False)
    with open(os.path.join(folder, "contrasts.json"), "w") as f:
        json.dump([{"name": "mean", "desc": None, "stat": "t", "weights": [1.0, 0.0]},
                   {"name": "covariate", "desc": "covariate", "stat": "t", "weights": [0.0, 1.0]}], f)
    with open(os.path.join(folder, "files.json"), "w") as f:
        json.dump(files, f)


def workflow_child(model, folder):
    """The group workflow's load / fit / contrast nodes on the files, each stage's wall time."""
    from glmx_workflows.interfaces.group import ComputeGroupContrasts, FitGroup, LoadGroupMaps

    with open(os.path.join(folder, "files.json")) as f:
        files = json.load(f)
    n = len(files["effect"])
    work = tempfile.mkdtemp(dir=folder)
    os.chdir(work)
    times = {}
    start = time.perf_counter()
    load = LoadGroupMaps(effect_files=files["effect"], subjects=[f"{i:02d}" for i in range(n)], model=model,
                         variance_files=files["variance"] if model == "mixed" else [None] * n).run()
    times["load"] = time.perf_counter() - start
    start = time.perf_counter()
    fit = FitGroup(data_file=load.outputs.data_file, design_file=os.path.join(folder, "design.tsv"), model=model).run()
    times["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    ComputeGroupContrasts(fit_file=fit.outputs.fit_file, data_file=load.outputs.data_file,
                          contrasts_file=os.path.join(folder, "contrasts.json"), contrast="c").run()
    times["contrasts"] = time.perf_counter() - start
    times["wall"] = sum(times.values())
    return times


def child(which, path, n_sub, out):
    from glmx_workflows.core.group import contrast_maps, fit_group_model

    with np.load(path) as data:
        Y, V, X = data["Y"].astype(np.float64), data["V"].astype(np.float64), data["X"]
    result = {}
    if which.startswith("wf_"):
        result = workflow_child(which[3:], os.path.dirname(path))
    elif which in ("ols", "mixed"):
        start, cpu = time.perf_counter(), time.process_time()
        fit = fit_group_model(Y, X, which, V if which == "mixed" else None)
        maps = [contrast_maps(fit, c) for c in ([1.0, 0.0], [0.0, 1.0])]
        result["wall"] = time.perf_counter() - start
        result["cpu"] = time.process_time() - cpu  # steadier than wall on a shared machine
        result["per_voxel_us"] = result["wall"] / Y.shape[1] * 1e6
        if which == "mixed":
            sub = np.random.default_rng(1).choice(Y.shape[1], n_sub, replace=False)
            np.savez(out, sub=sub, tau2=fit.tau2[sub], t=maps[1]["t"][sub])
    else:
        from pymare.estimators import VarianceBasedLikelihoodEstimator

        sub = np.random.default_rng(1).choice(Y.shape[1], n_sub, replace=False)
        if which == "pymare_loop":
            sub = sub[:max(n_sub // 20, 50)]
        est = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction="knapp-hartung")
        start = time.perf_counter()
        if which == "pymare":
            est.fit(Y[:, sub], V[:, sub], X)
            tau2 = est.params_["tau2"][0]
            beta, cov = est.params_["fe_params"], est.params_["inv_cov"]
            t = beta[1] / np.sqrt(cov[1, 1])
        else:
            tau2, t = np.empty(sub.size), np.empty(sub.size)
            for i, j in enumerate(sub):
                est.fit(Y[:, [j]], V[:, [j]], X)
                tau2[i] = est.params_["tau2"][0, 0]
                t[i] = est.params_["fe_params"][1, 0] / np.sqrt(est.params_["inv_cov"][1, 1, 0])
        result["wall"] = time.perf_counter() - start
        result["per_voxel_us"] = result["wall"] / sub.size * 1e6
        np.savez(out, sub=sub, tau2=tau2, t=t)
    print(json.dumps(result))


def run_child(which, path, n_sub, out, package=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if package:  # the baseline's copy of glmx_workflows first on the path
        env["PYTHONPATH"] = os.pathsep.join([package, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__, "--child", which, path, str(n_sub), out], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=300_000)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--pymare-voxels", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-workflow", action="store_true", help="skip the workflow-node sides (no NIfTI files)")
    parser.add_argument("--baseline", metavar="REV", help="also time the mixed fit of the package at git revision REV")
    parser.add_argument("--child", nargs=4, metavar=("WHICH", "PATH", "NSUB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, path, n_sub, out = args.child
        child(which, path, int(n_sub), out)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = make_arrays(folder, args.subjects, args.voxels)
        sides = ("ols", "mixed", "pymare", "pymare_loop")
        package = None
        if args.baseline:
            package = os.path.join(folder, "baseline")
            os.makedirs(package)
            repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            archive = subprocess.run(["git", "-C", repo, "archive", args.baseline, "glmx_workflows"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", package], input=archive, check=True)
            sides += ("baseline",)
        if not args.no_workflow:
            make_files(folder, path)
            sides += ("wf_ols", "wf_mixed")
        runs = {s: [] for s in sides}
        for _ in range(args.repeats):  # interleaved, so that machine load hits every side alike
            for side in sides:
                if side == "baseline":
                    runs[side].append(run_child("mixed", path, args.pymare_voxels, os.path.join(folder, "b.npz"),
                                                package))
                else:
                    runs[side].append(run_child(side, path, args.pymare_voxels, os.path.join(folder, f"{side}.npz")))
        med = {s: {k: float(np.median([r[k] for r in runs[s]])) for k in runs[s][0]} for s in sides}
        ours = np.load(os.path.join(folder, "mixed.npz"))
        agreement = {}
        for side in ("pymare", "pymare_loop"):
            ref = np.load(os.path.join(folder, f"{side}.npz"))
            pos = np.array([np.flatnonzero(ours["sub"] == j)[0] for j in ref["sub"]])
            agreement[side] = {"max_abs_dtau2": float(np.abs(ours["tau2"][pos] - ref["tau2"]).max()),
                               "max_abs_dt": float(np.abs(ours["t"][pos] - ref["t"]).max())}
    print(f"{args.subjects} subjects x {args.voxels} voxels; medians of {args.repeats} interleaved cold runs, 1 thread")
    for side in sides[:4]:
        print(f"  {side:12s} wall {med[side]['wall']:8.3f} s   {med[side]['per_voxel_us']:10.2f} us/voxel")
    print(f"  mixed / ols (whole brain)            : {med['mixed']['wall'] / med['ols']['wall']:.2f}x wall, "
          f"{med['mixed']['cpu'] / med['ols']['cpu']:.2f}x CPU ({med['mixed']['cpu']:.3f} s / {med['ols']['cpu']:.3f} s)")
    if "baseline" in med:
        print(f"  mixed@{args.baseline}: wall {med['baseline']['wall']:.3f} s, CPU {med['baseline']['cpu']:.3f} s; "
              f"now / then {med['mixed']['wall'] / med['baseline']['wall']:.2f}x wall, "
              f"{med['mixed']['cpu'] / med['baseline']['cpu']:.2f}x CPU; then / ols "
              f"{med['baseline']['cpu'] / med['ols']['cpu']:.2f}x CPU")
    if "wf_ols" in med:
        for side in ("wf_ols", "wf_mixed"):
            stages = ("load", "fit", "contrasts", "wall")
            print(f"  {side:12s} " + "  ".join(f"{k} {med[side][k]:.3f} s" for k in stages))
        print(f"  workflow nodes mixed / ols                : {med['wf_mixed']['wall'] / med['wf_ols']['wall']:.2f}x"
              f"   (load {med['wf_mixed']['load'] / med['wf_ols']['load']:.2f}x, fit "
              f"{med['wf_mixed']['fit'] / med['wf_ols']['fit']:.2f}x, contrasts "
              f"{med['wf_mixed']['contrasts'] / med['wf_ols']['contrasts']:.2f}x)")
    for side in ("pymare", "pymare_loop"):
        print(f"  {side} / mixed (per voxel)        : {med[side]['per_voxel_us'] / med['mixed']['per_voxel_us']:.1f}x"
              f"   max |dtau2| {agreement[side]['max_abs_dtau2']:.2e}  max |dt| {agreement[side]['max_abs_dt']:.2e}")


if __name__ == "__main__":
    main()
