"""Mixed-effects group model on arrays: every voxel at once, REML between-subject variance.

Per voxel, the subjects' effects ``y`` (one per design row) with known within-subject variances
``v`` (the first level's fixed-effects variances) follow ``y = X b + e``, ``e_i ~ N(0, v_i + tau2)``.

* ``tau2 >= 0`` maximises the restricted log-likelihood
  ``l(tau2) = -1/2 [sum log(v_i + tau2) + log|X'WX| + r'Wr]`` (``W = diag(1 / (v_i + tau2))``, ``r`` the
  weighted least-squares residuals). It is found by Newton steps on ``tau2`` for all voxels at once:
  score ``(r'W^2 r - tr P) / 2`` and observed information ``y'P^3y - tr(P^2) / 2`` (Fisher's expected
  ``tr(P^2) / 2`` where the observed one is not positive) with ``P = W - WX(X'WX)^-1X'W``, whose
  traces only need the small matrices ``X'W^k X`` (k = 1, 2, 3). A step that lowers the likelihood is
  halved until it does not; steps stop at the boundary ``tau2 = 0``. The likelihood can have a maximum at
  0 and another inside: Newton starts from the best of 0 and a scan of ``c u / (1 - u)``, ``u`` in ``_SCAN``,
  around the moment value ``c = max(s2, mean(v))`` (``s2``: the OLS residual variance), and a voxel that
  ends at 0 (or inside, below the likelihood at 0) is climbed again from the best interior scan point
  (or from 0); the higher maximum is kept.
* ``b`` by weighted least squares with ``W`` at the fitted ``tau2``; its covariance ``(X'WX)^-1``.
* t contrasts ``c'b / sqrt(c'(X'WX)^-1 c)`` and F contrasts ``(Cb)'(C (X'WX)^-1 C')^-1 (Cb) / q`` with
  ``n - p`` residual degrees of freedom (FSL FLAME1's and PyMARE's ``VarianceBasedLikelihoodEstimator``
  model; PyMARE's "wald" covariance).
* A subject may be absent at some voxels (``present``): it then gets weight zero there, which is the
  model fitted on the other subjects alone, with ``n_v - p`` degrees of freedom.

The only imports are numpy (no files, no nipype).
"""

from dataclasses import dataclass

import numpy as np

from .errors import GlmxError
from .glm import ContrastEstimate

