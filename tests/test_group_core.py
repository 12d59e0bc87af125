"""core.group and core.tfce on arrays, against nilearn (SecondLevelModel, permuted_ols,
non_parametric_inference, calculate_tfce, get_clusters_table, fdr_threshold), scipy, and brute force."""

import itertools
import math
import warnings

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy import stats as sps

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.clusters import cluster_extent_mask, cluster_table
from glmx_workflows.core.group import (bonferroni, contrast_maps, fdr_qvalues, fit_group_model, group_contrasts,
                                       group_design, partition_design, permutation_inference, t_threshold)
from glmx_workflows.core.tfce import cluster_measures, tfce

SHAPE = (9, 10, 8)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def _mask():
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return mask


def _maps(n, seed, effect=0.0, smooth=1.0):
    """Smooth random subject maps with an optional blob of ``effect`` in a corner."""
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.standard_normal((n,) + SHAPE), (0, smooth, smooth, smooth)) * 3
    data[:, 2:5, 2:5, 2:5] += effect
    return data * _mask()


def _participants(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
                         "age": rng.integers(20, 60, n).astype(float),
                         "group": ["control", "patient"] * (n // 2) + ["control"] * (n % 2)})


def _nilearn_second_level(data, design, contrast):
    from nilearn.glm.second_level import SecondLevelModel

    mask_img = nb.Nifti1Image(_mask().astype(np.uint8), AFFINE)
    imgs = [nb.Nifti1Image(d, AFFINE) for d in data]
    model = SecondLevelModel(mask_img=mask_img).fit(imgs, design_matrix=design.reset_index(drop=True))
    return model.compute_contrast(np.asarray(contrast, float), output_type="all")


# ---------------------------------------------------------------------------------------------- design


def test_design_centres_covariates_and_codes_groups():
    table = _participants(6)
    design, mean = group_design(table, ["01", "02", "03", "04", "05", "06"], ["age", "group"])
    assert list(design.columns) == ["age", "group_control", "group_patient"]
    assert abs(design["age"].mean()) < 1e-12
    assert np.allclose(design["age"] + table["age"].mean(), table["age"])
    assert design["group_control"].tolist() == [1, 0, 1, 0, 1, 0]
    assert mean == {"group_control": 0.5, "group_patient": 0.5}
    design, mean = group_design(table, ["01", "03", "05"], [])
    assert list(design.columns) == ["intercept"] and mean == {"intercept": 1.0}
    cons = group_contrasts(["intercept", "age"], {"intercept": 1.0}, {"older": "age", "deactivation": "-intercept"})
    assert [(c["name"], c["desc"], c["weights"]) for c in cons] == [
        ("mean", None, [1.0, 0.0]), ("older", "older", [0.0, 1.0]), ("deactivation", "deactivation", [-1.0, 0.0])]


def test_missing_covariate_is_one_line_naming_subject_and_column():
    table = _participants(6)
    table.loc[2, "age"] = np.nan
    with pytest.raises(GlmxError) as err:
        group_design(table, ["01", "02", "03", "04"], ["age"], source="participants.tsv")
    line = err.value.one_line()
    assert "\n" not in line and "sub-03" in line and "'age'" in line and "participants.tsv" in line
    # the same subject left out: no error
    group_design(table, ["01", "02", "04", "05"], ["age"])
    with pytest.raises(GlmxError, match="sub-09 is not listed"):
        group_design(table, ["01", "02", "09"], ["age"])
    with pytest.raises(GlmxError, match="'agee'.*columns: age, group"):
        group_design(table, ["01", "02", "03"], ["agee"])
    table["site"] = 1.0
    with pytest.raises(GlmxError, match="'site' is constant"):
        group_design(table, ["01", "02", "03", "04"], ["site"])
    with pytest.raises(GlmxError, match="more subjects than design columns"):
        group_design(table, ["01", "02"], ["age"])
    with pytest.raises(GlmxError, match="'bogus', not a column"):
        group_contrasts(["intercept"], {"intercept": 1.0}, {"x": "bogus"})


# ---------------------------------------------------------------------------------------------- fit


@pytest.mark.parametrize("kind", ["one_sample", "covariate", "two_sample"])
def test_group_fit_matches_second_level_model(kind):
    n = 10
    data = _maps(n, seed=3, effect=1.0)
    table = _participants(n, seed=4)
    regs = {"one_sample": [], "covariate": ["age"], "two_sample": ["group", "age"]}[kind]
    design, mean = group_design(table, [f"{i + 1:02d}" for i in range(n)], regs)
    formulas = {"covariate": {"older": "age"}, "two_sample": {"pVc": "group_patient - group_control"},
                "one_sample": {"neg": "-intercept"}}[kind]
    fit = fit_group_model(data[:, _mask()], design.to_numpy())
    for con in group_contrasts(design.columns, mean, formulas):
        ours = contrast_maps(fit, con["weights"])
        ref = _nilearn_second_level(data, design, con["weights"])
        for ours_key, ref_key in (("z", "z_score"), ("t", "stat"), ("effect", "effect_size"),
                                  ("variance", "effect_variance"), ("p", "p_value")):
            diff = np.abs(ours[ours_key] - ref[ref_key].get_fdata()[_mask()]).max()
            assert diff < 1e-4, (kind, con["name"], ours_key, diff)


# ---------------------------------------------------------------------------------------------- thresholds


def test_fdr_and_bonferroni_against_references():
    from nilearn.glm.thresholding import fdr_threshold

    rng = np.random.default_rng(0)
    z = np.concatenate([rng.standard_normal(900), rng.normal(3.5, 1, 100)])
    p = sps.norm.sf(z)
    q = fdr_qvalues(p)
    assert np.allclose(q, sps.false_discovery_control(p, method="bh"), atol=1e-12)
    thr = fdr_threshold(z, 0.05)
    assert np.array_equal(q <= 0.05, z >= thr)
    assert np.allclose(bonferroni(p), np.minimum(p * 1000, 1))


def test_cluster_extent_and_table_against_nilearn():
    from nilearn.image import threshold_img
    from nilearn.reporting import get_clusters_table

    rng = np.random.default_rng(5)
    stat = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0) * 6 * _mask()
    ref = get_clusters_table(nb.Nifti1Image(stat, AFFINE), 1.5, cluster_threshold=3, min_distance=8.0)
    ours = cluster_table(stat, AFFINE, 1.5, min_size=3, min_distance=8.0)
    assert len(ours) > 2
    main_ref = ref[ref["Cluster ID"].astype(str).str.isdigit()]
    main = ours[ours["cluster_id"].str.isdigit()]
    assert np.allclose(main[["x", "y", "z", "peak_stat"]].to_numpy(float),
                       main_ref[["X", "Y", "Z", "Peak Stat"]].to_numpy(float))
    assert np.allclose(main["size_mm3"].to_numpy(float), main_ref["Cluster Size (mm3)"].to_numpy(float))
    assert np.array_equal(main["size_voxels"].to_numpy(float) * 64, main["size_mm3"].to_numpy(float))
    # sub-peaks: same positions as nilearn's
    assert sorted(ours["cluster_id"]) == sorted(ref["Cluster ID"].astype(str))
    assert np.allclose(ours[["x", "y", "z", "peak_stat"]].to_numpy(float),
                       ref[["X", "Y", "Z", "Peak Stat"]].to_numpy(float))
    kept = cluster_extent_mask(stat, 1.5, 3)
    ref_img = threshold_img(nb.Nifti1Image(stat, AFFINE), 1.5, cluster_threshold=3, two_sided=False,
                            copy_header=True)
    assert np.array_equal(kept, ref_img.get_fdata() > 0)


# ---------------------------------------------------------------------------------------------- TFCE


@pytest.mark.parametrize("two_sided", [False, True])
def test_tfce_and_cluster_measures_equal_nilearn(two_sided):
    from nilearn.mass_univariate._utils import calculate_cluster_measures, calculate_tfce

    maps = _maps(4, seed=7)
    struct = ndimage.generate_binary_structure(3, 1)
    ref = np.moveaxis(calculate_tfce(np.moveaxis(maps, 0, -1), struct, two_sided_test=two_sided), -1, 0)
    assert np.abs(tfce(maps, two_sided=two_sided) - ref).max() <= 1e-9 * np.abs(ref).max()
    sizes, masses = calculate_cluster_measures(np.moveaxis(maps, 0, -1), 1.0, struct, two_sided_test=two_sided)
    ours = cluster_measures(maps, 1.0, two_sided=two_sided)
    assert np.array_equal(ours[0], sizes) and np.allclose(ours[1], masses)


# ---------------------------------------------------------------------------------------------- permutations


def _brute_force_t(Y, X, c):
    """t of c'b for one data set, by lstsq (the reference knows nothing of the vectorised algebra)."""
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ beta
    dof = X.shape[0] - np.linalg.matrix_rank(X)
    var = (resid ** 2).sum(0) / dof * (c @ np.linalg.pinv(X.T @ X) @ c)
    return (c @ beta) / np.sqrt(var)


def test_exhaustive_sign_flips_equal_brute_force():
    n = 6
    data = _maps(n, seed=11, effect=1.5)
    Y = data[:, _mask()]
    X = np.ones((n, 1))
    out = permutation_inference(Y, X, [1.0], n_permutations=10_000, seed=0)
    assert out["exhaustive"] and out["n_permutations"] == 2 ** n - 1 and out["scheme"] == "sign_flip"
    maxima = np.array([_brute_force_t(np.array(s)[:, None] * Y, X, np.ones(1)).max()
                       for s in itertools.product([1, -1], repeat=n)])
    t_obs = _brute_force_t(Y, X, np.ones(1))
    exact = (maxima[None, :] >= t_obs[:, None] - 1e-9).mean(1)
    assert np.allclose(out["t"], t_obs, atol=1e-10)
    assert np.abs(out["p_fwe"] - exact).max() < 1e-12
    assert out["p_fwe"].min() == pytest.approx(1 / 2 ** n)


def test_exhaustive_permutations_with_covariate_equal_brute_force_freedman_lane():
    n = 6
    rng = np.random.default_rng(2)
    data = _maps(n, seed=12)
    Y = data[:, _mask()]
    age = rng.normal(40, 10, n)
    X = np.column_stack([np.ones(n), age - age.mean()])
    c = np.array([0.0, 1.0])
    Y = Y + 0.2 * (age - age.mean())[:, None]
    out = permutation_inference(Y, X, c, n_permutations=10_000)
    assert out["exhaustive"] and out["n_permutations"] == math.factorial(n) - 1
    # Freedman-Lane by hand: permute residuals of the nuisance model (intercept), refit the full model
    Z = np.ones((n, 1))
    fitted = Z @ np.linalg.lstsq(Z, Y, rcond=None)[0]
    resid = Y - fitted
    maxima = np.array([_brute_force_t(resid[list(perm)] + fitted, X, c).max()
                       for perm in itertools.permutations(range(n))])
    t_obs = _brute_force_t(Y, X, c)
    exact = (maxima[None, :] >= t_obs[:, None] - 1e-9).mean(1)
    assert np.abs(out["p_fwe"] - exact).max() < 1e-12


def test_seeded_and_chunk_independent():
    n = 14
    Y = _maps(n, seed=13, effect=0.5)[:, _mask()]
    X = np.ones((n, 1))
    a = permutation_inference(Y, X, [1.0], n_permutations=300, seed=4)
    b = permutation_inference(Y, X, [1.0], n_permutations=300, seed=4, max_chunk_bytes=1)
    c = permutation_inference(Y, X, [1.0], n_permutations=300, seed=5)
    assert not a["exhaustive"] and a["n_permutations"] == 300
    assert np.array_equal(a["p_fwe"], b["p_fwe"])
    assert not np.array_equal(a["h0_max_t"], c["h0_max_t"])


def test_partition_keeps_the_contrast_t():
    rng = np.random.default_rng(1)
    X = np.column_stack([np.repeat([1.0, 0.0], 5), np.repeat([0.0, 1.0], 5), rng.standard_normal(10)])
    Y = rng.standard_normal((10, 50))
    for c, flips in (([1, -1, 0], False), ([0.5, 0.5, 0], True), ([0, 0, 2], False)):
        x, Z, sign_flip = partition_design(X, np.array(c, float))
        assert sign_flip == flips
        M = np.column_stack([x, Z])
        assert np.allclose(_brute_force_t(Y, M, np.eye(M.shape[1])[0]), _brute_force_t(Y, X, np.array(c, float)))


# Monte Carlo tolerance. nilearn draws its permutations with its own generator, so its p-values and
# ours are two estimates of the same permutation distribution's tail. Both are empirical CDFs of the
# null maximum evaluated at the observed values; by the Dvoretzky-Kiefer-Wolfowitz inequality an
# empirical CDF of K draws is everywhere within eps = sqrt(log(2/delta) / (2K)) of the true one with
# probability 1 - delta. With delta = 1e-3 each estimate is within eps of the exact p-value (plus 1/K
# for the "+1" convention), hence the tolerance eps(K_ours) + eps(K_nilearn) + 2/K_min below: a
# failure means a real difference, not bad luck, with probability above 0.998.
def _dkw(k, delta=1e-3):
    return math.sqrt(math.log(2 / delta) / (2 * k))


def _nilearn_np(data, design, contrast, n_perm, **kwargs):
    from nilearn.glm.second_level import non_parametric_inference

    mask_img = nb.Nifti1Image(_mask().astype(np.uint8), AFFINE)
    imgs = [nb.Nifti1Image(d, AFFINE) for d in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return non_parametric_inference(imgs, design_matrix=design.reset_index(drop=True),
                                        second_level_contrast=contrast, mask=mask_img, n_perm=n_perm,
                                        random_state=0, n_jobs=1, **kwargs)


def test_one_sample_fwe_tfce_and_cluster_mass_agree_with_nilearn():
    n = 8  # 255 distinct non-identity sign flips: ours are enumerated (exact), nilearn draws 400
    data = _maps(n, seed=21, effect=1.2)
    design = pd.DataFrame({"intercept": np.ones(n)})
    k_nilearn = 400
    ref = _nilearn_np(data, design, "intercept", k_nilearn, tfce=True, threshold=0.01)
    ours = permutation_inference(data[:, _mask()], design.to_numpy(), [1.0], mask=_mask(), n_permutations=5000,
                                 methods=("perm_fwe", "tfce", "perm_cluster_mass"),
                                 cluster_threshold=t_threshold(0.01, n - 1))
    assert ours["exhaustive"]
    tol = _dkw(k_nilearn) + 2 / k_nilearn
    for ref_key, our_key in (("logp_max_t", "p_fwe"), ("logp_max_tfce", "p_tfce"),
                             ("logp_max_mass", "p_cluster_mass")):
        p_ref = 10 ** -ref[ref_key].get_fdata()[_mask()]
        assert np.abs(p_ref - ours[our_key]).max() < tol, our_key
        assert ours[our_key].min() < 0.05  # the planted blob is found by every method
    assert np.allclose(ref["t"].get_fdata()[_mask()], ours["t"], atol=1e-4)
    assert np.allclose(ref["tfce"].get_fdata()[_mask()], ours["tfce"], rtol=1e-3, atol=1e-3)


def test_covariate_permutation_fwe_agrees_with_nilearn():
    n = 12
    table = _participants(n, seed=8)
    design, _ = group_design(table, [f"{i + 1:02d}" for i in range(n)], ["age"])
    data = _maps(n, seed=22)
    data += 0.08 * design["age"].to_numpy()[:, None, None, None] * _mask()
    k = 1000
    ref = _nilearn_np(data, design, "age", k)
    ours = permutation_inference(data[:, _mask()], design.to_numpy(), [0.0, 1.0], n_permutations=k, seed=0)
    assert ours["scheme"] == "permutation" and not ours["exhaustive"]
    p_ref = 10 ** -ref.get_fdata()[_mask()]
    assert np.abs(p_ref - ours["p_fwe"]).max() < 2 * _dkw(k) + 2 / k
    assert ours["p_fwe"].min() < 0.05


def test_family_wise_error_rate_is_nominal_under_the_null():
    """200 null data sets (smooth noise, no effect): the fraction with any voxel at FWE p <= 0.05 must
    be consistent with 0.05 (one-sided binomial test at 0.001 against a higher rate); with cluster mass
    and TFCE too. Permutation tests are exact, so the expected rate is at most 0.05."""
    n_sims, n = 200, 10
    hits = {"perm_fwe": 0, "tfce": 0, "perm_cluster_mass": 0}
    X = np.ones((n, 1))
    thr = t_threshold(0.01, n - 1)
    small = np.zeros((6, 6, 6), bool)
    small[1:-1, 1:-1, 1:-1] = True
    rng = np.random.default_rng(2024)
    for sim in range(n_sims):
        noise = ndimage.gaussian_filter(rng.standard_normal((n,) + small.shape), (0, 1, 1, 1))[:, small]
        out = permutation_inference(noise, X, [1.0], mask=small, n_permutations=99, seed=sim,
                                    methods=("perm_fwe", "tfce", "perm_cluster_mass"), cluster_threshold=thr,
                                    tfce_steps=25)
        hits["perm_fwe"] += out["p_fwe"].min() <= 0.05
        hits["tfce"] += out["p_tfce"].min() <= 0.05
        hits["perm_cluster_mass"] += out["p_cluster_mass"].min() <= 0.05
    for method, count in hits.items():
        assert sps.binom.sf(count - 1, n_sims, 0.05) > 1e-3, (method, count)
        assert count >= 2, (method, count)  # not degenerate (a test that rejects nothing would pass above)


@pytest.mark.parametrize("two_sided", [False, True])
def test_max_t_without_t_maps_equals_the_t_maps_maximum(two_sided):
    """One-sample max-t nulls come from the largest normalised effect (t is one increasing function of it
    for every voxel); with TFCE asked for, the t maps are formed in full: both give the same maxima,
    and a constant voxel (t = 0/0) is ignored by both."""
    n = 10
    mask = _mask()
    Y = _maps(n, seed=21, effect=0.4)[:, mask]
    Y[:, 3] = 0.0
    X = np.ones((n, 1))
    fast = permutation_inference(Y, X, [1.0], mask=mask, n_permutations=200, seed=3, two_sided=two_sided)
    full = permutation_inference(Y, X, [1.0], mask=mask, n_permutations=200, seed=3, two_sided=two_sided,
                                 methods=("perm_fwe", "tfce"), tfce_steps=10)
    np.testing.assert_allclose(fast["h0_max_t"], full["h0_max_t"], rtol=1e-12)
    np.testing.assert_allclose(fast["p_fwe"], full["p_fwe"], rtol=0, atol=1e-12)
