"""The mixed-effects group model (core.mixed, core.group with group_model 'mixed') on arrays, against PyMARE's
``VarianceBasedLikelihoodEstimator(method="REML")``, the OLS path, the fixed-effects combination, null
simulations and a power comparison."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.glm import ContrastEstimate, combine_fixed_effects, contrast_statistics
from glmx_workflows.core.group import contrast_maps, fit_group_model, permutation_inference
from glmx_workflows.core import mixed as mixed_module
from glmx_workflows.core.mixed import fit_mixed_effects, restricted_loglik


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Both implementations of the REML steps: the compiled kernel (what an install with a C compiler uses) and
    the numpy path (without one)."""
    if request.param == "numpy":
        monkeypatch.setattr(mixed_module, "_reml", None)
    return request.param


def _data(n, k, seed, tau2_levels=(0.0, 0.05, 1.0, 4.0), p=2):
    """Effects with heterogeneous first-level variances and a mix of between-subject variances (0 included,
    so that many voxels have their REML optimum on the boundary)."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n)] + [rng.standard_normal(n) for _ in range(p - 1)])
    V = rng.uniform(0.2, 3.0, (n, k)) * rng.uniform(0.5, 2.0, (n, 1))
    tau2 = rng.choice(tau2_levels, k)
    Y = X @ rng.standard_normal((p, k)) + rng.standard_normal((n, k)) * np.sqrt(V + tau2)
    return Y, V, X


def _pymare(Y, V, X, knapp_hartung=False):
    from pymare.estimators import VarianceBasedLikelihoodEstimator

    # "wald": the model-based covariance (X'WX)^-1; "knapp-hartung" (PyMARE's default): that covariance times
    # r'Wr / (n - p), what glmx's variance and t maps use. A tight bracket so that PyMARE's own search error is
    # below the tolerances asserted
    correction = "knapp-hartung" if knapp_hartung else "wald"
    est = VarianceBasedLikelihoodEstimator(method="REML", small_sample_correction=correction, xtol=1e-12,
                                           maxiter=200)
    est.fit(Y, V, X)
    return (est.params_["fe_params"], np.moveaxis(est.params_["inv_cov"], 2, 0), est.params_["tau2"][0])


@pytest.mark.parametrize("n,p", [(12, 1), (15, 2), (20, 3)])
def test_mixed_equals_pymare_reml_including_boundary_voxels(n, p, kernel):
    Y, V, X = _data(n, 3000, seed=n, p=p)
    fit = fit_mixed_effects(Y, V, X)
    beta, cov, tau2 = _pymare(Y, V, X)
    boundary = fit.tau2 == 0
    assert 0.1 < boundary.mean() < 0.9  # both kinds of voxels are compared
    assert np.array_equal(boundary, tau2 == 0)
    # Our estimate is the maximiser: its restricted likelihood is never below PyMARE's (up to rounding);
    # PyMARE stops on a bracket of 1e-12 of its search interval, so tau2 agrees to ~1e-6 relative to the
    # total variance and beta / cov / t (smooth functions of tau2) to the same order.
    ll_ours = restricted_loglik(Y, V, X, fit.tau2)
    ll_ref = restricted_loglik(Y, V, X, tau2)
    assert (ll_ours - ll_ref).min() > -1e-9
    scale = V.mean(axis=0) + tau2
    assert np.abs(fit.tau2 - tau2).max() / scale.min() < 1e-5
    assert np.abs(fit.beta - beta).max() < 1e-5 * np.abs(beta).max()
    assert np.abs(fit.cov - cov).max() < 1e-5 * np.abs(cov).max()
    c = np.zeros(p)
    c[-1] = 1.0
    ours = contrast_maps(fit, c)
    # the maps' variance and t: PyMARE's Knapp-Hartung covariance (same tau2 and beta)
    _, cov_kh, _ = _pymare(Y, V, X, knapp_hartung=True)
    assert np.abs(fit.scale[:, None, None] * fit.cov - cov_kh).max() < 1e-5 * np.abs(cov_kh).max()
    t_ref = beta[-1] / np.sqrt(cov_kh[:, -1, -1])
    assert np.abs(ours["t"] - t_ref).max() < 1e-5 * max(1.0, np.abs(t_ref).max())
    assert np.allclose(ours["effect"], beta[-1], atol=1e-6) and np.allclose(ours["variance"], cov_kh[:, -1, -1],
                                                                          rtol=1e-5)
    # z and p "exactly as the OLS path": the t distribution with n - p degrees of freedom
    assert ours["dof"] == n - p
    assert np.allclose(ours["p"], sps.t.sf(ours["t"], n - p), rtol=1e-8, atol=1e-300)
    assert np.allclose(fit.tau2[~boundary], tau2[~boundary], rtol=1e-5)


def test_zero_within_subject_variance_equals_ols(kernel):
    Y, _, X = _data(14, 500, seed=3, p=3)
    mixed = fit_group_model(Y, X, model="mixed", variances=np.zeros_like(Y))
    ols = fit_group_model(Y, X)
    for c in ([1, 0, 0], [0, 1, -1], [[0, 1, 0], [0, 0, 1]]):
        a, b = contrast_maps(mixed, c), contrast_maps(ols, c)
        stat = "t" if np.ndim(c) == 1 else "F"
        for key in (stat, "z", "p") + (("effect", "variance") if stat == "t" else ()):
            assert np.abs(a[key] - b[key]).max() < 1e-8 * max(1.0, np.abs(b[key]).max()), (c, key)
        assert a["dof"] == b["dof"]


def test_no_between_subject_variance_and_equal_variances_is_the_fixed_effects_combination(kernel):
    rng = np.random.default_rng(5)
    n, k, v = 10, 400, 2.0
    # spread well below the within-subject variance: the REML optimum is tau2 = 0
    Y = 1.0 + rng.standard_normal((n, k)) * 0.3
    V = np.full((n, k), v)
    fit = fit_mixed_effects(Y, V, np.ones((n, 1)))
    assert np.all(fit.tau2 == 0)
    ours = contrast_maps(fit, [1.0])
    fixed = combine_fixed_effects([ContrastEstimate(effect=Y[i][None], variance=V[i], dof=1.0, stat_type="t")
                                   for i in range(n)])
    assert np.allclose(ours["effect"], fixed.effect[0], rtol=1e-12)
    # the model-based covariance (X'WX)^-1 is the fixed-effects variance; the maps scale it by the Knapp-Hartung
    # factor r'Wr / (n - 1) (here the spread of the effects against their known variance)
    assert np.allclose(fit.cov[:, 0, 0], fixed.variance, rtol=1e-12)
    q = ((Y - fixed.effect) ** 2 / v).sum(axis=0) / (n - 1)
    assert np.allclose(fit.scale, q, rtol=1e-12)
    assert np.allclose(ours["variance"], q * fixed.variance, rtol=1e-12)
    assert np.allclose(ours["t"] * np.sqrt(q), contrast_statistics(fixed)["stat"], rtol=1e-10)


def test_wald_test_is_the_model_based_covariance_of_the_issue_and_of_pymare():
    """group_mixed_test 'wald': the same REML fit, contrasts on (X'WX)^-1 with n - p degrees of freedom: PyMARE's
    Wald covariance, the fixed-effects combination when tau2 = 0 and the variances are equal, and the t that
    permutations permute."""
    Y, V, X = _data(15, 2000, seed=4)
    knha, wald = fit_mixed_effects(Y, V, X), fit_mixed_effects(Y, V, X, test="wald")
    assert wald.test == "wald" and knha.test == "knapp-hartung"
    for key in ("tau2", "beta", "cov"):
        assert np.array_equal(getattr(wald, key), getattr(knha, key))
    assert np.all(wald.scale == 1.0) and not np.allclose(knha.scale, 1.0)
    beta, cov, _ = _pymare(Y, V, X)
    ours = contrast_maps(wald, [0.0, 1.0])
    t_ref = beta[1] / np.sqrt(cov[:, 1, 1])
    assert np.abs(ours["t"] - t_ref).max() < 1e-5 * max(1.0, np.abs(t_ref).max())
    assert np.allclose(ours["variance"], cov[:, 1, 1], rtol=1e-5) and ours["dof"] == 15 - 2
    assert np.allclose(ours["p"], sps.t.sf(ours["t"], 13), rtol=1e-8, atol=1e-300)
    # round trip through the fit file keeps the test
    from glmx_workflows.core.mixed import MixedFit

    assert MixedFit.from_arrays(wald.to_arrays()).test == "wald"
    # tau2 = 0, equal variances: exactly the fixed-effects combination (effect, variance and t)
    rng = np.random.default_rng(5)
    n, k, v = 10, 300, 2.0
    Y0 = 1.0 + rng.standard_normal((n, k)) * 0.3
    V0 = np.full((n, k), v)
    fit = fit_mixed_effects(Y0, V0, np.ones((n, 1)), test="wald")
    assert np.all(fit.tau2 == 0)
    fixed = combine_fixed_effects([ContrastEstimate(effect=Y0[i][None], variance=V0[i], dof=1.0, stat_type="t")
                                   for i in range(n)])
    got = contrast_maps(fit, [1.0])
    assert np.allclose(got["effect"], fixed.effect[0], rtol=1e-12)
    assert np.allclose(got["variance"], fixed.variance, rtol=1e-12)
    assert np.allclose(got["t"], contrast_statistics(fixed)["stat"], rtol=1e-10)
    # permutations permute the maps' own t
    Yp, Vp, _ = _data(7, 20, seed=11)
    out = permutation_inference(Yp, np.ones((7, 1)), [1.0], n_permutations=50, variances=Vp, mixed_test="wald")
    assert np.allclose(out["t"], contrast_maps(fit_mixed_effects(Yp, Vp, np.ones((7, 1)), test="wald"), [1.0])["t"],
                       rtol=1e-10)
    with pytest.raises(GlmxError, match="unknown mixed-effects test") as err:
        fit_group_model(Y, X, model="mixed", variances=V, mixed_test="flame2")
    assert err.value.field == "group_mixed_test"


def test_mixed_needs_valid_variances():
    Y, V, X = _data(8, 10, seed=1)
    with pytest.raises(GlmxError, match="variance maps"):
        fit_group_model(Y, X, model="mixed")
    V[2, 3] = np.nan
    with pytest.raises(GlmxError, match="non-negative variances"):
        fit_group_model(Y, X, model="mixed", variances=V)


def test_mixed_permutation_refits_and_matches_brute_force():
    """Exhaustive sign flips: each flipped data set refitted by the mixed model, one voxel at a time."""
    Y, V, _ = _data(7, 30, seed=11)
    X = np.ones((7, 1))
    out = permutation_inference(Y, X, [1.0], n_permutations=10_000, variances=V)
    assert out["exhaustive"] and out["n_permutations"] == 2 ** 7 - 1
    t_obs = contrast_maps(fit_mixed_effects(Y, V, X), [1.0])["t"]
    assert np.allclose(out["t"], t_obs, rtol=1e-10)
    signs = np.array([[1 - 2 * ((c >> i) & 1) for i in range(7)] for c in range(1, 2 ** 7)], float)
    null_max = np.array([contrast_maps(fit_mixed_effects(s[:, None] * Y, V, X), [1.0])["t"].max() for s in signs])
    assert np.allclose(np.sort(out["h0_max_t"]), np.sort(null_max), rtol=1e-8)
    expected = (1 + (null_max[None, :] >= t_obs[:, None] - 1e-10).sum(axis=1)) / 2 ** 7
    assert np.allclose(out["p_fwe"], expected)


def test_mixed_row_permutations_carry_the_variances_with_the_subjects():
    Y, V, X = _data(6, 20, seed=2)  # a covariate: row permutations
    out = permutation_inference(Y, X, [0.0, 1.0], n_permutations=10_000, variances=V)
    assert out["scheme"] == "permutation" and out["exhaustive"]
    from itertools import permutations

    from glmx_workflows.core.group import partition_design

    x, Z, _ = partition_design(X, [0.0, 1.0])
    R = Y - Z @ (Z.T @ Y)
    M = np.column_stack([x, Z])
    null_max = []
    for order in list(permutations(range(6)))[1:]:
        order = list(order)
        fit = fit_mixed_effects(R[order], V[order], M)
        null_max.append((fit.beta[0] / np.sqrt(fit.scale * fit.cov[:, 0, 0])).max())
    assert np.allclose(np.sort(out["h0_max_t"]), np.sort(null_max), rtol=1e-8)


def _null_sim(design, n, k, seed, tau2, decades=1.0):
    """One simulated group data set of k independent voxels, no effect: each subject's first-level variance drawn
    log-uniformly over ``decades`` around 1 (shared by its voxels up to +-25 %), between-subject variance tau2."""
    rng = np.random.default_rng(seed)
    if design == "one_sample":
        X, c = np.ones((n, 1)), [1.0]
    elif design == "covariate":
        X, c = np.column_stack([np.ones(n), rng.standard_normal(n)]), [0.0, 1.0]
    elif design == "paired":  # the one-sample test of A - B: variances of the differences add
        X, c = np.ones((n, 1)), [1.0]
    else:
        g = np.repeat([1.0, 0.0], n // 2)
        X, c = np.column_stack([g, 1 - g]), [1.0, -1.0]
    half = decades / 2 * np.log(10.0)
    V = np.exp(rng.uniform(-half, half, (n, 1))) * rng.uniform(0.8, 1.25, (n, k))
    if design == "paired":
        VB = np.exp(rng.uniform(-half, half, (n, 1))) * rng.uniform(0.8, 1.25, (n, k))
        Y = (rng.standard_normal((n, k)) * np.sqrt(V + tau2) - rng.standard_normal((n, k)) * np.sqrt(VB + tau2))
        return Y, V + VB, X, c
    return rng.standard_normal((n, k)) * np.sqrt(V + tau2), V, X, c


@pytest.mark.parametrize("design", ["one_sample", "covariate", "two_sample", "paired"])
def test_null_false_positive_rate(design):
    """200 simulated null data sets of 100 voxels per design, first-level variances spread over a decade across
    the 16 subjects, between-subject variance 0 and equal to the median first-level variance.

    The voxels of one simulation share its subjects' variances (and covariate), so the Monte Carlo error of a
    rate comes from the spread of the 200 per-simulation rates (SE ~0.15 %), not from a binomial over voxels.
    OLS and mixed (t with the Knapp-Hartung / HKSJ covariance on n - p degrees of freedom) are within 3 SE of
    5 %, plus, for mixed at tau2 = v only, 0.6 % of known small-sample excess: in simulations of 60,000
    voxels per cell (benchmarks/null_calibration.py, README.rst) HKSJ gives 5.0 % at tau2 = 0 and 5.3-5.5 %
    at tau2 = v with n = 16 and a decade of variance spread (the t reference ignores the extra variability of
    r'Wr when tau2 is estimated), against 3.2 % and 5.3-5.9 % for the model-based (FLAME1 / "wald") covariance.
    """
    n, k, n_sims = 16, 100, 200
    for tau2, allowance in ((0.0, 0.0), (1.0, 0.006)):
        per_sim = {"ols": [], "mixed": []}
        for sim in range(n_sims):
            Y, V, X, c = _null_sim(design, n, k, 1000 * sim + int(tau2), tau2)
            for model in per_sim:
                per_sim[model].append((contrast_maps(fit_group_model(Y, X, model, V), c)["p"] < 0.05).mean())
        for model, r in per_sim.items():
            rate, se = float(np.mean(r)), float(np.std(r, ddof=1) / np.sqrt(n_sims))
            assert abs(rate - 0.05) < 3 * se + (allowance if model == "mixed" else 0.0), (design, tau2, model,
                                                                                         rate, se)


def test_mixed_has_more_power_than_ols_with_heterogeneous_variances():
    """A planted effect, subjects' first-level variances over two decades: at thresholds that give each model a
    5 % false positive rate on the matching null data (size-adjusted, so that calibration cannot explain the
    difference), and at the nominal t threshold, the mixed model finds the effect in more voxels."""
    n, k = 12, 500
    power = {}
    for model in ("ols", "mixed"):
        null, alt = [], []
        for sim in range(20):
            Y, V, X, c = _null_sim("one_sample", n, k, sim, 0.1, decades=2.0)
            null.append(contrast_maps(fit_group_model(Y, X, model, V), c)["t"])
            alt.append(contrast_maps(fit_group_model(Y + 0.5, X, model, V), c)["t"])
        null, alt = np.concatenate(null), np.concatenate(alt)
        power[model] = ((alt > np.quantile(null, 0.95)).mean(), (alt > sps.t.isf(0.05, n - 1)).mean())
    assert power["mixed"][0] > power["ols"][0] + 0.15, power
    assert power["mixed"][1] > power["ols"][1] + 0.15, power


def test_rank_deficient_design_names_the_dependent_columns():
    import pandas as pd

    from glmx_workflows.core.group import check_design

    rng = np.random.default_rng(0)
    age = rng.standard_normal(10)
    design = pd.DataFrame({"intercept": np.ones(10), "age": age, "iq": rng.standard_normal(10),
                           "months": 12 * age})
    with pytest.raises(GlmxError) as err:
        check_design(design, source="participants.tsv")
    line = err.value.one_line()
    # the first level's rank rule (core.design.collinear_sets), shared by the group design
    assert "collinear regressors {age, months}" in line and "participants.tsv" in line
    assert "iq" not in line and "intercept" not in line.split("participants.tsv")[1]


def _nilearn_f(Y, X, C):
    """nilearn's second-level F (and z) on a tiny volume holding the voxels of Y."""
    import nibabel as nb
    import pandas as pd
    from nilearn.glm.second_level import SecondLevelModel

    k = Y.shape[1]
    affine = np.eye(4)
    mask = nb.Nifti1Image(np.ones((k, 1, 1), np.uint8), affine)
    imgs = [nb.Nifti1Image(row.reshape(k, 1, 1), affine) for row in Y]
    design = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])])
    model = SecondLevelModel(mask_img=mask).fit(imgs, design_matrix=design)
    out = model.compute_contrast(np.asarray(C, float), second_level_stat_type="F", output_type="all")
    return out["stat"].get_fdata().ravel(), out["z_score"].get_fdata().ravel()


