"""glmx_workflows.core.glm against nilearn's run_glm / compute_contrast / fixed effects on the same arrays.

Tolerances: z scores must agree with nilearn to 1e-5 (absolute); in practice the float64 path
agrees to ~1e-11.  The AR(1) bins must be identical (same labels for every voxel).  Effects are
compared to 1e-10 absolute on data of magnitude 100: glmx refits the bins from moments of the data
(``X' y`` etc.), whose rounding is relative to the data (1e-16 x 100 x the design's conditioning),
not to a small contrast of betas.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.contrasts import compute_contrast, compute_fixed_effect_contrast
from nilearn.glm.first_level import make_first_level_design_matrix, run_glm

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.glm import (ContrastEstimate, GLMFit, combine_fixed_effects, contrast_statistics,
                                     estimate_contrast, fit_glm, subset_estimate, t_to_p_z, z_from_p)

Z_TOL = 1e-5


def make_design(n_scans=160, tr=2.0, seed=0, n_confounds=3):
    """A realistic design: 3 conditions (HRF-convolved), cosine drift, a few confounds, intercept."""
    rng = np.random.default_rng(seed)
    frame_times = np.arange(n_scans) * tr
    onsets = np.sort(rng.uniform(5, n_scans * tr - 30, 27))
    events = pd.DataFrame({"onset": onsets, "duration": rng.choice([1.0, 3.0], onsets.size),
                           "trial_type": np.array(["faces", "houses", "scrambled"])[np.arange(onsets.size) % 3]})
    confounds = rng.standard_normal((n_scans, n_confounds))
    design = make_first_level_design_matrix(frame_times, events, drift_model="cosine", high_pass=0.01,
                                            add_regs=confounds)
    return design.to_numpy(float)


def make_data(X, n_vox=3000, seed=1, dtype=np.float64):
    """AR(1) noise with rho varying over voxels (-0.3 .. 0.9), planted effects, baseline 100."""
    rng = np.random.default_rng(seed)
    n_scans = X.shape[0]
    rho = rng.uniform(-0.3, 0.9, n_vox)
    noise = rng.standard_normal((n_scans, n_vox)) * rng.uniform(0.5, 3.0, n_vox)
    for t in range(1, n_scans):
        noise[t] += rho * noise[t - 1]
    betas = rng.standard_normal((3, n_vox)) * (rng.uniform(size=n_vox) < 0.3)
    Y = 100.0 + X[:, :3] @ (3 * betas) + noise
    return Y.astype(dtype)


def contrasts_for(p):
    eye = np.eye(p)
    return {
        "t_diff": eye[0] - eye[1],
        "t_single": eye[2],
        "t_sum_as_row": (eye[0] + eye[1] + eye[2])[None],  # one row -> t
        "F_conditions": eye[:3],
        "F_two": eye[[0, 2]],
    }


def compare(fit, labels, results, con, stat_type=None, z_tol=Z_TOL):
    """Compare one contrast with nilearn; return max |dz|."""
    ref = compute_contrast(labels, results, con, stat_type)
    ref_z = ref.z_score()
    est = estimate_contrast(fit, con, stat_type)
    got = contrast_statistics(est)
    assert est.stat_type == ref.stat_type
    assert est.dof == ref.dof
    dz = np.abs(got["z"] - ref_z).max()
    assert dz < z_tol
    np.testing.assert_allclose(got["stat"], ref.stat_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(got["p"], ref.p_value_, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got["variance"], ref.effect_variance(), rtol=1e-9, atol=0)
    np.testing.assert_allclose(got["effect"], ref.effect_size(), rtol=1e-9, atol=1e-10)
    return dz


def nilearn_labels(fit):
    """The string labels nilearn gives each voxel (str of the binned AR coefficient)."""
    return np.array([str(v) for v in fit.bin_rho[fit.labels]])


@pytest.fixture(scope="module")
def run64():
    X = make_design()
    Y = make_data(X)
    return X, Y


@pytest.mark.parametrize("noise_model", ["ar1", "ols"])
def test_matches_nilearn_float64(run64, noise_model):
    X, Y = run64
    labels, results = run_glm(Y, X, noise_model)
    fit = fit_glm(Y, X, noise_model)
    assert fit.noise_model == noise_model
    assert fit.beta.shape == (X.shape[1], Y.shape[1])
    if noise_model == "ar1":
        assert np.array_equal(nilearn_labels(fit), labels)
        assert len(fit.bin_rho) == len(results) > 20
    else:
        assert np.array_equal(fit.labels, np.zeros(Y.shape[1]))
        assert np.array_equal(fit.bin_rho, [0.0])
    # per-bin quantities equal nilearn's
    for k, rho in enumerate(fit.bin_rho):
        res = results[str(rho)] if noise_model == "ar1" else results[0.0]
        np.testing.assert_allclose(fit.bin_cov[k], res.cov, rtol=1e-10, atol=1e-14)
        assert fit.bin_df[k] == res.df_residuals
        mask = fit.labels == k
        np.testing.assert_allclose(fit.beta[:, mask], res.theta, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fit.dispersion[mask], res.dispersion, rtol=1e-9)
    for name, con in contrasts_for(X.shape[1]).items():
        compare(fit, labels, results, con)
    # a 1-D contrast forced to F
    compare(fit, labels, results, np.eye(X.shape[1])[1], stat_type="F")


def test_matches_nilearn_float32_data():
    """float32 data with a float64 design (the usual case): nilearn works in float64 -- bins identical."""
    X = make_design(n_scans=200, seed=3)
    Y = make_data(X, n_vox=4000, seed=4, dtype=np.float32)
    labels, results = run_glm(Y, X, "ar1")
    fit = fit_glm(Y, X, "ar1", chunk_size=700)  # several chunks, ragged last one
    assert fit.beta.dtype == np.float64
    assert np.array_equal(nilearn_labels(fit), labels)
    for con in contrasts_for(X.shape[1]).values():
        compare(fit, labels, results, con)
    labels, results = run_glm(Y, X, "ols")
    fit = fit_glm(Y, X, "ols")
    for con in contrasts_for(X.shape[1]).values():
        compare(fit, labels, results, con)


def test_fortran_ordered_data(run64):
    """nilearn's maskers hand over (n_scans, n_voxels) arrays in Fortran order; results must not change."""
    X, Y = run64
    Yf = np.asfortranarray(Y[:, :1500].astype(np.float32))
    labels, results = run_glm(Yf, X, "ar1")
    fit = fit_glm(Yf, X, "ar1", chunk_size=512)
    assert np.array_equal(nilearn_labels(fit), labels)
    compare(fit, labels, results, contrasts_for(X.shape[1])["t_diff"])


