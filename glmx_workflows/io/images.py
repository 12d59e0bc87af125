"""NIfTI ↔ arrays: the one place BOLD runs and masks are read and maps are written."""

from pathlib import Path

import nibabel as nb
import numpy as np

try:  # python-isal (a dependency, also used for reading)
    from isal import igzip as _isal_gzip
except ImportError:  # pragma: no cover
    _isal_gzip = None

from ..core.errors import GlmxError
from ..core.signal import ScaledIntegerRun, mean_scaling
from .atomic import atomic_path
from .fastread import read_masked_run, read_scaling


def load_image(path, what="image"):
    """Load a NIfTI image lazily, with an error that names the file.

    Parameters
    ----------
    path : str or Path
        The NIfTI file.
    what : str
        What the file is, used in error messages.

    Returns
    -------
    nibabel.spatialimages.SpatialImage
        The image (data not read yet).

    Raises
    ------
    GlmxError
        If the file does not exist or nibabel cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise GlmxError(f"{what} not found", file=path)
    try:
        return nb.load(str(path))
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise GlmxError(f"{what} is not a readable NIfTI image ({exc})", file=path) from None


def bold_length(path):
    """Number of volumes of a 4D BOLD run (header only).

    Parameters
    ----------
    path : str or Path
        The BOLD run.

    Returns
    -------
    int
        Length of the fourth dimension.

    Raises
    ------
    GlmxError
        If the file is missing, unreadable or not 4D.
    """
    if str(path).endswith((".dtseries.nii", ".gii")):  # surfaces: volumes of the series axis or data arrays
        from .geometry import run_length

        return run_length(path)
    img = load_image(path, "BOLD run")
    if len(img.shape) != 4:
        raise GlmxError(f"BOLD image is {len(img.shape)}D with shape {img.shape}; expected a 4D run",
                        file=path, field="BOLD")
    check_complete(img, path, "BOLD run")
    return int(img.shape[3])


def check_complete(img, path, what="image"):
    """Refuse an image file shorter than its header says (a copy or download cut short), reading no data.

    An uncompressed file must hold ``vox_offset`` + the data's bytes. A ``.nii.gz`` ends with the size of
    its uncompressed content (modulo 2**32, RFC 1952); when that disagrees (a cut file, or a multi-member
    gzip), the stream is decompressed once to find out.

    Parameters
    ----------
    img : nibabel.Nifti1Image or Nifti2Image
        The image, as loaded (header only) from ``path``.
    path : str or Path
        Its file.
    what : str
        What the file is, used in the message.

    Raises
    ------
    GlmxError
        The file holds fewer bytes than the header's image needs, or its gzip stream is cut or corrupt.
    """
    import gzip
    import zlib

    header = getattr(img, "header", None)
    if header is None or not hasattr(header, "get_data_offset"):
        return
    # the proxy knows where the data start in the file (the in-memory header may say 0)
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
    expected = offset + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
    path = Path(path)
    if not str(path).endswith(".gz"):
        size = path.stat().st_size
        if size < expected:
            raise GlmxError(f"{what} is cut short: {size} bytes where its header needs {expected}; copy the file "
                            "again", file=path, field="file size")
        return
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        if int.from_bytes(fh.read(4), "little") == expected % 2 ** 32:
            return
    size = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise GlmxError(f"{what} is cut short or corrupt ({exc}); copy the file again", file=path,
                        field="gzip stream") from None
    if size < expected:
        raise GlmxError(f"{what} is cut short: {size} bytes uncompressed where its header needs {expected}; copy the "
                        "file again", file=path, field="file size")


def load_mask(path, reference=None, reference_path=None):
    """Load a brain mask as a boolean array, checked against a reference image grid.

    Parameters
    ----------
    path : str or Path
        The mask image (3D, or 4D with one volume); voxels > 0 are in the mask.
    reference : nibabel image, optional
        Image whose grid (first three dimensions of the shape, and affine) the mask must match.
    reference_path : str or Path, optional
        Path of ``reference``, named in the error message.

    Returns
    -------
    (numpy.ndarray of bool with the image's 3D shape, affine (4, 4))
    """
    img = load_image(path, "brain mask")
    try:
        data = np.asarray(img.dataobj)
    except (EOFError, OSError, ValueError) as exc:  # a cut or corrupt file
        raise GlmxError(f"brain mask cannot be read ({exc})", file=path, field="mask") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GlmxError(f"mask is {data.ndim}D; expected 3D", file=path, field="mask")
    if reference is not None:
        if tuple(reference.shape[:3]) != data.shape or not np.allclose(reference.affine, img.affine, atol=1e-3):
            raise GlmxError(f"mask grid {data.shape} does not match the BOLD grid {tuple(reference.shape[:3])} "
                            f"of {reference_path} (shape and affine must agree)", file=path, field="mask")
    mask = data > 0
    if not mask.any():
        raise GlmxError("mask is empty (no voxel > 0)", file=path, field="mask")
    return mask, img.affine


def _open_run(bold_path, mask_path):
    img = load_image(bold_path, "BOLD run")
    if len(img.shape) != 4:
        raise GlmxError(f"BOLD image is {len(img.shape)}D with shape {img.shape}; expected a 4D run",
                        file=bold_path, field="BOLD")
    mask, _ = load_mask(mask_path, img, bold_path)
    return img, mask


def load_masked_bold(bold_path, mask_path, keep=None, smoothing_fwhm=None):
    """Read a BOLD run once and return the in-mask time series.

    Parameters
    ----------
    bold_path, mask_path : str or Path
    keep : array of shape (n_scans,) of bool, optional
        Volumes to return (censoring); all by default.
    smoothing_fwhm : float, optional
        Gaussian smoothing (mm FWHM) of every volume before masking, with nilearn's kernel.

    Returns
    -------
    Y : numpy.ndarray of shape (n_kept, n_voxels), float32 (C-contiguous)
    mask : numpy.ndarray of bool, 3D
    affine : numpy.ndarray of shape (4, 4)
    """
    img, mask = _open_run(bold_path, mask_path)
    # one streaming pass (ISA-L gzip, per-volume scaling, smoothing and masking): no 4D array in memory
    Y = read_masked_run(img, bold_path, mask, keep=keep, smoothing_fwhm=smoothing_fwhm)
    return Y, mask, img.affine


def load_scaled_bold(bold_path, mask_path, keep=None, smoothing_fwhm=None):
    """:func:`load_masked_bold`, scaled to percent signal change as nilearn's FirstLevelModel does.

    A run stored as integers (int16 with ``scl_slope``, typically) and not smoothed is kept as its
    stored integers in a :class:`~glmx_workflows.core.signal.ScaledIntegerRun`, which hands the fit
    nilearn's float64 values block by block (half the memory of float32, and nilearn's exact numbers).
    Any other run is read in float32 and scaled in place.

    Parameters
    ----------
    bold_path, mask_path, keep, smoothing_fwhm
        As for :func:`load_masked_bold`.

    Returns
    -------
    Y : numpy.ndarray of float32 or ScaledIntegerRun, shape (n_kept, n_voxels)
        Percent signal change ``100 * (y / max(mean, 1) - 1)``.
    mean : numpy.ndarray of shape (n_voxels,)
        Voxel means before scaling.
    mask : numpy.ndarray of bool, 3D
    affine : numpy.ndarray of shape (4, 4)
    """
    img, mask = _open_run(bold_path, mask_path)
    if not smoothing_fwhm and np.issubdtype(img.get_data_dtype(), np.integer):
        Y = ScaledIntegerRun(read_masked_run(img, bold_path, mask, keep=keep, dtype="stored"), *read_scaling(img))
        return Y, Y.mean, mask, img.affine
    Y = read_masked_run(img, bold_path, mask, keep=keep, smoothing_fwhm=smoothing_fwhm)
    Y, mean = mean_scaling(Y, copy=False)  # in place: the run is held once
    return Y, mean, mask, img.affine


def unmask(values, mask, affine, dtype=np.float32):
    """(n_voxels,) values → NIfTI image on the mask's grid (zero outside).

    Parameters
    ----------
    values : array-like of shape (n_voxels,)
        One value per in-mask voxel, in the mask's C order.
    mask : numpy.ndarray of bool, 3D
        The mask.
    affine : numpy.ndarray of shape (4, 4)
        Affine of the output image.
    dtype : numpy dtype
        Data type of the output volume.

    Returns
    -------
    nibabel.Nifti1Image
        The 3D image, spatial units mm.
    """
    vol = np.zeros(mask.shape, dtype=dtype)
    vol[mask] = values
    img = nb.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    return img


def write_image(img, path):
    """Write a NIfTI image atomically.

    Parameters
    ----------
    img : nibabel image
        The image to save.
    path : str or Path
        Destination (its extension selects the format, e.g. ``.nii.gz``).

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        # the gzip header's time is 0: the same image gives the same bytes on every run, so a rerun that
        # recomputes an unchanged map leaves the published copy untouched (and does not count it written)
        if str(path).endswith(".nii.gz") and _isal_gzip is not None and hasattr(img, "to_bytes"):
            # ISA-L's level-1 deflate: ~5x faster than zlib's (nibabel's), and a participant run writes
            # 15 maps per contrast set
            Path(tmp).write_bytes(_isal_gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
        elif str(path).endswith(".nii.gz") and hasattr(img, "to_bytes"):
            import gzip

            Path(tmp).write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))
        else:
            nb.save(img, str(tmp))
    return Path(path)


def unmask_series(values, mask, affine, dtype=np.float32):
    """(n_volumes, n_voxels) values → a 4D NIfTI image on the mask's grid (zero outside).

    Parameters
    ----------
    values : array-like of shape (n_volumes, n_voxels)
        One row per output volume, columns in the mask's C order.
    mask : numpy.ndarray of bool, 3D
    affine : numpy.ndarray of shape (4, 4)
    dtype : numpy dtype

    Returns
    -------
    nibabel.Nifti1Image
        The 4D image (x, y, z, n_volumes), spatial units mm.
    """
    values = np.asarray(values)
    vol = np.zeros(mask.shape + (values.shape[0],), dtype=dtype)
    vol[mask] = values.T
    img = nb.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    return img