def test_group_f_contrast_equals_nilearn_and_mixed_f_with_zero_variances():
    Y, _, X = _data(14, 300, seed=9, p=3)
    C = [[0, 1, 0], [0, 0, 1]]
    ols = contrast_maps(fit_group_model(Y, X), C)
    F_ref, z_ref = _nilearn_f(Y, X, C)
    assert np.abs(ols["F"] - F_ref).max() < 1e-4 * max(1.0, F_ref.max())
    assert np.abs(ols["z"] - z_ref).max() < 1e-4
    mixed = contrast_maps(fit_group_model(Y, X, "mixed", np.zeros_like(Y)), C)
    assert np.abs(mixed["F"] - F_ref).max() < 1e-4 * max(1.0, F_ref.max())
    assert np.abs(mixed["z"] - z_ref).max() < 1e-4


def _within_data(n, conditions, seed):
    rng = np.random.default_rng(seed)
    k = 200
    subject = rng.standard_normal((n, k)) * 2.0
    Y = np.concatenate([subject + 0.3 * j + rng.standard_normal((n, k)) for j in range(len(conditions))])
    V = rng.uniform(0.2, 2.0, Y.shape)
    subs = [f"{i + 1:02d}" for i in range(n)] * len(conditions)
    conds = [c for c in conditions for _ in range(n)]
    return Y, V, subs, conds


