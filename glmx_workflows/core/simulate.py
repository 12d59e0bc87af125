"""Simulated flanker-task fMRI data with planted effects: pure generators (arrays and tables only).

This module builds everything the example dataset (:mod:`glmx_workflows.io.example`) writes, but it
writes nothing itself: it returns numpy arrays and pandas tables.

Space and anatomy
-----------------
Images live on a coarse grid in MNI152NLin2009cAsym millimetres (:func:`mni_grid`): the grid is
centred on ``(0, -18, 18)`` and covers x -90..90, y -126..90, z -72..108 mm. The default shape
``(23, 27, 23)`` gives 8 mm voxels. The brain (:func:`brain_anatomy`) is an ellipsoid centred on
``(0, -17, 17)`` mm with semi-axes ``(68, 87, 61)`` mm (about 3000 voxels at 8 mm); it holds a
"ventricle" ellipsoid (the CSF mask) and a deep "white matter" ellipsoid, used for the confounds.

Signal model (per run, per in-mask voxel ``v``, volume ``t``; all terms in percent of the voxel's
baseline ``B_v``, which is 600-1300 and brightest in CSF)::

    Y[t, v] = B_v * (1 + (task + drift + motion + global + noise)[t, v] / 100) * nss[t]

* ``task``: true regressors (:func:`true_regressors`) — nilearn's Glover HRF convolved with the
  events at the *true* TR (``compute_regressor``, oversampling 50, frame times ``arange(n) * tr``,
  i.e. ``slice_time_ref=0``) — times the planted beta maps. The regressors are ``congruent``,
  ``incongruent`` (unit amplitude) and ``congruent_x_response_time``,
  ``incongruent_x_response_time`` (amplitude = response time minus its mean within that condition
  over all the subject's runs), the names the package gives them.
* ``drift``: a linear trend plus a half-cosine over the run, each ~N(0, 0.7 %) per voxel.
* ``motion``: a linear mix of the six motion parameters (rotations as mm of arc at 50 mm), with
  per-voxel weights ~N(0, 0.6 % per mm) growing towards the brain edge.
* ``global``: one shared AR(1) fluctuation (sd 0.2 %) with per-voxel loadings 0.5-1.5, made
  orthogonal to the true task regressors, the motion parameters and a 0.01 Hz cosine drift basis
  (so that it biases no voxel's task estimate).
* ``noise``: AR(1) noise of marginal sd ``noise_percent`` (0.6 % by default, tSNR ~150) with ``rho`` drawn
  uniformly in 0.2-0.4 per voxel.
* ``nss``: the first one or two volumes are non-steady-state (2 % and 0.5 % brighter).

Planted effects (:data:`PLANTED_EFFECTS`; betas in percent signal change per unit regressor)
---------------------------------------------------------------------------------------------
``visual``   bilateral occipital blobs at (±14, -84, 6) mm: congruent = incongruent = 2.5 %
             (task > baseline, incongruent - congruent = 0).
``conflict`` dorsal ACC / pre-SMA blob at (0, 22, 40) mm: congruent 1.0 %, incongruent 3.2 %
             (incongruent > congruent and task > baseline).
``rt``       left precentral blob at (-38, -24, 54) mm: both ``<condition>_x_response_time``
             regressors 10 % per second of response time (positive RT modulation).

Each blob has a Gaussian profile of sd ``max(8 mm, voxel size)`` truncated at 2 sd (its
*support*); voxels where the profile is >= 0.5 are its *core*. Every in-mask voxel outside all
supports carries no task signal (null). Each subject's betas are the planted ones times a
subject scale factor per effect, ``1 + 0.15 * N(0, 1)`` clipped to 0.75-1.25 (a random effect), so
group-level effects are strong but not identical across subjects. Age and group have no effect.
"""

import numpy as np
import pandas as pd
from nilearn.glm.first_level import compute_regressor

#: Field of view in MNI mm, (min, max) per axis, covered by :func:`mni_grid`.
MNI_FOV = ((-90.0, 90.0), (-126.0, 90.0), (-72.0, 108.0))
#: Brain ellipsoid (centre, semi-axes) in MNI mm.
BRAIN_ELLIPSOID = ((0.0, -17.0, 17.0), (68.0, 87.0, 61.0))
#: Ventricles (CSF) ellipsoid in MNI mm.
CSF_ELLIPSOID = ((0.0, -10.0, 16.0), (18.0, 30.0, 14.0))
#: Deep white matter ellipsoid in MNI mm (minus the CSF ellipsoid).
WM_ELLIPSOID = ((0.0, -17.0, 20.0), (44.0, 62.0, 36.0))

CONDITIONS = ("congruent", "incongruent")
MODULATOR = "response_time"
REGRESSORS = ("congruent", "incongruent", "congruent_x_response_time", "incongruent_x_response_time")

#: Default marginal sd of the voxel noise (percent of baseline) and range of its AR(1) coefficient.
NOISE_PERCENT = 0.6
AR_RHO = (0.2, 0.4)

MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]

#: The planted effects; see the module docstring.
PLANTED_EFFECTS = (
    {"name": "visual", "label": 1, "contrast": "task",
     "description": "both conditions > baseline (bilateral occipital cortex); "
                    "incongruent - congruent = 0 here",
     "centers_mm": [[-14.0, -84.0, 6.0], [14.0, -84.0, 6.0]], "sigma_mm": 8.0,
     "betas_percent": {"congruent": 2.5, "incongruent": 2.5}},
    {"name": "conflict", "label": 2, "contrast": "incongruentVcongruent",
     "description": "incongruent > congruent (dorsal anterior cingulate / pre-SMA); task > baseline too",
     "centers_mm": [[0.0, 22.0, 40.0]], "sigma_mm": 8.0,
     "betas_percent": {"congruent": 1.0, "incongruent": 3.2}},
    {"name": "rt", "label": 3, "contrast": "rt",
     "description": "positive response-time modulation in both conditions (left precentral gyrus)",
     "centers_mm": [[-38.0, -24.0, 54.0]], "sigma_mm": 8.0,
     "betas_percent": {"congruent_x_response_time": 10.0, "incongruent_x_response_time": 10.0}},
)


# ----------------------------------------------------------------------------------------------
# grid and anatomy
# ----------------------------------------------------------------------------------------------

def mni_grid(shape):
    """Affine of an isotropic grid of ``shape`` covering :data:`MNI_FOV`.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape ``(nx, ny, nz)``.

    Returns
    -------
    affine : numpy.ndarray, shape (4, 4)
        Voxel → MNI mm, RAS+, voxel size ``max(fov / shape)`` rounded up to 0.5 mm, grid centred on
        the field of view. ``(23, 27, 23)`` gives 8 mm voxels, x -88..88, y -122..86, z -70..106.
    """
    shape = np.asarray(shape, dtype=float)
    if shape.shape != (3,) or (shape < 2).any():
        raise ValueError(f"shape must be 3 integers >= 2, got {tuple(shape)}")
    extent = np.array([hi - lo for lo, hi in MNI_FOV])
    centre = np.array([(lo + hi) / 2 for lo, hi in MNI_FOV])
    voxel = np.ceil(np.max(extent / shape) * 2) / 2
    affine = np.eye(4)
    affine[:3, :3] *= voxel
    affine[:3, 3] = centre - voxel * (shape - 1) / 2
    return affine


