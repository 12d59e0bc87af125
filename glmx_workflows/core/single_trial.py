"""Single-trial models (LSS, LSA): trial-wise designs and a fit that shares one pass over the data.

Designs
-------
Every trial regressor is nilearn's: the trial's boxcar sampled on nilearn's high-resolution grid
(``_sample_condition``), convolved with nilearn's HRF kernels (``_hrf_kernel``), resampled at the frame
times (``_resample_regressor``) and, with HRF derivatives, orthogonalised as nilearn does
(``orthogonalize``). Before orthogonalisation a regressor is linear in its events, so the raw regressor
of any group of trials is the sum of its trials' raw regressors: the "other trials" regressors of every
LSS model come from one convolution per trial instead of one design per trial.

* LSA: one design, ``[every trial's columns, nuisance]`` (nuisance: the entry's design without the
  trial-wise conditions' columns and without modulators: non-trial-wise conditions, confounds, drifts,
  constant) -- fitted by :func:`glmx_workflows.core.glm.fit_glm`, the main fit.
* LSS, model j: ``[trial j's columns, the other trials of its group as one regressor (each basis
  function), the other groups' regressors, nuisance]``; a group is the trial's condition
  (``others="condition"``) or all trial-wise trials (``"single"``).

Fast LSS
--------
All LSS models live in the span of ``S = [every trial's columns, nuisance]`` (q columns), and model j's
span is ``span(T_j) + span(B)`` with ``B = [each group's summed raw regressors, nuisance]``, the same
``B`` for every trial. One product of each chunk of voxels with ``[S, lag(S), 1]`` gives every moment
the fits need (as in ``glm._fit_ar1_moments``); then, per trial and voxel, in O(q) work:

1. OLS residuals of model j (what nilearn estimates the AR coefficient from) are those of ``B`` minus
   their projection on ``T_j`` made orthogonal to ``B`` (Frisch-Waugh-Lovell), so the residual sum of
   squares, sum, first/last values and lag-1 sum of model j are rank-k updates of ``B``'s;
2. the AR(1) coefficient follows with nilearn's Yule-Walker arithmetic (global de-meaning over all
   voxels of model j's residuals) and is truncated into nilearn's bins;
3. the trial's beta in the bin's whitened model is ``g · T_j'W'Wy + h · B'W'Wy``: the weights ``g`` (k) and
   ``h`` (p_B) come, for every trial at once, from a block inversion against ``B``'s whitened Gram (one
   per AR bin), and ``T_j'W'Wy``, ``B'W'Wy`` are quadratics in rho of the chunk's moments.

Arrays are (time x locations): volumes or surface vertices alike.
"""

import numpy as np
import pandas as pd
import scipy.linalg as spl

from .errors import GlmxError
from .events import conditions_of
from .glm import _check_finite, _chunks, _moment_matrix, _rho_from_sums, _scan_sums, _whiten, fit_glm

__all__ = ["trial_table", "raw_trial_regressors", "nilearn_columns", "nuisance_columns", "lsa_design",
           "lss_design", "check_trials", "fit_lss", "fit_lsa", "outlier_trials", "trial_groups", "TRIAL_PREFIX"]

#: Name given to trial regressors in the designs shown and in the reference loops.
TRIAL_PREFIX = "trial_"
_CHUNK_ELEMENTS = 4_000_000


def trial_table(events, modulators=(), conditions=None):
    """The trials of one run: the condition rows of the design events, in events order.

    Parameters
    ----------
    events : pandas.DataFrame
        Normalised events of the run (``onset, duration, trial_type, modulation``), as ``load_events``
        writes them (condition rows first, then modulator rows).
    modulators : sequence of str
        Modulator columns of the entry (their ``<condition>_x_<modulator>`` rows are not trials).
    conditions : sequence of str or None
        Conditions that get trial-wise estimates (None: every condition of the run).

    Returns
    -------
    trials : pandas.DataFrame of shape (n_trials, 4)
        ``onset, duration, trial_type`` and ``row`` (the row in ``events``) of the trial-wise trials,
        sorted by condition then onset (stable).
    others : pandas.DataFrame
        Condition rows of the other conditions (modelled as in the main design, one regressor each).
    """
    conds = set(conditions_of(events, modulators))
    rows = events[events["trial_type"].isin(conds)].copy()
    rows["row"] = np.arange(len(events))[events["trial_type"].isin(conds).to_numpy()]
    chosen = conds if conditions is None else {c for c in conds if c in set(conditions)}
    mask = rows["trial_type"].isin(chosen)
    trials = rows[mask].sort_values(["trial_type", "onset"], kind="stable").reset_index(drop=True)
    return trials[["onset", "duration", "trial_type", "row"]], rows[~mask].reset_index(drop=True)