def test_float32_design_and_data():
    """Both float32: nilearn itself computes residuals and AR coefficients in float32.

    Its float32 results depend on BLAS blocking, so agreement is at float32 precision:
    z to 1e-4, all but a handful of voxels in the same AR bin.
    """
    X = make_design(n_scans=150, seed=5).astype(np.float32)
    Y = make_data(X.astype(np.float64), n_vox=3000, seed=6, dtype=np.float32)
    labels, results = run_glm(Y, X, "ar1")
    fit = fit_glm(Y, X, "ar1")
    same = nilearn_labels(fit) == labels
    assert same.mean() > 0.998
    con = contrasts_for(X.shape[1])["t_diff"]
    ref = compute_contrast(labels, results, con).z_score()
    got = contrast_statistics(estimate_contrast(fit, con))["z"]
    assert np.abs(got - ref)[same].max() < 1e-4
    labels, results = run_glm(Y, X, "ols")
    fit = fit_glm(Y, X, "ols")
    assert fit.beta.dtype == np.float32  # as nilearn's OLS theta
    for con in contrasts_for(X.shape[1]).values():
        compare(fit, labels, results, con, z_tol=1e-4)


@pytest.mark.parametrize("noise_model", ["ar1", "ols"])
def test_fixed_effects_match_nilearn(noise_model):
    runs = []
    for seed in range(3):
        X = make_design(n_scans=150, seed=10 + seed)
        Y = make_data(X, n_vox=2000, seed=20 + seed)
        labels, results = run_glm(Y, X, noise_model)
        runs.append((labels, results, fit_glm(Y, X, noise_model)))
    p = runs[0][2].n_regressors
    for con in (np.eye(p)[0] - np.eye(p)[2], np.eye(p)[:3]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nilearn: approximate fixed effects on F
            ref = compute_fixed_effect_contrast([r[0] for r in runs], [r[1] for r in runs], [con] * 3)
        ref_z = ref.z_score()
        est = combine_fixed_effects([estimate_contrast(r[2], con) for r in runs])
        got = contrast_statistics(est)
        assert est.dof == ref.dof == sum(r[2].bin_df[0] for r in runs)
        assert np.abs(got["z"] - ref_z).max() < Z_TOL
        np.testing.assert_allclose(got["stat"], ref.stat_, rtol=1e-8)
        np.testing.assert_allclose(got["effect"], ref.effect_size(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(got["variance"], ref.effect_variance(), rtol=1e-9)
    # two runs, and a single run (nilearn multiplies by 1.0)
    con = np.eye(p)[1]
    for k in (1, 2):
        ref = compute_fixed_effect_contrast([r[0] for r in runs[:k]], [r[1] for r in runs[:k]], [con] * k)
        got = contrast_statistics(combine_fixed_effects([estimate_contrast(r[2], con) for r in runs[:k]]))
        assert np.abs(got["z"] - ref.z_score()).max() < Z_TOL


def test_rank_deficient_design():
    X = make_design(n_scans=150, seed=7)
    X = np.column_stack([X[:, :3], X[:, 0] + X[:, 1], X[:, 3:]])  # column 3 = column 0 + column 1
    assert np.linalg.matrix_rank(X) == X.shape[1] - 1
    Y = make_data(X, n_vox=2000, seed=8)
    p = X.shape[1]
    for noise_model in ("ar1", "ols"):
        labels, results = run_glm(Y, X, noise_model)
        fit = fit_glm(Y, X, noise_model)
        assert np.all(fit.bin_df == X.shape[0] - (p - 1))
        if noise_model == "ar1":
            assert np.array_equal(nilearn_labels(fit), labels)
        compare(fit, labels, results, np.eye(p)[0] - np.eye(p)[1])
        compare(fit, labels, results, np.eye(p)[2])
        compare(fit, labels, results, np.eye(p)[[0, 2]])


def test_stream_sum_is_numpy_pairwise_sum():
    from glmx_workflows.core import glm

    rng = np.random.default_rng(2)
    for dtype in (np.float64, np.float32):
        flat = (rng.standard_normal(1_000_003) * 1e-3 + 1e-6).astype(dtype)
        stream = glm._StreamSum(flat.size)
        cuts = np.sort(rng.choice(flat.size, 40, replace=False))
        for piece in np.split(flat, cuts):
            stream.feed(piece)
        total = stream.total()
        assert total == np.add.reduce(flat) and total.dtype == dtype


def test_small_work_blocks_change_nothing(run64, monkeypatch):
    """Many row blocks / voxel chunks / pairwise leaves: the same bins and z as nilearn."""
    from glmx_workflows.core import glm

    X, Y = run64
    monkeypatch.setattr(glm, "_CHUNK_ELEMENTS", 20_000)
    monkeypatch.setattr(glm, "_PAIRWISE_LEAF", 1000)
    labels, results = run_glm(Y, X, "ar1")
    fit = fit_glm(Y, X, "ar1")
    assert np.array_equal(nilearn_labels(fit), labels)
    compare(fit, labels, results, np.eye(X.shape[1])[0] - np.eye(X.shape[1])[1])


@pytest.mark.parametrize("n_vox", [1, 2, 5])
def test_few_voxels(run64, n_vox):
    X, Y = run64
    Y = Y[:, 100:100 + n_vox]
    for noise_model in ("ar1", "ols"):
        labels, results = run_glm(Y, X, noise_model)
        fit = fit_glm(Y, X, noise_model, chunk_size=2)
        if noise_model == "ar1":
            assert np.array_equal(nilearn_labels(fit), labels)
        compare(fit, labels, results, np.eye(X.shape[1])[0])
        compare(fit, labels, results, np.eye(X.shape[1])[:2])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # inside nilearn
def test_constant_voxels():
    """All-zero and constant voxels: same finite z as nilearn, no NaN/inf appears."""
    X = make_design(n_scans=160, seed=9)
    Y = make_data(X, n_vox=1500, seed=10)
    Y[:, :4] = 0.0
    Y[:, 4:8] = -100.0  # what mean scaling makes of an all-zero voxel
    p = X.shape[1]
    for noise_model in ("ar1", "ols"):
        labels, results = run_glm(Y, X, noise_model)
        fit = fit_glm(Y, X, noise_model)
        for con in (np.eye(p)[0] - np.eye(p)[1], np.eye(p)[:3]):
            ref = compute_contrast(labels, results, con)
            ref_z = ref.z_score()
            got = contrast_statistics(estimate_contrast(fit, con))
            assert np.isfinite(got["z"]).all() and np.isfinite(ref_z).all()
            assert np.isfinite(got["stat"]).all()
            np.testing.assert_array_equal(got["z"][:4], ref_z[:4])  # zero voxels: z 0 (t) / floor (F)
            assert np.abs(got["z"] - ref_z)[8:].max() < Z_TOL


def test_zero_variance_guard():
    """A zero variance is floored at 1e-50 as in nilearn's Contrast (zero effect -> t 0, z 0)."""
    from nilearn.glm.contrasts import Contrast
    effect = np.array([[0.0, 1e-30, 1.0, -1.0, 0.0]])
    variance = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    for stat_type in ("t", "F"):
        est = ContrastEstimate(effect=effect, variance=variance, dof=50.0, stat_type=stat_type)
        s = contrast_statistics(est)
        ref = Contrast(effect=effect[0] if stat_type == "t" else effect, variance=variance, dof=50.0,
                       stat_type=stat_type)
        np.testing.assert_array_equal(s["z"], ref.z_score())
        np.testing.assert_array_equal(s["stat"], ref.stat_)
        assert np.isfinite(s["z"]).all()
    assert contrast_statistics(ContrastEstimate(effect, variance, 50.0, "t"))["z"][0] == 0.0


def test_z_from_p_uses_cdf_for_negative_z():
    from scipy import stats
    t = np.array([-40.0, -3.0, 0.0, 3.0, 40.0])
    z = z_from_p(stats.t.sf(t, 30), stats.t.cdf(t, 30))
    assert np.all(np.diff(z) > 0) and z[0] < -8 and z[-1] > 8
    assert z[2] == 0.0


def test_round_trip(tmp_path, run64):
    X, Y = run64
    fit = fit_glm(Y[:, :300], X, "ar1")
    path = tmp_path / "fit.npz"
    np.savez(path, columns=np.array(["a"]), **fit.to_arrays())
    with np.load(path, allow_pickle=False) as data:
        back = GLMFit.from_arrays({k: data[k] for k in data.files})
    for key, value in fit.to_arrays().items():
        np.testing.assert_array_equal(getattr(back, key), getattr(fit, key))
    assert back.noise_model == "ar1"
    est = estimate_contrast(fit, np.eye(X.shape[1])[:2])
    path = tmp_path / "est.npz"
    np.savez(path, **est.to_arrays())
    with np.load(path, allow_pickle=False) as data:
        back_est = ContrastEstimate.from_arrays({k: data[k] for k in data.files})
    np.testing.assert_array_equal(back_est.effect, est.effect)
    np.testing.assert_array_equal(back_est.variance, est.variance)
    assert (back_est.dof, back_est.stat_type) == (est.dof, "F")
    with pytest.raises(GlmxError):
        GLMFit.from_arrays({"beta": fit.beta})


def test_subset_estimate(run64):
    X, Y = run64
    fit = fit_glm(Y[:, :200], X, "ols")
    est = estimate_contrast(fit, np.eye(X.shape[1])[0])
    keep = np.arange(200) % 3 == 0
    sub = subset_estimate(est, keep)
    assert sub.effect.shape == (1, keep.sum())
    np.testing.assert_array_equal(contrast_statistics(sub)["z"], contrast_statistics(est)["z"][keep])


def test_shapes_and_stat_types(run64):
    X, Y = run64
    fit = fit_glm(Y[:, :100], X, "ols")
    p = X.shape[1]
    t = estimate_contrast(fit, np.eye(p)[0])
    assert t.stat_type == "t" and t.effect.shape == (1, 100) and t.variance.shape == (100,)
    assert estimate_contrast(fit, np.eye(p)[:1]).stat_type == "t"
    f = estimate_contrast(fit, np.eye(p)[:3])
    assert f.stat_type == "F" and f.effect.shape == (3, 100) and f.variance.shape == (100,)
    stats = contrast_statistics(t)
    assert all(stats[k].shape == (100,) for k in ("stat", "p", "z", "effect", "variance"))
    assert contrast_statistics(f)["effect"].shape == (3, 100)


def test_errors(run64):
    X, Y = run64
    with pytest.raises(GlmxError, match="scans"):
        fit_glm(Y[:-1], X)
    with pytest.raises(GlmxError, match="too few"):
        fit_glm(Y[:10], X[:10])
    with pytest.raises(GlmxError, match="noise model"):
        fit_glm(Y, X, noise_model="ar2")
    with pytest.raises(GlmxError, match="bins"):
        fit_glm(Y, X, bins=0)
    with pytest.raises(GlmxError, match="chunk_size"):
        fit_glm(Y, X, chunk_size=-3)
    with pytest.raises(GlmxError):
        fit_glm(Y[:, 0], X)
    bad = Y[:, :50].copy()
    bad[3, 7] = np.nan
    with pytest.raises(GlmxError, match="NaN"):
        fit_glm(bad, X)
    fit = fit_glm(Y[:, :50], X, "ols")
    with pytest.raises(GlmxError, match="columns"):
        estimate_contrast(fit, np.ones(X.shape[1] + 1))
    with pytest.raises(GlmxError, match="single row"):
        estimate_contrast(fit, np.eye(X.shape[1])[:2], stat_type="t")
    t = estimate_contrast(fit, np.eye(X.shape[1])[0])
    f = estimate_contrast(fit, np.eye(X.shape[1])[:2])
    with pytest.raises(GlmxError):
        combine_fixed_effects([t, f])
    with pytest.raises(GlmxError):
        combine_fixed_effects([])


@pytest.mark.parametrize("setting", [("_RHO_ROUNDING", 3e-7), ("_CANCELLATION", 3e-4)])
def test_moment_fit_hands_voxels_to_nilearn_arithmetic(run64, monkeypatch, setting):
    """Voxels near a bin edge (AR coefficient) or with cancelling moments (residuals) are recomputed
    explicitly; widening either criterion so that a third to a half of the voxels take that route
    changes no bin and no z."""
    from glmx_workflows.core import glm

    X, Y = run64
    monkeypatch.setattr(glm, setting[0], setting[1])
    explicit = []
    yule_walker = glm._yule_walker_rho

    def counted(Ysub, *args):
        explicit.append(Ysub.shape[1])
        return yule_walker(Ysub, *args)

    monkeypatch.setattr(glm, "_yule_walker_rho", counted)
    labels, results = run_glm(Y, X, "ar1")
    fit = fit_glm(Y, X, "ar1", chunk_size=700)
    assert 0.1 * Y.shape[1] < sum(explicit) < 0.9 * Y.shape[1]
    assert np.array_equal(nilearn_labels(fit), labels)
    for con in contrasts_for(X.shape[1]).values():
        compare(fit, labels, results, con)


@pytest.mark.parametrize("dof", [1.0, 3.0, 12.0, 272.0, 5000.0, 1e10])
def test_t_to_p_z_table_matches_scipy(dof):
    """The tabulated t -> z conversion agrees with scipy's t and normal tail functions (nilearn's) to 1e-9 in z
    and 1e-8 relative in p, over the bulk, the grid's nodes and midpoints, its end and far beyond it."""
    from scipy import stats

    rng = np.random.default_rng(int(dof) % 1000)
    t = np.concatenate([rng.standard_normal(20000) * 4, rng.uniform(-90, 90, 5000),
                        np.arange(-66, 66, 1 / 256), [0.0, 1e20, -1e20, np.inf, -np.inf]])
    p, z = t_to_p_z(t, dof)
    p_ref = stats.t.sf(t, dof)
    z_ref = np.where(stats.norm.isf(np.clip(p_ref, 1e-300, 1 - 1e-16)) < 0,
                     stats.norm.ppf(np.clip(stats.t.cdf(t, dof), 1e-300, 1 - 1e-16)),
                     stats.norm.isf(np.clip(p_ref, 1e-300, 1 - 1e-16)))
    assert np.abs(z - z_ref).max() < 1e-9
    np.testing.assert_allclose(p, p_ref, rtol=1e-8, atol=1e-300)


@pytest.mark.parametrize("noise_model", ["ar1", "ols"])
def test_scaled_integer_run_fits_nilearns_float64_values(noise_model):
    """An int16 run with scl_slope / scl_inter kept as integers: the fit sees nilearn's float64 percent signal
    change (same bins for every voxel, z to 1e-5), although the float32 rounding of the same values would not."""
    from glmx_workflows.core.signal import ScaledIntegerRun, mean_scaling

    X = make_design(n_scans=200, seed=12)
    slope, inter = 0.0173, -20.0
    raw = np.round((make_data(X, n_vox=6000, seed=13) - inter) / slope).astype(np.int16)
    psc, _ = mean_scaling(raw * slope + inter)
    labels, results = run_glm(psc, X, noise_model)
    fit = fit_glm(ScaledIntegerRun(raw, slope, inter, chunk=1000), X, noise_model, chunk_size=700)
    if noise_model == "ar1":
        assert np.array_equal(nilearn_labels(fit), labels)
    for con in contrasts_for(X.shape[1]).values():
        compare(fit, labels, results, con)


def test_scaled_integer_run_blocks_equal_its_values():
    """The fit's block reader and scan sums of an int16 run give the numbers of the values themselves:
    ``columns_into`` bit for bit (the AR bins depend on them), ``scan_sums`` to float64 rounding."""
    from glmx_workflows.core.signal import ScaledIntegerRun, mean_scaling

    rng = np.random.default_rng(5)
    slope, inter = 0.031, 4.0
    raw = rng.integers(-200, 3000, size=(120, 3001)).astype(np.int16)
    run = ScaledIntegerRun(raw, slope, inter, chunk=512)
    psc, _ = mean_scaling(raw * slope + inter)
    out = np.empty((120, 777))
    assert np.array_equal(run.columns_into(out, 1000, 1777), psc[:, 1000:1777])
    np.testing.assert_allclose(run.scan_sums(block=7), psc.sum(axis=1), rtol=1e-12, atol=1e-9 * np.abs(psc).sum(1).max())