def voxel_coordinates(shape, affine):
    """MNI mm coordinates of every voxel centre.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-mm affine of the grid.

    Returns
    -------
    numpy.ndarray, shape ``shape + (3,)``
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _ellipsoid_radius(xyz, ellipsoid):
    centre, radii = (np.asarray(a, float) for a in ellipsoid)
    return np.sqrt((((xyz - centre) / radii) ** 2).sum(axis=-1))


def brain_anatomy(shape, affine):
    """Brain, CSF and white-matter masks of the simulated brain.

    Parameters
    ----------
    shape : tuple of 3 int
    affine : numpy.ndarray, shape (4, 4)

    Returns
    -------
    dict
        ``mask``, ``csf``, ``wm``: bool arrays of ``shape`` (``csf`` and ``wm`` inside ``mask``,
        disjoint, each at least one voxel); ``radius``: float array of ``shape``, the normalised
        ellipsoid radius (0 at the centre, 1 at the brain edge).
    """
    xyz = voxel_coordinates(shape, affine)
    radius = _ellipsoid_radius(xyz, BRAIN_ELLIPSOID)
    mask = radius <= 1.0
    if not mask.any():
        raise ValueError("the grid is too coarse: no voxel inside the brain")
    r_csf = _ellipsoid_radius(xyz, CSF_ELLIPSOID)
    r_wm = _ellipsoid_radius(xyz, WM_ELLIPSOID)
    csf = mask & (r_csf <= 1.0)
    if not csf.any():  # very coarse grid: the voxel nearest to the ventricles' centre
        csf = np.zeros(shape, bool)
        csf[np.unravel_index(np.argmin(np.where(mask, r_csf, np.inf)), shape)] = True
    wm = mask & (r_wm <= 1.0) & ~csf
    if not wm.any():
        wm = np.zeros(shape, bool)
        wm[np.unravel_index(np.argmin(np.where(mask & ~csf, r_wm, np.inf)), shape)] = True
    return {"mask": mask, "csf": csf, "wm": wm, "radius": radius}


def baseline_map(anatomy, affine, rng):
    """Spatially varying baseline intensity (CSF bright, white matter darker, smooth bias field).

    Parameters
    ----------
    anatomy : dict
        From :func:`brain_anatomy`.
    affine : numpy.ndarray, shape (4, 4)
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, float64, shape of the grid
        About 600-1300 inside the mask, 0 outside.
    """
    mask = anatomy["mask"]
    xyz = voxel_coordinates(mask.shape, affine)
    field = np.zeros(mask.shape)
    for _ in range(4):  # smooth bias field: a few random low-frequency plane waves
        k = rng.normal(size=3) / 90.0
        field += np.cos(xyz @ k + rng.uniform(0, 2 * np.pi))
    base = 850.0 * (1 + 0.06 * field) * (1 - 0.15 * anatomy["radius"] ** 2)
    base = np.where(anatomy["csf"], base * 1.35, base)
    base = np.where(anatomy["wm"], base * 0.85, base)
    base *= 1 + 0.02 * rng.normal(size=mask.shape)
    return np.where(mask, base, 0.0)


def effect_weights(shape, affine, mask, effects=PLANTED_EFFECTS):
    """Spatial profile of each planted effect.

    Parameters
    ----------
    shape : tuple of 3 int
    affine : numpy.ndarray, shape (4, 4)
    mask : numpy.ndarray of bool, shape ``shape``
    effects : sequence of dict
        Items like those of :data:`PLANTED_EFFECTS` (``name``, ``centers_mm``, ``sigma_mm``).

    Returns
    -------
    dict
        name → float array of ``shape`` in [0, 1]: a Gaussian of sd ``max(sigma_mm, voxel size)``
        around each centre (max over centres), set to 0 beyond 2 sd and outside ``mask``.
    """
    xyz = voxel_coordinates(shape, affine)
    voxel = float(np.abs(affine[:3, :3]).max())
    return {name: np.where(mask, w, 0.0) for name, w in effect_weights_at(xyz, voxel, effects).items()}


def effect_weights_at(xyz, min_sigma=0.0, effects=PLANTED_EFFECTS):
    """Spatial profile of each planted effect at given coordinates (voxel centres or mesh vertices).

    Parameters
    ----------
    xyz : numpy.ndarray, shape (..., 3)
        Coordinates (mm).
    min_sigma : float
        Smallest sd (mm), e.g. the voxel size.
    effects : sequence of dict
        As for :func:`effect_weights`.

    Returns
    -------
    dict
        name → float array of shape ``xyz.shape[:-1]`` in [0, 1]: a Gaussian of sd ``max(sigma_mm, min_sigma)``
        around each centre (max over centres), 0 beyond 2 sd.
    """
    out = {}
    for eff in effects:
        sigma = max(float(eff["sigma_mm"]), min_sigma)
        w = np.zeros(xyz.shape[:-1])
        for c in eff["centers_mm"]:
            d = np.sqrt(((xyz - np.asarray(c, float)) ** 2).sum(axis=-1))
            w = np.maximum(w, np.where(d <= 2 * sigma, np.exp(-0.5 * (d / sigma) ** 2), 0.0))
        out[eff["name"]] = w
    return out


def simulate_surface_run(xyz, run, tr, rng, scales=None, constant=None, effects=PLANTED_EFFECTS):
    """One run's BOLD series at surface locations (vertices, grayordinates), with the planted effects.

    The model is :func:`simulate_bold`'s on a one-dimensional "grid" of locations: baseline, task signal,
    drift, motion-related signal, a shared fluctuation and AR(1) noise.

    Parameters
    ----------
    xyz : numpy.ndarray, shape (n_locations, 3)
        Coordinates (mm) of the locations (the effects' profiles are Gaussians around their centres).
    run : dict
        One item of :func:`simulate_subject`'s ``runs`` (``regressors``, ``motion``, ``n_nonsteady``): the
        surface run shares the volume run's events and motion.
    tr : float
    rng : numpy.random.Generator
    scales : dict, optional
        Effect name → subject scale factor.
    constant : numpy.ndarray of bool, shape (n_locations,), optional
        Locations without signal (a medial wall): their series is 0.

    Returns
    -------
    numpy.ndarray, float32, shape (n_volumes, n_locations)
    """
    xyz = np.asarray(xyz, float)
    n_loc = len(xyz)
    weights = effect_weights_at(xyz, 0.0, effects)
    betas = beta_maps(weights, scales, effects)
    task = run["regressors"].to_numpy() @ np.stack([betas[r] for r in REGRESSORS])
    radius = np.clip(np.sqrt((xyz ** 2).sum(axis=1)) / 100.0, 0, 1)
    anatomy = {"mask": np.ones(n_loc, bool), "radius": radius}
    baseline = 9000.0 * np.exp(0.05 * rng.normal(size=n_loc))
    out = simulate_bold(baseline, anatomy, task, run["motion"], tr, rng, n_nonsteady=run["n_nonsteady"],
                        orthogonal_to=run["regressors"].to_numpy()).T
    if constant is not None:
        out[:, constant] = 0.0
    return np.ascontiguousarray(out)


def effect_labels(weights, effects=PLANTED_EFFECTS):
    """Label image of the effects' supports (0 = null).

    Parameters
    ----------
    weights : dict
        From :func:`effect_weights`.

    Returns
    -------
    numpy.ndarray, uint8, shape of the grid
        At each voxel the ``label`` of the effect with the largest weight there, 0 where all
        weights are 0.
    """
    names = [e["name"] for e in effects]
    stack = np.stack([weights[n] for n in names])
    labels = np.array([e["label"] for e in effects], dtype=np.uint8)[np.argmax(stack, axis=0)]
    return np.where(stack.max(axis=0) > 0, labels, 0).astype(np.uint8)


def beta_maps(weights, scales=None, effects=PLANTED_EFFECTS):
    """Beta maps of the true regressors, in percent signal change.

    Parameters
    ----------
    weights : dict
        name → spatial profile, from :func:`effect_weights`.
    scales : dict, optional
        name → subject scale factor (default 1).

    Returns
    -------
    dict
        regressor name (all of :data:`REGRESSORS`) → float array of the grid shape.
    """
    scales = scales or {}
    shape = next(iter(weights.values())).shape
    out = {r: np.zeros(shape) for r in REGRESSORS}
    for eff in effects:
        for reg, beta in eff["betas_percent"].items():
            out[reg] += beta * scales.get(eff["name"], 1.0) * weights[eff["name"]]
    return out


# ----------------------------------------------------------------------------------------------
# participants, events, regressors
# ----------------------------------------------------------------------------------------------

def simulate_participants(n_subjects, rng):
    """participants.tsv content.

    Parameters
    ----------
    n_subjects : int
        Number of rows.
    rng : numpy.random.Generator
        Source of the ages.

    Returns
    -------
    pandas.DataFrame, n_subjects rows
        ``participant_id`` (``sub-01``…), ``age`` (int years, 19-45), ``group``
        (``control``/``patient`` alternating).
    """
    return pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(n_subjects)],
        "age": rng.integers(19, 46, size=n_subjects).astype(int),
        "group": ["control" if i % 2 == 0 else "patient" for i in range(n_subjects)],
    })


def simulate_events(n_volumes, tr, rng, lead_in=8.0, tail=14.0, miniblock=5):
    """A randomised, jittered event-related flanker run.

    Parameters
    ----------
    n_volumes : int
    tr : float
        Seconds.
    rng : numpy.random.Generator
    lead_in, tail : float
        Seconds without events at the start and end of the run.
    miniblock : int
        Trials per mini-block; mini-blocks alternate ``A``, ``B``.

    Returns
    -------
    pandas.DataFrame, one row per trial, sorted by onset
        ``onset`` (s, 3 decimals), ``duration`` (1.5-2.5 s), ``trial_type`` (``congruent`` or
        ``incongruent``, balanced, random order), ``response_time`` (s; gamma-distributed,
        about 0.44 s congruent and 0.51 s incongruent on average), ``block`` (``A``/``B``).
        Inter-trial intervals are 2 s plus an exponential of mean 2.5 s (truncated at 6 s).
    """
    length = n_volumes * tr
    onsets, durations = [], []
    t = lead_in + rng.uniform(0, tr)
    while True:
        dur = rng.uniform(1.5, 2.5)
        if t + dur > length - tail:
            break
        onsets.append(t)
        durations.append(dur)
        t += dur + 2.0 + min(rng.exponential(2.5), 6.0)
    n = len(onsets)
    if n < 4:
        raise ValueError(f"run too short for a design: {n_volumes} volumes of {tr} s")
    types = np.array([CONDITIONS[0]] * (n // 2) + [CONDITIONS[1]] * (n - n // 2))
    types = types[rng.permutation(n)]
    rt = 0.2 + rng.gamma(4.0, 0.06, size=n) + np.where(types == "incongruent", 0.07, 0.0)
    return pd.DataFrame({
        "onset": np.round(onsets, 3),
        "duration": np.round(durations, 3),
        "trial_type": types,
        "response_time": np.round(rt, 3),
        "block": np.where((np.arange(n) // miniblock) % 2 == 0, "A", "B"),
    })


def true_regressors(events_runs, n_volumes, tr):
    """The regressors the signal is built from, for all runs of a subject.

    Parameters
    ----------
    events_runs : list of pandas.DataFrame
        Events tables from :func:`simulate_events`, one per run.
    n_volumes : int
    tr : float
        The true repetition time (s).

    Returns
    -------
    list of pandas.DataFrame, each shape (n_volumes, 4)
        Columns :data:`REGRESSORS`: Glover-HRF convolutions (nilearn ``compute_regressor``,
        oversampling 50, frame times ``arange(n_volumes) * tr``) of the conditions at unit
        amplitude and of the response time centred within condition across all runs.
    """
    frame_times = np.arange(n_volumes) * tr
    allev = pd.concat(events_runs, ignore_index=True)
    rt_mean = allev.groupby("trial_type")["response_time"].mean()
    out = []
    for ev in events_runs:
        cols = {}
        for cond in CONDITIONS:
            sub = ev[ev["trial_type"] == cond]
            amp_sets = {cond: np.ones(len(sub)),
                        f"{cond}_x_{MODULATOR}": sub[MODULATOR].to_numpy(float) - rt_mean.get(cond, 0.0)}
            for name, amp in amp_sets.items():
                if len(sub) == 0:
                    cols[name] = np.zeros(n_volumes)
                    continue
                cond_arr = np.vstack([sub["onset"].to_numpy(float), sub["duration"].to_numpy(float), amp])
                reg, _ = compute_regressor(cond_arr, "glover", frame_times, oversampling=50)
                cols[name] = reg[:, 0]
        out.append(pd.DataFrame({r: cols[r] for r in REGRESSORS}))
    return out


# ----------------------------------------------------------------------------------------------
# motion and confounds
# ----------------------------------------------------------------------------------------------

def simulate_motion(n_volumes, rng, n_spikes=0):
    """Head-motion parameters as fmriprep reports them.

    Parameters
    ----------
    n_volumes : int
    rng : numpy.random.Generator
    n_spikes : int
        Number of single-volume jerks (0.6-1.0 mm of framewise displacement each, away and back,
        so both that volume and the next have FD > 0.5 mm). They are placed after the first 5 and
        before the last 3 volumes, at least 5 volumes apart.

    Returns
    -------
    pandas.DataFrame, shape (n_volumes, 6)
        :data:`MOTION_COLUMNS`; translations in mm, rotations in radians; slow random-walk
        drift (framewise displacement ~0.05-0.15 mm) plus the spikes. Volume 0 is the reference
        (all zeros).
    """
    steps = np.concatenate([rng.normal(0, 0.015, (n_volumes, 3)), rng.normal(0, 0.00025, (n_volumes, 3))],
                           axis=1)
    steps[0] = 0
    walk = np.cumsum(steps, axis=0)
    # a slow sway (e.g. sinking into the cushion)
    t = np.linspace(0, 1, n_volumes)[:, None]
    walk += t * np.concatenate([rng.normal(0, 0.15, 3), rng.normal(0, 0.002, 3)])[None, :]
    walk -= walk[0]
    spikes = []
    candidates = np.arange(5, n_volumes - 3)
    while len(spikes) < n_spikes and len(candidates):
        s = int(rng.choice(candidates))
        spikes.append(s)
        candidates = candidates[np.abs(candidates - s) >= 5]
    for s in sorted(spikes):
        direction = rng.normal(size=6)
        direction[3:] /= 50.0  # rotations in radians of arc at 50 mm
        fd = np.abs(direction[:3]).sum() + 50 * np.abs(direction[3:]).sum()
        walk[s] += direction * rng.uniform(0.6, 1.0) / fd
    return pd.DataFrame(walk, columns=MOTION_COLUMNS)


def framewise_displacement(motion, radius=50.0):
    """Power et al. (2012) framewise displacement.

    Parameters
    ----------
    motion : pandas.DataFrame or numpy.ndarray, shape (n_volumes, 6)
        ``trans_x, trans_y, trans_z`` (mm) and ``rot_x, rot_y, rot_z`` (radians), in that order.
    radius : float
        Head radius (mm) turning rotations into arc length.

    Returns
    -------
    numpy.ndarray, shape (n_volumes,)
        ``sum |Δtrans| + radius * sum |Δrot|``; NaN at volume 0.
    """
    m = np.asarray(motion, dtype=float)
    d = np.abs(np.diff(m, axis=0))
    fd = d[:, :3].sum(axis=1) + radius * d[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def cosine_basis(n_volumes, tr, period_cut=128.0):
    """fmriprep's (nipype's) discrete cosine high-pass basis, without the constant.

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s).
    period_cut : float
        Cut-off period (s) of the high-pass filter.

    Returns
    -------
    numpy.ndarray, shape (n_volumes, k)
        ``k = floor(2 * n_volumes * tr / period_cut) - 1`` (at least 0) columns
        ``sqrt(2/n) * cos(pi * (t + 0.5) * j / n)``, ``j = 1..k``.
    """
    order = int(np.floor(2 * n_volumes * tr / period_cut))
    t = np.arange(n_volumes)
    cols = [np.sqrt(2.0 / n_volumes) * np.cos(np.pi / n_volumes * (t + 0.5) * j) for j in range(1, order)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_volumes, 0))


def dvars(series, intensity_normalization=1000.0):
    """DVARS as nipype's ``ComputeDVARS`` reports it to fmriprep.

    Parameters
    ----------
    series : numpy.ndarray, shape (n_volumes, n_voxels)
        In-mask time series.

    Returns
    -------
    dvars : numpy.ndarray, shape (n_volumes,)
        RMS over voxels of the volume-to-volume difference, after scaling the data so that the
        median voxel mean is ``intensity_normalization``; NaN at volume 0.
    std_dvars : numpy.ndarray, shape (n_volumes,)
        ``dvars`` divided by its expectation under a per-voxel AR(1) model (robust sd from the
        IQR); NaN at volume 0.
    """
    y = np.asarray(series, dtype=float)
    y = y * (intensity_normalization / np.median(y.mean(axis=0)))
    diff = np.diff(y, axis=0)
    dv = np.sqrt((diff ** 2).mean(axis=1))
    q75, q25 = np.percentile(y, [75, 25], axis=0)
    sd = (q75 - q25) / 1.349
    yc = y - y.mean(axis=0)
    denom = (yc[:-1] ** 2).sum(axis=0)
    ar1 = np.divide((yc[1:] * yc[:-1]).sum(axis=0), denom, out=np.zeros_like(denom), where=denom > 0)
    sd_diff = np.sqrt(np.clip(2 * (1 - ar1), 0, None)) * sd
    expected = sd_diff[sd_diff > 0].mean() if (sd_diff > 0).any() else 1.0
    return np.concatenate([[np.nan], dv]), np.concatenate([[np.nan], dv / expected])


def acompcor(series, tr, n_nonsteady=0, n_components=10, period_cut=128.0):
    """Anatomical CompCor as fmriprep computes it (cosine high-pass, then SVD).

    Parameters
    ----------
    series : numpy.ndarray, shape (n_volumes, n_voxels)
        Time series of the combined CSF + white-matter mask.
    tr : float
    n_nonsteady : int
        Leading volumes left out of the decomposition; their rows are 0.
    n_components : int
        Components returned (fewer if there are not enough volumes or voxels).

    Returns
    -------
    components : numpy.ndarray, shape (n_volumes, k)
        Left singular vectors (unit norm over the steady-state volumes, zero mean).
    singular_values : numpy.ndarray, shape (k,)
    variance_explained : numpy.ndarray, shape (k,)
        Fraction of the high-passed variance each component explains.
    """
    y = np.asarray(series, dtype=float)[n_nonsteady:]
    n = y.shape[0]
    basis = np.column_stack([np.ones(n), cosine_basis(n, tr, period_cut)])
    y = y - basis @ np.linalg.lstsq(basis, y, rcond=None)[0]
    sd = y.std(axis=0)
    y = y / np.where(sd > 0, sd, 1.0)
    try:
        u, s, _ = np.linalg.svd(y, full_matrices=False)
    except np.linalg.LinAlgError:
        # LAPACK's divide-and-conquer driver fails to converge on some finite inputs; QR-based gesvd does not
        import scipy.linalg

        u, s, _ = scipy.linalg.svd(y, full_matrices=False, lapack_driver="gesvd")
    k = min(n_components, len(s))
    comps = np.zeros((series.shape[0], k))
    comps[n_nonsteady:] = u[:, :k]
    total = (s ** 2).sum()
    return comps, s[:k], (s[:k] ** 2) / (total if total > 0 else 1.0)


def _with_expansions(name, values):
    """fmriprep's 24-parameter expansion of one column: base, derivative1, power2, derivative1_power2."""
    values = np.asarray(values, dtype=float)
    deriv = np.concatenate([[np.nan], np.diff(values)])
    return {name: values, f"{name}_derivative1": deriv, f"{name}_power2": values ** 2,
            f"{name}_derivative1_power2": deriv ** 2}


