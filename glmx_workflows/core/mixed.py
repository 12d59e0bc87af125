"""Mixed-effects group model on arrays: every voxel at once, REML between-subject variance.

Per voxel, the subjects' effects ``y`` (one per design row) with known within-subject variances
``v`` (the first level's fixed-effects variances) follow ``y = X b + e``, ``e_i ~ N(0, v_i + tau2)``.

* ``tau2 >= 0`` maximises the restricted log-likelihood
  ``l(tau2) = -1/2 [sum log(v_i + tau2) + log|X'WX| + r'Wr]`` (``W = diag(1 / (v_i + tau2))``, ``r`` the
  weighted least-squares residuals), for all voxels at once (:func:`_fit_block`): score
  ``(r'W^2 r - tr P) / 2``, observed information ``y'P^3y - tr(P^2) / 2`` and Fisher's ``tr(P^2) / 2`` with
  ``P = W - WX(X'WX)^-1X'W``, whose traces only need the small matrices ``X'W^k X`` (k = 1, 2, 3). One
  evaluation at 0 settles the voxels whose score there is not positive (0 is then a maximum) and gives
  the DerSimonian-Laird start of the others, which climb by bracketed Newton steps (:func:`_climb`);
  near-boundary voxels are also searched for a higher interior maximum.
* ``b`` by weighted least squares with ``W`` at the fitted ``tau2``; its model-based covariance
  ``(X'WX)^-1`` (``MixedFit.cov``) and the Knapp-Hartung (HKSJ) factor ``q = r'Wr / (n - p)``
  (``MixedFit.scale``).
* t contrasts ``c'b / sqrt(q c'(X'WX)^-1 c)`` and F contrasts ``(Cb)'(q C (X'WX)^-1 C')^-1 (Cb) / rank`` with
  ``n - p`` residual degrees of freedom (PyMARE's ``VarianceBasedLikelihoodEstimator(method="REML")`` with
  its default "knapp-hartung" covariance; the model-based one, FLAME1's, gives 3 % false positives at
  p < 0.05 when tau2 is 0, see README.rst). ``test="wald"`` keeps ``q = 1``: that model-based covariance.
* A subject may be absent at some voxels (``present``): it then gets weight zero there, which is the
  model fitted on the other subjects alone, with ``n_v - p`` degrees of freedom.

Two implementations of these steps: the compiled kernel ``_reml`` (``_reml.c``, built by ``pip install``; tiles of
64 voxels whose data and work arrays stay in cache, loops over the voxels vectorised; 0.38 of the numpy path's time
on 20 subjects x 300,000 voxels) and the numpy path below (every voxel at once, each step a pass over the arrays in
memory), used where no C compiler was available at install. They take the same steps with the same constants and stopping
rules; tests/test_group_mixed.py runs its checks on both and checks them against each other.

The only imports are numpy (no files, no nipype).
"""

from dataclasses import dataclass

import numpy as np

from .errors import GlmxError
from .glm import ContrastEstimate

try:
    from . import _reml
except ImportError:  # installed without a C compiler
    _reml = None

#: How a mixed-effects contrast is tested (spec key ``group_mixed_test``), with the words the sidecars use.
MIXED_TESTS = {
    "knapp-hartung": "Knapp-Hartung (Hartung-Knapp-Sidik-Jonkman): covariance q (X'WX)^-1 with q = r'Wr / (n - p), "
                     "t on n - p degrees of freedom (PyMARE's default, metafor's test='knha')",
    "wald": "model-based covariance (X'WX)^-1, t on n - p degrees of freedom (FSL FLAME1 without MCMC, "
            "PyMARE's small_sample_correction=None)",
}

#: Voxels fitted together (bounds the copies of the data and the (voxels, p, p) arrays).
_BLOCK = 65536
#: Voxels evaluated together (the (subjects, voxels) work arrays stay in cache).
_CHUNK = 8192


