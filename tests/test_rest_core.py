"""Resting-state core against nilearn's maskers and ConnectivityMeasure, planted structure, real BOLD."""

import os

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from nilearn.connectome import ConnectivityMeasure
from nilearn.maskers import NiftiLabelsMasker, NiftiMapsMasker, NiftiSpheresMasker
from sklearn.covariance import EmpiricalCovariance, GraphicalLassoCV

from glmx_workflows.core import connectivity as cc
from glmx_workflows.core.errors import GlmxError
from glmx_workflows.io import atlases

CLEAN = dict(detrend=True, high_pass=0.01, low_pass=0.08, t_r=2.0)
SHAPE = (9, 10, 8)
AFFINE = np.array([[4.0, 0, 0, -18], [0, 4, 0, -20], [0, 0, 4, -14], [0, 0, 0, 1]])


def _simulated(n=120, seed=0):
    """4D data with two planted networks of regions (labels 1-2 share signal A, 3-4 share B), confounds."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, int)
    labels[1:4, 1:5, 1:4] = 1
    labels[5:8, 1:5, 1:4] = 2
    labels[1:4, 5:9, 4:7] = 3
    labels[5:8, 5:9, 4:7] = 4
    labels[4, 4:6, 3:5] = 5
    mask = np.zeros(SHAPE, bool)
    mask[1:8, 1:9, 1:7] = True
    a, b = rng.standard_normal((2, n))
    motion = np.cumsum(rng.standard_normal((n, 3)) * 0.05, axis=0)
    data = 100 + rng.standard_normal(SHAPE + (n,)) * 2.0
    for lab, sig in ((1, a), (2, a), (3, b), (4, b)):
        data[labels == lab] += 1.5 * sig
    data += (motion @ rng.standard_normal((3, int(np.prod(SHAPE))))).T.reshape(SHAPE + (n,))
    conf = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z"])
    return data, labels, mask, conf


def _img(data):
    return nb.Nifti1Image(np.asarray(data, dtype=np.float64), AFFINE)


def test_labels_signals_and_cleaning_equal_nilearn_masker():
    data, labels, mask, conf = _simulated()
    raw, values = cc.labels_signals(data, labels, mask)
    ours = cc.denoise(raw, conf, t_r=2.0)
    masker = NiftiLabelsMasker(_img(labels.astype(np.int32)), mask_img=_img(mask.astype(np.int8)),
                               standardize="zscore_sample", **CLEAN)
    ref = masker.fit_transform(_img(data), confounds=conf.to_numpy())
    assert values == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_scrubbing_and_dummy_scans_equal_nilearn_sample_mask():
    data, labels, mask, conf = _simulated(n=130, seed=1)
    fd = np.abs(np.random.default_rng(2).standard_normal(130)) * 0.2
    fd[[20, 21, 60, 97]] = 1.2
    outliers = cc.censoring(130, dummy_scans=4, fd=fd, fd_threshold=0.5, min_volumes=50)
    assert outliers["censored"].sum() == 8 and list(outliers["reason"][:5]) == ["dummy"] * 4 + ["n/a"]
    raw, _ = cc.labels_signals(data, labels, mask)
    ours = cc.denoise(raw, conf, t_r=2.0, outliers=outliers)
    keep = np.flatnonzero(outliers["censored"].to_numpy()[4:] == 0)
    masker = NiftiLabelsMasker(_img(labels.astype(np.int32)), mask_img=_img(mask.astype(np.int8)),
                               standardize="zscore_sample", **CLEAN)
    ref = masker.fit_transform(nb.Nifti1Image(data[..., 4:], AFFINE), confounds=conf.to_numpy()[4:],
                               sample_mask=keep)
    assert ours.shape == (122, 5)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_scrubbing_refuses_a_run_with_too_few_volumes():
    fd = np.full(100, 0.9)
    fd[:30] = 0.1
    with pytest.raises(GlmxError) as err:
        cc.censoring(100, dummy_scans=2, fd=fd, fd_threshold=0.5, min_volumes=40, source="conf.tsv")
    line = err.value.one_line()
    assert line.startswith("conf.tsv: fd_threshold: only 28 of 100 volumes remain")
    assert "at least 40" in line and "\n" not in line


def test_maps_signals_equal_nilearn_maps_masker():
    data, labels, mask, conf = _simulated(seed=3)
    rng = np.random.default_rng(4)
    maps = np.stack([(labels == k) * rng.uniform(0.2, 1.0, SHAPE) for k in (1, 2, 3, 4)], axis=-1)
    maps[..., 0] += 0.1 * (labels == 2)  # overlapping maps need the least-squares fit, not a mean
    raw, kept = cc.maps_signals(data, maps, mask)
    ours = cc.denoise(raw, conf, t_r=2.0)
    masker = NiftiMapsMasker(_img(maps), mask_img=_img(mask.astype(np.int8)), standardize="zscore_sample", **CLEAN)
    ref = masker.fit_transform(_img(data), confounds=conf.to_numpy())
    assert kept == [0, 1, 2, 3]
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("radius", [None, 4.0, 6.5])
def test_spheres_signals_equal_nilearn_spheres_masker(radius):
    data, labels, mask, conf = _simulated(seed=5)
    coords = [(-10.3, -12.0, -6.0), (6.0, -4.2, 2.1), (0.0, 8.0, 5.5), (-2.0, -2.0, -2.0)]
    ours = cc.denoise(cc.spheres_signals(data, coords, AFFINE, mask, radius), conf, t_r=2.0)
    masker = NiftiSpheresMasker(coords, radius=radius, mask_img=_img(mask.astype(np.int8)), allow_overlap=True,
                                standardize="zscore_sample", **CLEAN)
    ref = masker.fit_transform(_img(data), confounds=conf.to_numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_matrices_equal_nilearn_connectivity_measure():
    data, labels, mask, conf = _simulated(n=150, seed=6)
    ts = cc.denoise(cc.labels_signals(data, labels, mask)[0], conf, t_r=2.0)
    for kind, nl_kind in (("pearsoncorrelation", "correlation"), ("partialcorrelation", "partial correlation"),
                          ("covariance", "covariance")):
        ref = ConnectivityMeasure(cov_estimator=EmpiricalCovariance(), kind=nl_kind,
                                  standardize=False).fit_transform([ts])[0]
        np.testing.assert_allclose(cc.connectivity(ts, kind), ref, atol=1e-6, err_msg=kind)
    std = (ts - ts.mean(0)) / ts.std(0)
    # nilearn's 'precision' inverts the estimator's covariance_; the graphical lasso's own precision_ is the
    # sparse one (exact zeros), so that is the reference, with nilearn's within the solver's tolerance
    ours = cc.connectivity(ts, "precision")
    np.testing.assert_allclose(ours, GraphicalLassoCV().fit(std).precision_, atol=1e-10)
    ref = ConnectivityMeasure(cov_estimator=GraphicalLassoCV(), kind="precision",
                              standardize=False).fit_transform([std])[0]
    np.testing.assert_allclose(ours, ref, atol=0.02 * np.abs(ref).max())
    assert (ours == 0).sum() > 0


def test_planted_networks_recovered_and_confounds_not_reintroduced():
    data, labels, mask, conf = _simulated(n=200, seed=7)
    ts = cc.denoise(cc.labels_signals(data, labels, mask)[0], conf, t_r=2.0, high_pass=None, low_pass=None)
    r = cc.connectivity(ts, "pearsoncorrelation")
    within = [r[0, 1], r[2, 3]]
    between = [r[0, 2], r[0, 3], r[1, 2], r[1, 3], r[4, 0]]
    assert min(within) > 0.5 and max(np.abs(between)) < 0.25, r.round(2)
    # the cleaned series carry no (filtered) confound: regression removed it after the same filtering
    filtered = cc.denoise(conf.to_numpy(), None, t_r=2.0, high_pass=None, low_pass=None)
    assert np.abs(filtered.T @ ts / len(ts)).max() < 1e-8


def test_fisher_average_and_seed_map():
    r1 = np.array([[1, 0.5], [0.5, 1]])
    r2 = np.array([[1, 0.1], [0.1, 1]])
    avg = cc.average_matrices([r1, r2], "pearsoncorrelation")
    assert avg[0, 1] == pytest.approx(np.tanh((np.arctanh(0.5) + np.arctanh(0.1)) / 2)) and avg[0, 0] == 1
    assert cc.average_matrices([r1, r2], "covariance")[0, 1] == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    seed = rng.standard_normal(100)
    Y = np.stack([seed + rng.standard_normal(100), rng.standard_normal(100)], axis=1)
    z = cc.seed_map(Y, seed)
    assert z == pytest.approx(np.arctanh([np.corrcoef(seed, Y[:, i])[0, 1] for i in range(2)]))


def test_group_tangent_and_edge_comparison():
    rng = np.random.default_rng(1)
    ts = [rng.standard_normal((80, 4)) for _ in range(6)]
    tangents, mean = cc.tangent_matrices(ts)
    ref = ConnectivityMeasure(kind="tangent", standardize=False)
    np.testing.assert_allclose(tangents, ref.fit_transform(ts), atol=1e-8)
    z = rng.standard_normal((10, 4, 4)) * 0.1
    z[:5, 0, 1] += 1.0
    z[:5, 1, 0] += 1.0
    out = cc.edge_group_comparison(z, ["a"] * 5 + ["b"] * 5)
    assert out["significant"][0, 1] and out["significant"].sum() == 2


def test_confound_presets_select_fmriprep_columns():
    cols = [f"{m}{s}" for m in cc.MOTION + cc.TISSUE
            for s in ("", "_derivative1", "_power2", "_derivative1_power2")] + [f"a_comp_cor_{i:02d}" for i in range(8)]
    frame = pd.DataFrame(np.random.default_rng(0).standard_normal((10, len(cols))), columns=cols)
    frame.iloc[0, 1] = np.nan
    assert cc.select_rest_confounds(frame, "24P").shape[1] == 24
    assert cc.select_rest_confounds(frame, "36P").shape[1] == 36
    sel = cc.select_rest_confounds(frame, "aCompCor", ["csf"])
    assert sel.shape[1] == 18 and "a_comp_cor_04" in sel and "a_comp_cor_05" not in sel and "csf" in sel
    assert not sel.isna().any().any()
    with pytest.raises(GlmxError, match="matches no column"):
        cc.select_rest_confounds(frame[cc.MOTION], "36P", source="c.tsv")


def test_offline_default_atlas_is_nilearn_package_data():
    path = atlases.packaged_coordinates_file("dosenbach_2010")
    assert path.is_file() and "nilearn" in str(path)
    atlas = atlases.load_atlas(None, _img(np.zeros(SHAPE + (2,))), "bold.nii.gz", space="MNI152NLin2009cAsym")
    assert atlas.kind == "spheres" and atlas.name == "Dosenbach2010" and len(atlas.names) == 160
    assert len(set(atlas.names)) == 160 and atlas.networks[0] == "default"
    power = atlases.load_atlas("power_2011", _img(np.zeros(SHAPE + (2,))), "bold.nii.gz")
    assert len(power.names) == 264


def test_atlas_grid_mismatch_names_both_files(tmp_path):
    atlas_path = tmp_path / "atlas.nii.gz"
    nb.save(nb.Nifti1Image(np.ones((5, 5, 5), np.int16), np.eye(4)), atlas_path)
    bold = _img(np.zeros(SHAPE + (3,)))
    with pytest.raises(GlmxError) as err:
        atlases.load_atlas({"labels_img": str(atlas_path)}, bold, "/data/sub-01_bold.nii.gz")
    line = err.value.one_line()
    assert str(atlas_path) in line and "/data/sub-01_bold.nii.gz" in line and "\n" not in line
    with pytest.raises(GlmxError, match="MNI space but BOLD"):
        atlases.load_atlas("power_2011", bold, "b.nii.gz", space="T1w")


def test_labels_atlas_files_with_tsv(tmp_path):
    data, labels, mask, conf = _simulated(n=60)
    nb.save(nb.Nifti1Image(labels.astype(np.int16), AFFINE), tmp_path / "a.nii.gz")
    pd.DataFrame({"index": [1, 2, 3, 4, 5], "name": list("ABCDE")}).to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    atlas = atlases.load_atlas({"name": "my-atlas", "labels_img": "a.nii.gz", "labels_tsv": "a.tsv"}, _img(data),
                               "b.nii.gz", base_dir=tmp_path)
    assert atlas.name == "myatlas" and atlas.names == list("ABCDE")
    signals, names = atlases.region_signals(atlas, data, AFFINE, mask)
    assert signals.shape == (60, 5) and names == list("ABCDE")


def _real_functional():
    import nibabel

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "functional.nii")
    if not os.path.isfile(path):
        pytest.skip("nibabel's functional.nii is not installed")
    return path


def test_real_bold_from_nibabel_through_the_core():
    """nibabel's 4D functional image (17x21x3, 20 volumes): too short for the default band-pass (refused),
    then cleaned with detrending only; the series equal NiftiLabelsMasker's."""
    path = _real_functional()
    img = nb.load(path)
    data = np.asarray(img.get_fdata())
    mask = data.mean(axis=3) > np.percentile(data.mean(axis=3), 40)
    ijk = np.indices(mask.shape)
    labels = np.where(mask, 1 + (ijk[0] >= 8) + 2 * (ijk[1] >= 10), 0)
    raw, _ = cc.labels_signals(data, labels, mask)
    with pytest.raises(GlmxError, match="band-pass filter needs more volumes"):
        cc.denoise(raw, None, t_r=2.0)
    ours = cc.denoise(raw, None, t_r=2.0, high_pass=None, low_pass=None)
    masker = NiftiLabelsMasker(nb.Nifti1Image(labels.astype(np.int16), img.affine),
                               mask_img=nb.Nifti1Image(mask.astype(np.int8), img.affine), detrend=True,
                               standardize="zscore_sample", t_r=2.0)
    np.testing.assert_allclose(ours, masker.fit_transform(img), atol=1e-6)
    r = cc.connectivity(ours, "pearsoncorrelation")
    assert r.shape == (4, 4) and np.allclose(r, r.T) and np.all(np.abs(r) <= 1 + 1e-12)