def raw_trial_regressors(onsets, durations, frame_times, tr, hrf_model="glover", oversampling=50,
                         min_onset=-24.0):
    """Each trial's regressors before nilearn's orthogonalisation (one per HRF basis function).

    nilearn's ``compute_regressor`` for a single event of amplitude 1, without its last step
    (``orthogonalize``): apply :func:`nilearn_columns` to a trial's (or a sum of trials') columns to get
    nilearn's design columns.

    Parameters
    ----------
    onsets, durations : array of shape (n_trials,)
        Seconds.
    frame_times : array of shape (n_scans,)
        Acquisition times of every volume of the run (censored ones included), from
        :func:`glmx_workflows.core.design.frame_times`.
    tr : float
        Repetition time (s).
    hrf_model : str
        nilearn's HRF name (``glover``, ``spm``, ``... + derivative [+ dispersion]``).
    oversampling, min_onset
        As nilearn's ``make_first_level_design_matrix`` (its defaults).

    Returns
    -------
    numpy.ndarray of shape (n_scans, n_trials, k)
        k = 1, 2 or 3 basis functions.
    """
    from nilearn.glm.first_level.hemodynamic_models import _hrf_kernel, _resample_regressor, _sample_condition
    from scipy.signal import fftconvolve

    onsets = np.asarray(onsets, float)
    durations = np.asarray(durations, float)
    kernels = _hrf_kernel(hrf_model, tr, oversampling, None)
    high = None
    stims = []
    for on, du in zip(onsets, durations):
        reg, high = _sample_condition(np.array([[on], [du], [1.0]]), frame_times, oversampling, min_onset)
        stims.append(reg)
    if not stims:
        return np.zeros((len(frame_times), 0, len(kernels)))
    stims = np.array(stims)  # (n_trials, n_high)
    out = np.empty((len(frame_times), len(stims), len(kernels)))
    for b, h in enumerate(kernels):
        conv = fftconvolve(stims, np.asarray(h)[None, :], axes=1)[:, :stims.shape[1]]
        out[:, :, b] = _resample_regressor(conv, high, frame_times)
    return out


def nilearn_columns(raw):
    """nilearn's design columns of one regressor group from its raw (summed) basis columns.

    Parameters
    ----------
    raw : array of shape (n_scans, k)

    Returns
    -------
    numpy.ndarray of shape (n_scans, k)
        Each basis column orthogonalised against the preceding ones (nilearn's ``orthogonalize``).
    """
    from nilearn.glm.first_level.hemodynamic_models import orthogonalize

    return orthogonalize(np.array(raw, dtype=float, copy=True))


def _basis_suffixes(k):
    return ["", "_derivative", "_dispersion"][:k]


def nuisance_columns(design, trial_conditions, modulators=()):
    """The columns of a run's main design that every single-trial model keeps.

    Parameters
    ----------
    design : pandas.DataFrame of shape (n_scans, n_regressors)
        The run's design from ``build_design`` (all volumes).
    trial_conditions : sequence of str
        Conditions estimated trial by trial (their columns, derivatives included, are dropped).
    modulators : sequence of str
        Modulator columns of the entry (``<condition>_x_<modulator>`` columns are dropped: modulators are
        not used in single-trial models).

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_nuisance)
        Other conditions, confounds, drifts and the constant, in the design's order.
    """
    from .formula import sanitize_name

    drop = set()
    for cond in trial_conditions:
        drop |= {cond + s for s in _basis_suffixes(3)}
    mods = tuple(f"_x_{sanitize_name(m)}" for m in modulators)
    keep = [c for c in design.columns
            if c not in drop and not (mods and any(m in c for m in mods))]
    return design[keep]