def _explicit_nilearn_design(subs, conds, kept):
    """nilearn's explicit design: indicators of the contrasts in ``kept`` (the others are the baseline), then one
    indicator column per subject."""
    import pandas as pd

    cols = {c: [float(x == c) for x in conds] for c in kept}
    cols.update({f"s{s}": [float(x == s) for x in subs] for s in sorted(set(subs))})
    return pd.DataFrame(cols)


def _nilearn_second_level(Y, design, C, stat_type):
    import nibabel as nb
    from nilearn.glm.second_level import SecondLevelModel

    k = Y.shape[1]
    mask = nb.Nifti1Image(np.ones((k, 1, 1), np.uint8), np.eye(4))
    imgs = [nb.Nifti1Image(row.reshape(k, 1, 1), np.eye(4)) for row in Y]
    model = SecondLevelModel(mask_img=mask).fit(imgs, design_matrix=design)
    out = model.compute_contrast(np.asarray(C, float), second_level_stat_type=stat_type, output_type="all")
    return {key: out[key].get_fdata().ravel() for key in ("stat", "z_score")}


def test_paired_design_equals_nilearn_with_subject_indicators_and_the_differences():
    from glmx_workflows.core.group import group_contrasts, within_subject_design

    Y, V, subs, conds = _within_data(9, ["A", "B"], seed=4)
    design, main = within_subject_design(subs, conds, "paired")
    con = group_contrasts(design.columns, main)[0]
    assert con["stat"] == "t" and con["weights"][:2] == [1.0, -1.0]
    ours = contrast_maps(fit_group_model(Y, design.to_numpy()), con["weights"])
    explicit = _explicit_nilearn_design(subs, conds, ["A"])
    ref = _nilearn_second_level(Y, explicit, [1.0] + [0.0] * (explicit.shape[1] - 1), "t")
    assert np.abs(ours["z"] - ref["z_score"]).max() < 1e-4 and np.abs(ours["t"] - ref["stat"]).max() < 1e-4
    # the one-sample test of the within-subject differences, for OLS and for the mixed model (REML removes the
    # subject effects exactly as the differences do: tau2 of the differences is twice the model's)
    diff = Y[:9] - Y[9:]
    one = contrast_maps(fit_group_model(diff, np.ones((9, 1))), [1.0])
    assert np.allclose(ours["t"], one["t"], atol=1e-9)
    mixed_fit = fit_group_model(Y, design.to_numpy(), "mixed", V)
    mixed = contrast_maps(mixed_fit, con["weights"])
    diff_fit = fit_group_model(diff, np.ones((9, 1)), "mixed", V[:9] + V[9:])
    assert np.allclose(mixed["t"], contrast_maps(diff_fit, [1.0])["t"], atol=1e-6)
    assert np.allclose(2 * mixed_fit.tau2, diff_fit.tau2, atol=1e-6 * diff_fit.tau2.max())


