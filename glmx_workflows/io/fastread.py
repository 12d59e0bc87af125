"""One streaming read of a 4D NIfTI run into float32 in-mask time series.

nibabel decompresses ``.nii.gz`` with Python's ``gzip`` (about twice slower than ISA-L here),
materialises the whole 4D array (1.3 GB for an MNI 2 mm run of 300 volumes, and a float64
intermediate for scaled int16 files), and masking then copies it again. This reader parses the
header with nibabel, then streams the data one volume at a time through ``isal.igzip_threaded``
(decompression runs on a second thread and releases the GIL, so it overlaps the masking and
smoothing of the previous volume), falling back to ``gzip``. Each volume is scaled
(``scl_slope``/``scl_inter``) in float32, optionally smoothed with nilearn's kernel, and gathered
into the output row: the peak is the (n_kept, n_voxels) float32 result plus a few volumes.
"""

import gzip
import math

import numpy as np

from ..core.errors import GlmxError
from ..core.smoothing import smooth_volume, smoothing_box, smoothing_sigmas

try:  # python-isal: ISA-L's inflate, about 2x Python's gzip on this data
    from isal import igzip_threaded as _isal_threaded
except ImportError:  # pragma: no cover - isal is a declared dependency
    _isal_threaded = None

__all__ = ["open_stream", "read_masked_run", "masked_indices", "fit_memory_gb"]


def open_stream(path, threaded=True):
    """Open a NIfTI file for sequential binary reading, decompressing ``.gz`` with ISA-L when available.

    Parameters
    ----------
    path : str or Path
    threaded : bool
        Decompress on a background thread (``isal.igzip_threaded``) so that the caller's work overlaps it.

    Returns
    -------
    A binary file object supporting ``read`` and ``readinto``.
    """
    path = str(path)
    if not path.endswith(".gz"):
        return open(path, "rb")
    if _isal_threaded is not None:
        # threads=0 is igzip.open (same thread); 1 is one decompression thread ahead of the reader
        return _isal_threaded.open(path, "rb", threads=1 if threaded else 0)
    return gzip.open(path, "rb")


def masked_indices(mask):
    """Positions of the mask's voxels in a Fortran-ordered (on-disk) volume, in numpy's ``data[mask]`` order.

    Parameters
    ----------
    mask : numpy.ndarray of bool, 3D

    Returns
    -------
    numpy.ndarray of intp, shape (n_voxels,)
    """
    return np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")


def _readinto_full(fobj, view, path):
    got = 0
    total = len(view)
    while got < total:
        try:
            n = fobj.readinto(view[got:])
        except Exception as exc:  # gzip/ISA-L/zlib raise EOFError, OSError or their own error types
            raise GlmxError(f"BOLD file cannot be read after {got} of {total} bytes of a volume, cut short or "
                            f"corrupt ({type(exc).__name__}: {exc}); copy the file again", file=path) from None
        if not n:
            raise GlmxError(f"BOLD file ends after {got} of {total} bytes of a volume (truncated?)", file=path)
        got += n


def read_scaling(img):
    """The scaling nibabel applies to a run's stored values (``scl_slope``, ``scl_inter``).

    Parameters
    ----------
    img : nibabel.Nifti1Image or Nifti2Image

    Returns
    -------
    slope, inter : float
        ``(1.0, 0.0)`` when the header's slope is unusable (zero or not finite), as nibabel does.
    """
    proxy = img.dataobj
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if not np.isfinite(slope) or slope == 0:  # nibabel's rule: an unusable slope means no scaling
        slope, inter = 1.0, 0.0
    if not np.isfinite(inter):
        inter = 0.0
    return slope, inter