def _trial_names(trials):
    """``trial_<condition>_<k>``: k counts the condition's trials in onset order (from 1)."""
    counts = trials.groupby("trial_type").cumcount() + 1
    return [f"{TRIAL_PREFIX}{c}_{int(n):03d}" for c, n in zip(trials["trial_type"], counts)]


def lsa_design(raw, trials, nuisance):
    """The LSA design: every trial its own regressor (nilearn's columns), then the nuisance columns.

    Parameters
    ----------
    raw : array of shape (n_scans, n_trials, k)
        From :func:`raw_trial_regressors`.
    trials : pandas.DataFrame
        From :func:`trial_table`, same order as ``raw``.
    nuisance : pandas.DataFrame of shape (n_scans, n_nuisance)
        From :func:`nuisance_columns`.

    Returns
    -------
    pandas.DataFrame of shape (n_scans, n_trials * k + n_nuisance)
    """
    k = raw.shape[2]
    cols, names = [], []
    for i, name in enumerate(_trial_names(trials)):
        cols.append(nilearn_columns(raw[:, i, :]))
        names += [name + s for s in _basis_suffixes(k)]
    block = np.concatenate(cols, axis=1) if cols else np.zeros((raw.shape[0], 0))
    return pd.concat([pd.DataFrame(block, columns=names, index=nuisance.index), nuisance], axis=1)


def trial_groups(trials, others="condition"):
    """Group of each trial for its LSS "other trials" regressor.

    Parameters
    ----------
    trials : pandas.DataFrame
        From :func:`trial_table`.
    others : {"condition", "single"}

    Returns
    -------
    groups : numpy.ndarray of int, shape (n_trials,)
    names : list of str
        Name of each group (its conditions, or ``others``).
    """
    if others == "single":
        return np.zeros(len(trials), dtype=int), ["others"]
    names = sorted(pd.unique(trials["trial_type"]))
    return np.array([names.index(t) for t in trials["trial_type"]]), names


def lss_design(raw, trials, nuisance, j, others="condition"):
    """The LSS design of trial ``j`` (for the report and the reference loops).

    Parameters
    ----------
    raw, trials, nuisance
        As :func:`lsa_design`.
    j : int
        Trial (row of ``trials``).
    others : {'condition', 'single'}
        Other trials grouped by condition, or all as one regressor.

    Returns
    -------
    pandas.DataFrame of shape (n_scans, p)
        ``trial`` (+ derivatives), one column set per group of other trials, then the nuisance.
    """
    groups, names = trial_groups(trials, others)
    k = raw.shape[2]
    cols = {f"{TRIAL_PREFIX[:-1]}{s}": c for s, c in zip(_basis_suffixes(k), nilearn_columns(raw[:, j, :]).T)}
    for g, name in enumerate(names):
        members = (groups == g) & (np.arange(len(trials)) != j)
        if members.any():
            block = nilearn_columns(raw[:, members, :].sum(axis=1))
            for s, c in zip(_basis_suffixes(k), block.T):
                cols[f"{name}{s}"] = c
    return pd.concat([pd.DataFrame(cols, index=nuisance.index), nuisance], axis=1)


def check_trials(trials, n_scans, tr, keep, method="lss", n_nuisance=0, k=1, source=None):
    """Refuse trial-wise models that cannot be estimated, naming the trial or condition.

    Parameters
    ----------
    trials : pandas.DataFrame
        From :func:`trial_table`.
    n_scans : int
        Volumes in the run.
    tr : float
        Repetition time (s).
    keep : array of bool, shape (n_scans,)
        Volumes the fit keeps (dummy scans and FD censoring removed).
    method : {'lss', 'lsa'}
    n_nuisance : int
        Columns besides the trials' (for the LSA volume count).
    k : int
        HRF basis functions per trial.
    source : str, optional
        Events file named in messages.

    Raises
    ------
    GlmxError
        No trial, a condition with fewer than 2 trials, a trial outside the run, a trial whose volumes
        are all censored, or (LSA) no more kept volumes than regressors.
    """
    if not len(trials):
        raise GlmxError("no trial of the trial-wise conditions in this run", file=source, field="single_trial")
    counts = trials["trial_type"].value_counts()
    few = sorted(counts.index[counts < 2])
    if few:
        raise GlmxError(f"condition '{few[0]}' has {int(counts[few[0]])} trial in this run; single-trial models "
                        "need at least 2 trials per condition", file=source, field="single_trial")
    keep = np.asarray(keep, bool)
    if method == "lsa":
        p = len(trials) * k + n_nuisance
        if int(keep.sum()) <= p:
            raise GlmxError(f"LSA needs more kept volumes than regressors: {int(keep.sum())} volumes for "
                            f"{len(trials)} trials x {k} + {n_nuisance} other regressors", file=source,
                            field="single_trial")
    end = n_scans * tr
    names = _trial_names(trials)
    for name, on, du in zip(names, trials["onset"], trials["duration"]):
        if on < 0 or on >= end:
            raise GlmxError(f"trial {name} (onset {on:g} s) lies outside the run (0 to {end:g} s)",
                            file=source, field="single_trial")
        first = int(np.floor(on / tr))
        last = min(n_scans - 1, max(first, int(np.ceil((on + du) / tr)) - 1))
        if not keep[first:last + 1].any():
            raise GlmxError(f"trial {name} (onset {on:g} s) falls wholly in censored volumes "
                            f"{first}-{last} (dummy scans / FD censoring)", file=source, field="single_trial")


