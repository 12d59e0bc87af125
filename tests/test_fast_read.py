"""The streaming reader and the per-volume smoothing against nibabel and nilearn (references we did not write)."""

import gzip

import nibabel as nb
import numpy as np
import pytest
from nilearn.image import smooth_img

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.smoothing import smoothing_sigmas
from glmx_workflows.io import fastread
from glmx_workflows.io.images import load_masked_bold

SHAPE = (13, 15, 11, 9)


def _affine(anisotropic=False):
    aff = np.diag([2.0, 2.0, 3.0 if anisotropic else 2.0, 1.0])
    aff[:3, 3] = (-12, -14, -10)
    return aff


def _mask(rng):
    m = rng.random(SHAPE[:3]) > 0.4
    m[0] = False  # an all-out slab, as around a brain
    return m


def _write(tmp_path, name, data, affine, slope=None, inter=None):
    img = nb.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / name
    nb.save(img, str(path))
    return path


def _reference(path, mask, keep=None):
    data = nb.load(str(path)).get_fdata(dtype=np.float32)
    Y = data[mask].T
    return Y if keep is None else Y[keep]


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["float32", "int16_scaled", "float64", "int16_plain"])
def test_fast_read_equals_nibabel(tmp_path, ext, kind):
    rng = np.random.default_rng(3)
    mask = _mask(rng)
    slope = inter = None
    if kind == "float32":
        data = (rng.standard_normal(SHAPE) * 50 + 1000).astype(np.float32)
        data[1, 2, 3, 4] = np.nan  # NaNs pass through unchanged when not smoothing
        mask[1, 2, 3] = True
    elif kind == "float64":
        data = rng.standard_normal(SHAPE) * 50 + 1000
    else:
        data = rng.integers(-30000, 30000, SHAPE, dtype=np.int16)
        if kind == "int16_scaled":
            slope, inter = 0.0371, 12.5
    path = _write(tmp_path, "bold" + ext, data, _affine(), slope, inter)
    if kind == "int16_scaled":
        assert nb.load(str(path)).dataobj.slope == pytest.approx(0.0371)  # nibabel stored the scaling
    keep = np.ones(SHAPE[3], bool)
    keep[[0, 5]] = False
    img = nb.load(str(path))
    Y = fastread.read_masked_run(img, path, mask, keep=keep)
    ref = _reference(path, mask, keep)
    assert Y.dtype == np.float32 and Y.flags.c_contiguous and Y.shape == ref.shape
    np.testing.assert_allclose(Y, ref, rtol=2 * np.finfo(np.float32).eps, atol=0, equal_nan=True)
    if kind == "float32":
        assert np.isnan(Y).sum() == 1


def test_gzip_stream_is_isal_and_reads_stdlib_gzip(tmp_path):
    # files written by stdlib gzip / nibabel decompress through ISA-L to the same bytes
    payload = np.arange(100_000, dtype=np.float32).tobytes()
    path = tmp_path / "x.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(payload)
    with fastread.open_stream(path) as f:
        assert f.read() == payload
    assert fastread._isal_threaded is not None, "python-isal is a dependency and must be used for .nii.gz"
    with fastread.open_stream(path) as f:
        assert "isal" in type(getattr(f, "raw", f)).__module__


def test_truncated_file_is_reported(tmp_path):
    rng = np.random.default_rng(0)
    path = _write(tmp_path, "bold.nii", rng.standard_normal(SHAPE).astype(np.float32), _affine())
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(GlmxError, match="truncated"):
        fastread.read_masked_run(nb.load(str(path)), path, _mask(rng))


@pytest.mark.parametrize("kind", ["float32", "int16_scaled"])
@pytest.mark.parametrize("fwhm", [5.0, 8.0])
def test_smoothing_equals_nilearn_smooth_img(tmp_path, kind, fwhm):
    rng = np.random.default_rng(7)
    mask = _mask(rng)
    slope = inter = None
    if kind == "float32":
        data = (rng.standard_normal(SHAPE) * 50 + 1000).astype(np.float32)
        data[4, 4, 4, 2] = np.nan  # nilearn sets non-finite values to 0 before filtering
    else:
        data = rng.integers(-30000, 30000, SHAPE, dtype=np.int16)
        slope, inter = 0.05, 3.0
    path = _write(tmp_path, "bold.nii.gz", data, _affine(anisotropic=True), slope, inter)
    img = nb.load(str(path))
    Y = fastread.read_masked_run(img, path, mask, smoothing_fwhm=fwhm)
    ref = smooth_img(nb.load(str(path)), fwhm).get_fdata()[mask].T
    scale = np.abs(ref).max()
    assert np.max(np.abs(Y - ref)) <= 1e-5 * scale
    # the smoothing did something (not the identity): compare with the unsmoothed data
    raw = _reference(path, mask)
    assert np.nanmax(np.abs(raw - ref)) > 100 * 1e-5 * scale


def test_sigmas_follow_affine_voxel_sizes():
    # rotated, anisotropic affine: voxel sizes are the column norms of its 3x3 part
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([2.0, 2.5, 3.0])
    sig = smoothing_sigmas(aff, 6.0)
    np.testing.assert_allclose(sig, 6.0 / (np.sqrt(8 * np.log(2)) * np.array([2.0, 2.5, 3.0])))