def test_repeated_design_f_equals_nilearn_and_mixed_f_runs():
    from glmx_workflows.core.group import group_contrasts, within_subject_design

    Y, V, subs, conds = _within_data(8, ["A", "B", "C"], seed=6)
    design, main = within_subject_design(subs, conds, "repeated")
    cons = group_contrasts(design.columns, main, {"AvC": "A - C"})
    assert cons[0]["stat"] == "F" and cons[1]["stat"] == "t"
    fit = fit_group_model(Y, design.to_numpy())
    ours = contrast_maps(fit, cons[0]["weights"])
    explicit = _explicit_nilearn_design(subs, conds, ["A", "B"])
    C = np.zeros((2, explicit.shape[1]))
    C[0, 0] = C[1, 1] = 1.0
    ref = _nilearn_second_level(Y, explicit, C, "F")
    assert np.abs(ours["F"] - ref["stat"]).max() < 1e-4 * max(1.0, ref["stat"].max())
    assert np.abs(ours["z"] - ref["z_score"]).max() < 1e-4
    ref_t = _nilearn_second_level(Y, explicit, [1.0] + [0.0] * (explicit.shape[1] - 1), "t")
    assert np.abs(contrast_maps(fit, cons[1]["weights"])["z"] - ref_t["z_score"]).max() < 1e-4
    mixed = contrast_maps(fit_group_model(Y, design.to_numpy(), "mixed", V), cons[0]["weights"])
    assert np.isfinite(mixed["F"]).all() and mixed["dof"] == 24 - 10
    zero = contrast_maps(fit_group_model(Y, design.to_numpy(), "mixed", np.zeros_like(Y)), cons[0]["weights"])
    assert np.abs(zero["F"] - ref["stat"]).max() < 1e-4 * max(1.0, ref["stat"].max())