def read_masked_run(img, path, mask, keep=None, smoothing_fwhm=None, dtype=np.float32):
    """Stream a 4D run and return its in-mask time series in float32 (or float64).

    Parameters
    ----------
    img : nibabel.Nifti1Image or Nifti2Image
        The run as loaded lazily by nibabel (only its header, offset and scaling are used).
    path : str or Path
        The file behind ``img`` (read sequentially once).
    mask : numpy.ndarray of bool, 3D
        Voxels to keep, on the run's grid.
    keep : array of bool of shape (n_volumes,), optional
        Volumes to return (censoring); all by default.
    smoothing_fwhm : float, optional
        Gaussian smoothing (mm FWHM) of every volume before masking, with nilearn's ``smooth_img`` kernel
        (non-finite values set to 0 first, as nilearn does).
    dtype : numpy float dtype or 'stored'
        float32 (default) or float64; ``'stored'`` returns the stored values unscaled, in the file's
        type (no smoothing), for :class:`~glmx_workflows.core.signal.ScaledIntegerRun` with
        :func:`read_scaling`: nilearn reads scaled int16 runs in float64, and float32 rounding of the
        scaled values (1 part in 1e7) moves the few voxels whose AR(1) coefficient lies at a bin edge to
        the neighbouring bin (|dz| ~1e-2 there).

    Returns
    -------
    Y : numpy.ndarray of shape (n_kept, n_voxels), ``dtype``, C-contiguous
        Equal to ``img.get_fdata(dtype=dtype)[mask].T`` (rows ``keep``) within rounding
        (``np.asanyarray(img.dataobj)[mask].T`` for ``'stored'``).
    """
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 4:
        raise GlmxError(f"BOLD image is {len(shape)}D with shape {shape}; expected a 4D run", file=path, field="BOLD")
    shape3, n_vol = shape[:3], shape[3]
    proxy = img.dataobj
    if getattr(proxy, "order", "F") != "F":
        raise GlmxError("BOLD data are not stored in NIfTI (Fortran) order", file=path)
    stored = isinstance(dtype, str) and dtype == "stored"
    out_dtype = np.dtype(img.get_data_dtype()) if stored else np.dtype(dtype)
    if not stored and out_dtype not in (np.float32, np.float64):
        raise GlmxError(f"read_masked_run returns float32, float64 or the stored type, not {out_dtype}", file=path)
    if stored and smoothing_fwhm:
        raise GlmxError("stored values cannot be smoothed on the read", file=path)
    dtype = np.dtype(img.get_data_dtype())
    slope, inter = (1.0, 0.0) if stored else read_scaling(img)
    keep = np.ones(n_vol, bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != (n_vol,):
        raise GlmxError(f"censoring has {keep.size} entries for a run of {n_vol} volumes", file=path)
    idx = masked_indices(mask)
    n_vox_full = math.prod(shape3)
    Y = np.empty((int(keep.sum()), idx.size), dtype=out_dtype)

    raw = bytearray(n_vox_full * dtype.itemsize)
    view = memoryview(raw)
    vol_raw = np.frombuffer(raw, dtype=dtype)
    sigmas = smoothing_sigmas(img.affine, smoothing_fwhm) if smoothing_fwhm else None
    box = smoothing_box(mask, sigmas) if sigmas is not None else None
    vol32 = np.empty(n_vox_full, out_dtype) if sigmas is not None else None
    scaled = slope != 1.0 or inter != 0.0

    offset = int(proxy.offset)
    with open_stream(path) as fobj:
        skip = bytearray(offset)
        if offset:
            _readinto_full(fobj, memoryview(skip), path)
        row = 0
        for t in range(n_vol):
            _readinto_full(fobj, view, path)
            if not keep[t]:
                continue
            out = Y[row]
            if sigmas is None:
                # gather first (230k of 1.08M voxels), then cast and scale only what is kept
                if scaled:  # scaled in float64 per volume, as nibabel does for the whole run, then rounded
                    np.copyto(out, vol_raw[idx] * slope + inter, casting="unsafe")
                elif vol_raw.dtype == out.dtype:  # native float: straight into the output row
                    np.take(vol_raw, idx, out=out)
                else:
                    np.copyto(out, vol_raw[idx], casting="unsafe")
            else:
                if scaled:
                    np.copyto(vol32, vol_raw * slope + inter, casting="unsafe")
                else:
                    np.copyto(vol32, vol_raw, casting="unsafe")
                smooth_volume(vol32.reshape(shape3, order="F"), sigmas, box)
                np.take(vol32, idx, out=out)
            row += 1
    return Y


def fit_memory_gb(n_voxels, n_volumes, smoothing=False, estimator="glmx"):
    """Memory (GB) to request for fitting one run with ``FitGLM``.

    The glmx fit is bounded by ~2.5x the float32 in-mask data (``n_voxels * n_volumes * 4`` bytes: the read
    result, its percent-signal-change version and chunked working arrays) plus ~0.4 GB for the interpreter,
    nipype, numpy and scipy; ``benchmarks/first_level.py`` measured a peak of 0.66 GB for 0.28 GB of data
    (230k voxels x 300 volumes). A 20 % margin covers allocator slack and other BLAS builds.

    Parameters
    ----------
    n_voxels : int
        In-mask voxels.
    n_volumes : int
        Volumes of the run.
    smoothing : bool
        Whether volumes are smoothed on the read (adds a few float32 volumes only).
    estimator : {'glmx', 'nilearn'}
        nilearn's ``run_glm`` holds float64 copies of the data and residuals: factor 6 instead of 2.5.

    Returns
    -------
    float, GB (rounded up to 0.01)
    """
    data_gb = n_voxels * n_volumes * 4 / 1e9
    factor = 6.0 if estimator == "nilearn" else 2.5
    gb = 1.2 * (0.4 + factor * data_gb) + (0.05 if smoothing else 0.0)
    return math.ceil(gb * 100) / 100
