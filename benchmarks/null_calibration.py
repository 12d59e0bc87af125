"""Null calibration of the group models: voxelwise false positive rate at one-sided p < 0.05.

Per cell (design x subjects x between-subject variance x spread of first-level variances), --sims simulated
null data sets of --voxels independent voxels each: every subject's first-level variance drawn log-uniformly
over the given decades around 1 (shared by its voxels up to +-25 %), tau2 a multiple of the median variance,
no effect. Rates of:

* ``ols``      the OLS group t (what nilearn's SecondLevelModel computes);
* ``wald``     the mixed model's t with the model-based covariance (X'WX)^-1 (FLAME1 without MCMC, PyMARE's
  "wald"), n - p degrees of freedom;
* ``hksj``     the same with the Knapp-Hartung / HKSJ covariance q (X'WX)^-1, q = r'Wr / (n - p): what
  group_model 'mixed' writes;
* ``hksj_c``   the conservative variant max(q, 1).

The voxels of one simulation share its variances (and covariate), so the Monte Carlo SE printed comes from the
spread of the per-simulation rates.

    python benchmarks/null_calibration.py [--sims 300] [--voxels 200] [--subjects 8 16 30] [--decades 1 2]
"""

import argparse
import itertools

import numpy as np
from scipy import stats as sps

from glmx_workflows.core.group import contrast_maps, fit_group_model
from glmx_workflows.core.mixed import fit_mixed_effects


def design(kind, n, rng):
    if kind in ("one_sample", "paired"):
        return np.ones((n, 1)), np.array([1.0])
    if kind == "covariate":
        return np.column_stack([np.ones(n), rng.standard_normal(n)]), np.array([0.0, 1.0])
    g = np.repeat([1.0, 0.0], n // 2)
    return np.column_stack([g, 1 - g]), np.array([1.0, -1.0])


def variances(n, k, decades, rng):
    half = decades / 2 * np.log(10.0)
    return np.exp(rng.uniform(-half, half, (n, 1))) * rng.uniform(0.8, 1.25, (n, k))


def cell(kind, n, tau_rel, decades, n_sims, k, seed):
    rng = np.random.default_rng(seed)
    rates = {"ols": [], "wald": [], "hksj": [], "hksj_c": []}
    for _ in range(n_sims):
        X, c = design(kind, n, rng)
        V = variances(n, k, decades, rng)
        tau2 = tau_rel * np.median(V)
        Y = rng.standard_normal((n, k)) * np.sqrt(V + tau2)
        if kind == "paired":  # the differences of two maps per subject: variances add
            VB = variances(n, k, decades, rng)
            Y = Y - rng.standard_normal((n, k)) * np.sqrt(VB + tau2)
            V = V + VB
        fit = fit_mixed_effects(Y, V, X)
        dof = n - X.shape[1]
        effect = c @ fit.beta
        model_var = np.einsum("i,kij,j->k", c, fit.cov, c)
        for name, var in (("wald", model_var), ("hksj", fit.scale * model_var),
                          ("hksj_c", np.maximum(fit.scale, 1.0) * model_var)):
            rates[name].append((sps.t.sf(effect / np.sqrt(var), dof) < 0.05).mean())
        rates["ols"].append((contrast_maps(fit_group_model(Y, X), c)["p"] < 0.05).mean())
    return {m: (np.mean(r), np.std(r, ddof=1) / np.sqrt(n_sims)) for m, r in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=300)
    parser.add_argument("--voxels", type=int, default=200)
    parser.add_argument("--subjects", type=int, nargs="+", default=[8, 16, 30])
    parser.add_argument("--tau", type=float, nargs="+", default=[0.0, 0.1, 1.0, 4.0],
                        help="tau2 as multiples of the median first-level variance")
    parser.add_argument("--decades", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--designs", nargs="+", default=["one_sample", "two_sample", "covariate", "paired"])
    args = parser.parse_args()
    print(f"false positive rate (%) at one-sided p < 0.05, {args.sims} simulations x {args.voxels} voxels per cell")
    for i, (kind, n, decades, tau) in enumerate(itertools.product(args.designs, args.subjects, args.decades,
                                                                   args.tau)):
        out = cell(kind, n, tau, decades, args.sims, args.voxels, seed=1000 + i)
        print(f"{kind:10s} n={n:2d} spread={decades:g} decade(s) tau2/v={tau:3.1f}  "
              + "  ".join(f"{m} {v * 100:5.2f}±{s * 100:4.2f}" for m, (v, s) in out.items()), flush=True)


if __name__ == "__main__":
    main()
