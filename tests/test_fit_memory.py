"""The fit's memory is bounded by the run's float32 in-mask data, and chunking over voxels changes no result.

Memory is measured with ``tracemalloc``, which counts numpy's array allocations (numpy reports them
to it), so the peak below is the arrays the fit holds at once -- the interpreter and imported
modules are not included (they are a constant ~0.3 GB, see benchmarks/README.md). The issue's bound is
a peak of ~2.5x the float32 in-mask data; the read result itself is 1x, so a single float64 copy of the
run (2x) or a second float32 copy (1x, e.g. scaling out of place) would break it.
"""

import tracemalloc

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix

from glmx_workflows.core import glm
from glmx_workflows.core.glm import contrast_statistics, estimate_contrast, fit_glm
from glmx_workflows.interfaces.glm import FitGLM

SHAPE = (26, 24, 22)
N_SCANS = 300
TR = 2.0


def _design(n_scans, seed=0):
    rng = np.random.default_rng(seed)
    onsets = np.arange(10.0, n_scans * TR - 30, 7.0)
    events = pd.DataFrame({"onset": onsets, "duration": 2.0,
                           "trial_type": np.array(["a", "b", "c"])[np.arange(onsets.size) % 3]})
    conf = pd.DataFrame(rng.standard_normal((n_scans, 12)).cumsum(0) * 0.05, columns=[f"c{i}" for i in range(12)])
    return make_first_level_design_matrix(np.arange(n_scans) * TR, events, drift_model="cosine", high_pass=0.01,
                                          add_regs=conf.to_numpy(), add_reg_names=list(conf.columns))


def _run(tmp_path, seed=5):
    """A float32 .nii.gz run with AR(1) noise and planted effects, its mask, design and censoring TSVs."""
    rng = np.random.default_rng(seed)
    design = _design(N_SCANS)
    g = np.indices(SHAPE, dtype=float)
    mask = sum(((g[i] - (s - 1) / 2) / (0.45 * s)) ** 2 for i, s in enumerate(SHAPE)) <= 1
    # the second half (x >= SHAPE[0] // 2) repeats the first: under the half mask the fit meets the
    # same AR(1) values, hence the same bins (one whitened design each) as under the full mask
    mid = SHAPE[0] // 2
    mask[mid:] = mask[:mid]
    n_vox = int(mask[:mid].sum())
    rho = rng.uniform(-0.2, 0.8, n_vox)
    noise = rng.standard_normal((N_SCANS, n_vox)) * 5
    for t in range(1, N_SCANS):
        noise[t] += rho * noise[t - 1]
    signal = design[["a", "b", "c"]].to_numpy() @ (rng.standard_normal((3, n_vox)) * 4)
    data = np.zeros(SHAPE + (N_SCANS,), np.float32)
    data[:mid][mask[:mid]] = (rng.uniform(400, 900, n_vox) + signal + noise).T
    data[mid:] = data[:mid]
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    nb.save(nb.Nifti1Image(data, affine), str(tmp_path / "bold.nii.gz"))
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), affine), str(tmp_path / "mask.nii.gz"))
    design.to_csv(tmp_path / "design.tsv", sep="\t", index=False)
    pd.DataFrame({"kept": np.ones(N_SCANS, int)}).to_csv(tmp_path / "censor.tsv", sep="\t", index=False)
    return mask, design


def _node_peak(tmp_path, mask_name, tag):
    node = FitGLM(bold_file=str(tmp_path / "bold.nii.gz"), mask_file=str(tmp_path / mask_name),
                  design_file=str(tmp_path / "design.tsv"), censor_file=str(tmp_path / "censor.tsv"),
                  noise_model="ar1")
    work = tmp_path / f"work_{tag}"
    work.mkdir()
    tracemalloc.start()
    try:
        result = node.run(cwd=str(work))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with np.load(result.outputs.fit_file) as f:
        assert f["beta"].shape[1] == int((np.asarray(nb.load(str(tmp_path / mask_name)).dataobj) > 0).sum())
    return peak


