"""Signal scaling of time series before the fit."""

import numpy as np


def mean_scaling(Y, copy=True):
    """Percent signal change about each voxel's mean, as nilearn's FirstLevelModel (signal_scaling=0).

    Parameters
    ----------
    Y : numpy.ndarray of shape (n_scans, n_voxels)
    copy : bool
        False scales ``Y`` in place (floating ``Y`` only): a run's data are then held once, not twice.

    Returns
    -------
    Y_scaled : numpy.ndarray of shape (n_scans, n_voxels), same dtype
        ``100 * (Y / max(mean, 1) - 1)`` (``Y`` itself when ``copy`` is False); the same numbers either way.
    mean : numpy.ndarray of shape (n_voxels,)
    """
    mean = Y.mean(axis=0)
    safe = np.maximum(mean, 1).astype(Y.dtype, copy=False)
    if copy or not np.issubdtype(Y.dtype, np.floating):
        out = Y / safe
    else:
        out = np.divide(Y, safe, out=Y)
    out -= 1
    out *= 100
    return out, mean