def fit_lsa(Y, design, n_trials, k=1, noise_model="ar1"):
    """LSA betas: the main first-level fit of the trial-wise design.

    Parameters
    ----------
    Y : numpy.ndarray or ScaledIntegerRun of shape (n_kept, n_locations)
    design : numpy.ndarray of shape (n_kept, n_trials * k + n_nuisance)
        From :func:`lsa_design` (kept rows).
    n_trials, k : int
    noise_model : {'ar1', 'ols'}

    Returns
    -------
    numpy.ndarray of float64, shape (n_trials, n_locations)
        Each trial's canonical-regressor beta.
    """
    fit = fit_glm(Y, np.asarray(design, float), noise_model=noise_model)
    return np.asarray(fit.beta[0:n_trials * k:k], dtype=np.float64)


def _jacobi_inv(g):
    """Inverse of a symmetric positive (semi-)definite matrix, column-scaled first for accuracy."""
    d = np.sqrt(np.diag(g))
    d[d == 0] = 1.0
    return spl.pinvh(g / d[:, None] / d[None, :]) / d[:, None] / d[None, :]


class _LSSModels:
    """Per-run constants of the LSS models (no data).

    ``S`` (n, q): every trial's nilearn columns then the nuisance, kept volumes. ``B = S A_B`` (n, p_B):
    each group's summed raw regressors and the nuisance, the part of span(X_j) shared by all trials.
    Model j is ``X_j = [T_j, Q_j]`` (trial j's k columns, then the other columns, p_B of them) with
    ``span(X_j) = span(T_j) + span(B)``; ``Q_j = B D_j - T_j E_j``, so the trial's canonical beta in
    nilearn's parametrisation is ``a'_0 + f_j . b'`` with ``(a', b')`` the coefficients on ``[T_j, B]``
    and ``f_j = inv(D_j)' E_j[0]`` (no dependence on the data or on rho).
    """

    def __init__(self, raw, groups, nuisance, keep):
        n_all, n_t, k = raw.shape
        self.k, self.n_t = k, n_t
        keep = np.asarray(keep, bool)
        trial_cols = np.concatenate([nilearn_columns(raw[:, i, :]) for i in range(n_t)], axis=1)
        nuis = np.asarray(nuisance, float)
        s_all = np.concatenate([trial_cols, nuis], axis=1)
        self.S = np.ascontiguousarray(s_all[keep])
        q = self.S.shape[1]
        n_groups = int(groups.max()) + 1
        sums = [raw[:, groups == g, :].sum(axis=1) for g in range(n_groups)]
        pinv_s = spl.pinv(s_all)
        self.A_B = pinv_s @ np.concatenate(sums + [nuis], axis=1)
        B = self.S @ self.A_B
        self.B = B
        p_b = B.shape[1]
        self.p_max = k + p_b
        pinv_b = spl.pinv(B)
        self.cov_B = pinv_b @ pinv_b.T
        self.B_sum = B.sum(0)
        self.cross_B = B[1:].T @ B[:-1]
        n = self.S.shape[0]
        ones = np.ones(n)
        u = ones - B @ (pinv_b @ ones)
        group_cols = [pinv_s @ nilearn_columns(s) for s in sums]  # (q, k) per group, in S coordinates
        n_nuis = nuis.shape[1]
        tail = np.zeros((q, n_nuis))
        tail[n_t * k + np.arange(n_nuis), np.arange(n_nuis)] = 1.0
        self.F = np.empty((n_t, p_b))
        P, Tts = [], []
        self.Ginv = np.empty((n_t, k, k))
        self.Lam = np.empty((n_t, k, k))
        self.LagBt = np.empty((n_t * k, p_b))
        self.u_means = np.empty((n_t, n))
        for j in range(n_t):
            g = groups[j]
            cols = np.arange(j * k, (j + 1) * k)
            e = np.zeros((q, k))
            e[cols, np.arange(k)] = 1.0
            members = (groups == g) & (np.arange(n_t) != j)
            # the other columns of model j (nilearn's: the group's other trials, the other groups, nuisance)
            a_q = np.concatenate([pinv_s @ nilearn_columns(raw[:, members, :].sum(axis=1))]
                                 + [group_cols[h] for h in range(n_groups) if h != g] + [tail], axis=1)
            z = np.linalg.lstsq(np.concatenate([self.A_B, e], axis=1), a_q, rcond=None)[0]
            try:
                self.F[j] = np.linalg.solve(z[:p_b].T, -z[p_b:][0])
            except np.linalg.LinAlgError:
                raise GlmxError(f"the other trials of trial {j + 1}'s LSS model are collinear with the rest of "
                                "the model", field="single_trial") from None
            T = self.S[:, cols]
            Pj = self.cov_B @ (B.T @ T)
            Tt = T - B @ Pj
            P.append(Pj.T)
            Tts.append(Tt)
            gram = Tt.T @ Tt
            if np.linalg.eigvalsh(gram)[0] <= 1e-10 * np.trace(T.T @ T):
                raise GlmxError(f"trial {j + 1} (in condition and onset order) cannot be told apart from the other "
                                "regressors of its LSS model (collinear on the kept volumes)", field="single_trial")
            self.Ginv[j] = np.linalg.inv(gram)
            lam = Tt[1:].T @ Tt[:-1]
            self.Lam[j] = 0.5 * (lam + lam.T)
            lag_t = np.zeros_like(Tt)
            lag_t[:-1] += Tt[1:]
            lag_t[1:] += Tt[:-1]
            self.LagBt[cols] = lag_t.T @ B
            self.u_means[j] = u - Tt @ (self.Ginv[j] @ (Tt.T @ u))
        self.Pt = np.concatenate(P, axis=0)  # (n_t * k, p_B)
        Tt = np.stack(Tts)  # (n_t, n, k)
        self.T_sum, self.T_first, self.T_last = Tt.sum(axis=1), Tt[:, 0], Tt[:, -1]
        self.S_last_trials = self.S[-1, :n_t * k].reshape(n_t, k)
        self._tables = {}

    def tables(self, key, bins):
        """Per-trial weights of the trial's beta at AR coefficient key / bins.

        Returns ``g`` (n_t, k) and ``h`` (n_t, p_B) with ``beta_j = g_j . T_j'W'Wy + h_j . B'W'Wy``, and
        ``last`` (n_t,) = ``g_j . T_j[-1] + h_j . B[-1]``.
        """
        if key in self._tables:
            return self._tables[key]
        n_t, k = self.n_t, self.k
        xw = _whiten(self.S, key * 1.0 / bins)
        G = xw.T @ xw
        GA = G @ self.A_B
        Hinv = _jacobi_inv(self.A_B.T @ GA)
        C = GA[:n_t * k].reshape(n_t, k, -1)  # E_j' G A_B
        idx = np.arange(n_t * k).reshape(n_t, k)
        D = G[idx[:, :, None], idx[:, None, :]]  # (n_t, k, k) trial blocks of G
        HinvCt = np.einsum("pq,jaq->jpa", Hinv, C)
        Sc = D - np.einsum("jaq,jqb->jab", C, HinvCt)
        e0 = np.zeros((n_t, k))
        e0[:, 0] = 1.0
        row = e0 - np.einsum("jp,jpa->ja", self.F, HinvCt)
        g = np.einsum("ja,jab->jb", row, np.linalg.inv(Sc))
        h = np.einsum("pq,jq->jp", Hinv, self.F - np.einsum("ja,jaq->jq", g, C))
        last = np.einsum("ja,ja->j", g, self.S_last_trials) + h @ self.B[-1]
        self._tables[key] = (g, h, last)
        return self._tables[key]


