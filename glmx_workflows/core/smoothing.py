"""Gaussian smoothing of one volume with exactly the kernel of ``nilearn.image.smooth_img``.

nilearn converts the FWHM (mm) into one sigma per voxel axis, ``fwhm / (sqrt(8 ln 2) * voxel size)`` with
the voxel sizes taken as the column norms of the affine's 3x3 part, and runs
``scipy.ndimage.gaussian_filter1d`` along each of the three spatial axes with scipy's defaults
(``mode="reflect"``, ``truncate=4.0``), in place, in the data's float dtype (float32 for float32 and
int16 images). Doing the same volume by volume gives the same numbers without a copy of the 4D run.
"""

import numpy as np
from scipy.ndimage import gaussian_filter1d

__all__ = ["smoothing_sigmas", "smooth_volume", "smoothing_box"]

FWHM_OVER_SIGMA = np.sqrt(8 * np.log(2))
#: scipy's default: the kernel reaches ``int(TRUNCATE * sigma + 0.5)`` voxels either side
TRUNCATE = 4.0


def smoothing_sigmas(affine, fwhm):
    """Per-axis Gaussian sigmas (in voxels) for a FWHM in mm, as nilearn computes them.

    Parameters
    ----------
    affine : array (4, 4) or (3, 3)
        The image's affine (only the 3x3 part is used).
    fwhm : float or sequence of 3 floats (None or 0 entries mean no smoothing on that axis)

    Returns
    -------
    numpy.ndarray of shape (3,)
    """
    fwhm = np.asarray([0.0 if f is None else f for f in np.asarray([fwhm], dtype=object).ravel()], dtype=float)
    lin = np.asarray(affine, dtype=float)[:3, :3]
    vox_size = np.sqrt(np.sum(lin ** 2, axis=0))
    return np.broadcast_to(fwhm / (FWHM_OVER_SIGMA * vox_size), (3,)).copy()


def smoothing_box(mask, sigmas):
    """The part of the grid whose smoothed values inside ``mask`` depend on, for :func:`smooth_volume`.

    A separable filter truncated at ``r`` voxels needs, for the mask's bounding box, the box widened by
    ``r`` on every side; and each later pass needs the earlier one only on the axes it has not yet
    filtered. Filtering only there gives bit for bit the values of filtering the whole volume inside the
    bounding box (the same products in the same order; the widened box is cut at the grid's edges, where
    the reflection is the whole volume's).

    Parameters
    ----------
    mask : numpy.ndarray of bool, 3D
    sigmas : array of 3 floats (from :func:`smoothing_sigmas`)

    Returns
    -------
    (inner, outer) : two tuples of 3 slices
        The mask's bounding box and the box widened by each axis's kernel radius (clipped to the grid).
    """
    mask = np.asarray(mask, bool)
    inner, outer = [], []
    for axis, sigma in enumerate(np.asarray(sigmas, float)):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            lo, hi = 0, mask.shape[axis]
        else:
            lo, hi = int(hits[0]), int(hits[-1]) + 1
        radius = int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0
        inner.append(slice(lo, hi))
        outer.append(slice(max(lo - radius, 0), min(hi + radius, mask.shape[axis])))
    return tuple(inner), tuple(outer)


def smooth_volume(vol, sigmas, box=None):
    """Smooth a 3D float volume in place (non-finite values become 0 first, as in nilearn).

    Parameters
    ----------
    vol : numpy.ndarray, 3D, float32 or float64, writeable
    sigmas : array of 3 floats (from :func:`smoothing_sigmas`)
    box : (inner, outer) from :func:`smoothing_box`, optional
        Filter only what the values inside ``inner`` depend on (about half of an MNI-grid run's work);
        values outside ``inner`` are then left partly filtered. None filters the whole volume.

    Returns
    -------
    vol (the same array)
    """
    bad = ~np.isfinite(vol)
    if bad.any():
        vol[bad] = 0
    if box is None:
        for axis, sigma in enumerate(sigmas):
            if sigma > 0.0:
                gaussian_filter1d(vol, float(sigma), axis=axis, output=vol, truncate=TRUNCATE)
        return vol
    inner, outer = box
    for axis, sigma in enumerate(sigmas):
        # axes already filtered are needed only inside the box; the ones still to come, widened
        view = vol[tuple(inner[a] if a < axis else outer[a] for a in range(3))]
        if sigma > 0.0:
            gaussian_filter1d(view, float(sigma), axis=axis, output=view, truncate=TRUNCATE)
    return vol
