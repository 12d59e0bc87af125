"""First-level GLM core: OLS / AR(1) fit, contrasts and fixed effects in plain numpy.

This module reproduces, array for array, what nilearn computes in
``nilearn.glm.first_level.run_glm``, ``nilearn.glm.contrasts.compute_contrast``
and ``FirstLevelModel.compute_contrast`` (fixed effects across runs), but

* the ordinary least-squares pass uses one pseudo-inverse for all voxels and
  works on chunks of voxels, so no float64 copy of the whole data is made;
* the AR(1) coefficient of every voxel is estimated with nilearn's Yule-Walker
  estimator (global de-meaning of the OLS residuals, same sums, same division)
  and rounded into bins exactly as nilearn does, ``(rho * bins).astype(int) / bins``;
  each bin is then refitted with its own whitened design;
* contrasts are computed afterwards from stored per-bin quantities (normalized
  covariance of the betas, residual degrees of freedom) without refitting.

Numerical fidelity
------------------
nilearn computes the OLS residuals (and so the AR coefficients) in the dtype
``numpy.result_type(pinv(X).dtype, Y.dtype)``: float64 whenever the design is
float64, even for float32 data (the data are upcast inside ``numpy.dot``).  The
same dtype rule is followed here.  In the float64 case the OLS residuals, their
global mean (numpy's pairwise summation in the same memory order) and the lag-0 /
lag-1 sums (the summation pattern of the OpenBLAS ``ddot`` kernel numpy calls for
nilearn's strided vectors) reproduce nilearn's bits (verified with numpy 2.4 /
OpenBLAS 0.3.31 Haswell kernels; elsewhere they agree to rounding, ~1e-16), so every
voxel lands in the same AR bin -- even degenerate (constant) voxels, whose AR
coefficient is pure rounding noise.  Only when both X and Y are float32 does nilearn
work in float32; its own result then depends on BLAS blocking and thread count, and a
voxel whose AR coefficient lies within ~1e-6 of a bin edge may land in a neighbouring
bin (z maps otherwise agree to float32 precision).

The only imports are numpy, scipy and threadpoolctl (to keep the many small per-bin products on one
BLAS thread).
"""

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as spl
from scipy import special as sps_special
from threadpoolctl import ThreadpoolController

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.signal import ScaledIntegerRun

__all__ = [
    "GLMFit",
    "ContrastEstimate",
    "fit_glm",
    "estimate_contrast",
    "combine_fixed_effects",
    "contrast_statistics",
    "subset_estimate",
    "t_to_p_z",
    "z_from_p",
]

#: Guard on the variance in t / F statistics (nilearn's ``Contrast.tiny``).
TINY = 1e-50
#: Cap on the degrees of freedom of the reference distributions (nilearn's ``dofmax``).
DOFMAX = 1e10
#: Number of array elements (n_scans x chunk voxels) processed at once.
_CHUNK_ELEMENTS = 2_000_000
#: Largest node of numpy's pairwise-summation tree that is summed by one numpy call.
_PAIRWISE_LEAF = 65536


# ----------------------------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------------------------