def fit_lss(Y, raw, groups, nuisance, keep=None, noise_model="ar1", bins=100, chunk_size=None):
    """LSS betas of every trial, as one nilearn fit per trial would give them, from one pass over Y.

    Parameters
    ----------
    Y : numpy.ndarray or ScaledIntegerRun of shape (n_kept, n_locations)
        The kept volumes (percent signal change, as the main fit).
    raw : numpy.ndarray of shape (n_scans, n_trials, k)
        Raw trial regressors on every volume (:func:`raw_trial_regressors`).
    groups : array of int, shape (n_trials,)
        Group of each trial: its other-trial regressor is the group's other trials (0..n_groups-1).
    nuisance : array of shape (n_scans, n_nuisance)
        Columns every model keeps (:func:`nuisance_columns`), every volume.
    keep : array of bool, shape (n_scans,), optional
        Kept volumes (default all).
    noise_model : {'ar1', 'ols'}
    bins : int
        nilearn's AR(1) bins.
    chunk_size : int, optional
        Locations per chunk.

    Returns
    -------
    numpy.ndarray of float64, shape (n_trials, n_locations)
        The canonical-regressor beta of each trial in its own model.

    Notes
    -----
    Memory beyond Y and the result: the chunk's (n_kept, chunk) float64 copy, its moments and a few
    (n_trials, chunk, n_base) work arrays (chunk ~ 4e6 / (n_trials * n_base) locations).
    """
    raw = np.asarray(raw, float)
    n_all, n_t, k = raw.shape
    keep = np.ones(n_all, bool) if keep is None else np.asarray(keep, bool)
    groups = np.asarray(groups, int)
    if noise_model not in ("ar1", "ols"):
        raise GlmxError(f"unknown noise model {noise_model!r}; expected 'ar1' or 'ols'", field="noise_model")
    if Y.shape[0] != int(keep.sum()):
        raise GlmxError(f"data have {Y.shape[0]} volumes but {int(keep.sum())} are kept")
    m = _LSSModels(raw, groups, nuisance, keep)
    S = m.S
    n, q = S.shape
    nk = n_t * k
    n_vox = Y.shape[1]
    if n <= m.p_max:
        raise GlmxError(f"{n} kept volumes are too few for {m.p_max} regressors")
    out = np.empty((n_t, n_vox))
    if noise_model == "ar1":
        scan_sums = _scan_sums(Y)
        means = (m.u_means @ scan_sums) / (n * n_vox)  # each model's global residual mean, as nilearn's
    K = _moment_matrix(S)
    step = chunk_size or max(64, min(8192, _CHUNK_ELEMENTS // max(n_t * m.B.shape[1], n)))
    trial_index = np.arange(n_t)[:, None]
    offset = 2 * bins  # |rho| <= n / (n - 1) <= 2
    n_slots = 4 * bins + 1
    have = np.zeros(n_slots, bool)
    # per-trial tables, row j * n_slots + slot: one np.take gathers every (trial, location)'s weights
    g_tab = np.zeros((n_t, n_slots, k))
    h_tab = np.zeros((n_t, n_slots, m.B.shape[1]))
    l_tab = np.zeros((n_t, n_slots))
    g_flat, h_flat, l_flat = g_tab.reshape(-1, k), h_tab.reshape(-1, m.B.shape[1]), l_tab.reshape(-1)
    buf = None
    for start, stop in _chunks(n_vox, step):
        if buf is None or buf.shape[1] != stop - start:
            buf = np.empty((n, stop - start))
        if hasattr(Y, "columns_into"):
            Y.columns_into(buf, start, stop)
        else:
            np.copyto(buf, Y[:, start:stop])
        mom = K.T @ buf  # (2q + 1, v)
        if not np.isfinite(mom).all():
            _check_finite(buf)
        MS, LS = mom[:q], mom[q:2 * q]
        MB = m.A_B.T @ MS
        MT = MS[:nk].reshape(n_t, k, -1)
        if noise_model == "ols":
            g, h, _ = m.tables(0, bins)
            out[:, start:stop] = np.einsum("ja,jav->jv", g, MT) + h @ MB
            continue
        LB = m.A_B.T @ LS
        LT = LS[:nk].reshape(n_t, k, -1)
        sum_y = mom[2 * q]
        s0 = np.einsum("tv,tv->v", buf, buf)
        s1 = np.einsum("tv,tv->v", buf[1:], buf[:-1])
        last = buf[-1]
        # residuals of the shared part B, then of each model by a rank-k update (Frisch-Waugh-Lovell)
        bB = m.cov_B @ MB
        rssB = s0 - np.einsum("pv,pv->v", bB, MB)
        rsumB = sum_y - m.B_sum @ bB
        r1B = s1 - np.einsum("pv,pv->v", bB, LB) + np.einsum("pv,pv->v", bB, m.cross_B.T @ bB)
        rB0 = buf[0] - m.B[0] @ bB
        rBL = last - m.B[-1] @ bB
        ty = (MS[:nk] - m.Pt @ MB).reshape(n_t, k, -1)
        cross = (LS[:nk] - m.Pt @ LB - m.LagBt @ bB).reshape(n_t, k, -1)
        gam = np.einsum("jab,jbv->jav", m.Ginv, ty)
        rss = rssB - np.einsum("jav,jav->jv", gam, ty)
        rsum = rsumB - np.einsum("ja,jav->jv", m.T_sum, gam)
        r1 = (r1B - np.einsum("jav,jav->jv", gam, cross)
              + np.einsum("jav,jav->jv", gam, np.einsum("jab,jbv->jav", m.Lam, gam)))
        rf = rB0 - np.einsum("ja,jav->jv", m.T_first, gam)
        rl = rBL - np.einsum("ja,jav->jv", m.T_last, gam)
        mu = means[:, None]
        r0 = rss - 2.0 * mu * rsum + n * mu * mu
        r1 = r1 - mu * (2.0 * rsum - rf - rl) + (n - 1) * mu * mu
        keys = (_rho_from_sums(r0, r1, n) * bins).astype(np.int64)
        slots = keys + offset
        for slot in np.flatnonzero((np.bincount(slots.ravel(), minlength=n_slots) > 0) & ~have):
            g_tab[:, slot], h_tab[:, slot], l_tab[:, slot] = m.tables(int(slot - offset), bins)
            have[slot] = True
        r = keys * (1.0 / bins)
        rows = (trial_index * n_slots + slots).ravel()
        v = stop - start
        hg = np.take(h_flat, rows, axis=0).reshape(n_t, v, -1)  # (n_t, v, p_B)
        gg = np.take(g_flat, rows, axis=0).reshape(n_t, v, k)
        # h . B'y and h . lag(B)'y of every (trial, location) in one batched product over locations
        both = np.matmul(hg.transpose(1, 0, 2), np.stack([MB.T, LB.T], axis=2))  # (v, n_t, 2)
        first_terms = both[:, :, 0].T + np.einsum("jva,jav->jv", gg, MT)
        lag_terms = both[:, :, 1].T + np.einsum("jva,jav->jv", gg, LT)
        out[:, start:stop] = ((1.0 + r * r) * first_terms - r * lag_terms
                              - (r * r) * last[None, :] * np.take(l_flat, rows).reshape(n_t, v))
    return out


def outlier_trials(betas, threshold=3.5):
    """Trials whose beta map is unusually large, by a robust z of its root mean square (flagged, not dropped).

    Parameters
    ----------
    betas : numpy.ndarray of shape (n_trials, n_locations)
        One condition's beta series.
    threshold : float
        Robust z (``0.6745 * (x - median) / MAD``, Iglewicz and Hoaglin) above which a trial is flagged.

    Returns
    -------
    rms : numpy.ndarray of shape (n_trials,)
        Root mean square of each trial's beta map.
    robust_z : numpy.ndarray of shape (n_trials,)
    flagged : numpy.ndarray of bool, shape (n_trials,)
    """
    rms = np.sqrt(np.mean(np.asarray(betas, float) ** 2, axis=1))
    med = np.median(rms)
    mad = np.median(np.abs(rms - med))
    z = np.zeros_like(rms) if mad == 0 else 0.6745 * (rms - med) / mad
    return rms, z, z > threshold