def test_fit_node_memory_grows_by_at_most_1_5x_the_in_mask_data(tmp_path, monkeypatch):
    """Peak of the fit_glm node (read, scaling, AR(1) fit, saving) for the same run under two masks.

    What does not depend on the run's size (ISA-L's read-ahead buffers ~13 MB, one whitened design per AR
    bin ~14 MB, the chunk work arrays) is the same for both (the second half of the run repeats the first,
so both masks meet the same AR bins); the difference between the peaks is what the
    run's in-mask data cost: the float32 data (1x) plus float64 betas (n_regressors * 8 bytes per voxel,
    0.2x at 300 volumes) and per-voxel vectors. So a peak of ~2.5x the in-mask data on a real run
    (0.28 GB for 300 volumes, 0.9 GB for 1000) holds with room for the constants.
    """
    mask, _ = _run(tmp_path)
    half = mask.copy()
    half[SHAPE[0] // 2:] = False  # the first copy of the data only
    nb.save(nb.Nifti1Image(half.astype(np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), str(tmp_path / "half.nii.gz"))
    monkeypatch.setattr(glm, "_CHUNK_ELEMENTS", 100_000)  # the same work arrays for both masks
    peak_full = _node_peak(tmp_path, "mask.nii.gz", "full")
    peak_half = _node_peak(tmp_path, "half.nii.gz", "half")
    extra_data = (int(mask.sum()) - int(half.sum())) * N_SCANS * 4
    slope = (peak_full - peak_half) / extra_data
    assert 1.0 <= slope <= 1.5, f"{slope:.2f} bytes of peak per byte of float32 in-mask data"


@pytest.mark.parametrize("noise_model", ["ar1", "ols"])
def test_chunking_over_voxels_changes_no_result(noise_model, monkeypatch):
    rng = np.random.default_rng(2)
    X = _design(200, seed=3).to_numpy(float)
    n_vox = 2000
    rho = rng.uniform(-0.3, 0.9, n_vox)
    Y = rng.standard_normal((200, n_vox))
    for t in range(1, 200):
        Y[t] += rho * Y[t - 1]
    Y = (Y + X[:, :3] @ rng.standard_normal((3, n_vox))).astype(np.float32)
    con = np.zeros(X.shape[1])
    con[:2] = (1, -1)
    whole = fit_glm(Y, X, noise_model, chunk_size=n_vox)
    z_whole = contrast_statistics(estimate_contrast(whole, con))["z"]
    monkeypatch.setattr(glm, "_CHUNK_ELEMENTS", 30_000)  # row blocks of the residual-mean pass too
    for chunk in (7, 333, None):
        part = fit_glm(Y, X, noise_model, chunk_size=chunk)
        # the same bins for every voxel; values equal up to BLAS blocking of a chunk's products
        assert np.array_equal(part.labels, whole.labels)
        np.testing.assert_array_equal(part.bin_rho, whole.bin_rho)
        np.testing.assert_allclose(part.beta, whole.beta, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(part.dispersion, whole.dispersion, rtol=1e-9)
        z = contrast_statistics(estimate_contrast(part, con))["z"]
        assert np.max(np.abs(z - z_whole)) < 1e-8


@pytest.mark.parametrize("dof", [7.0, 270.0, 1e12])
def test_t_statistics_are_nilearns(dof):
    """t statistics equal nilearn's bit for bit; p and z (tabulated between exact nodes, see
    ``core.glm.t_to_p_z``) to 1e-9 in z and 1e-8 relative in p, including zero and huge t."""
    from nilearn.glm.contrasts import Contrast

    from glmx_workflows.core.glm import ContrastEstimate

    rng = np.random.default_rng(4)
    effect = np.concatenate([rng.standard_normal(20000) * 6, [0.0, 1e-30, -1e-30, 60.0, -60.0]])[None]
    variance = np.concatenate([rng.uniform(0.01, 2, 20000), [0.0, 0.0, 1.0, 1e-60, 1e-3]])
    ours = contrast_statistics(ContrastEstimate(effect, variance, dof, "t"))
    ref = Contrast(effect=effect[0], variance=variance, dof=dof, stat_type="t")
    assert np.abs(ours["z"] - ref.z_score()).max() < 1e-9
    np.testing.assert_allclose(ours["p"], ref.p_value(), rtol=1e-8, atol=1e-300)
    np.testing.assert_array_equal(ours["stat"], ref.stat())