def test_within_subject_design_refuses_incomplete_subjects():
    from glmx_workflows.core.group import within_subject_design

    with pytest.raises(GlmxError, match="sub-02 lacks the first-level contrast"):
        within_subject_design(["01", "02", "01", "03", "03"], ["A", "A", "B", "A", "B"], "paired")
    with pytest.raises(GlmxError, match="two first-level contrasts"):
        within_subject_design(["01", "01", "01"], ["A", "B", "C"], "paired")


@pytest.mark.parametrize("model", ["ols", "mixed"])
def test_per_voxel_subject_sets_equal_the_fit_on_the_present_subjects(model, kernel):
    Y, V, X = _data(12, 60, seed=21, p=2)
    rng = np.random.default_rng(3)
    present = np.ones(Y.shape, bool)
    missing_k = rng.integers(0, 4, Y.shape[1])  # 0 to 3 subjects missing per voxel
    for j, k in enumerate(missing_k):
        present[rng.choice(12, k, replace=False), j] = False
    Y_holes = np.where(present, Y, np.nan)
    fit = fit_group_model(np.nan_to_num(Y_holes), X, model, V if model == "mixed" else None, present=present)
    maps = contrast_maps(fit, [0.0, 1.0])
    assert np.array_equal(fit.n, present.sum(axis=0))
    for j in range(Y.shape[1]):
        rows = present[:, j]
        alone = fit_group_model(Y[rows, j:j + 1], X[rows], model, V[rows, j:j + 1] if model == "mixed" else None)
        ref = contrast_maps(alone, [0.0, 1.0])
        assert ref["dof"] == rows.sum() - 2
        for key in ("effect", "variance", "t", "z", "p"):
            assert abs(maps[key][j] - ref[key][0]) <= 1e-8 * max(1.0, abs(ref[key][0])), (j, key)