def fmriprep_confounds(bold, anatomy, motion, tr, n_nonsteady=1, fd_threshold=0.5, n_acompcor=6):
    """A ``desc-confounds_timeseries`` table with fmriprep's column names and conventions.

    Parameters
    ----------
    bold : numpy.ndarray, shape (X, Y, Z, n_volumes)
        The run's BOLD data.
    anatomy : dict
        From :func:`brain_anatomy` (``mask``, ``csf``, ``wm``).
    motion : pandas.DataFrame, shape (n_volumes, 6)
        From :func:`simulate_motion`.
    tr : float
    n_nonsteady : int
        Leading non-steady-state volumes (one-hot ``non_steady_state_outlierXX`` columns).
    fd_threshold : float
        Volumes with framewise displacement above it get a one-hot ``motion_outlierXX`` column.
    n_acompcor : int
        ``a_comp_cor_XX`` columns in the table.

    Returns
    -------
    confounds : pandas.DataFrame, n_volumes rows
        ``global_signal``, ``csf``, ``white_matter`` (means over the brain, CSF and WM masks) and
        the six motion parameters, each with ``_derivative1``, ``_power2`` and
        ``_derivative1_power2``; ``std_dvars``, ``dvars``, ``framewise_displacement`` (Power, 50 mm);
        ``a_comp_cor_00``…; ``cosine00``…; ``non_steady_state_outlier00``…;
        ``motion_outlier00``… (only when some FD exceeds the threshold). Row 0 is NaN in every
        ``*_derivative1*`` column and in ``framewise_displacement``, ``dvars``, ``std_dvars``, and
        nowhere else.
    metadata : dict
        The sidecar: for every computed aCompCor component (retained or not) ``Method``,
        ``Mask``, ``SingularValue``, ``VarianceExplained``, ``CumulativeVarianceExplained``,
        ``Retained``.
    """
    n = bold.shape[-1]
    brain = bold[anatomy["mask"]].T.astype(float)
    csf = bold[anatomy["csf"]].T.astype(float)
    wm = bold[anatomy["wm"]].T.astype(float)
    cols = {}
    cols.update(_with_expansions("global_signal", brain.mean(axis=1)))
    cols.update(_with_expansions("csf", csf.mean(axis=1)))
    cols.update(_with_expansions("white_matter", wm.mean(axis=1)))
    dv, std_dv = dvars(brain)
    fd = framewise_displacement(motion)
    cols["std_dvars"] = std_dv
    cols["dvars"] = dv
    cols["framewise_displacement"] = fd
    comps, sv, ve = acompcor(np.concatenate([csf, wm], axis=1), tr, n_nonsteady=n_nonsteady,
                             n_components=n_acompcor + 4)
    metadata = {}
    cumulative = np.cumsum(ve)
    for i in range(comps.shape[1]):
        name = f"a_comp_cor_{i:02d}"
        retained = i < n_acompcor
        if retained:
            cols[name] = comps[:, i]
        metadata[name] = {"Method": "aCompCor", "Mask": "combined",
                          "SingularValue": float(sv[i]), "VarianceExplained": float(ve[i]),
                          "CumulativeVarianceExplained": float(cumulative[i]), "Retained": bool(retained)}
    cos = np.zeros((n, 0))
    if n > n_nonsteady:
        cos = np.zeros((n, cosine_basis(n - n_nonsteady, tr).shape[1]))
        cos[n_nonsteady:] = cosine_basis(n - n_nonsteady, tr)
    for j in range(cos.shape[1]):
        cols[f"cosine{j:02d}"] = cos[:, j]
    for j in range(n_nonsteady):
        cols[f"non_steady_state_outlier{j:02d}"] = (np.arange(n) == j).astype(int)
    for name in MOTION_COLUMNS:
        cols.update(_with_expansions(name, motion[name].to_numpy(float)))
    for j, vol in enumerate(np.flatnonzero(np.nan_to_num(fd) > fd_threshold)):
        cols[f"motion_outlier{j:02d}"] = (np.arange(n) == vol).astype(int)
    return pd.DataFrame(cols), metadata


