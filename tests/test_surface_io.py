"""The CIFTI fast path: data read from the file without nibabel's XML parse equal nibabel's, dense scalar maps
written from the input's XML text load in nibabel with the input's brain-model axis, bad files refused naming the
file; the AR(1) fit's own sums give the same goodness of fit as a second pass over the run."""

import nibabel as nb
import numpy as np
import pytest

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.glm import fit_glm, goodness_of_fit
from glmx_workflows.core.signal import mean_scaling
from glmx_workflows.io.geometry import CiftiGeometry, cifti_header, read_cifti_data, read_map, read_run


def _axis():
    left = nb.cifti2.BrainModelAxis.from_surface(np.arange(3, 32492, 211), 32492, "CortexLeft")
    right = nb.cifti2.BrainModelAxis.from_surface(np.arange(0, 32492, 173), 32492, "CortexRight")
    mask = np.zeros((7, 6, 5), bool)
    mask[2:5, 1:4, 1:4] = True
    return left + right + nb.cifti2.BrainModelAxis.from_mask(mask, "PutamenRight", affine=np.diag([2.0, 2, 2, 1]))


def _dtseries(path, n_scans=60, dtype=np.float32, seed=0):
    axis = _axis()
    rng = np.random.default_rng(seed)
    data = 500 + rng.normal(0, 10, (n_scans, len(axis))).cumsum(0) * 0.2
    img = nb.Cifti2Image(data.astype(dtype), header=(nb.cifti2.SeriesAxis(0, 2.0, n_scans, "SECOND"), axis))
    if dtype == np.int16:  # stored integers scaled through the NIfTI header
        img.nifti_header.set_slope_inter(0.25, 3.0)
    nb.save(img, str(path))
    return axis


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_cifti_data_equal_nibabels_in_the_files_order(tmp_path, dtype):
    path = tmp_path / "bold.dtseries.nii"
    _dtseries(path, dtype=dtype)
    ours = read_cifti_data(path)
    ref = np.asarray(nb.load(str(path)).dataobj, dtype=np.float64)
    assert ours.dtype == np.float32 and ours.shape == ref.shape and ours.flags.f_contiguous
    if dtype == np.int16:  # scaled in float32 here, in float64 by nibabel
        assert np.abs(ours - ref).max() <= 1e-6 * np.abs(ref).max()
    else:
        assert np.array_equal(ours, ref.astype(np.float32))
    assert cifti_header(path)["shape"] == ref.shape


def test_run_read_equals_nilearn_scaling_of_nibabels_array(tmp_path):
    path = tmp_path / "bold.dtseries.nii"
    _dtseries(path)
    keep = np.ones(60, bool)
    keep[[0, 1, 30]] = False
    raw = np.array(np.asanyarray(nb.load(str(path)).dataobj), dtype=np.float32, order="K")
    for k in (None, keep):
        Y, mean, geometry = read_run(path, path, keep=k)
        ref, ref_mean = mean_scaling(np.asfortranarray(raw if k is None else raw[k]))
        assert Y.flags.f_contiguous and np.array_equal(Y, ref) and np.array_equal(mean, ref_mean)
        assert geometry.form == "cifti" and geometry.mask.sum() == raw.shape[1]


def test_dense_scalar_maps_keep_the_inputs_axis(tmp_path):
    path = tmp_path / "bold.dtseries.nii"
    axis = _dtseries(path)
    values = np.random.default_rng(1).normal(size=len(axis)).astype(np.float32)
    mask = np.ones(len(axis), bool)
    mask[::7] = False
    (out, extra), = CiftiGeometry.of_file(path).write(values[mask], str(tmp_path / "fast"), mask=mask)
    (ref, _), = CiftiGeometry(axis).write(values[mask], str(tmp_path / "nibabel"), mask=mask)
    img = nb.load(out)
    assert out.endswith(".dscalar.nii") and extra == {}
    assert img.header.get_axis(1) == axis and isinstance(img.header.get_axis(0), nb.cifti2.ScalarAxis)
    assert img.header.get_axis(0).name.tolist() == ["map"]
    assert int(img.nifti_header["intent_code"]) == 3006  # NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS
    data = np.asarray(img.dataobj)
    assert data.shape == (1, len(axis)) and np.array_equal(data[0][mask], values[mask]) and np.all(data[0][~mask] == 0)
    assert np.array_equal(data, np.asarray(nb.load(ref).dataobj))
    # a map written from a dense scalar file (the group level's reference) keeps the axis too
    (again, _), = read_map(out)[1].write(values, str(tmp_path / "again"))
    assert nb.load(again).header.get_axis(1) == axis
    assert np.array_equal(read_map(again)[0], values.astype(np.float64))


def test_truncated_or_foreign_files_are_refused_naming_them(tmp_path):
    path = tmp_path / "bold.dtseries.nii"
    _dtseries(path)
    cut = tmp_path / "cut.dtseries.nii"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GlmxError, match="truncated") as err:
        read_cifti_data(cut)
    assert "cut.dtseries.nii" in str(err.value)
    volume = tmp_path / "vol.dtseries.nii"
    nb.save(nb.Nifti2Image(np.zeros((3, 3, 3, 4), np.float32), np.eye(4)), str(volume))
    with pytest.raises(GlmxError, match="not a CIFTI-2 file") as err:
        read_run(volume, volume)
    assert "vol.dtseries.nii" in str(err.value)


def test_goodness_of_fit_from_the_fits_sums_equals_a_second_pass(tmp_path):
    path = tmp_path / "bold.dtseries.nii"
    _dtseries(path, n_scans=80, seed=3)
    Y, _, _ = read_run(path, path)
    X = np.column_stack([np.ones(80), np.linspace(-1, 1, 80), np.sin(np.arange(80) / 5.0)])
    fit = fit_glm(Y, X, noise_model="ar1")
    assert fit.series_sums is not None
    r2, ll = goodness_of_fit(Y, X, fit)
    fit.series_sums = None
    r2_ref, ll_ref = goodness_of_fit(Y, X, fit)
    assert np.allclose(r2, r2_ref, rtol=1e-10, atol=1e-12) and np.allclose(ll, ll_ref, rtol=1e-10)