def test_per_voxel_subject_sets_permutations_move_the_absences_with_the_subjects():
    Y, V, _ = _data(6, 12, seed=8)
    X = np.ones((6, 1))
    present = np.ones(Y.shape, bool)
    present[0, :4] = False
    present[3, 6:] = False
    out = permutation_inference(np.where(present, Y, 0.0), X, [1.0], n_permutations=1000, variances=V,
                                present=present)
    assert out["exhaustive"] and out["n_permutations"] == 63
    signs = np.array([[1 - 2 * ((c >> i) & 1) for i in range(6)] for c in range(1, 64)], float)
    null_max = [contrast_maps(fit_group_model(s[:, None] * np.where(present, Y, 0.0), X, "mixed", V,
                                              present=present), [1.0])["z"].max() for s in signs]
    assert np.allclose(np.sort(out["h0_max_t"]), np.sort(null_max), rtol=1e-8)
    with pytest.raises(GlmxError, match="group_min_subjects"):
        permutation_inference(Y, np.column_stack([X, np.arange(6.0)]), [0.0, 1.0], present=present)


def test_bimodal_restricted_likelihood_gets_the_higher_maximum(kernel):
    """Voxels whose restricted likelihood has a local maximum at tau2 = 0 and a higher one inside (found by a
    dense grid): the fit returns the inside one. PyMARE's bracketing search finds it too, except where the
    inside maximum is very close to 0 (there it returns 0, a lower likelihood)."""
    rng = np.random.default_rng(0)
    n, k = 20, 16_000
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    V = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (n, 1))) * rng.uniform(0.8, 1.25, (n, k))
    Y = rng.standard_normal((n, k)) * np.sqrt(V + rng.choice([0.0, 0.5, 2.0], k))
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 20.0, 60)])
    ll = np.stack([restricted_loglik(Y, V, X, np.full(k, g)) for g in grid])
    bimodal = (ll[0] > ll[1]) & (ll.argmax(axis=0) > 1)
    assert bimodal.sum() >= 3
    Yb, Vb = Y[:, bimodal], V[:, bimodal]
    fit = fit_mixed_effects(Yb, Vb, X)
    assert np.all(fit.tau2 > 0)
    assert np.all(restricted_loglik(Yb, Vb, X, fit.tau2) >= ll[:, bimodal].max(axis=0) - 1e-12)
    _, _, tau2_ref = _pymare(Yb, Vb, X)
    gain = restricted_loglik(Yb, Vb, X, fit.tau2) - restricted_loglik(Yb, Vb, X, tau2_ref)
    assert gain.min() > -1e-12
    same = gain < 1e-9
    assert same.sum() >= 3 and np.allclose(fit.tau2[same], tau2_ref[same], rtol=1e-5)
    assert np.all(tau2_ref[~same] == 0)
    # the whole set: never below the grid's best point
    full = fit_mixed_effects(Y, V, X)
    assert np.all(restricted_loglik(Y, V, X, full.tau2) >= ll.max(axis=0) - 1e-9)