# ----------------------------------------------------------------------------------------------
# BOLD
# ----------------------------------------------------------------------------------------------

def simulate_bold(baseline, anatomy, task_percent, motion, tr, rng, noise_percent=NOISE_PERCENT, ar_rho=AR_RHO,
                  n_nonsteady=1, orthogonal_to=None):
    """The 4D BOLD array of one run.

    Parameters
    ----------
    baseline : numpy.ndarray, shape (X, Y, Z)
        From :func:`baseline_map`.
    anatomy : dict
        From :func:`brain_anatomy` (``mask`` and ``radius`` are used).
    task_percent : numpy.ndarray, shape (n_volumes, n_mask_voxels)
        Task signal in percent of baseline, voxels in ``mask`` order (C order of ``mask``); e.g.
        ``regressors.to_numpy() @ betas[:, mask]``.
    motion : pandas.DataFrame, shape (n_volumes, 6)
    tr : float
        Repetition time (s), for the drift basis the global fluctuation is made orthogonal to.
    rng : numpy.random.Generator
    noise_percent : float
        Marginal sd of the AR(1) noise, percent of baseline.
    ar_rho : (float, float)
        Range of the per-voxel AR(1) coefficient.
    n_nonsteady : int
        Leading non-steady-state volumes (2 %, 0.5 %, … brighter).
    orthogonal_to : numpy.ndarray, shape (n_volumes, k), optional
        Regressors (e.g. the true task regressors) the shared global fluctuation is made
        orthogonal to, together with a constant, the motion parameters and nilearn's default
        cosine drift basis, so that it adds no chance task correlation common to all voxels.

    Returns
    -------
    numpy.ndarray, float32, shape (X, Y, Z, n_volumes)
        0 outside the mask. See the module docstring for the model.
    """
    mask = anatomy["mask"]
    n, v = task_percent.shape
    if v != int(mask.sum()):
        raise ValueError("task_percent must have one column per in-mask voxel")
    edge = anatomy["radius"][mask]
    # AR(1) noise, rho varying over voxels
    rho = rng.uniform(ar_rho[0], ar_rho[1], size=v)
    innov = rng.normal(size=(n, v)) * (noise_percent * np.sqrt(1 - rho ** 2))
    noise = np.empty((n, v))
    noise[0] = rng.normal(size=v) * noise_percent
    for t in range(1, n):
        noise[t] = rho * noise[t - 1] + innov[t]
    # slow drift: linear + half cosine
    tt = np.linspace(-1, 1, n)[:, None]
    drift = tt * rng.normal(0, 0.7, v) + np.cos(np.pi * (tt + 1) / 2) * rng.normal(0, 0.7, v)
    # motion-related signal: rotations as mm of arc, larger towards the edge
    m = motion.to_numpy(float).copy()
    m[:, 3:] *= 50.0
    m -= m.mean(axis=0)
    motion_sig = m @ (rng.normal(0, 0.6, (6, v)) * (0.3 + edge ** 2))
    # shared physiological fluctuation
    g = np.empty(n)
    g[0] = rng.normal()
    for t in range(1, n):
        g[t] = 0.5 * g[t - 1] + np.sqrt(1 - 0.25) * rng.normal()
    if orthogonal_to is not None:  # keep null voxels null: no chance correlation with the design
        k = int(np.floor(2 * n * tr * 0.01))  # nilearn's default cosine drift (high_pass 0.01 Hz)
        dct = np.cos(np.pi / n * (np.arange(n)[:, None] + 0.5) * np.arange(1, k + 1)[None, :])
        design = np.column_stack([np.ones(n), dct, m, np.asarray(orthogonal_to, dtype=float)])
        g = g - design @ np.linalg.lstsq(design, g, rcond=None)[0]
        g /= g.std() if g.std() > 0 else 1.0
    global_sig = 0.2 * g[:, None] * rng.uniform(0.5, 1.5, v)
    percent = task_percent + drift + motion_sig + global_sig + noise
    series = baseline[mask] * (1 + percent / 100.0)
    nss = np.ones(n)
    k_nss = min(int(n_nonsteady), n)
    nss[:k_nss] += 0.02 * 0.25 ** np.arange(k_nss)
    series *= nss[:, None]
    out = np.zeros(mask.shape + (n,), dtype=np.float32)
    out[mask] = series.T.astype(np.float32)
    return out


