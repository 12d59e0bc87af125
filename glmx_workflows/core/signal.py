"""Signal scaling of time series before the fit."""

import numpy as np


def mean_scaling(Y):
    """Percent signal change about each voxel's mean, as nilearn's FirstLevelModel (signal_scaling=0).

    Parameters
    ----------
    Y : numpy.ndarray of shape (n_scans, n_voxels)

    Returns
    -------
    Y_scaled : numpy.ndarray of shape (n_scans, n_voxels), same dtype
        ``100 * (Y / max(mean, 1) - 1)``.
    mean : numpy.ndarray of shape (n_voxels,)
    """
    mean = Y.mean(axis=0)
    safe = np.maximum(mean, 1).astype(Y.dtype, copy=False)
    out = Y / safe
    out -= 1
    out *= 100
    return out, mean