def test_mixed_tfce_and_cluster_mass_use_the_mixed_t_maps():
    from glmx_workflows.core.tfce import tfce

    rng = np.random.default_rng(12)
    mask = np.zeros((6, 6, 5), bool)
    mask[1:-1, 1:-1, 1:-1] = True
    n, k = 7, int(mask.sum())
    V = rng.uniform(0.2, 3.0, (n, k))
    Y = 0.8 + rng.standard_normal((n, k)) * np.sqrt(V + 0.3)
    X = np.ones((n, 1))
    out = permutation_inference(Y, X, [1.0], mask=mask, n_permutations=50, seed=1, variances=V,
                                methods=("perm_fwe", "perm_cluster_mass", "tfce"), cluster_threshold=2.0)
    t = contrast_maps(fit_mixed_effects(Y, V, X), [1.0])["t"]
    assert np.allclose(out["t"], t, rtol=1e-10)
    vol = np.zeros(mask.shape)
    vol[mask] = t
    assert np.allclose(out["tfce"], tfce(vol)[mask], rtol=1e-10)
    assert out["p_tfce"].min() < 0.1 and out["p_cluster_mass"].min() < 0.1 and out["h0_max_mass"].shape == (50,)


def _ols_t(M, Y):
    """t of the first column of M, from least squares (numpy.linalg.lstsq), every column of Y."""
    b, *_ = np.linalg.lstsq(M, Y, rcond=None)
    r = Y - M @ b
    dof = M.shape[0] - np.linalg.matrix_rank(M)
    cov = np.linalg.pinv(M.T @ M)
    return b[0] / np.sqrt(cov[0, 0] * (r * r).sum(axis=0) / dof)


def test_paired_permutations_are_the_sign_flips_of_the_differences():
    """Exhaustive within-subject permutations of a paired design (swapping each subject's two maps) give the null
    distribution of the one-sample sign-flip test of the differences, for OLS and for the mixed model (whose
    difference variances V_A + V_B do not change when a subject's two maps swap)."""
    from itertools import product

    from glmx_workflows.core.group import group_contrasts, within_subject_design

    n = 7
    Y, V, subs, conds = _within_data(n, ["A", "B"], seed=13)
    Y, V = Y[:, :40], V[:, :40]
    design, main = within_subject_design(subs, conds, "paired")
    c = group_contrasts(design.columns, main)[0]["weights"]
    d, vd = Y[:n] - Y[n:], V[:n] + V[n:]
    signs = np.array([s for s in product([1.0, -1.0], repeat=n)][1:])
    for model in ("ols", "mixed"):
        out = permutation_inference(Y, design.to_numpy(), c, n_permutations=10_000, blocks=subs,
                                    variances=V if model == "mixed" else None)
        assert out["scheme"] == "within_subject" and out["exhaustive"] and out["n_permutations"] == 2 ** n - 1
        if model == "ols":
            ref = np.array([_ols_t(np.ones((n, 1)), s[:, None] * d).max() for s in signs])
        else:
            ref = np.array([contrast_maps(fit_mixed_effects(s[:, None] * d, vd, np.ones((n, 1))), [1.0])["t"].max()
                            for s in signs])
        assert np.allclose(np.sort(out["h0_max_t"]), np.sort(ref), rtol=1e-6, atol=1e-6), model
        expected = (1 + (ref[None, :] >= out["t"][:, None] - 1e-6).sum(axis=1)) / 2 ** n
        assert np.allclose(out["p_fwe"], expected) and out["p_fwe"].min() >= 1 / 2 ** n


