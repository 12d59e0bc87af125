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


class ScaledIntegerRun:
    """An integer-stored run, read as percent signal change in float64 one block at a time.

    nilearn reads an int16 run with ``scl_slope`` as float64 (``raw * slope + inter``) and scales that to
    percent signal change. Holding those float64 values would take four times the stored integers; their
    float32 rounding (1 part in 1e7) moves voxels whose AR(1) coefficient sits at a bin edge into the
    neighbouring bin. This keeps the stored integers and hands out, for any block of rows or columns,
    exactly nilearn's float64 numbers: ``100 * ((raw * slope + inter) / max(mean, 1) - 1)`` with
    ``mean`` nilearn's voxel means (summed scan by scan, as numpy reduces over the first axis).

    Parameters
    ----------
    raw : numpy.ndarray of int, shape (n_scans, n_voxels)
        The stored values of the in-mask voxels.
    slope, inter : float
        The file's scaling (``scl_slope``, ``scl_inter``).
    chunk : int
        Voxels converted at once while computing the means.

    Attributes
    ----------
    mean : numpy.ndarray of float64, shape (n_voxels,)
        Voxel means of the scaled values (before percent signal change).
    """

    dtype = np.dtype(np.float64)
    ndim = 2

    def __init__(self, raw, slope=1.0, inter=0.0, chunk=8192):
        self.raw = raw
        self.slope = float(slope)
        self.inter = float(inter)
        self.shape = raw.shape
        self.mean = np.empty(raw.shape[1])
        block = np.empty((raw.shape[0], min(chunk, raw.shape[1])))  # reused: fresh blocks cost page faults
        for start in range(0, raw.shape[1], chunk):
            cols = slice(start, start + chunk)
            values = self._values((slice(None), cols), out=block[:, :min(chunk, raw.shape[1] - start)])
            self.mean[cols] = values.mean(axis=0)
        self._safe = np.maximum(self.mean, 1.0)

    def _values(self, key, out=None):
        """``raw[key] * slope + inter`` in float64 (nibabel's arithmetic), into ``out`` when given."""
        if out is None:
            values = self.raw[key].astype(np.float64)
        else:
            values = out
            np.copyto(values, self.raw[key], casting="unsafe")
        values *= self.slope
        values += self.inter
        return values

    def _percent(self, key, out=None):
        values = self._values(key, out)
        values /= self._safe[key[1]]
        values -= 1
        values *= 100
        return values

    def __getitem__(self, key):
        """Percent signal change of ``raw[key]`` (key: rows, or (rows, columns)), float64."""
        if not isinstance(key, tuple):
            key = (key, slice(None))
        return self._percent(key)

    def columns_into(self, out, start, stop):
        """Write the percent signal change of columns ``start:stop`` into ``out`` (float64, preallocated).

        The same numbers as ``self[:, start:stop]``, without a fresh array per block (each costs page
        faults proportional to its size).

        Parameters
        ----------
        out : numpy.ndarray of float64, shape (n_scans, stop - start)
        start, stop : int

        Returns
        -------
        out
        """
        return self._percent((slice(None), slice(start, stop)), out)

    def scan_sums(self, block=16):
        """Sum over voxels of every scan's percent signal change, float64.

        ``sum_v 100 (s x_v + i) / m_v - 100 n = 100 (s x . w + i sum w - n)`` with ``w = 1 / m``: one
        product per block of scans with the stored integers instead of materialising the values (the
        sums feed the residuals' global mean, a scalar, so their rounding differs only in the last bits).

        Parameters
        ----------
        block : int
            Scans converted to float64 at once.

        Returns
        -------
        numpy.ndarray of float64, shape (n_scans,)
        """
        w = 1.0 / self._safe
        n_scans, n_vox = self.shape
        dots = np.empty(n_scans)
        for t in range(0, n_scans, block):
            dots[t:t + block] = np.dot(self.raw[t:t + block].astype(np.float64), w)
        return 100.0 * (self.slope * dots + self.inter * w.sum() - n_vox)

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)
