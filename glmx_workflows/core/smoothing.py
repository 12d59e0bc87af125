"""Gaussian smoothing of one volume with exactly the kernel of ``nilearn.image.smooth_img``.

nilearn converts the FWHM (mm) into one sigma per voxel axis, ``fwhm / (sqrt(8 ln 2) * voxel size)`` with
the voxel sizes taken as the column norms of the affine's 3x3 part, and runs
``scipy.ndimage.gaussian_filter1d`` along each of the three spatial axes with scipy's defaults
(``mode="reflect"``, ``truncate=4.0``), in place, in the data's float dtype (float32 for float32 and
int16 images). Doing the same volume by volume gives the same numbers without a copy of the 4D run.
"""

import numpy as np
from scipy.ndimage import gaussian_filter1d

__all__ = ["smoothing_sigmas", "smooth_volume"]

FWHM_OVER_SIGMA = np.sqrt(8 * np.log(2))


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


def smooth_volume(vol, sigmas):
    """Smooth a 3D float volume in place (non-finite values become 0 first, as in nilearn).

    Parameters
    ----------
    vol : numpy.ndarray, 3D, float32 or float64, writeable
    sigmas : array of 3 floats (from :func:`smoothing_sigmas`)

    Returns
    -------
    vol (the same array)
    """
    bad = ~np.isfinite(vol)
    if bad.any():
        vol[bad] = 0
    for axis, sigma in enumerate(sigmas):
        if sigma > 0.0:
            gaussian_filter1d(vol, float(sigma), axis=axis, output=vol)
    return vol