def test_real_haxby_bold_default_band_pass(shared_data):
    """Real BOLD (Haxby 2001, 121 volumes, TR 2.5) with its motion confounds and FD scrubbing."""
    func = shared_data / "haxby2001" / "derivatives" / "fmriprep" / "sub-1" / "func"
    bold = sorted(func.glob("*run-01_*desc-preproc_bold.nii.gz"))[0]
    mask_path = sorted(func.glob("*run-01_*desc-brain_mask.nii.gz"))[0]
    conf = pd.read_csv(sorted(func.glob("*run-01_*confounds_timeseries.tsv"))[0], sep="\t", na_values="n/a")
    img = nb.load(bold)
    data = np.asarray(img.get_fdata())
    mask = np.asarray(nb.load(mask_path).dataobj) > 0
    ijk = np.indices(mask.shape)
    labels = np.where(mask, 1 + (ijk[2] >= 5) + 2 * (ijk[1] >= 5), 0)
    confounds = cc.select_rest_confounds(conf, "6P")
    fd = conf["framewise_displacement"].to_numpy()
    threshold = float(np.nanpercentile(fd, 95))
    outliers = cc.censoring(len(conf), 2, fd, threshold, min_volumes=50)
    ours = cc.denoise(cc.labels_signals(data, labels, mask)[0], confounds, t_r=2.5, outliers=outliers)
    keep = np.flatnonzero(outliers["censored"].to_numpy()[2:] == 0)
    masker = NiftiLabelsMasker(nb.Nifti1Image(labels.astype(np.int16), img.affine), mask_img=mask_path,
                               detrend=True, standardize="zscore_sample", high_pass=0.01, low_pass=0.08, t_r=2.5)
    ref = masker.fit_transform(nb.Nifti1Image(data[..., 2:], img.affine), confounds=confounds.to_numpy()[2:],
                               sample_mask=keep)
    assert ours.shape[0] == 121 - outliers["censored"].sum()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_denoise_many_equals_denoise_through_its_linear_operator():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((120, 40)) + np.linspace(0, 3, 120)[:, None]
    conf = rng.standard_normal((120, 6))
    fd = np.abs(rng.standard_normal(120)) * 0.3
    fd[[30, 31, 70]] = 1.0
    outliers = cc.censoring(120, 2, fd, 0.5, 40)
    for standardize in (True, False):
        np.testing.assert_allclose(cc.denoise_many(Y, conf, 2.0, outliers, standardize=standardize),
                                   cc.denoise(Y, conf, 2.0, outliers, standardize=standardize), atol=1e-10)