def test_load_masked_bold_routes_through_stream(tmp_path):
    rng = np.random.default_rng(11)
    data = (rng.standard_normal(SHAPE) * 10 + 500).astype(np.float32)
    bold = _write(tmp_path, "bold.nii.gz", data, _affine())
    mask = _mask(rng)
    mpath = _write(tmp_path, "mask.nii.gz", mask.astype(np.uint8), _affine())
    keep = np.arange(SHAPE[3]) % 3 != 0
    Y, m, aff = load_masked_bold(bold, mpath, keep=keep, smoothing_fwhm=6.0)
    np.testing.assert_array_equal(m, mask)
    np.testing.assert_allclose(aff, _affine())
    ref = smooth_img(nb.load(str(bold)), 6.0).get_fdata()[mask].T[keep]
    assert np.max(np.abs(Y - ref)) <= 1e-5 * np.abs(ref).max()


def test_fit_memory_grows_with_the_run():
    small = fastread.fit_memory_gb(230_000, 300)
    big = fastread.fit_memory_gb(230_000, 1000)
    # float32 in-mask data: 0.28 GB (300 vols) / 0.92 GB (1000 vols); the request covers the 2.5x
    # bound plus the interpreter, and stays within the few GB the issue allows a 1000-volume run
    assert 0.28 * 2.5 + 0.3 < small < 1.5
    assert small + 2.5 * (0.92 - 0.28) < big < 4.0
    assert fastread.fit_memory_gb(230_000, 300, estimator="nilearn") > small


def test_fit_node_requests_memory_from_the_runs_mask_and_length(tmp_path):
    from glmx_workflows.api import Subject
    from glmx_workflows.io.example import make_example_dataset

    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=1, shape=(10, 12, 10), n_volumes=40, seed=4)
    subj = Subject("01", "flanker", root, output_dir=tmp_path / "out", work_dir=tmp_path / "work")
    plan = subj.plan()
    run = plan.runs[0]
    n_vox = int((np.asarray(nb.load(str(run.mask)).dataobj) > 0).sum())
    assert plan.fit_mem_gb() == fastread.fit_memory_gb(n_vox, 40)
    wf = subj.workflow(plan)
    assert wf.get_node("fit_glm").mem_gb == plan.fit_mem_gb()


def test_float64_read_of_scaled_int16_is_nibabels_float64(tmp_path):
    rng = np.random.default_rng(5)
    mask = _mask(rng)
    data = rng.integers(-30000, 30000, SHAPE, dtype=np.int16)
    path = _write(tmp_path, "bold.nii.gz", data, _affine(), 0.0371, 12.5)
    Y = fastread.read_masked_run(nb.load(str(path)), path, mask, dtype=np.float64)
    ref = nb.load(str(path)).get_fdata()[mask].T
    assert Y.dtype == np.float64
    np.testing.assert_allclose(Y, ref, rtol=1e-15, atol=1e-12)


@pytest.mark.parametrize("where", ["inside", "touching_edges"])
def test_smoothing_only_what_the_mask_needs_is_bitwise_the_whole_volume(where):
    from glmx_workflows.core.smoothing import smooth_volume, smoothing_box

    rng = np.random.default_rng(21)
    shape = (30, 34, 28)
    vol = np.asfortranarray(rng.standard_normal(shape).astype(np.float32) * 100 + 500)
    mask = np.zeros(shape, bool)
    if where == "inside":
        mask[9:20, 11:25, 8:19] = rng.random((11, 14, 11)) > 0.3
    else:  # the box widened by the kernel is cut at the grid's edges (reflection there)
        mask[0:12, 20:34, 2:28] = rng.random((12, 14, 26)) > 0.3
    sigmas = smoothing_sigmas(np.diag([2.0, 2.5, 3.0, 1.0]), [6.0, 6.0, 0.0])  # one axis not smoothed
    full = smooth_volume(vol.copy(order="F"), sigmas)
    box = smoothing_box(mask, sigmas)
    part = smooth_volume(vol.copy(order="F"), sigmas, box)
    np.testing.assert_array_equal(part[mask], full[mask])
    inner, outer = box
    assert any(o.stop - o.start < s for o, s in zip(outer, shape))  # the crop did leave work out
    assert outer[2] == inner[2]  # no kernel on the unsmoothed axis, no margin


def test_stored_read_of_scaled_int16_is_the_raw_integers(tmp_path):
    """dtype='stored' returns the file's integers unscaled (and their scaling from read_scaling)."""
    rng = np.random.default_rng(6)
    mask = _mask(rng)
    data = rng.integers(-30000, 30000, SHAPE, dtype=np.int16)
    path = _write(tmp_path, "bold.nii.gz", data, _affine(), 0.0371, 12.5)
    img = nb.load(str(path))
    keep = np.arange(SHAPE[3]) % 3 != 0
    Y = fastread.read_masked_run(img, path, mask, keep=keep, dtype="stored")
    assert Y.dtype == np.int16
    np.testing.assert_array_equal(Y, np.asanyarray(img.dataobj.get_unscaled())[mask].T[keep])
    assert fastread.read_scaling(img) == pytest.approx((0.0371, 12.5))
    with pytest.raises(GlmxError, match="cannot be smoothed"):
        fastread.read_masked_run(img, path, mask, smoothing_fwhm=5.0, dtype="stored")
