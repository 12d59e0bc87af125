"""Simulated resting-state runs (task ``rest``) added to an example dataset made by
:func:`glmx_workflows.io.example.make_example_dataset`.

Each subject gets ``n_runs`` runs with fmriprep-style derivatives (preprocessed BOLD, brain mask,
confounds with fmriprep's columns). The BOLD follows :func:`glmx_workflows.core.simulate.simulate_bold`
(drift, motion-related signal, a global fluctuation, AR(1) noise, one non-steady-state volume) with,
instead of task signal, two planted networks: every voxel within 10 mm of the Dosenbach 2010 regions of
:data:`NETWORKS` carries its network's band-limited (0.01-0.08 Hz) signal of sd
:data:`NETWORK_PERCENT` % of baseline, independent between networks. Motion spikes (FD > 0.5 mm) come
with an extra artefact shared by both networks (:data:`SPIKE_PERCENT` %), so scrubbing them lowers the
between-network correlation. ``code/planted_rest.json`` records the networks and the spike volumes, and
a ``rest`` entry is added to ``task_information.json``.
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ..core import simulate as sim
from ..core.errors import GlmxError
from .atlases import packaged_coordinates_file, read_coordinates
from .example import SPACE, _image, _round, _write_json, _write_nifti, _write_tsv

TASK = "rest"
#: Dosenbach 2010 region numbers (1-based rows of nilearn's dosenbach_2010.csv) of the planted networks.
NETWORKS = {"default": [4, 105, 117, 124], "sensorimotor": [43, 49, 53, 70]}
NETWORK_PERCENT = 1.0
SPIKE_PERCENT = 4.0
PLANT_RADIUS_MM = 10.0


def rest_spec_entry(tr=2.0):
    """The ``rest`` entry written to the example's task_information.json.

    Parameters
    ----------
    tr : float, optional
        Repetition time of the simulated rest runs, in seconds.

    Returns
    -------
    dict
        The spec entry: Dosenbach 2010 spheres, 24P denoising, FD scrubbing at 0.5 mm, Pearson and
        covariance matrices averaged over runs, a PCC seed and the ``group`` column for the group step.
    """
    return {
        "description": "Resting-state connectivity of the simulated rest runs: Dosenbach 2010 spheres (packaged "
                       "with nilearn), 24P denoising (36P leaves too few degrees of freedom in 120 band-passed "
                       "volumes), band-pass 0.01-0.08 Hz, FD scrubbing at 0.5 mm, Pearson "
                       "correlation (averaged over runs in Fisher z) and covariance, a PCC seed map.",
        "analysis": "connectivity",
        "tr": float(tr),
        "atlas": "dosenbach_2010",
        "confound_preset": "24P",
        "dummy_scans": 1,
        "fd_threshold": 0.5,
        "min_volumes": 40,
        "connectivity_kinds": ["pearsoncorrelation", "covariance"],
        "run_combination": "average",
        "seeds": {"PCC": [5.0, -50.0, 33.0]},
        "connectivity_group_column": "group",
    }


def _band_limited(n, tr, rng, low=0.01, high=0.08):
    freqs = np.fft.rfftfreq(n, tr)
    spectrum = rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))
    spectrum[(freqs < low) | (freqs > high)] = 0
    sig = np.fft.irfft(spectrum, n)
    return (sig - sig.mean()) / (sig.std() or 1.0)


def add_rest_runs(root, n_volumes=120, n_runs=2, seed=0, tr=2.0, sessions=None):
    """Write simulated resting-state runs for every subject of an example dataset.

    Parameters
    ----------
    root : str or path-like
        A dataset written by ``make_example_dataset`` (its brain masks give the grid).
    n_volumes : int
        Volumes per run (at least 40).
    n_runs : int
        Runs per subject.
    seed : int
        Seed of every random draw.
    tr : float
        Repetition time (s).
    sessions : list of str, optional
        Session labels: each subject gets ``n_runs`` runs in every session, under ``sub-<s>/ses-<x>/func``
        (default: no session entity).

    Returns
    -------
    dict
        The planted record (also written to ``code/planted_rest.json``).
    """
    root = Path(root)
    if int(n_volumes) < 40:
        raise GlmxError(f"n_volumes must be >= 40 for a band-passed rest run, got {n_volumes}")
    deriv = root / "derivatives" / "fmriprep"
    subjects = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    masks = sorted(deriv.glob("sub-*/func/*_desc-brain_mask.nii.gz"))
    if not subjects or not masks:
        raise GlmxError("not an example dataset (no subjects or no fmriprep brain masks)", file=root)
    ref = nib.load(masks[0])
    affine = ref.affine
    shape = ref.shape[:3]
    anatomy = sim.brain_anatomy(shape, affine)
    rng = np.random.default_rng([seed, 20_000])
    baseline = sim.baseline_map(anatomy, affine, rng)
    mask = anatomy["mask"]
    coords, names, networks = read_coordinates(packaged_coordinates_file("dosenbach_2010"))
    xyz = sim.voxel_coordinates(shape, affine)[mask]
    planted = {}
    for net, rois in NETWORKS.items():
        near = np.zeros(len(xyz), bool)
        for roi in rois:
            near |= ((xyz - coords[roi - 1]) ** 2).sum(axis=1) <= PLANT_RADIUS_MM ** 2
        planted[net] = near
    any_net = planted["default"] | planted["sensorimotor"]

    _write_json(root / f"task-{TASK}_bold.json", {"RepetitionTime": float(tr), "TaskName": TASK})
    spec_path = root / "task_information.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    spec[TASK] = rest_spec_entry(tr)
    _write_json(spec_path, spec)
    mask_img = _image(mask.astype(np.uint8), affine)
    voxel = float(affine[0, 0])
    record = {"subjects": {}}
    for s, sub in enumerate(subjects):
        record["subjects"][sub] = {}
        for ses_i, ses, r in [(i, ses, r) for i, ses in enumerate(sessions or [None]) for r in range(int(n_runs))]:
            run_rng = np.random.default_rng([seed, 20_001, s, r] + ([ses_i] if ses else []))
            motion = sim.simulate_motion(int(n_volumes), run_rng, n_spikes=3)
            fd = sim.framewise_displacement(motion)
            spikes = np.flatnonzero(np.nan_to_num(fd) > 0.5)
            percent = np.zeros((int(n_volumes), int(mask.sum())))
            for net in NETWORKS:
                percent[:, planted[net]] += NETWORK_PERCENT * _band_limited(int(n_volumes), tr, run_rng)[:, None]
            percent[np.ix_(spikes, np.flatnonzero(any_net))] += SPIKE_PERCENT
            bold = sim.simulate_bold(baseline, anatomy, percent, motion, tr, run_rng)
            confounds, meta = sim.fmriprep_confounds(bold, anatomy, motion, tr)
            stem = f"{sub}{f'_ses-{ses}' if ses else ''}_task-{TASK}_run-{r + 1}"
            func_dir = Path(sub, f"ses-{ses}", "func") if ses else Path(sub, "func")
            zooms = (voxel, voxel, voxel, float(tr))
            raw = np.clip(np.rint(bold), -32768, 32767).astype(np.int16)
            _write_nifti(root / func_dir / f"{stem}_bold.nii.gz", _image(raw, affine, zooms, code=1))
            _write_json(root / func_dir / f"{stem}_bold.json", {"RepetitionTime": float(tr), "TaskName": TASK})
            dfunc = deriv / func_dir
            prefix = f"{stem}_space-{SPACE}"
            _write_nifti(dfunc / f"{prefix}_desc-preproc_bold.nii.gz", _image(bold, affine, zooms))
            _write_json(dfunc / f"{prefix}_desc-preproc_bold.json", {"RepetitionTime": float(tr), "TaskName": TASK})
            _write_nifti(dfunc / f"{prefix}_desc-brain_mask.nii.gz", mask_img)
            _write_tsv(dfunc / f"{stem}_desc-confounds_timeseries.tsv", confounds)
            _write_json(dfunc / f"{stem}_desc-confounds_timeseries.json", _round(meta))
            key = f"ses-{ses}_run-{r + 1}" if ses else f"run-{r + 1}"
            record["subjects"][sub][key] = {"spike_volumes": [int(v) for v in spikes]}
    record.update({
        "description": "Planted resting-state networks: voxels within plant_radius_mm of each listed Dosenbach "
                       "2010 region share their network's band-limited signal; spike volumes (FD > 0.5 mm) carry "
                       "an extra artefact shared by both networks.",
        "generator": "glmx_workflows.io.example_rest.add_rest_runs",
        "parameters": {"n_volumes": int(n_volumes), "n_runs": int(n_runs), "seed": int(seed), "tr": float(tr),
                       **({"sessions": list(sessions)} if sessions else {})},
        "networks": {net: {"dosenbach_numbers": rois, "names": [names[i - 1] for i in rois],
                           "n_voxels": int(planted[net].sum())} for net, rois in NETWORKS.items()},
        "network_percent": NETWORK_PERCENT, "spike_percent": SPIKE_PERCENT, "plant_radius_mm": PLANT_RADIUS_MM,
    })
    _write_json(root / "code" / "planted_rest.json", record)
    return record