def test_repeated_permutations_permute_condition_labels_within_subjects():
    """Exhaustive permutations of each subject's three condition labels (6^4 - 1) against a first-principles
    Freedman-Lane reference: residuals on the nuisance space (design directions orthogonal to the contrast, from
    scipy's null_space), permuted within subjects, refitted by least squares."""
    from itertools import permutations, product

    from scipy.linalg import null_space

    from glmx_workflows.core.group import group_contrasts, within_subject_design

    n, conds3 = 4, ["A", "B", "C"]
    Y, _, subs, conds = _within_data(n, conds3, seed=17)
    Y = Y[:, :25]
    design, main = within_subject_design(subs, conds, "repeated")
    c = np.array(group_contrasts(design.columns, main, {"AvC": "A - C"})[1]["weights"])
    X = design.to_numpy()
    out = permutation_inference(Y, X, c, n_permutations=10_000, blocks=subs)
    assert out["exhaustive"] and out["n_permutations"] == 6 ** n - 1
    x = X @ c / (c @ c)
    Z = X @ null_space(c[None, :])
    R = Y - Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]
    M = np.column_stack([x, Z])
    rows = {s: [i for i, t in enumerate(subs) if t == s] for s in dict.fromkeys(subs)}
    ref = []
    for combo in list(product(*[list(permutations(r)) for r in rows.values()]))[1:]:
        order = np.arange(len(subs))
        for r, perm in zip(rows.values(), combo):
            order[r] = perm
        ref.append(_ols_t(M, R[order]).max())
    assert np.allclose(np.sort(out["h0_max_t"]), np.sort(ref), rtol=1e-8)
    assert np.allclose(out["t"], _ols_t(M, R), rtol=1e-8)
    # a contrast that compares subjects (the mean of A) has no within-subject permutation
    with pytest.raises(GlmxError, match="within-subject permutations"):
        permutation_inference(Y, X, np.eye(X.shape[1])[0], blocks=subs)


def test_the_compiled_kernel_is_built():
    """pip install builds core/_reml.c (setup.py); without it every mixed fit silently takes the slower numpy
    path."""
    assert mixed_module._reml is not None, "glmx_workflows.core._reml was not built: reinstall with a C compiler"
    # a failed rebuild after an edit leaves the previous build importable
    source = Path(mixed_module.__file__).with_name("_reml.c")
    if source.is_file():
        assert mixed_module._reml.SOURCE_SHA256 == hashlib.sha256(source.read_bytes()).hexdigest(), (
            f"{mixed_module._reml.__file__} was built from another version of {source}: rebuild it "
            "(pip install -e . or python setup.py build_ext --inplace) and read the compiler's errors")


@pytest.mark.parametrize("p", [1, 2, 4, 6])
def test_compiled_kernel_equals_the_numpy_path(p, monkeypatch):
    """The two implementations take the same steps: equal to rounding on every kind of voxel (boundary and
    interior tau2, second maxima, zero first-level variances, absent subjects, voxels that cannot be estimated),
    for p of 1 and 2 (the written-out loops) and above (the general ones)."""
    if mixed_module._reml is None:
        pytest.skip("no compiled kernel (test_the_compiled_kernel_is_built fails)")
    n, k = 16, 3000
    Y, V, X = _data(n, k, seed=40 + p, p=p)
    V[:3, :200] = 0.0  # zero first-level variances: no evaluation at tau2 = 0
    rng = np.random.default_rng(p)
    present = rng.random((n, k)) > 0.15
    present[:, :5] = False
    present[: p + 1, 5:10] = True  # exactly p + 1 present subjects: one residual degree of freedom
    present[:, 10] = False
    present[: p, 10] = True  # p present: not estimable
    for pres in (None, present):
        compiled = fit_mixed_effects(Y, V, X, present=pres)
        with monkeypatch.context() as m:
            m.setattr(mixed_module, "_reml", None)
            numpy_path = fit_mixed_effects(Y, V, X, present=pres)
        assert compiled.iterations == numpy_path.iterations
        # Sums taken in another order differ in the last bits: equal to 1e-9 where the weights are of one size.
        # Voxels with zero first-level variances (columns < 200) and tau2 near 0 have weights ~1 / tau2 ~ 1e5
        # next to ~1 (there even the restricted likelihood is only good to ~1e-4), which amplifies that up to
        # ~1e-6 in the Knapp-Hartung factor: there tau2 agrees to 1e-9 of the total variance and the rest within
        # the stopping rule's own error (3e-6).
        total = V.mean(axis=0) + np.nan_to_num(numpy_path.tau2)
        ok = ~np.isnan(numpy_path.tau2)
        assert np.abs(compiled.tau2 - numpy_path.tau2)[ok].max() <= 1e-9 * total[ok].max()
        tight = np.arange(k) >= 200
        for name in ("tau2", "beta", "cov", "scale", "dof", "n"):
            a, b = getattr(compiled, name), getattr(numpy_path, name)
            if name == "beta":  # voxels first
                a, b = a.T, b.T
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
            a, b = a[tight], b[tight]
            both = ~np.isnan(b)
            size = np.abs(b[both]).max() if both.any() else 1.0
            assert np.abs(a[both] - b[both]).max() <= 1e-9 * max(size, 1.0), name
        zero = ok & ~tight
        assert np.abs(compiled.scale - numpy_path.scale)[zero].max() < 3e-6
        assert np.abs(compiled.beta - numpy_path.beta)[:, zero].max() < 3e-6 * np.nanmax(np.abs(numpy_path.beta))
        assert np.array_equal(compiled.tau2 == 0, numpy_path.tau2 == 0)
        if pres is not None:
            assert np.isnan(compiled.tau2[:5]).all() and np.isnan(compiled.tau2[10])
            assert np.isfinite(compiled.tau2[5:10]).all()