@dataclass
class MixedFit:
    """A fitted mixed-effects group model.

    Parameters
    ----------
    beta : numpy.ndarray of float64, shape (p, n_voxels)
        Weighted least-squares coefficients at the fitted tau2 (NaN where the voxel is not estimable).
    cov : numpy.ndarray of float64, shape (n_voxels, p, p)
        ``(X'WX)^-1``.
    tau2 : numpy.ndarray of float64, shape (n_voxels,)
        Between-subject variance (REML, >= 0).
    n : numpy.ndarray of int, shape (n_voxels,)
        Subjects modelled at the voxel.
    dof : numpy.ndarray of float64, shape (n_voxels,)
        Residual degrees of freedom ``n - rank(X)`` of the voxel (0 where not estimable).
    scale : numpy.ndarray of float64, shape (n_voxels,)
        The Knapp-Hartung (Hartung-Knapp-Sidik-Jonkman) factor ``q = r'Wr / (n - p)`` at the fitted tau2
        (``r``: the weighted fit's residuals): contrasts use the covariance ``q (X'WX)^-1`` with ``n - p``
        degrees of freedom. All ones when not given (the model-based "Wald" covariance).
    iterations : int
        Largest number of Newton iterations any voxel needed.
    test : str
        The key of :data:`MIXED_TESTS` whose covariance ``scale`` holds ("wald": ones).
    """

    beta: np.ndarray
    cov: np.ndarray
    tau2: np.ndarray
    n: np.ndarray
    dof: np.ndarray
    scale: np.ndarray = None
    iterations: int = 0
    test: str = "knapp-hartung"

    def __post_init__(self):
        if self.scale is None:
            self.scale = np.ones(np.shape(self.tau2))

    def to_arrays(self):
        """The fit as numpy arrays for ``numpy.savez`` (no pickled objects).

        Returns
        -------
        dict of str to numpy.ndarray
        """
        return {"model": np.array("mixed"), "beta": self.beta, "cov": self.cov, "tau2": self.tau2, "n": self.n,
                "dof": self.dof, "scale": self.scale, "test": np.array(self.test)}

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild a fit from :meth:`to_arrays`.

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray

        Returns
        -------
        MixedFit
        """
        try:
            return cls(beta=np.asarray(arrays["beta"], np.float64), cov=np.asarray(arrays["cov"], np.float64),
                       tau2=np.asarray(arrays["tau2"], np.float64), n=np.asarray(arrays["n"]),
                       dof=np.asarray(arrays["dof"], np.float64), scale=np.asarray(arrays["scale"], np.float64),
                       test=str(arrays["test"]) if "test" in arrays else "knapp-hartung")
        except KeyError as err:
            raise GlmxError(f"stored mixed-effects fit lacks the array {err.args[0]!r}") from None


def _inverse(A, logdet=True):
    """Inverse and log-determinant of small symmetric positive-definite matrices, voxels last.

    Parameters
    ----------
    A : numpy.ndarray, shape (p, p, k)
    logdet : bool
        Whether the log-determinant is wanted (a log costs more than the inverse of a 2 x 2 matrix); None if not.

    Returns
    -------
    inv : numpy.ndarray, shape (p, p, k)
    logdet : numpy.ndarray, shape (k,)
        NaN (and a NaN inverse) where A is not finite and positive definite.
    """
    p = A.shape[0]
    if p == 1:
        return 1.0 / A, np.log(A[0, 0]) if logdet else None
    if p == 2:
        a, b, d = A[0, 0], A[0, 1], A[1, 1]
        det = a * d - b * b
        inv = np.empty_like(A)
        inv[0, 0], inv[1, 1] = d / det, a / det
        inv[0, 1] = inv[1, 0] = -b / det
        return inv, np.log(det) if logdet else None
    A = np.moveaxis(A, 2, 0)
    sign, logdet = np.linalg.slogdet(np.where(np.isfinite(A), A, 0.0))
    bad = ~(np.isfinite(A).all(axis=(1, 2)) & (sign > 0))
    if bad.any():  # e.g. infinite weights: nan results instead of an error for the whole block
        A = A.copy()
        A[bad] = np.eye(p)
    inv = np.linalg.inv(A)
    inv[bad] = np.nan
    logdet[bad] = np.nan
    return np.moveaxis(inv, 0, 2), logdet


def _mm(A, B):
    """(p, q, k) @ (q, r, k) per voxel."""
    return np.einsum("ijk,jlk->ilk", A, B)


def _mv(A, b):
    """(p, q, k) @ (q, k) per voxel."""
    return np.einsum("ijk,jk->ik", A, b)


def _dot(a, b):
    """(p, k) . (p, k) per voxel."""
    return np.einsum("ik,ik->k", a, b)


def _cols(a, idx):
    """Columns ``idx`` of a (subjects, voxels) array, C-contiguous (``a[:, idx]`` is Fortran-ordered, which makes
    every later row-wise pass stride through memory)."""
    return np.take(a, idx, axis=1)


def _sum_log(a, rows=8):
    """``log(a).sum(axis=0)`` for positive a, as logs of products of ``rows`` rows (a log costs ~10 products);
    columns whose partial products leave the floating-point range are summed term by term."""
    out = np.zeros(a.shape[1])
    for start in range(0, a.shape[0], rows):
        out += np.log(np.prod(a[start:start + rows], axis=0))
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = np.log(a[:, bad]).sum(axis=0)
    return out


class _MomentRows:
    """The rows ``[x_i x_i' (p * p entries) ; 1]`` over subjects whose products with ``w^j`` give ``X'W^j X`` and
    ``sum w^j``: ``rows`` holds each distinct row once (``X'W^j X`` is symmetric, and with an intercept
    column its first entry is the ones row), ``index`` the distinct row of every entry. A (p*p + 1) x n by
    n x voxels product costs more than the passes around it; for intercept + covariate 3 rows instead of 5."""

    def __init__(self, X):
        n, p = X.shape
        full = np.vstack([np.einsum("ni,nj->ijn", X, X).reshape(p * p, n), np.ones((1, n))])
        self.rows, index = np.unique(full, axis=0, return_inverse=True)
        self.index = index.ravel()


class _Work:
    """Reused (subjects, voxels) work arrays: fresh large temporaries cost a page fault per 4 kB on every
    evaluation, more than the arithmetic."""

    def __init__(self, n, k):
        self.n = n
        self._flat = [np.empty(n * k) for _ in range(4)]

    def get(self, i, k):
        return self._flat[i][:self.n * k].reshape(self.n, k)


class _Eval:
    """The restricted likelihood's pieces at given tau2 for a set of voxels (columns), from weighted moments.

    With ``w = 1 / (v + tau2)`` (0 for absent subjects) every quantity is a combination of ``X'W^j X``
    (one matrix product of ``L = [x_i x_i' ; 1]`` with ``w^j``, which also gives ``sum w^j``), ``X'W^j y``
    and ``y'W^j y``: a handful of passes over the (subjects, voxels) data per evaluation, the small
    (p, p) algebra on arrays with the voxels last. ``y`` should be the OLS residuals (nothing changes, the
    moments just do not cancel).

    ``order`` 1: ``beta``, ``Ainv`` (and ``loglik`` or ``rwr`` when asked); 2: also ``score``, ``tr_P`` and the
    pieces of the estimate's derivatives in tau2 (``G2 = A^-1 H2``, ``xw2r = X'W^2 r``); 3: also the observed
    (``observed``) and expected (``fisher``) information.
    """

    def __init__(self, y, v, m, X, L, tau2, order=3, loglik=False, work=None, rwr=False):
        n, p = X.shape
        k = y.shape[1]
        work = work if work is not None else _Work(n, k)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            w = np.add(v, tau2, out=work.get(0, k))
            if loglik:
                log_sum = _sum_log(w) if m is None else (np.log(w) * m).sum(axis=0)
            np.divide(1.0, w, out=w)  # numpy's float64 reciprocal is not vectorised: twice as slow
            if m is not None:
                w *= m
            wy = np.multiply(w, y, out=work.get(1, k))
            a1 = (L.rows @ w)[L.index]
            self.Ainv, logdet = _inverse(a1[:-1].reshape(p, p, k), logdet=loglik)
            xwy = X.T @ wy
            b = self.beta = _mv(self.Ainv, xwy)
            if loglik or rwr:
                self.rwr = np.einsum("nk,nk->k", wy, y) - _dot(b, xwy)  # r'Wr
            if loglik:
                ll = -0.5 * (log_sum + logdet + self.rwr)
                self.loglik = np.where(np.isnan(ll), -np.inf, ll)
            if order < 2:
                return
            w2 = np.multiply(w, w, out=work.get(2, k))
            a2 = (L.rows @ w2)[L.index]
            H2 = a2[:-1].reshape(p, p, k)
            w2y = np.multiply(w, wy, out=work.get(3, k))
            xw2y = X.T @ w2y
            xw2r = xw2y - _mv(H2, b)
            r_w2_r = np.einsum("nk,nk->k", wy, wy) - _dot(b, xw2y) - _dot(b, xw2r)
            G2 = _mm(self.Ainv, H2)
            tr_P = a1[-1] - np.einsum("iik->k", G2)
            self.score = 0.5 * (r_w2_r - tr_P)
            self.tr_P = tr_P
            self.G2, self.xw2r = G2, xw2r  # for the derivatives of the estimate (_Result.put)
            if order < 3:
                return
            r_w3_r = np.einsum("nk,nk->k", w2y, wy)  # y'W^3y, then minus the beta terms below
            np.multiply(w2, w, out=w)  # w^3
            H3 = (L.rows @ w)[L.index[:-1]].reshape(p, p, k)
            np.multiply(w2, wy, out=wy)  # w^3 y
            xw3y = X.T @ wy
            r_w3_r += -2.0 * _dot(b, xw3y) + _dot(b, _mv(H3, b))
            tr_PP = a2[-1] - 2.0 * np.einsum("ijk,jik->k", self.Ainv, H3) + np.einsum("ijk,jik->k", G2, G2)
            self.fisher = 0.5 * tr_PP
            # observed information y'P^3y - tr(P^2)/2 (Newton's curvature)
            self.observed = r_w3_r - _dot(xw2r, _mv(self.Ainv, xw2r)) - self.fisher


class _Evaluation:
    """:class:`_Eval` of many voxels, ``_CHUNK`` columns at a time (same attributes, voxels last)."""

    _NAMES = ("beta", "Ainv", "loglik", "rwr", "score", "tr_P", "G2", "xw2r", "fisher", "observed")

    def __init__(self, y, v, m, X, L, tau2, order=3, loglik=False, work=None, rwr=False):
        k = y.shape[1]
        tau2 = np.broadcast_to(np.asarray(tau2, np.float64), (k,))
        if k <= _CHUNK:
            part = _Eval(y, v, m, X, L, tau2, order, loglik, work, rwr)
            for name in self._NAMES:
                if hasattr(part, name):
                    setattr(self, name, getattr(part, name))
            return
        work = work if work is not None else _Work(y.shape[0], _CHUNK)
        for a in range(0, k, _CHUNK):
            part = _Eval(y[:, a:a + _CHUNK], v[:, a:a + _CHUNK], None if m is None else m[:, a:a + _CHUNK], X, L,
                         tau2[a:a + _CHUNK], order, loglik, work, rwr)
            for name in self._NAMES:  # filled in place: concatenating the parts costs as much as a pass
                if hasattr(part, name):
                    value = getattr(part, name)
                    if a == 0:
                        setattr(self, name, np.empty(value.shape[:-1] + (k,)))
                    getattr(self, name)[..., a:a + _CHUNK] = value


def _residuals(Y, m, X, XX):
    """OLS residuals of the present subjects of each voxel, their coefficients, and the residual variance."""
    n, p = X.shape
    k = Y.shape[1]
    if m is None:
        pinv = np.linalg.pinv(X)
        b0 = pinv @ Y
        y = Y - X @ b0
        count = np.full(k, float(n))
    else:
        A0inv, _ = _inverse((XX.T @ m).reshape(p, p, k))
        b0 = _mv(A0inv, X.T @ (m * Y))
        y = (Y - X @ b0) * m
        count = m.sum(axis=0)
    s2 = np.einsum("nk,nk->k", y, y) / np.maximum(count - p, 1.0)
    return y, b0, s2, count


#: A voxel whose likelihood has a local maximum at tau2 = 0 with a standardised score there above this value is
#: also searched for an interior maximum (see :func:`_fit_block`).
_SECOND_PEAK_Z = -1.0
#: Where such a voxel looks for a rising likelihood: ``_SCAN`` points spaced geometrically from
#: ``_SCAN_FROM`` times its harmonic mean variance to ``_SCAN_TO`` times its moment scale ``max(s2, mean v)``.
_SCAN = 8
_SCAN_FROM, _SCAN_TO = 0.05, 4.0
#: Newton stops when its step is below this fraction of the voxel's total variance; the last step is then taken
#: to first order (estimate and covariance), leaving an error of the order of its square.
_STEP_TOL = 3e-6
#: ... or when the error left after its step, predicted from the quadratic convergence, is below this fraction.
_QUAD_TOL = 1e-10


def _fit_block(Y, V, m, X, XX, L, max_iter, tol):
    """REML tau2, WLS beta and (X'WX)^-1 of a block of voxels (see :func:`fit_mixed_effects`).

    1. One evaluation at tau2 = 0 (voxels whose variances are all positive): a non-positive score there makes
       0 a local maximum, the answer unless the standardised score is close to 0 (then step 3 also looks
       inside). It also gives the DerSimonian-Laird moment estimate, the start of step 2.
    2. The other voxels climb to the root of the score by Newton steps kept inside a bracket of the root,
       all voxels at once, converged voxels dropped (:func:`_climb`).
    3. The near-boundary voxels of step 1 scan the score at ``_SCAN`` points from a fraction of their harmonic
       mean variance to a few times their moment scale; those with a rising likelihood there climb from it as in
       step 2, and keep the interior maximum when its restricted likelihood beats tau2 = 0's.
    """
    n, p = X.shape
    k = Y.shape[1]
    work = _Work(n, min(k, _CHUNK))
    y, b0, s2, count = _residuals(Y, m, X, XX)
    mv = V if m is None else V * m
    vbar = mv.sum(axis=0) / count
    scale = s2 + vbar + np.finfo(float).tiny  # the size of the total variance, for the stopping rule
    positive = (V > 0).all(axis=0) if m is None else ((V > 0) | (m == 0)).all(axis=0)
    with np.errstate(divide="ignore"):
        # harmonic mean of the present subjects' variances: the offset of Newton's variable (see _climb)
        vharm = np.where(positive, count / (1.0 / V if m is None else m / V).sum(axis=0), 0.0)
    tau2 = np.zeros(k)
    beta = np.full((p, k), np.nan)
    Ainv = np.full((p, p, k), np.nan)
    rwr = np.full(k, np.nan)
    iterations = 0

    def sub(idx):
        if idx.size == k:
            return y, V, m
        return _cols(y, idx), _cols(V, idx), None if m is None else _cols(m, idx)

    # 1. tau2 = 0
    at0 = np.flatnonzero(positive)
    start = np.maximum(s2 - vbar, 0.0)  # Hedges' moment estimate (OLS residuals)
    climb = np.ones(k, bool)
    near = np.zeros(k, bool)
    score0 = np.full(k, np.inf)  # the score at tau2 = 0 (infinite with a zero variance)
    if at0.size:
        e0 = _Evaluation(*sub(at0), X, L, 0.0, order=3, work=work, rwr=True)
        boundary = ~(e0.score > 0)
        settled = at0[boundary]
        beta[:, settled], Ainv[:, :, settled], rwr[settled] = e0.beta[:, boundary], e0.Ainv[:, :, boundary], \
            e0.rwr[boundary]
        climb[settled] = False
        with np.errstate(divide="ignore", invalid="ignore"):
            z0 = e0.score / np.sqrt(e0.fisher)
        near[at0[boundary & (z0 > _SECOND_PEAK_Z)]] = True
        # start: DerSimonian-Laird (else the first Newton step from 0)
        dl = _dersimonian_laird(e0, count[at0], p)
        with np.errstate(divide="ignore", invalid="ignore"):
            first = _newton_step(e0.score, e0.observed, e0.fisher, vharm[at0])
        dl = np.where(np.isfinite(dl) & (dl > 0), dl, np.inf)
        first = np.where(np.isfinite(first) & (first > 0), first, np.inf)
        start[at0] = np.where(np.isfinite(dl), dl, np.where(np.isfinite(first), first, start[at0]))
        score0[at0] = e0.score
        del e0
    # 2. interior voxels
    interior = [np.flatnonzero(climb)]
    idx = interior[0]
    if idx.size:
        tau0 = np.where(start[idx] > 0, start[idx], 0.5 * scale[idx])
        tau2[idx], it = _climb(*sub(idx), X, L, tau0, np.zeros(idx.size), np.full(idx.size, np.inf), scale[idx],
                               vharm[idx], max_iter, tol, work, score0[idx])
        iterations = max(iterations, it)
    # 3. second maxima of near-boundary voxels
    idx = np.flatnonzero(near)
    if idx.size:
        ys, vs, ms = sub(idx)
        lo, s_lo = np.full(idx.size, np.nan), np.full(idx.size, np.nan)
        hi, s_hi = np.full(idx.size, np.inf), np.full(idx.size, -np.inf)
        first = _SCAN_FROM * vharm[idx]
        ratio = np.maximum(_SCAN_TO * np.maximum(s2[idx], vbar[idx]) / first, 1.0) ** (1.0 / (_SCAN - 1))
        for i in range(_SCAN):
            point = first * ratio ** i
            ev = _Evaluation(ys, vs, ms, X, L, point, order=2, work=work)
            rising = ev.score > 0
            fall = ~rising & np.isfinite(lo) & np.isinf(hi)
            hi, s_hi = np.where(fall, point, hi), np.where(fall, ev.score, s_hi)
            rise = rising & np.isinf(hi)
            lo, s_lo = np.where(rise, point, lo), np.where(rise, ev.score, s_lo)
        found = np.flatnonzero(np.isfinite(lo))
        if found.size:
            j = idx[found]
            ys, vs, ms = sub(j)
            tau, it = _climb(ys, vs, ms, X, L, lo[found], lo[found], hi[found], scale[j], vharm[j], max_iter, tol,
                             work, s_lo[found], s_hi[found])
            iterations = max(iterations, it)
            ll_in = restricted_loglik(ys, vs, X, tau, None if ms is None else ms > 0)
            ll_0 = restricted_loglik(ys, vs, X, np.zeros(j.size), None if ms is None else ms > 0)
            win = np.flatnonzero(ll_in > ll_0)
            tau2[j[win]] = tau[win]
            interior.append(j[win])
    # 4. the estimate, its covariance and r'Wr (the Knapp-Hartung factor's) at the interior voxels' tau2: one
    # evaluation, so that they are exact at the reported tau2 rather than carried along the Newton steps
    idx = np.concatenate(interior)
    if idx.size:
        ev = _Evaluation(*sub(idx), X, L, tau2[idx], order=1, work=work, rwr=True)
        beta[:, idx], Ainv[:, :, idx], rwr[idx] = ev.beta, ev.Ainv, ev.rwr
    return tau2, beta + b0, np.moveaxis(Ainv, 2, 0), rwr, iterations


def _dersimonian_laird(e0, count, p):
    """The generalised DerSimonian-Laird estimate ``(Q - (n - p)) / tr(P)`` from the evaluation at tau2 = 0 (``Q``:
    its weighted residual sum of squares)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (e0.rwr - (count - p)) / e0.tr_P


def _newton_step(score, observed, fisher, offset, tau=0.0):
    """Newton's step on ``(tau2 + offset)^2 score`` (see :func:`_climb`), Newton's own where that curvature is not
    positive; the curvature is the observed information, Fisher's where that is not positive."""
    info = np.where(observed > 0, observed, fisher)
    den = info - 2.0 * score / (tau + offset)
    return score / np.where(den > 0, den, info)


def _climb(y, v, m, X, L, tau, lo, hi, scale, offset, max_iter, tol, work, s_lo=None, s_hi=None):
    """Newton steps to the root of the score from ``tau``, kept inside the bracket ``(lo, hi)``, every voxel at once.

    The steps are Newton's on ``g = (tau2 + c)^2 score`` (``c``: the voxel's harmonic mean variance), which has
    the same roots: with equal variances ``g`` is linear in tau2 at large tau2 (the score is ``~ a / (tau2 + c)^2 -
    b / (tau2 + c)``), and it halves the iterations from a moment start on heterogeneous variances. The
    curvature is the observed information, Fisher's where that is not positive; a step leaving the bracket
    (score > 0 at lo, < 0 at hi, updated at every evaluation) is replaced by Newton's own step, then by the
    secant of the bracket's ends (bisection while their scores are not both known, and after a secant step). A voxel stops, taking its
    last step, when that step is below ``tol * scale``, or when Newton's error squaring (the error after a step
    is about ``|s_k|^3 / s_{k-1}^2``) puts the point after it within ``_QUAD_TOL * scale`` of the root: most
    voxels then need one evaluation fewer than a step-size rule alone.

    Returns
    -------
    tau2 : numpy.ndarray, shape (k,)
    iterations : int
    """
    k = y.shape[1]
    tau, lo, hi = tau.astype(np.float64), lo.copy(), hi.copy()
    s_lo = np.full(k, np.inf) if s_lo is None else s_lo.astype(np.float64)
    s_hi = np.full(k, -np.inf) if s_hi is None else s_hi.astype(np.float64)
    prev = np.full(k, np.inf)  # each voxel's last Newton step (inf after a bracket step)
    active = np.arange(k)  # voxels still moving
    cols = np.arange(k)  # the voxel of each column of the working arrays
    wy, wv, wm = y, v, m
    iterations = 0
    for iterations in range(1, max_iter + 1):
        if active.size < 0.7 * cols.size:  # compact: drop the converged voxels' columns
            wy, wv, wm = _cols(y, active), _cols(v, active), None if m is None else _cols(m, active)
            cols = active
        pos = np.searchsorted(cols, active)  # columns of the active voxels in the working arrays
        t = np.zeros(cols.size)
        t[pos] = tau[active]
        ev = _Evaluation(wy, wv, wm, X, L, t, order=3, work=work)
        s, observed, fisher = ev.score[pos], ev.observed[pos], ev.fisher[pos]
        info = np.where(observed > 0, observed, fisher)
        cur = tau[active]
        up = s > 0
        lo[active[up]], s_lo[active[up]] = cur[up], s[up]
        hi[active[~up]], s_hi[active[~up]] = cur[~up], s[~up]
        with np.errstate(divide="ignore", invalid="ignore"):
            step = _newton_step(s, observed, fisher, offset[active], cur)
        new = cur + step
        a_lo, a_hi = lo[active], hi[active]
        outside = ~((new > a_lo) & (new < a_hi))
        if outside.any():  # Newton's own step
            with np.errstate(divide="ignore", invalid="ignore"):
                plain = cur[outside] + s[outside] / info[outside]
            step[outside] = plain - cur[outside]
            new[outside] = plain
            outside = ~((new > a_lo) & (new < a_hi))
        # where the likelihood is not concave (between a local minimum and a maximum) Fisher's curvature crawls;
        # a bracket whose both ends are known is then faster
        outside |= (observed <= 0) & np.isfinite(s_lo[active]) & np.isfinite(s_hi[active])
        size, last, sc = np.abs(step), prev[active], scale[active]
        with np.errstate(invalid="ignore", over="ignore"):
            squared = np.isfinite(last) & (size < last) & (size <= 1e-2 * sc) & (size ** 3 <= _QUAD_TOL * sc * last ** 2)
        # converged: a small step inside the bracket (taken), or a step that leaves it while below the tolerance
        # (a root within rounding of the bracket's end), or a bracket narrower than the tolerance
        small = size <= tol * sc
        take = (small | squared) & ~outside
        done = take | small | (a_hi - a_lo <= tol * sc) | (s == 0) | ~np.isfinite(s)
        prev[active] = np.where(outside, np.inf, size)
        if outside.any():  # the secant of the bracket (kept 5 % inside it), bisection, or doubling
            o = active[outside]
            width = hi[o] - lo[o]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                frac = np.clip(s_lo[o] / (s_lo[o] - s_hi[o]), 0.05, 0.95)
            # a secant that keeps one end (regula falsi) can crawl: every second bracket step in a row bisects
            frac = np.where(np.isfinite(s_lo[o]) & np.isfinite(s_hi[o]) & ~np.isinf(last[outside]), frac, 0.5)
            new[outside] = np.where(np.isfinite(width), lo[o] + frac * width,
                                    np.maximum(2.0 * cur[outside], lo[o] + scale[o]))
        tau[active[~done | take]] = new[~done | take]
        active = active[~done]
        if active.size == 0:
            break
    return tau, iterations


def _fit_compiled(Y, V, m, X, cols, max_iter, tol):
    """The voxel columns ``cols`` fitted by the compiled kernel, read in place from Y and V (no copies).

    Returns
    -------
    tau2 (k,), beta (p, k), cov (k, p, p), rwr (k,), iterations
    """
    n, p = X.shape
    k = cols.size
    tau2, b, cov, rwr = np.empty(k), np.empty((k, p)), np.empty((k, p, p)), np.empty(k)
    iterations = 0
    if k:
        iterations = _reml.fit(np.ascontiguousarray(Y), np.ascontiguousarray(V),
                               None if m is None else np.ascontiguousarray(m, dtype=np.uint8), np.ascontiguousarray(X),
                               cols.astype(np.int64), n, p, Y.shape[1], int(max_iter), float(tol), tau2, b, cov, rwr)
    return tau2, b.T, cov, rwr, iterations


def _fit_numpy(Y, V, m, X, cols, max_iter, tol):
    """The voxel columns ``cols`` fitted by :func:`_fit_block`, ``_BLOCK`` voxels at a time (same returns as
    :func:`_fit_compiled`)."""
    n, p = X.shape
    k = cols.size
    XX = np.einsum("ni,nj->nij", X, X).reshape(n, p * p)
    L = _MomentRows(X)
    tau2, beta, cov, rwr = np.empty(k), np.empty((p, k)), np.empty((k, p, p)), np.empty(k)
    iterations = 0
    for start in range(0, k, _BLOCK):
        part = slice(start, min(start + _BLOCK, k))
        sel = cols[part]
        if m is None:
            # a run of consecutive voxels (all of them when all are estimable) is read in place, not copied
            if sel[-1] - sel[0] + 1 == sel.size:
                Yb, Vb = Y[:, sel[0]:sel[-1] + 1], V[:, sel[0]:sel[-1] + 1]
            else:
                Yb, Vb = _cols(Y, sel), _cols(V, sel)
            t, b, c, q, it = _fit_block(Yb, Vb, None, X, XX, L, max_iter, tol)
        else:
            mb = _cols(m, sel)
            Yb = np.where(mb, _cols(Y, sel), 0.0)
            Vb = np.where(mb, _cols(V, sel), 1.0)
            t, b, c, q, it = _fit_block(Yb, Vb, mb.astype(np.float64), X, XX, L, max_iter, tol)
        tau2[part], beta[:, part], cov[part], rwr[part] = t, b, c, q
        iterations = max(iterations, it)
    return tau2, beta, cov, rwr, iterations


def fit_mixed_effects(Y, V, X, present=None, max_iter=100, tol=_STEP_TOL, test="knapp-hartung"):
    """Mixed-effects group fit with REML between-subject variance, every voxel at once.

    Parameters
    ----------
    Y : numpy.ndarray, shape (n_subjects, n_voxels)
        Subject effects.
    V : numpy.ndarray, shape (n_subjects, n_voxels)
        Their within-subject (first-level) variances, >= 0.
    X : numpy.ndarray, shape (n_subjects, p)
        Group design (full column rank).
    present : numpy.ndarray of bool, shape (n_subjects, n_voxels), optional
        Subjects modelled at each voxel (default all). A voxel whose present subjects leave the
        design rank-deficient or without residual degrees of freedom is not estimable: NaN.
    max_iter : int
        Newton iterations at most.
    tol : float
        Stop when a step changes tau2 by less than ``tol`` times the voxel's total variance.
    test : {'knapp-hartung', 'wald'}
        The covariance of contrasts (:data:`MIXED_TESTS`): ``q (X'WX)^-1`` or the model-based ``(X'WX)^-1``.

    Returns
    -------
    MixedFit

    Raises
    ------
    GlmxError
        On shapes that do not match, or non-finite or negative variances of a present subject.
    """
    if test not in MIXED_TESTS:
        raise GlmxError(f"unknown mixed-effects test {test!r}; expected one of {', '.join(MIXED_TESTS)}",
                        field="group_mixed_test")
    Y = np.asarray(Y, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if Y.ndim != 2 or V.shape != Y.shape or X.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise GlmxError(f"effects {Y.shape}, variances {V.shape} and design {X.shape} do not match")
    n, p = X.shape
    n_vox = Y.shape[1]
    if present is None:
        # min and max propagate NaN: four reductions without the temporary arrays of isfinite
        v_lo, v_hi, y_lo, y_hi = V.min(), V.max(), Y.min(), Y.max()
        if not (v_lo >= 0 and np.isfinite(v_hi) and np.isfinite(y_lo) and np.isfinite(y_hi)):
            raise GlmxError("the mixed-effects fit needs finite effects and finite, non-negative variances")
        count = np.full(n_vox, n)
        ok = np.full(n_vox, np.linalg.matrix_rank(X) == p and n > p)
    else:
        m = np.asarray(present, bool)
        if m.shape != Y.shape:
            raise GlmxError(f"subject presence {m.shape} does not match the effects {Y.shape}")
        if not np.all(np.isfinite(V[m]) & (V[m] >= 0)) or not np.all(np.isfinite(Y[m])):
            raise GlmxError("the mixed-effects fit needs finite effects and finite, non-negative variances")
        count = m.sum(axis=0)
        # estimable voxels: enough subjects and the present rows of X of full rank
        XX = np.einsum("ni,nj->nij", X, X).reshape(n, p * p)
        gram = (XX.T @ m.astype(np.float64)).T.reshape(-1, p, p)
        eig = np.linalg.eigvalsh(gram)
        ok = (eig.min(axis=1) > 1e-10 * np.maximum(eig.max(axis=1), 1.0)) & (count > p)
    cols = np.flatnonzero(ok)
    fit_columns = _fit_compiled if _reml is not None else _fit_numpy
    tau2, beta, cov, rwr, iterations = fit_columns(Y, V, None if present is None else m, X, cols, max_iter, tol)
    if cols.size < n_vox:  # the voxels that cannot be estimated: NaN
        full = (np.full(n_vox, np.nan), np.full((p, n_vox), np.nan), np.full((n_vox, p, p), np.nan),
                np.full(n_vox, np.nan))
        full[0][cols], full[1][:, cols], full[2][cols], full[3][cols] = tau2, beta, cov, rwr
        tau2, beta, cov, rwr = full
    dof = np.where(ok, count - p, 0).astype(np.float64)
    # the Knapp-Hartung factor; zero total variance (v = 0 and tau2 = 0: residuals 0 too) leaves 0 / 0, no
    # dispersion to read: 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(ok, np.where(np.isfinite(rwr), rwr, 0.0) / dof, np.nan)
    if test == "wald":
        scale = np.where(ok, 1.0, np.nan)
    return MixedFit(beta=beta, cov=cov, tau2=tau2, n=count, dof=dof, scale=scale, iterations=iterations, test=test)


def restricted_loglik(Y, V, X, tau2, present=None):
    """The restricted log-likelihood (up to a constant) of given tau2 values, per voxel.

    Parameters
    ----------
    Y, V : numpy.ndarray, shape (n_subjects, n_voxels)
        Effects and within-subject variances.
    X : numpy.ndarray, shape (n_subjects, p)
        Design.
    tau2 : numpy.ndarray, shape (n_voxels,)
        Between-subject variances at which to evaluate.
    present : numpy.ndarray of bool, shape (n_subjects, n_voxels), optional

    Returns
    -------
    numpy.ndarray of float64, shape (n_voxels,)
        ``-1/2 [sum log(v + tau2) + log|X'WX| + r'Wr]``.
    """
    Y = np.asarray(Y, np.float64)
    X = np.asarray(X, np.float64)
    m = np.ones(Y.shape, bool) if present is None else np.asarray(present, bool)
    L = _MomentRows(X)
    Y = np.where(m, Y, 0.0)
    return _Evaluation(Y, np.where(m, np.asarray(V, np.float64), 1.0), m.astype(np.float64), X, L,
                 np.asarray(tau2, np.float64), order=1, loglik=True).loglik


def mixed_contrast(fit, weights):
    """Effect and variance of a group t or F contrast of a mixed-effects fit.

    Parameters
    ----------
    fit : MixedFit
    weights : array-like, shape (p,) or (q, p)
        One row: a t contrast; several rows: an F contrast.

    Returns
    -------
    ContrastEstimate
        t: ``effect`` (1, n_voxels) ``c'b`` and ``variance`` (n_voxels,) ``s c'(X'WX)^-1 c`` with ``s`` the
        Knapp-Hartung factor ``fit.scale`` (PyMARE's "knapp-hartung" covariance). F: ``effect``
        (q, n_voxels) whitened by the Cholesky factor of ``s C (X'WX)^-1 C'`` and ``variance`` 1, so that
        :func:`glmx_workflows.core.glm.contrast_statistics` gives ``F = |effect|^2 / q``. ``dof``: the
        smallest estimable voxel's (:func:`group_statistics` uses each voxel's own).

    Raises
    ------
    GlmxError
        When the weights do not have one value per design column.
    """
    C = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    p = fit.beta.shape[0]
    if C.shape[1] != p:
        raise GlmxError(f"the contrast has {C.shape[1]} columns but the design has {p}")
    effect = C @ fit.beta
    if C.shape[0] == 1:  # c'(X'WX)^-1 c of every voxel as one matrix-vector product
        ccc = (fit.cov.reshape(-1, p * p) @ np.outer(C[0], C[0]).ravel() * fit.scale)[:, None, None]
    else:
        ccc = np.einsum("qi,kij,rj->kqr", C, fit.cov, C) * fit.scale[:, None, None]
    finite = (fit.dof > 0) & (fit.scale > 0)
    dof = float(fit.dof[fit.dof > 0].min()) if (fit.dof > 0).any() else 0.0
    if C.shape[0] == 1:
        return ContrastEstimate(effect=effect, variance=ccc[:, 0, 0], dof=dof, stat_type="t")
    white = np.full(effect.shape, np.nan)
    if finite.any():
        L = np.linalg.cholesky(ccc[finite])
        white[:, finite] = np.linalg.solve(L, effect[:, finite].T[:, :, None])[:, :, 0].T
    return ContrastEstimate(effect=white, variance=np.ones(effect.shape[1]), dof=dof, stat_type="F")