def simulate_subject(subject_index, n_runs, n_volumes, tr, anatomy, baseline, weights, seed,
                     effects=PLANTED_EFFECTS):
    """Everything for one subject's runs.

    Parameters
    ----------
    subject_index : int
        0-based; with ``seed`` it fixes the subject's random stream (independent of how many
        subjects are simulated).
    n_runs, n_volumes : int
    tr : float
    anatomy : dict
        From :func:`brain_anatomy`.
    baseline : numpy.ndarray, shape (X, Y, Z)
        Group baseline map; each subject gets its own small multiplicative perturbation.
    weights : dict
        From :func:`effect_weights`.
    seed : int

    Returns
    -------
    dict
        ``scales`` (effect name → subject scale factor) and ``runs``: a list of ``n_runs`` dicts
        with ``events`` (DataFrame), ``regressors`` (DataFrame, n_volumes × 4), ``motion``
        (DataFrame, n_volumes × 6), ``bold`` (float32 array X × Y × Z × n_volumes),
        ``confounds`` (DataFrame), ``confounds_meta`` (dict), ``n_nonsteady`` (int) and
        ``n_spikes`` (int). Runs where ``subject_index + run_index`` is odd (e.g. sub-01 run-2) get
        one or two motion spikes; the others none.
    """
    rng = np.random.default_rng([seed, subject_index])
    scales = {e["name"]: float(np.clip(1 + 0.15 * rng.normal(), 0.75, 1.25)) for e in effects}
    base = baseline * (1 + 0.03 * rng.normal()) * np.exp(0.02 * rng.normal(size=baseline.shape))
    base = np.where(anatomy["mask"], base, 0.0)
    betas = beta_maps(weights, scales, effects)
    mask = anatomy["mask"]
    beta_matrix = np.stack([betas[r][mask] for r in REGRESSORS])  # (4, V)
    run_rngs = [np.random.default_rng([seed, subject_index, r + 1]) for r in range(n_runs)]
    events = [simulate_events(n_volumes, tr, rr) for rr in run_rngs]
    regs = true_regressors(events, n_volumes, tr)
    runs = []
    for r, rr in enumerate(run_rngs):
        n_spikes = int(rr.integers(1, 3)) if (subject_index + r) % 2 == 1 else 0
        n_nss = int(rr.integers(1, 3))
        motion = simulate_motion(n_volumes, rr, n_spikes=n_spikes)
        task = regs[r].to_numpy() @ beta_matrix
        bold = simulate_bold(base, anatomy, task, motion, tr, rr, n_nonsteady=n_nss,
                             orthogonal_to=regs[r].to_numpy())
        conf, meta = fmriprep_confounds(bold, anatomy, motion, tr, n_nonsteady=n_nss)
        runs.append({"events": events[r], "regressors": regs[r], "motion": motion, "bold": bold,
                     "confounds": conf, "confounds_meta": meta, "n_nonsteady": n_nss, "n_spikes": n_spikes})
    return {"scales": scales, "runs": runs}