#: Voxels fitted together (bounds the (voxels, p, p) work arrays).
_BLOCK = 8192
#: Starting-point scan: tau2 = c u / (1 - u) for these u (c: the moment estimate of the total variance).
_SCAN = (0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.98)


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
    iterations : int
        Largest number of scoring iterations any voxel needed.
    """

    beta: np.ndarray
    cov: np.ndarray
    tau2: np.ndarray
    n: np.ndarray
    dof: np.ndarray
    iterations: int = 0

    def to_arrays(self):
        """The fit as numpy arrays for ``numpy.savez`` (no pickled objects).

        Returns
        -------
        dict of str to numpy.ndarray
        """
        return {"model": np.array("mixed"), "beta": self.beta, "cov": self.cov, "tau2": self.tau2, "n": self.n,
                "dof": self.dof}

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
                       dof=np.asarray(arrays["dof"], np.float64))
        except KeyError as err:
            raise GlmxError(f"stored mixed-effects fit lacks the array {err.args[0]!r}") from None


def _inverse(A):
    """Inverse and log-determinant of small symmetric positive-definite matrices, voxels last.

    Parameters
    ----------
    A : numpy.ndarray, shape (p, p, k)

    Returns
    -------
    inv : numpy.ndarray, shape (p, p, k)
    logdet : numpy.ndarray, shape (k,)
        NaN (and a NaN inverse) where A is not finite and positive definite.
    """
    p = A.shape[0]
    if p == 1:
        return 1.0 / A, np.log(A[0, 0])
    if p == 2:
        a, b, d = A[0, 0], A[0, 1], A[1, 1]
        det = a * d - b * b
        inv = np.empty_like(A)
        inv[0, 0], inv[1, 1] = d / det, a / det
        inv[0, 1] = inv[1, 0] = -b / det
        return inv, np.log(det)
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


class _Profile:
    """The restricted likelihood and its derivatives in tau2 for a block of voxels, from weighted moments.

    With ``w = 1 / (v + tau2)`` every quantity is a combination of ``X'W^j X`` (one product of the stacked
    outer products ``x_i x_i'`` with ``w^j``), ``X'W^j y`` and ``y'W^j y`` (j = 1, 2, 3): the data are
    passed over a few times per evaluation and the small (p, p) algebra runs on arrays with the voxels
    last. ``y`` should be the OLS residuals (the likelihood does not change; the moments then do not
    cancel).
    """

    def __init__(self, y, y2, v, m, X, XX, tau2, full=True):
        # zero total variance (v = 0 at tau2 = 0) gives infinite weights: its likelihood reads as -inf
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self._compute(y, y2, v, m, X, XX, tau2, full)
        self.loglik = np.where(np.isnan(self.loglik), -np.inf, self.loglik)

    def _compute(self, y, y2, v, m, X, XX, tau2, full):
        n, p = X.shape
        total = v + tau2
        w = 1.0 / total
        if m is None:
            log_sum = _sum_log(total)
        else:  # absent subjects: weight 0, no term in the likelihood
            w *= m
            log_sum = (np.log(total) * m).sum(axis=0)
        A = (XX.T @ w).reshape(p, p, -1)
        self.Ainv, logdet = _inverse(A)
        wy = w * y
        xwy = X.T @ wy
        self.beta = _mv(self.Ainv, xwy)
        rwr = np.einsum("nk,nk->k", wy, y) - _dot(self.beta, xwy)
        self.loglik = -0.5 * (log_sum + logdet + rwr)
        if not full:
            return
        b = self.beta
        w2 = w * w
        w3 = w2 * w
        H2 = (XX.T @ w2).reshape(p, p, -1)
        H3 = (XX.T @ w3).reshape(p, p, -1)
        xw2y = X.T @ (w2 * y)
        xw3y = X.T @ (w3 * y)
        r_w2_r = np.einsum("nk,nk->k", w2, y2) - 2.0 * _dot(b, xw2y) + _dot(b, _mv(H2, b))
        r_w3_r = np.einsum("nk,nk->k", w3, y2) - 2.0 * _dot(b, xw3y) + _dot(b, _mv(H3, b))
        G2 = _mm(self.Ainv, H2)
        tr_P = w.sum(axis=0) - np.einsum("iik->k", G2)
        tr_PP = w2.sum(axis=0) - 2.0 * np.einsum("ijk,jik->k", self.Ainv, H3) + np.einsum("ijk,jik->k", G2, G2)
        self.score = 0.5 * (r_w2_r - tr_P)
        # Newton's curvature (observed information) y'P^3y - tr(P^2)/2 where it is positive, else
        # Fisher's (expected) tr(P^2)/2: Fisher scoring alone converges only linearly here
        xw2r = xw2y - _mv(H2, b)
        observed = r_w3_r - _dot(xw2r, _mv(self.Ainv, xw2r)) - 0.5 * tr_PP
        self.info = np.where(observed > 0, observed, 0.5 * tr_PP)


def _take(profile, sel, into, where):
    for name in ("loglik", "score", "info"):
        getattr(into, name)[where] = getattr(profile, name)[sel]
    into.beta[:, where] = profile.beta[:, sel]
    into.Ainv[:, :, where] = profile.Ainv[:, :, sel]


def _fit_block(y, v, m, X, XX, max_iter, tol):
    n, p = X.shape
    k = y.shape[1]
    # OLS of the present subjects: residuals (REML and the weighted fit are unchanged by removing X b0) and
    # the moment estimate of the total variance
    ones = np.ones((n, k)) if m is None else m.astype(np.float64)
    A0inv, _ = _inverse((XX.T @ ones).reshape(p, p, k))
    b0 = _mv(A0inv, X.T @ (ones * y))
    y = (y - X @ b0) * ones
    y2 = y * y
    count = ones.sum(axis=0)
    s2 = y2.sum(axis=0) / np.maximum(count - p, 1.0)
    vbar = (v * ones).sum(axis=0) / count
    scale = s2 + vbar + np.finfo(float).tiny  # the size of the total variance, for the stopping rule
    # the restricted likelihood can have two maxima (one at 0, one inside): Newton starts from the best point
    # of a scan of [0, inf) mapped from [0, 1) around the moment estimate; a voxel that ends on one kind of
    # maximum is climbed again from the best point of the other kind (the best interior scan point, or 0),
    # and keeps the higher
    centre = np.maximum(s2 - vbar, 0.0) + vbar
    tau2 = np.zeros(k)
    best = ll0 = _Profile(y, y2, v, m, X, XX, tau2, full=False).loglik
    tau_in, best_in = np.zeros(k), np.full(k, -np.inf)
    for u in _SCAN:
        cand = centre * (u / (1.0 - u))
        ll = _Profile(y, y2, v, m, X, XX, cand, full=False).loglik
        better = ll > best_in
        tau_in[better], best_in[better] = cand[better], ll[better]
    better = best_in > ll0
    tau2[better] = tau_in[better]
    tau2, cur, iterations = _newton(y, y2, v, m, X, XX, tau2, scale, max_iter, tol)
    other = np.where(tau2 == 0, tau_in, 0.0)
    again = np.flatnonzero(((tau2 == 0) & (tau_in > 0)) | ((tau2 > 0) & (ll0 > cur.loglik)))
    if again.size:
        sub = (y[:, again], y2[:, again], v[:, again], None if m is None else m[:, again])
        tau_b, cur_b, it_b = _newton(*sub, X, XX, other[again], scale[again], max_iter, tol)
        iterations = max(iterations, it_b)
        win = np.flatnonzero(cur_b.loglik > cur.loglik[again])
        tau2[again[win]] = tau_b[win]
        _take(cur_b, win, cur, again[win])
    return tau2, cur.beta + b0, np.moveaxis(cur.Ainv, 2, 0), iterations


def _newton(y, y2, v, m, X, XX, tau2, scale, max_iter, tol):
    """Newton steps on tau2 from the given start, halved until the restricted likelihood does not drop."""
    k = y.shape[1]
    tau2 = tau2.copy()
    cur = _Profile(y, y2, v, m, X, XX, tau2)
    active = np.arange(k)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        step = cur.score[active] / cur.info[active]
        base_tau = tau2[active]
        base_ll = cur.loglik[active]
        todo = np.arange(active.size)  # positions in `active` still looking for an accepted step
        moved = np.zeros(active.size)
        for _ in range(60):
            cand = np.maximum(base_tau[todo] + step[todo], 0.0)
            idx = active[todo]
            if idx.size == k:
                prof = _Profile(y, y2, v, m, X, XX, cand)
            else:
                prof = _Profile(y[:, idx], y2[:, idx], v[:, idx], None if m is None else m[:, idx], X, XX, cand)
            ok = prof.loglik >= base_ll[todo] - 1e-12 * np.abs(base_ll[todo])
            sel = np.flatnonzero(ok)
            tau2[idx[sel]] = cand[sel]
            moved[todo[sel]] = cand[sel] - base_tau[todo[sel]]
            _take(prof, sel, cur, idx[sel])
            todo = todo[~ok]
            if todo.size == 0:
                break
            step[todo] *= 0.5
        done = np.abs(moved) <= tol * scale[active]
        active = active[~done]
        if active.size == 0:
            break
    return tau2, cur, iterations


def fit_mixed_effects(Y, V, X, present=None, max_iter=200, tol=1e-10):
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

    Returns
    -------
    MixedFit

    Raises
    ------
    GlmxError
        On shapes that do not match, or non-finite or negative variances of a present subject.
    """
    Y = np.asarray(Y, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if Y.ndim != 2 or V.shape != Y.shape or X.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise GlmxError(f"effects {Y.shape}, variances {V.shape} and design {X.shape} do not match")
    n, p = X.shape
    n_vox = Y.shape[1]
    XX = np.einsum("ni,nj->nij", X, X).reshape(n, p * p)
    if present is None:
        if not (np.isfinite(V).all() and (V >= 0).all() and np.isfinite(Y).all()):
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
        gram = (XX.T @ m.astype(np.float64)).T.reshape(-1, p, p)
        eig = np.linalg.eigvalsh(gram)
        ok = (eig.min(axis=1) > 1e-10 * np.maximum(eig.max(axis=1), 1.0)) & (count > p)
    beta = np.full((p, n_vox), np.nan)
    cov = np.full((n_vox, p, p), np.nan)
    tau2 = np.full(n_vox, np.nan)
    iterations = 0
    cols = np.flatnonzero(ok)
    for start in range(0, cols.size, _BLOCK):
        sel = cols[start:start + _BLOCK]
        if present is None:
            t, b, c, it = _fit_block(Y[:, sel], V[:, sel], None, X, XX, max_iter, tol)
        else:
            Yb = np.where(m[:, sel], Y[:, sel], 0.0)
            Vb = np.where(m[:, sel], V[:, sel], 1.0)
            t, b, c, it = _fit_block(Yb, Vb, m[:, sel], X, XX, max_iter, tol)
        tau2[sel], beta[:, sel], cov[sel] = t, b, c
        iterations = max(iterations, it)
    dof = np.where(ok, count - p, 0).astype(np.float64)
    return MixedFit(beta=beta, cov=cov, tau2=tau2, n=count, dof=dof, iterations=iterations)


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
    XX = np.einsum("ni,nj->nij", X, X).reshape(X.shape[0], -1)
    Y = np.where(m, Y, 0.0)
    return _Profile(Y, Y * Y, np.where(m, np.asarray(V, np.float64), 1.0), m, X, XX,
                    np.asarray(tau2, np.float64)).loglik


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
        t: ``effect`` (1, n_voxels) ``c'b`` and ``variance`` (n_voxels,) ``c'(X'WX)^-1 c``. F: ``effect``
        (q, n_voxels) whitened by the Cholesky factor of ``C (X'WX)^-1 C'`` and ``variance`` 1, so that
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
    ccc = np.einsum("qi,kij,rj->kqr", C, fit.cov, C)
    finite = fit.dof > 0
    dof = float(fit.dof[finite].min()) if finite.any() else 0.0
    if C.shape[0] == 1:
        return ContrastEstimate(effect=effect, variance=ccc[:, 0, 0], dof=dof, stat_type="t")
    white = np.full(effect.shape, np.nan)
    if finite.any():
        L = np.linalg.cholesky(ccc[finite])
        white[:, finite] = np.linalg.solve(L, effect[:, finite].T[:, :, None])[:, :, 0].T
    return ContrastEstimate(effect=white, variance=np.ones(effect.shape[1]), dof=dof, stat_type="F")