@dataclass
class GLMFit:
    """A fitted first-level GLM of one run.

    Voxels share per-bin quantities: voxel ``v`` was fitted with the whitened design of
    bin ``labels[v]`` (AR(1) coefficient ``bin_rho[labels[v]]``).

    Parameters
    ----------
    beta : numpy.ndarray, shape (n_regressors, n_voxels)
        Parameter estimates.  float64, except for an OLS fit of float32 data with a
        float32 design (float32, as nilearn).
    dispersion : numpy.ndarray, shape (n_voxels,)
        Residual variance in the (whitened) model of the voxel's bin,
        ``SSE / (n_scans - n_regressors)`` -- nilearn divides by the number of columns,
        not by the rank, even for a rank-deficient design.  Same dtype as ``beta``.
    labels : numpy.ndarray of int, shape (n_voxels,)
        Index of each voxel's bin into the ``bin_*`` arrays.
    bin_rho : numpy.ndarray of float64, shape (n_bins,)
        AR(1) coefficient of each bin, increasing (OLS: one bin with rho 0).
    bin_cov : numpy.ndarray of float64, shape (n_bins, n_regressors, n_regressors)
        Normalized covariance of beta, ``pinv(Xw) @ pinv(Xw).T`` for the whitened design Xw.
    bin_df : numpy.ndarray of float64, shape (n_bins,)
        Residual degrees of freedom, ``n_scans - rank(X)`` (the same in every bin).
    noise_model : str
        ``'ols'`` or ``'ar1'``.
    """

    beta: np.ndarray
    dispersion: np.ndarray
    labels: np.ndarray
    bin_rho: np.ndarray
    bin_cov: np.ndarray
    bin_df: np.ndarray
    noise_model: str
    #: Per-voxel sums of the data the moment-based AR(1) fit already took (``total``, ``sq``, ``lag``, ``last``;
    #: see :func:`goodness_of_fit`), so that the run is not read again; not stored by :meth:`to_arrays`.
    series_sums: dict = field(default=None, repr=False, compare=False)

    @property
    def n_voxels(self):
        """int: number of voxels."""
        return self.beta.shape[1]

    @property
    def n_regressors(self):
        """int: number of design columns."""
        return self.beta.shape[0]

    def to_arrays(self):
        """Return the fit as a dict of numpy arrays (suitable for ``numpy.savez``).

        Returns
        -------
        dict of str to numpy.ndarray
            Keys ``beta``, ``dispersion``, ``labels``, ``bin_rho``, ``bin_cov``, ``bin_df``
            and ``noise_model`` (a 0-d unicode array); no pickled objects.
        """
        return {
            "beta": self.beta,
            "dispersion": self.dispersion,
            "labels": self.labels,
            "bin_rho": self.bin_rho,
            "bin_cov": self.bin_cov,
            "bin_df": self.bin_df,
            "noise_model": np.array(self.noise_model),
        }

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild a fit from the dict of :meth:`to_arrays` (extra keys are ignored).

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray
            E.g. the contents of an ``.npz`` file.

        Returns
        -------
        GLMFit
        """
        try:
            fit = cls(
                beta=np.asarray(arrays["beta"]),
                dispersion=np.asarray(arrays["dispersion"]),
                labels=np.asarray(arrays["labels"]),
                bin_rho=np.asarray(arrays["bin_rho"], dtype=np.float64),
                bin_cov=np.asarray(arrays["bin_cov"], dtype=np.float64),
                bin_df=np.asarray(arrays["bin_df"], dtype=np.float64),
                noise_model=str(np.asarray(arrays["noise_model"]).item()),
            )
        except KeyError as err:
            raise GlmxError(f"stored GLM fit lacks the array {err.args[0]!r}") from None
        p, n = fit.beta.shape if fit.beta.ndim == 2 else (None, None)
        nb = fit.bin_rho.shape[0]
        if (p is None or fit.dispersion.shape != (n,) or fit.labels.shape != (n,)
                or fit.bin_cov.shape != (nb, p, p) or fit.bin_df.shape != (nb,)
                or (n and (fit.labels.min() < 0 or fit.labels.max() >= nb))):
            raise GlmxError("stored GLM fit has inconsistent array shapes")
        return fit


@dataclass
class ContrastEstimate:
    """A contrast of one run (or a fixed-effects combination of runs), before statistics.

    The representation is nilearn's ``Contrast``: for an F contrast the effect is already
    whitened by ``sqrtm(inv(C cov C'))`` and the variance is the dispersion, so that
    ``F = sum(effect**2, 0) / q / variance``.

    Parameters
    ----------
    effect : numpy.ndarray of float64, shape (q, n_voxels)
        t contrast: ``q == 1``, the contrast of the betas.  F contrast: ``q`` rows of
        the whitened effect.
    variance : numpy.ndarray of float64, shape (n_voxels,)
        t contrast: variance of the effect, ``(c cov c') * dispersion``.  F contrast:
        the dispersion.  (A 1-D array for both, as in nilearn.)
    dof : float
        Residual degrees of freedom (summed over runs after fixed effects).
    stat_type : str
        ``'t'`` or ``'F'``.
    """

    effect: np.ndarray
    variance: np.ndarray
    dof: float
    stat_type: str

    @property
    def dim(self):
        """int: number of rows q of the contrast."""
        return self.effect.shape[0]

    @property
    def n_voxels(self):
        """int: number of voxels."""
        return self.effect.shape[1]

    def to_arrays(self):
        """Return the estimate as a dict of numpy arrays (suitable for ``numpy.savez``).

        Returns
        -------
        dict of str to numpy.ndarray
            Keys ``effect`` (q, n_voxels), ``variance`` (n_voxels,), ``dof`` (0-d float)
            and ``stat_type`` (0-d unicode).
        """
        return {
            "effect": self.effect,
            "variance": self.variance,
            "dof": np.array(self.dof, dtype=np.float64),
            "stat_type": np.array(self.stat_type),
        }

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild an estimate from the dict of :meth:`to_arrays` (extra keys are ignored).

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray

        Returns
        -------
        ContrastEstimate
        """
        try:
            est = cls(
                effect=np.asarray(arrays["effect"], dtype=np.float64),
                variance=np.asarray(arrays["variance"], dtype=np.float64),
                dof=float(np.asarray(arrays["dof"])),
                stat_type=str(np.asarray(arrays["stat_type"]).item()),
            )
        except KeyError as err:
            raise GlmxError(f"stored contrast estimate lacks the array {err.args[0]!r}") from None
        if (est.effect.ndim != 2 or est.variance.shape != (est.effect.shape[1],)
                or est.stat_type not in ("t", "F") or (est.stat_type == "t" and est.effect.shape[0] != 1)):
            raise GlmxError("stored contrast estimate has inconsistent arrays")
        return est


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------


def _check_inputs(Y, X, noise_model, bins):
    if noise_model not in ("ols", "ar1"):
        raise GlmxError(f"unknown noise model {noise_model!r}; expected 'ols' or 'ar1'", field="noise_model")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise GlmxError(f"bins must be a positive integer, got {bins!r}", field="bins")
    if not isinstance(Y, ScaledIntegerRun):  # that one hands out float64 blocks; never materialized whole
        Y = np.asarray(Y)
    X = np.asarray(X)
    if Y.ndim != 2:
        raise GlmxError(f"data must be a 2-D array (n_scans, n_voxels), got shape {Y.shape}")
    if X.ndim != 2:
        raise GlmxError(f"design must be a 2-D array (n_scans, n_regressors), got shape {X.shape}")
    for name, arr in (("data", Y), ("design", X)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise GlmxError(f"{name} must be numeric, got dtype {arr.dtype}")
    if Y.shape[0] != X.shape[0]:
        raise GlmxError(f"data have {Y.shape[0]} scans but the design has {X.shape[0]} rows")
    if X.shape[1] < 1:
        raise GlmxError("the design has no regressors")
    if X.shape[0] <= X.shape[1]:
        raise GlmxError(f"{X.shape[0]} scans are too few for {X.shape[1]} regressors "
                        "(need more scans than regressors)")
    if Y.shape[1] < 1:
        raise GlmxError("the data have no voxels")
    if not np.isfinite(X).all():
        raise GlmxError("the design contains NaN or infinite values")
    return Y, X


def _check_finite(Yc):
    if not np.isfinite(Yc).all():
        raise GlmxError("the data contain NaN or infinite values")


def _design_rank(X):
    """Rank of the design with nilearn's absolute tolerance ``sum|X| * eps``."""
    eps = np.abs(X).sum() * np.finfo(np.float64).eps
    return int(np.linalg.matrix_rank(X, tol=eps))


def _whiten(A, rho):
    """AR(1) whitening as nilearn's ``ARModel.whiten``: ``A[t] - rho * A[t-1]`` for t >= 1, in float64."""
    A = np.asarray(A, np.float64)
    out = A.copy()
    out[1:] = out[1:] - rho * A[:-1]
    return out


def _pairwise_leaves(n, out):
    """Lengths, in order, of the nodes of numpy's pairwise-summation tree no larger than the leaf size."""
    if n <= _PAIRWISE_LEAF:
        out.append(n)
    else:
        n2 = n // 2
        n2 -= n2 % 8
        _pairwise_leaves(n2, out)
        _pairwise_leaves(n - n2, out)
    return out


def _pairwise_combine(n, sums):
    if n <= _PAIRWISE_LEAF:
        return next(sums)
    n2 = n // 2
    n2 -= n2 % 8
    left = _pairwise_combine(n2, sums)
    return left + _pairwise_combine(n - n2, sums)


class _StreamSum:
    """``numpy.add.reduce`` of a long 1-D array fed in consecutive pieces, with numpy's exact rounding.

    numpy sums a contiguous array by recursive halving (pairwise summation); the nodes of that
    tree up to ``_PAIRWISE_LEAF`` elements are summed with one numpy call each and combined in
    the same tree order, which reproduces the full reduction bit for bit.
    """

    def __init__(self, n_total):
        self.n_total = n_total
        self.lengths = _pairwise_leaves(n_total, [])
        self.index = 0
        self.sums = []
        self.carry = []
        self.carried = 0

    def feed(self, flat):
        pos = 0
        size = flat.shape[0]
        while pos < size and self.index < len(self.lengths):
            need = self.lengths[self.index] - self.carried
            if size - pos < need:
                self.carry.append(flat[pos:].copy())
                self.carried += size - pos
                return
            piece = flat[pos:pos + need]
            if self.carry:
                piece = np.concatenate(self.carry + [piece])
                self.carry, self.carried = [], 0
            self.sums.append(np.add.reduce(piece))
            self.index += 1
            pos += need

    def total(self):
        if self.index != len(self.lengths):
            raise RuntimeError("stream ended early")  # pragma: no cover - internal invariant
        return _pairwise_combine(self.n_total, iter(self.sums))


def _lag_sums_f64(a, b):
    """Per-column dot products of (L, c) float64 arrays, summed as OpenBLAS ``ddot`` does for strided vectors.

    numpy evaluates nilearn's ``y[:, None, :] @ y[:, :, None]`` with one BLAS ``ddot`` per voxel
    on strided data; that kernel accumulates products four at a time into two partial sums.
    Doing the same across all columns at once gives the same bits at a fraction of the cost.
    """
    n_rows = a.shape[0]
    n4 = n_rows & -4
    acc1 = np.zeros(a.shape[1])
    acc2 = np.zeros(a.shape[1])
    for i in range(0, n4, 4):
        acc1 += a[i] * b[i] + a[i + 2] * b[i + 2]
        acc2 += a[i + 1] * b[i + 1] + a[i + 3] * b[i + 3]
    for i in range(n4, n_rows):
        acc1 += a[i] * b[i]
    return acc1 + acc2


def _lag_sums_f32(a, b):
    """Per-column dot products of (L, c) float32 arrays, accumulated in float64 and rounded to float32."""
    acc = np.zeros(a.shape[1])
    for i in range(a.shape[0]):
        acc += a[i].astype(np.float64) * b[i]
    return acc.astype(np.float32)


_BLAS = []


def _one_blas_thread():
    """A context keeping BLAS on one thread; the library scan (ms per call) is done once per process."""
    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def _chunks(n, size):
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def fit_glm(Y, X, noise_model="ar1", bins=100, chunk_size=None):
    """Fit a first-level GLM (OLS or AR(1)) to all voxels, as nilearn's ``run_glm``.

    Parameters
    ----------
    Y : numpy.ndarray or ScaledIntegerRun, shape (n_scans, n_voxels)
        The data (float32 or float64, or an integer-stored run read block by block; never copied as a
        whole).
    X : numpy.ndarray, shape (n_scans, n_regressors)
        The design matrix; may be rank-deficient (a pseudo-inverse is used).
    noise_model : {'ar1', 'ols'}
        Temporal noise model.
    bins : int
        AR(1) coefficients are truncated to multiples of ``1 / bins``
        (nilearn: ``(rho * bins).astype(int) / bins``); one refit per distinct value.
    chunk_size : int, optional
        Voxels processed at once (default: about 2e6 / n_scans).

    Returns
    -------
    GLMFit

    Raises
    ------
    GlmxError
        Mismatched shapes, no more scans than regressors, non-finite values,
        an unknown noise model or a bad ``bins``.

    Notes
    -----
    Memory beyond the inputs: the betas (two arrays of (n_regressors, n_voxels) for a float32
    design) and a few (n_scans, chunk_size) float64 work arrays.
    If the OLS residuals of a voxel are exactly zero at every scan and their global mean is also
    exactly zero, nilearn fails (singular Yule-Walker system); here that voxel gets rho 0.
    """
    Y, X = _check_inputs(Y, X, noise_model, bins)
    n_scans, n_vox = Y.shape
    n_reg = X.shape[1]
    if chunk_size is None:
        chunk = max(256, _CHUNK_ELEMENTS // n_scans)
    elif isinstance(chunk_size, (int, np.integer)) and not isinstance(chunk_size, bool) and chunk_size >= 1:
        chunk = int(chunk_size)
    else:
        raise GlmxError(f"chunk_size must be a positive integer, got {chunk_size!r}", field="chunk_size")
    chunks = _chunks(n_vox, chunk)

    pinv_x = spl.pinv(X)
    work = np.result_type(pinv_x.dtype, Y.dtype)
    df_resid = float(n_scans - _design_rank(X))
    disp_den = n_scans - n_reg

    if noise_model == "ols":
        beta = np.empty((n_reg, n_vox), dtype=work)
        dispersion = None
        for start, stop in chunks:
            Yc = Y[:, start:stop]
            _check_finite(Yc)
            b = np.dot(pinv_x, Yc)
            resid = Yc - np.dot(X, b)
            d = np.sum(resid**2, 0) / disp_den
            if dispersion is None:
                dispersion = np.empty(n_vox, dtype=d.dtype)
            beta[:, start:stop] = b
            dispersion[start:stop] = d
        cov = np.dot(pinv_x, pinv_x.T).astype(np.float64)
        return GLMFit(beta=beta, dispersion=dispersion, labels=np.zeros(n_vox, dtype=np.intp),
                      bin_rho=np.zeros(1), bin_cov=cov[None], bin_df=np.array([df_resid]),
                      noise_model="ols")

    if work == np.float64:
        return _fit_ar1_moments(Y, X, bins, chunk_size and chunk, pinv_x, df_resid, disp_den)
    return _fit_ar1_direct(Y, X, bins, chunks, pinv_x, work, df_resid, disp_den)


def _ols_betas(Y, pinv_x, chunks, work):
    """nilearn's OLS betas ``pinv(X) @ Y``, chunk by chunk (the same bits as one product)."""
    beta = np.empty((pinv_x.shape[0], Y.shape[1]), dtype=work)
    for start, stop in chunks:
        Yc = Y[:, start:stop]
        _check_finite(Yc)
        beta[:, start:stop] = np.dot(pinv_x, Yc)
    return beta


def _residual_mean(Y, X, ols_beta):
    """Global mean of the OLS residuals, summed in the memory order of nilearn's (C-ordered) residuals."""
    n_scans, n_vox = Y.shape
    stream = _StreamSum(n_scans * n_vox)
    rows = max(1, _CHUNK_ELEMENTS // n_vox)
    for t0 in range(0, n_scans, rows):
        resid = Y[t0:t0 + rows] - np.dot(X[t0:t0 + rows], ols_beta)
        stream.feed(np.ravel(resid, order="C"))
    total = stream.total()
    return total.dtype.type(total / np.intp(n_scans * n_vox))


def _yule_walker_rho(Y, X, ols_beta, mean, chunks):
    """nilearn's Yule-Walker AR(1) coefficient of every voxel, from explicit residuals (its arithmetic)."""
    n_scans = Y.shape[0]
    rho = np.empty(Y.shape[1])
    for start, stop in chunks:
        Yc = Y[:, start:stop]
        y = (Yc - np.dot(X, ols_beta[:, start:stop])) - mean
        if y.dtype == np.float64:
            r0, r1 = _lag_sums_f64(y, y), _lag_sums_f64(y[:-1], y[1:])
        else:
            r0, r1 = _lag_sums_f32(y, y), _lag_sums_f32(y[:-1], y[1:])
        rho[start:stop] = _rho_from_sums(r0, r1, n_scans)
    return rho


def _rho_from_sums(r0, r1, n_scans):
    """``r1 / r0`` with nilearn's normalisations (and rho 0 where nilearn's system is singular)."""
    r0 = np.asarray(r0, dtype=np.float64) / (n_scans * n_scans)
    r1 = np.asarray(r1, dtype=np.float64) / ((n_scans - 1) * n_scans)
    zero = r0 == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero, 0.0, r1 / np.where(zero, 1.0, r0))


def _bin_models(X, bin_rho):
    """:func:`_bin_model` of every bin."""
    return [_bin_model(X, r) for r in bin_rho]


def _bin_labels(rho, bins):
    binned = (rho * bins).astype(np.int64) * 1.0 / bins
    bin_rho, labels = np.unique(binned, return_inverse=True)
    return bin_rho, labels.astype(np.intp).reshape(rho.shape)


def _refit_direct(Y, labels, bin_rho, models, disp_den, chunks, beta, dispersion, columns=None):
    """Refit voxels with their bin's whitened design by explicit whitening (nilearn's arithmetic).

    ``columns`` (optional) maps the columns of ``Y`` to columns of ``beta`` / ``dispersion``.
    """
    n_reg = beta.shape[0]
    # Each chunk's refit is ~100 small products (n_regressors x n_scans times a bin's voxels). A
    # multi-threaded BLAS starts its threads for each: measured 35-90x slower than one thread when the
    # cores are shared, and no faster on idle ones.
    with _one_blas_thread():
        for start, stop in chunks:
            lab = labels[start:stop]
            order = np.argsort(lab, kind="stable")
            sorted_lab = lab[order]
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(sorted_lab)) + 1, [order.size]])
            # whiten the chunk with each voxel's own rho (elementwise, so the same bits as whitening
            # bin by bin), then put the voxels of a bin side by side
            yc = np.asarray(Y[:, start:stop], dtype=np.float64)
            wy = np.empty(yc.shape)
            wy[0] = yc[0]
            np.multiply(yc[:-1], bin_rho[lab], out=wy[1:])
            np.subtract(yc[1:], wy[1:], out=wy[1:])
            del yc
            wy = wy[:, order]
            b_sorted = np.empty((n_reg, order.size))
            d_sorted = np.empty(order.size)
            for s, e in zip(bounds[:-1], bounds[1:]):
                xw, pw, _ = models[sorted_lab[s]]
                wy_k = wy[:, s:e]
                b = np.dot(pw, wy_k)
                wres = wy_k - np.dot(xw, b)
                b_sorted[:, s:e] = b
                d_sorted[s:e] = np.sum(wres**2, 0) / disp_den
            dest = start + order if columns is None else columns[start + order]
            beta[:, dest] = b_sorted
            dispersion[dest] = d_sorted


def _ar1_fit(beta, dispersion, labels, bin_rho, models, df_resid):
    return GLMFit(beta=beta, dispersion=dispersion, labels=labels, bin_rho=bin_rho,
                  bin_cov=np.stack([m[2] for m in models]),
                  bin_df=np.full(len(bin_rho), df_resid), noise_model="ar1")


def _fit_ar1_direct(Y, X, bins, chunks, pinv_x, work, df_resid, disp_den):
    """AR(1) fit by nilearn's own sequence of passes (used when nilearn itself works in float32)."""
    ols_beta = _ols_betas(Y, pinv_x, chunks, work)
    mean = _residual_mean(Y, X, ols_beta)
    rho = _yule_walker_rho(Y, X, ols_beta, mean, chunks)
    del ols_beta
    bin_rho, labels = _bin_labels(rho, bins)
    models = _bin_models(X, bin_rho)
    n_reg, n_vox = X.shape[1], Y.shape[1]
    beta = np.empty((n_reg, n_vox))
    dispersion = np.empty(n_vox)
    _refit_direct(Y, labels, bin_rho, models, disp_den, chunks, beta, dispersion)
    return _ar1_fit(beta, dispersion, labels, bin_rho, models, df_resid)


#: A voxel whose residual sum of squares is below this fraction of its sum of squares is refitted
#: from explicit residuals: the moment formulas would lose more than ~8 of float64's 16 digits.
_CANCELLATION = 1e-8
#: Bound, relative to ``sum(y**2) / sum(r**2)``, on the rounding error of an AR coefficient computed from
#: moments (~100x the float64 epsilon times the handful of terms; generous so that every voxel that
#: could round into another bin is recomputed by nilearn's arithmetic).
_RHO_ROUNDING = 1e-11


def _moment_matrix(X):
    """Columns that turn one product with the data into every moment of the AR(1) fit.

    For a voxel's series y: ``X' y`` (p), ``sum_t X[t] y[t-1] + X[t-1] y[t]`` (p), ``sum y`` (1).
    """
    n_scans, n_reg = X.shape
    K = np.zeros((n_scans, 2 * n_reg + 1))
    K[:, :n_reg] = X
    K[:-1, n_reg:2 * n_reg] += X[1:]
    K[1:, n_reg:2 * n_reg] += X[:-1]
    K[:, 2 * n_reg] = 1.0
    return K


def _bin_model(X, r):
    """Whitened design, its pseudo-inverse and the normalized covariance of beta for AR coefficient r."""
    xw = _whiten(X, r)
    pw = spl.pinv(xw)
    return xw, pw, np.dot(pw, pw.T)


def _scan_sums(Y, chunk=8192):
    """Sum over voxels of every scan, in float64."""
    if isinstance(Y, np.ndarray):
        return Y.sum(axis=1, dtype=np.float64)
    if hasattr(Y, "scan_sums"):
        return Y.scan_sums()
    return sum(Y[:, start:start + chunk].sum(axis=1) for start in range(0, Y.shape[1], chunk))


def _rowdot(a, b):
    return np.einsum("vp,vp->v", a, b)


def _fit_ar1_moments(Y, X, bins, chunk_size, pinv_x, df_resid, disp_den):
    """AR(1) fit from one pass over the data: every quantity of nilearn's fit is a moment of the series.

    With ``W`` nilearn's whitening (``y[t] - rho y[t-1]``, first scan kept), ``Xw' Yw`` and ``Yw' Yw``
    are polynomials in rho of ``X' y``, ``sum_t X[t] y[t-1] + X[t-1] y[t]``, ``X[-1] y[-1]``,
    ``sum y**2``, ``sum y[t] y[t-1]`` and ``y[-1]**2``; the OLS residuals' Yule-Walker sums are the same
    moments at the OLS betas, and the residuals' global mean is ``(1 - X pinv(X) 1)'`` times the data
    summed over voxels. So one float64 product of each chunk of voxels with ``2 p + 1`` columns gives
    each voxel's AR bin, its betas ``cov_bin @ Xw' Yw`` (``pinv(Xw) = cov_bin Xw'``) and its residual
    sum of squares ``Yw' Yw - beta . Xw' Yw``, without keeping anything but the results.

    Two kinds of voxels go back to nilearn's explicit arithmetic at the end: those whose AR coefficient
    lies within rounding of a bin edge (so that every voxel gets nilearn's bin) and those whose
    residuals are so small that the moment differences cancel (e.g. constant voxels).
    """
    n_scans, n_reg = X.shape
    n_vox = Y.shape[1]
    K = _moment_matrix(X)
    cov0 = np.dot(pinv_x, pinv_x.T)
    cross_t = np.dot(X[1:].T, X[:-1]).T
    x_sum = X.sum(0)
    ones = np.ones(n_scans)
    mean_weights = ones - np.dot(X, np.dot(pinv_x, ones))
    mean = np.dot(mean_weights, _scan_sums(Y)) / (n_scans * n_vox)

    models = {}
    keys = np.empty(n_vox, dtype=np.int64)
    beta_t = np.empty((n_vox, n_reg))
    dispersion = np.empty(n_vox)
    explicit = []  # voxels for nilearn's explicit arithmetic
    degenerate = []
    # larger chunks than the other passes: each chunk pays one small product per AR bin
    step = chunk_size or max(256, 2 * _CHUNK_ELEMENTS // n_scans)
    buf = moments_t = None
    # the sums goodness_of_fit needs, taken here so that the run is not read a second time
    sums = {name: np.empty(n_vox) for name in ("total", "sq", "lag", "last")}
    # the work block in the data's own order: a float32 -> float64 copy that also transposes cost 5x more
    # (a CIFTI run is read time-fastest, i.e. Fortran-ordered)
    order_b = "F" if isinstance(Y, np.ndarray) and Y.flags.f_contiguous and not Y.flags.c_contiguous else "C"
    # the many small per-bin products run faster on one BLAS thread (see _refit_direct); the chunk's
    # large product is a small share of the pass
    with _one_blas_thread():
        for start in range(0, n_vox, step):
            stop = min(start + step, n_vox)
            if buf is None or buf.shape[1] != stop - start:
                buf = np.empty((n_scans, stop - start), order=order_b)
                moments_t = np.empty((K.shape[1], stop - start))
            if hasattr(Y, "columns_into"):
                Y.columns_into(buf, start, stop)
            else:
                np.copyto(buf, Y[:, start:stop])
            # K' Y rather than Y' K: OpenBLAS runs this orientation at twice the speed (measured
            # 30 against 15 GFlop/s on one thread, 300 scans x 57 columns)
            np.dot(K.T, buf, out=moments_t)
            moments = moments_t.T
            s0 = np.einsum("tv,tv->v", buf, buf)
            if not np.isfinite(s0).all():
                _check_finite(buf)
            s1 = np.einsum("tv,tv->v", buf[1:], buf[:-1])
            first, last = buf[0].copy(), buf[-1].copy()
            sums["total"][start:stop] = moments[:, 2 * n_reg]
            sums["sq"][start:stop], sums["lag"][start:stop], sums["last"][start:stop] = s0, s1, last
            xty = np.ascontiguousarray(moments[:, :n_reg])
            lag = np.ascontiguousarray(moments[:, n_reg:2 * n_reg])

            # OLS residuals' Yule-Walker sums, de-meaned by the global residual mean as nilearn does
            b0 = np.dot(xty, cov0)
            rss = s0 - _rowdot(b0, xty)
            rsum = moments[:, 2 * n_reg] - np.dot(b0, x_sum)
            r0 = rss - 2.0 * mean * rsum + n_scans * mean * mean
            r1 = (s1 - _rowdot(b0, lag) + _rowdot(np.dot(b0, cross_t), b0)
                  - mean * (2.0 * rsum - (first - np.dot(b0, X[0])) - (last - np.dot(b0, X[-1])))
                  + (n_scans - 1) * mean * mean)
            rho = _rho_from_sums(r0, r1, n_scans)
            scaled = rho * bins
            with np.errstate(divide="ignore", invalid="ignore"):
                tolerance = bins * _RHO_ROUNDING * s0 / rss
            bad = ~(rss > _CANCELLATION * s0)
            degenerate.append(start + np.flatnonzero(bad))
            explicit.append(start + np.flatnonzero(bad | (np.abs(scaled - np.round(scaled)) <= tolerance)))
            key = scaled.astype(np.int64)
            keys[start:stop] = key

            # refit from the moments, bin by bin: the chunk's voxels are put in bin order once, so
            # that each bin works on slices (a fancy-index scatter per bin cost 0.13 s per run)
            order = np.argsort(key, kind="stable")
            key_s = key[order]
            bounds = np.concatenate([[0], np.flatnonzero(np.diff(key_s)) + 1, [order.size]])
            xty_s, lag_s = np.take(xty, order, axis=0), np.take(lag, order, axis=0)
            s0_s, s1_s, last_s = s0[order], s1[order], last[order]
            b_s = np.empty((order.size, n_reg))
            sse_s = np.empty(order.size)
            bad_s = np.empty(order.size, bool)
            for s, e in zip(bounds[:-1], bounds[1:]):
                k = int(key_s[s])
                if k not in models:
                    models[k] = _bin_model(X, k * 1.0 / bins)
                r = k * 1.0 / bins
                a = xty_s[s:e]
                c = a - r * lag_s[s:e] + (r * r) * (a - last_s[s:e, None] * X[-1])
                b = np.dot(c, models[k][2], out=b_s[s:e])
                yw2 = s0_s[s:e] - 2.0 * r * s1_s[s:e] + (r * r) * (s0_s[s:e] - last_s[s:e] ** 2)
                sse = np.subtract(yw2, _rowdot(b, c), out=sse_s[s:e])
                np.logical_not(sse > _CANCELLATION * yw2, out=bad_s[s:e])
            inverse = np.empty_like(order)
            inverse[order] = np.arange(order.size)
            beta_t[start:stop] = b_s[inverse]
            dispersion[start:stop] = sse_s[inverse] / disp_den
            explicit.append(start + order[bad_s])
    del buf, moments_t
    beta = beta_t.T
    explicit = np.unique(np.concatenate(explicit))
    if explicit.size:
        if np.concatenate(degenerate).size:
            # these voxels' bins are decided by rounding noise: reproduce nilearn's global mean bit for bit
            mean = _residual_mean(Y, X, _ols_betas(Y, pinv_x, _chunks(n_vox, step), np.float64))
        Ye = np.asarray(Y[:, explicit])
        sub = _chunks(explicit.size, step)
        rho = _yule_walker_rho(Ye, X, _ols_betas(Ye, pinv_x, sub, np.float64), mean, sub)
        keys[explicit] = (rho * bins).astype(np.int64)
    bin_keys, labels = np.unique(keys, return_inverse=True)
    labels = labels.astype(np.intp).reshape(n_vox)
    bin_rho = bin_keys * 1.0 / bins
    model_list = [models[int(k)] if int(k) in models else _bin_model(X, r) for k, r in zip(bin_keys, bin_rho)]
    if explicit.size:
        _refit_direct(Ye, labels[explicit], bin_rho, model_list, disp_den, sub, beta, dispersion, columns=explicit)
    fit = _ar1_fit(beta, dispersion, labels, bin_rho, model_list, df_resid)
    fit.series_sums = sums
    return fit


# ----------------------------------------------------------------------------------------------
# contrasts
# ----------------------------------------------------------------------------------------------


def goodness_of_fit(Y, X, fit, chunk_size=None):
    """Per-voxel R² and maximised log-likelihood of a fitted GLM, as nilearn's ``RegressionResults.r_square``
    and ``RegressionModel.logL`` (what fitlins writes as ``stat-rSquare`` and ``stat-logLikelihood``).

    Both are taken in the model of the voxel's bin: with AR(1) the whitened data ``wY`` (``y[t] - rho * y[t-1]``,
    the first scan unchanged) and whitened design ``Xw``. ``r_square = var(Xw @ beta) / var(wY)`` over scans
    (a pseudo-R² unless OLS); ``log_likelihood = -n/2 * (log(2 pi SSE / n) + 1)`` with the whitened residual sum
    of squares ``SSE = dispersion * (n_scans - n_regressors)``. ``wY``'s variance comes from five sums per voxel
    (sum, sum of squares, lag-1 products, first and last scan): the AR(1) fit's own (``fit.series_sums``), else
    one more read of the run without a copy.

    Parameters
    ----------
    Y : numpy.ndarray or ScaledIntegerRun, shape (n_scans, n_voxels)
        The data the model was fitted to.
    X : numpy.ndarray, shape (n_scans, n_regressors)
        Its design.
    fit : GLMFit
        From :func:`fit_glm` on ``Y`` and ``X``.
    chunk_size : int, optional
        Voxels read at once (default: about 2e6 / n_scans).

    Returns
    -------
    r_square : numpy.ndarray of float64, shape (n_voxels,)
        0 where the whitened data are constant.
    log_likelihood : numpy.ndarray of float64, shape (n_voxels,)
        0 where the residuals are all zero (the likelihood is unbounded there; maps stay finite).
    """
    X = np.asarray(X, np.float64)
    n_scans, n_vox = Y.shape
    sums = fit.series_sums
    if sums is not None and len(sums["sq"]) == n_vox:  # the AR(1) fit's own pass took them
        total, sq, lag, last = sums["total"], sums["sq"], sums["lag"], sums["last"]
    else:
        chunk = chunk_size or max(256, _CHUNK_ELEMENTS // n_scans)
        total = np.empty(n_vox)
        sq = np.empty(n_vox)
        lag = np.empty(n_vox)
        last = np.empty(n_vox)
        for start, stop in _chunks(n_vox, chunk):
            Yc = np.asarray(Y[:, start:stop], np.float64)
            total[start:stop] = Yc.sum(0)
            sq[start:stop] = np.einsum("ij,ij->j", Yc, Yc)
            lag[start:stop] = np.einsum("ij,ij->j", Yc[1:], Yc[:-1])
            last[start:stop] = Yc[-1]
    rho = fit.bin_rho[fit.labels]
    w_sum = total - rho * (total - last)
    w_sq = sq - 2 * rho * lag + rho**2 * (sq - last**2)
    var_y = w_sq / n_scans - (w_sum / n_scans) ** 2
    # voxels put in bin order once: each bin is then a slice (a fancy-index gather per bin cost more)
    order = np.argsort(fit.labels, kind="stable")
    labels_s = fit.labels[order]
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(labels_s)) + 1, [n_vox]])
    beta_s = np.take(np.asarray(fit.beta, np.float64).T, order, axis=0)  # (n_voxels, n_regressors)
    var_s = np.empty(n_vox)
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            continue
        Xw = _whiten(X, fit.bin_rho[labels_s[s]])
        Xw = Xw - Xw.mean(0)
        moment = Xw.T @ Xw / n_scans
        var_s[s:e] = _rowdot(beta_s[s:e] @ moment, beta_s[s:e])
    var_pred = np.empty(n_vox)
    var_pred[order] = var_s
    with np.errstate(divide="ignore", invalid="ignore"):
        r_square = np.where(var_y > 0, var_pred / var_y, 0.0)
        sse = np.asarray(fit.dispersion, np.float64) * (n_scans - X.shape[1])
        log_likelihood = np.where(sse > 0, -n_scans / 2.0 * (np.log(2 * np.pi * sse / n_scans) + 1.0), 0.0)
    return r_square, log_likelihood


def estimate_contrast(fit, con, stat_type=None):
    """Effect and variance of a t or F contrast from a stored fit (no refit), as nilearn's ``compute_contrast``.

    Parameters
    ----------
    fit : GLMFit
    con : array-like, shape (n_regressors,) or (q, n_regressors)
        Contrast weights.
    stat_type : {None, 't', 'F'}
        None: 't' for a 1-D contrast or a single row, 'F' otherwise (nilearn's rule).

    Returns
    -------
    ContrastEstimate
        ``effect`` (q, n_voxels), ``variance`` (n_voxels,), ``dof = n_scans - rank(X)``.

    Raises
    ------
    GlmxError
        Wrong number of columns, a t contrast with several rows, an empty contrast, or an
        F contrast whose covariance ``C cov C'`` is singular (not estimable).
    """
    con = np.asarray(con, dtype=np.float64)
    if con.ndim not in (1, 2) or con.size == 0:
        raise GlmxError(f"a contrast must be a non-empty vector or matrix, got shape {con.shape}")
    dim = 1 if con.ndim == 1 else con.shape[0]
    if stat_type is None:
        stat_type = "t" if dim == 1 else "F"
    if stat_type not in ("t", "F"):
        raise GlmxError(f"unknown statistic type {stat_type!r}; expected 't' or 'F'")
    con = np.atleast_2d(con)
    n_reg = fit.beta.shape[0]
    if con.shape[1] != n_reg:
        raise GlmxError(f"the contrast has {con.shape[1]} columns but the design has {n_reg} regressors")
    if stat_type == "t" and dim != 1:
        raise GlmxError(f"a t contrast must have a single row, got {dim}")
    labels = fit.labels
    n_vox = labels.shape[0]
    cbeta = np.dot(con, fit.beta)  # (q, n_voxels)
    if stat_type == "t":
        c_cov_c = np.array([np.dot(con, np.dot(cov, con.T))[0, 0] for cov in fit.bin_cov])
        sd = np.sqrt(c_cov_c[labels] * fit.dispersion)
        effect = np.asarray(cbeta, dtype=np.float64)
        variance = np.asarray(sd**2, dtype=np.float64)
    else:
        effect = np.zeros((dim, n_vox))
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        for sel in np.split(order, bounds):
            if sel.size == 0:
                continue
            cov = fit.bin_cov[labels[sel[0]]]
            try:
                inv_cov = np.linalg.inv(np.atleast_2d(np.dot(con, np.dot(cov, con.T))))
            except np.linalg.LinAlgError:
                raise GlmxError("the F contrast is not estimable: its covariance is singular") from None
            root = spl.sqrtm(inv_cov)
            effect[:, sel] = np.real(np.dot(root, cbeta[:, sel]))
        variance = np.asarray(fit.dispersion, dtype=np.float64).copy()
    return ContrastEstimate(effect=effect, variance=variance, dof=float(fit.bin_df[-1]), stat_type=stat_type)


def combine_fixed_effects(estimates):
    """Fixed-effects combination of one contrast over runs, as nilearn's ``FirstLevelModel.compute_contrast``.

    nilearn adds the runs' ``Contrast`` objects (effects add, variances add, dofs add) and
    multiplies the sum by ``1 / n_runs`` (effect times s, variance times s**2, dof unchanged).
    For F contrasts this sums the whitened effects and the dispersions (nilearn's
    "approximate fixed effects on F statistics").  Runs with an all-zero contrast, which
    nilearn skips, should simply not be passed.

    Parameters
    ----------
    estimates : list of ContrastEstimate
        One per run, same statistic type, same q and the same voxels.

    Returns
    -------
    ContrastEstimate
    """
    estimates = list(estimates)
    if not estimates:
        raise GlmxError("fixed effects need at least one run")
    first = estimates[0]
    for est in estimates[1:]:
        if est.stat_type != first.stat_type:
            raise GlmxError("cannot combine t and F contrasts across runs")
        if est.effect.shape != first.effect.shape:
            raise GlmxError(f"cannot combine contrasts of shapes {first.effect.shape} and {est.effect.shape} "
                            "(different number of rows or voxels)")
    effect, variance, dof = first.effect, first.variance, first.dof
    for est in estimates[1:]:
        effect = effect + est.effect
        variance = variance + est.variance
        dof = dof + est.dof
    scale = float(1.0 / len(estimates))
    return ContrastEstimate(effect=effect * scale, variance=variance * scale**2, dof=float(dof),
                            stat_type=first.stat_type)


def subset_estimate(est, keep):
    """Restrict an estimate to some voxels.

    Parameters
    ----------
    est : ContrastEstimate
    keep : array-like of bool, shape (n_voxels,), or of int
        Voxels to keep.

    Returns
    -------
    ContrastEstimate
    """
    keep = np.asarray(keep)
    if keep.dtype == bool and keep.shape != (est.n_voxels,):
        raise GlmxError(f"voxel selection has {keep.shape[0] if keep.ndim else 0} entries, "
                        f"the estimate has {est.n_voxels} voxels")
    return ContrastEstimate(effect=est.effect[:, keep], variance=est.variance[keep], dof=est.dof,
                            stat_type=est.stat_type)


def z_from_p(p, one_minus_p=None):
    """z scores of p-values, as nilearn's ``z_score``.

    Parameters
    ----------
    p : numpy.ndarray, shape (n,)
        Upper-tail p-values (survival function).
    one_minus_p : numpy.ndarray, shape (n,), optional
        The same p-values computed as a cumulative distribution; where the z score is negative
        it is taken from these, which keeps precision for p close to 1.

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
    """
    # scipy.special's functions, which scipy.stats' norm.isf and norm.ppf call: importing scipy.stats
    # costs about a second of every process that computes contrasts
    p = np.clip(np.asarray(p, dtype=np.float64), 1.0e-300, 1.0 - 1.0e-16)
    z_sf = -sps_special.ndtri(p)
    if one_minus_p is None:
        return z_sf
    one_minus_p = np.clip(np.asarray(one_minus_p, dtype=np.float64), 1.0e-300, 1.0 - 1.0e-16)
    z_cdf = sps_special.ndtri(one_minus_p)
    return np.where(z_sf < 0, z_cdf, z_sf)


#: Spacing and extent of the grid of t values on which :func:`t_to_p_z` tabulates z(t).
_T_STEP = 1.0 / 128
_T_MAX = 64.0


def _exact_t_p_z(stat, dof):
    """nilearn's p and z of t statistics: ``t.sf``, then ``norm.isf`` (``norm.ppf`` of ``t.cdf`` where z < 0)."""
    p = sps_special.stdtr(dof, -stat)
    z = -sps_special.ndtri(np.clip(p, 1.0e-300, 1.0 - 1.0e-16))
    neg = z < 0
    if neg.any():
        z[neg] = sps_special.ndtri(np.clip(sps_special.stdtr(dof, stat[neg]), 1.0e-300, 1.0 - 1.0e-16))
    return p, z


def t_to_p_z(stat, dof):
    """Upper-tail p-values and z scores of t statistics, as nilearn's ``Contrast`` computes them.

    The t distribution's tail function costs ~0.4 us per value -- 0.1 s per contrast map of an
    fmriprep-sized run. z(t) is smooth and odd, so it is computed exactly (nilearn's formulas) on a
    grid of |t| with spacing 1/128 and interpolated between nodes by cubic Hermite polynomials with
    the exact derivative ``dz/dt = f_t(t) / phi(z)``; the interpolation error is below 1e-9 in z for
    every dof (tests check it against the exact functions). p is then ``Phi(-z)``. Values beyond the
    grid, or where nilearn's clipping of p at 1e-300 applies, are computed exactly.

    Parameters
    ----------
    stat : numpy.ndarray of float64, shape (n,)
        t statistics.
    dof : float
        Degrees of freedom.

    Returns
    -------
    p : numpy.ndarray of float64, shape (n,)
        Upper-tail p-values ``P(T > t)``.
    z : numpy.ndarray of float64, shape (n,)
        z scores with the same upper-tail p-value.
    """
    stat = np.asarray(stat, dtype=np.float64)
    if stat.size < 4096:  # a table costs ~8000 exact evaluations
        return _exact_t_p_z(stat, dof)
    grid = np.arange(0.0, _T_MAX + _T_STEP / 2, _T_STEP)
    p_grid = sps_special.stdtr(dof, -grid)
    grid = grid[p_grid > 1e-290]  # z is clipped (flat) below p = 1e-300: keep the nodes clear of it
    z_grid = -sps_special.ndtri(p_grid[:grid.size])
    log_norm = np.log(sps_special.poch(dof / 2.0, 0.5)) - 0.5 * np.log(dof * np.pi)
    log_pdf_t = log_norm - (dof + 1.0) / 2.0 * np.log1p(grid * grid / dof)
    log_pdf_z = -0.5 * z_grid * z_grid - 0.5 * np.log(2.0 * np.pi)
    slope = np.exp(log_pdf_t - log_pdf_z) * _T_STEP
    a = np.abs(stat)
    inside = a < grid[-1]  # NaN falls outside
    x = a[inside] / _T_STEP
    i = x.astype(np.intp)
    u = x - i
    u2 = u * u
    u3 = u2 * u
    z_in = ((2.0 * u3 - 3.0 * u2 + 1.0) * z_grid[i] + (u3 - 2.0 * u2 + u) * slope[i]
            + (3.0 * u2 - 2.0 * u3) * z_grid[i + 1] + (u3 - u2) * slope[i + 1])
    z = np.empty_like(stat)
    z[inside] = np.where(stat[inside] < 0, -z_in, z_in)
    p = sps_special.ndtr(-z)
    outside = ~inside
    if outside.any():
        p[outside], z[outside] = _exact_t_p_z(stat[outside], dof)
    return p, z


def contrast_statistics(est):
    """Statistic, p-value and z score of a contrast, as nilearn's ``Contrast``.

    Parameters
    ----------
    est : ContrastEstimate

    Returns
    -------
    dict
        ``stat`` (n_voxels,) t or F (variance floored at ``TINY``); ``p`` (n_voxels,)
        upper-tail p-value; ``z`` (n_voxels,) z score using the one-minus-p trick;
        ``effect``: (n_voxels,) for t, the (q, n_voxels) whitened effect for F (nilearn's
        ``effect_size()``); ``variance`` (n_voxels,) (nilearn's ``effect_variance()``);
        ``dof`` (float) the degrees of freedom used.
    """
    dof = np.minimum(est.dof, DOFMAX)
    if est.stat_type == "t":
        effect = est.effect[0]
        stat = effect / np.sqrt(np.maximum(est.variance, TINY))
        p, z = t_to_p_z(stat, dof)
        return {"stat": stat, "p": p, "z": z, "effect": effect, "variance": est.variance, "dof": float(dof)}
    elif est.stat_type == "F":
        effect = est.effect
        stat = np.sum(effect**2, 0) / est.dim / np.maximum(est.variance, TINY)
        # scipy.stats' f.sf and f.cdf (fdtrc, fdtr), whose value at a statistic <= 0 is 1 and 0
        at_least_0 = np.maximum(np.asarray(stat, dtype=np.float64), 0.0)
        p = sps_special.fdtrc(est.dim, dof, at_least_0)
        one_minus_p = sps_special.fdtr(est.dim, dof, at_least_0)
    else:
        raise GlmxError(f"unknown statistic type {est.stat_type!r}")
    return {"stat": stat, "p": p, "z": z_from_p(p, one_minus_p), "effect": effect,
            "variance": est.variance, "dof": float(dof)}
