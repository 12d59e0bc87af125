"""Write a small simulated BIDS dataset with fmriprep-style derivatives (``glmx example DIR``).

The numbers come from :mod:`glmx_workflows.core.simulate` (see its docstring for the signal model
and the planted effects); this module only arranges them as files. Layout, for task ``flanker``::

    DIR/
      dataset_description.json  participants.tsv  participants.json  README  .bidsignore
      task-flanker_bold.json  task-flanker_events.json  task_information.json
      code/planted_effects.json  code/planted_effects.nii.gz
      sub-01/func/sub-01_task-flanker_run-1_{bold.nii.gz,bold.json,events.tsv}
      derivatives/fmriprep/dataset_description.json
      derivatives/fmriprep/sub-01/func/
        sub-01_task-flanker_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.{nii.gz,json}
        sub-01_task-flanker_run-1_space-MNI152NLin2009cAsym_desc-brain_mask.{nii.gz,json}
        sub-01_task-flanker_run-1_desc-confounds_timeseries.{tsv,json}

Files are byte-identical for identical arguments: gzip streams carry no name and mtime 0, JSON
keys keep their insertion order, and every random draw comes from ``numpy.random.default_rng``
seeded with ``seed`` (and the subject/run index).
"""

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..core import simulate as sim
from ..core.errors import GlmxError

TASK = "flanker"
SPACE = "MNI152NLin2009cAsym"
DEFAULT_SHAPE = (23, 27, 23)
DEFAULT_N_VOLUMES = 140

#: Which planted effects each starter contrast should find (positive z); elsewhere null.
EXPECTED_CONTRASTS = {
    "incongruentVcongruent": ["conflict"],
    "task": ["visual", "conflict"],
    "rt": ["rt"],
}


def _write_bytes(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def _write_text(path, text):
    _write_bytes(path, text.encode("utf-8"))


_NUMBER_LIST = re.compile(r"\[\s*([-+.eE\d]+(?:,\s*[-+.eE\d]+)*)\s*\]")


def _write_json(path, obj):
    text = json.dumps(obj, indent=2)
    # lists of numbers on one line (voxel indices, coordinates, affine rows)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    _write_text(path, text + "\n")


def _write_tsv(path, frame):
    _write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def _write_nifti(path, img):
    """Write ``.nii.gz`` deterministically: no file name and mtime 0 in the gzip header."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                 compresslevel=1) as gz:
        gz.write(img.to_bytes())


def _image(data, affine, zooms=None, code=4):
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    hdr.set_xyzt_units("mm", "sec")
    if zooms is not None:
        hdr.set_zooms(zooms)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    return img


def _round(x, ndigits=6):
    if isinstance(x, dict):
        return {k: _round(v, ndigits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, ndigits) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), ndigits)
    if isinstance(x, np.integer):
        return int(x)
    return x


def task_information(tr=2.0):
    """The starter ``task_information.json`` content for the example dataset.

    Parameters
    ----------
    tr : float, optional
        Repetition time (s) written as the task's ``tr``.

    Returns
    -------
    dict
        ``{'flanker': entry}`` with confounds, the ``response_time`` modulator, three contrasts and ``age``
        as group regressor.
    """
    return {TASK: {
        "tr": float(tr),
        "excludes": [],
        "condition_identifier": "trial_type",
        "confound_regressors": ["trans_?", "rot_?", "framewise_displacement"],
        "modulators": ["response_time"],
        "block_identifier": None,
        "design_contrasts": {
            "incongruentVcongruent": "incongruent - congruent",
            "task": "0.5*congruent + 0.5*incongruent",
            "rt": "incongruent_x_response_time + congruent_x_response_time",
        },
        "group_level_regressors": ["age"],
    }}


def _readme(n_subjects, n_runs, n_volumes, tr):
    return f"""Simulated flanker-task fMRI dataset (glmx example)
=================================================

This dataset is SIMULATED by glmx_workflows (`glmx example DIR`); no person was scanned.
It is meant for trying out and testing GLM pipelines.

- {n_subjects} subjects, {n_runs} runs each of task `flanker`, {n_volumes} volumes, TR = {tr} s.
- Event-related design: `congruent` and `incongruent` trials in random order with jittered
  intervals; `response_time` (s) can be used as a parametric modulator, `block` (A/B mini-blocks)
  as a block identifier.
- `derivatives/fmriprep` imitates fMRIPrep outputs (space MNI152NLin2009cAsym on a coarse grid,
  brain mask, confounds with fMRIPrep's column names). The raw `bold.nii.gz` files hold the same
  data rounded to int16.
- Planted effects (what a correct analysis should find) are described in
  `code/planted_effects.json`, with their locations in `code/planted_effects.nii.gz`
  (0 = no task signal). A starter model is in `task_information.json`.
"""


#: The simulated CIFTI's fsLR cortex: every CIFTI_STEP-th fsaverage5 vertex stands in for a vertex of the 32k mesh.
CIFTI_STEP = 8
#: Subcortical structures of the simulated CIFTI: name → (centre in MNI mm, half-width in 2 mm voxels).
CIFTI_SUBCORTEX = {"ThalamusLeft": ((-10.0, -18.0, 8.0), 2), "ThalamusRight": ((10.0, -18.0, 8.0), 2)}
_MNI2MM = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
_MNI2MM_SHAPE = (91, 109, 91)


def surface_locations():
    """Where the simulated surface data live.

    Returns
    -------
    dict
        ``fsaverage5``: ``{'L': coords (10242, 3), 'R': ..., 'medial': {'L': bool, 'R': bool}}`` (pial
        coordinates from nilearn's package data; the medial wall stand-in holds constant zeros);
        ``fsLR``: ``{'axis': nibabel BrainModelAxis (den-91k cortex meshes, a subset of their vertices, and a
        few subcortical voxels), 'xyz': coords (n_grayordinates, 3)}``.
    """
    from .geometry import FSLR_VERTICES
    from .meshes import packaged_mesh

    mesh = packaged_mesh("fsaverage5", "pial")
    fsavg = {h: mesh[h][0] for h in ("L", "R")}
    fsavg["medial"] = {h: (np.abs(c[:, 0]) < 8) & (c[:, 1] > -30) & (c[:, 1] < 10) & (c[:, 2] > -10) & (c[:, 2] < 20)
                       for h, c in fsavg.items() if h in ("L", "R")}
    ax = None
    xyz = []
    for hemi, structure in (("L", "CortexLeft"), ("R", "CortexRight")):
        vertices = np.arange(0, len(fsavg[hemi]), CIFTI_STEP)
        part = nib.cifti2.BrainModelAxis.from_surface(vertices, FSLR_VERTICES["91k"], structure)
        ax = part if ax is None else ax + part
        xyz.append(fsavg[hemi][vertices])
    inv = np.linalg.inv(_MNI2MM)
    for structure, (centre, half) in CIFTI_SUBCORTEX.items():
        ijk = np.rint(inv[:3, :3] @ np.asarray(centre) + inv[:3, 3]).astype(int)
        vol = np.zeros(_MNI2MM_SHAPE, bool)
        vol[tuple(slice(c - half, c + half + 1) for c in ijk)] = True
        part = nib.cifti2.BrainModelAxis.from_mask(vol, structure, affine=_MNI2MM)
        ax = ax + part
        xyz.append(part.voxel[part.volume_mask] @ _MNI2MM[:3, :3].T + _MNI2MM[:3, 3])
    return {"fsaverage5": fsavg, "fsLR": {"axis": ax, "xyz": np.concatenate(xyz)}}


def _write_surface_run(dfunc, stem, run, tr, rng_seed, scales, locations):
    """The run's CIFTI dtseries and fsaverage5 GIfTI pair (fMRIPrep's names and sidecars)."""
    fslr = locations["fsLR"]
    data = sim.simulate_surface_run(fslr["xyz"], run, tr, np.random.default_rng([*rng_seed, 1]), scales)
    series = nib.cifti2.SeriesAxis(start=0.0, step=tr, size=data.shape[0], unit="SECOND")
    img = nib.Cifti2Image(data, header=(series, fslr["axis"]))
    name = dfunc / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii"
    name.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(name))
    _write_json(name.with_name(name.name.replace(".dtseries.nii", ".json")),
                # as recent fMRIPrep: the older 'space': 'HCP grayordinates' key clashes with the entity in pybids
                {"RepetitionTime": tr, "TaskName": TASK, "Density": "91k grayordinates (simulated subset)",
                 "SpatialReference": {"CIFTI_STRUCTURE_CORTEX_LEFT": "fsLR 32k", "CIFTI_STRUCTURE_CORTEX_RIGHT":
                                      "fsLR 32k", "VolumeReference": "MNI152NLin6Asym 2 mm"}})
    fsavg = locations["fsaverage5"]
    for i, hemi in enumerate(("L", "R")):
        data = sim.simulate_surface_run(fsavg[hemi], run, tr, np.random.default_rng([*rng_seed, 2 + i]), scales,
                                        constant=fsavg["medial"][hemi])
        gii = nib.gifti.GiftiImage(meta=nib.gifti.GiftiMetaData(
            {"AnatomicalStructurePrimary": "CortexLeft" if hemi == "L" else "CortexRight"}))
        for row in data:
            gii.add_gifti_data_array(nib.gifti.GiftiDataArray(row, intent="NIFTI_INTENT_TIME_SERIES",
                                                              datatype="NIFTI_TYPE_FLOAT32"))
        name = dfunc / f"{stem}_hemi-{hemi}_space-fsaverage5_bold.func.gii"
        nib.save(gii, str(name))
        _write_json(name.with_name(name.name.replace(".func.gii", ".json")), {"RepetitionTime": tr, "TaskName": TASK})


def _foreign_runs(root, n_subjects, n_runs):
    """Subject folders and task runs under ``root`` (raw and fmriprep) that an example of ``n_subjects``
    subjects and ``n_runs`` runs would not write: what a rewrite would leave mixed in."""
    subjects = {f"sub-{i + 1:02d}" for i in range(n_subjects)}
    runs = {f"run-{r + 1}" for r in range(n_runs)}
    out = []
    for top in (root, root / "derivatives" / "fmriprep"):
        for sub in sorted(top.glob("sub-*")) if top.is_dir() else []:
            if sub.name not in subjects:
                out.append(str(sub))
                continue
            for f in sorted(sub.glob("func/*_task-flanker_*")):
                run = next((e for e in f.name.split("_") if e.startswith("run-")), None)
                if run is not None and run not in runs:
                    out.append(str(f))
    return out


def make_example_dataset(out_dir, n_subjects=4, n_runs=2, shape=DEFAULT_SHAPE, n_volumes=DEFAULT_N_VOLUMES,
                         tr=2.0, seed=0, surfaces=False):
    """Write the simulated flanker dataset (raw BIDS + fmriprep-style derivatives) to ``out_dir``.

    Parameters
    ----------
    out_dir : str or path-like
        Dataset root; created if needed. Files of the same names are replaced, others are left
        alone; a folder holding subjects or runs this call would not write is refused.
    n_subjects : int
        Subjects ``sub-01``… (1-99).
    n_runs : int
        Runs ``run-1``… per subject (>= 1).
    shape : tuple of 3 int
        Image grid; it always covers the MNI brain, so the voxel size follows from it. The default
        ``(23, 27, 23)`` gives 8 mm voxels and about 3000 in-mask voxels.
    n_volumes : int
        Volumes per run (default 140; at least 20).
    tr : float
        Repetition time in seconds; the planted signal is built at this TR.
    seed : int
        Seed of every random draw; the same arguments give byte-identical files.
    surfaces : bool
        Also write each run on surfaces, as fMRIPrep's ``--cifti-output`` and ``fsaverage5`` outputs do:
        ``..._space-fsLR_den-91k_bold.dtseries.nii`` (a small valid CIFTI-2: a subset of the 32k cortex
        vertices and two subcortical structures, see :func:`surface_locations`) and
        ``..._hemi-<L|R>_space-fsaverage5_bold.func.gii`` (all 10242 vertices, a medial wall of zeros), with
        the same events, motion and planted effects (Gaussians around the same centres, in mm). The volume
        files are the same as without surfaces.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    GlmxError
        When an argument is out of range, or ``out_dir`` holds subjects or runs it would not write.
    """
    if not 1 <= int(n_subjects) <= 99:
        raise GlmxError(f"n_subjects must be 1-99, got {n_subjects}")
    if int(n_runs) < 1:
        raise GlmxError(f"n_runs must be >= 1, got {n_runs}")
    if int(n_volumes) < 20:
        raise GlmxError(f"n_volumes must be >= 20, got {n_volumes}")
    if not float(tr) > 0:
        raise GlmxError(f"tr must be > 0 seconds, got {tr}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise GlmxError(f"shape must be 3 integers >= 4, got {shape}")
    n_subjects, n_runs, n_volumes, tr, seed = int(n_subjects), int(n_runs), int(n_volumes), float(tr), int(seed)

    root = Path(out_dir)
    stray = _foreign_runs(root, n_subjects, n_runs)
    if stray:
        raise GlmxError(f"this folder already holds an example dataset with other subjects or runs ({stray[0]}, "
                        f"{len(stray)} file(s) or folder(s)); rewriting it would mix the two: write the example to a "
                        "new folder or delete this one", file=root,
                        field="n_runs" if all("_run-" in Path(f).name for f in stray) else "--subjects")
    root.mkdir(parents=True, exist_ok=True)
    deriv = root / "derivatives" / "fmriprep"

    affine = sim.mni_grid(shape)
    voxel = float(affine[0, 0])
    anatomy = sim.brain_anatomy(shape, affine)
    mask = anatomy["mask"]
    rng = np.random.default_rng([seed, 10_000])
    baseline = sim.baseline_map(anatomy, affine, rng)
    participants = sim.simulate_participants(n_subjects, rng)
    weights = sim.effect_weights(shape, affine, mask)
    labels = sim.effect_labels(weights)

    # ---- top-level raw files
    _write_json(root / "dataset_description.json", {
        "Name": "glmx simulated flanker dataset",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["glmx_workflows (simulated data)"],
        "GeneratedBy": [{"Name": "glmx_workflows", "Description": "simulated with make_example_dataset"}],
    })
    _write_text(root / "README", _readme(n_subjects, n_runs, n_volumes, tr))
    _write_text(root / ".bidsignore", "task_information.json\n")
    _write_tsv(root / "participants.tsv", participants)
    _write_json(root / "participants.json", {
        "age": {"Description": "age of the participant", "Units": "year"},
        "group": {"Description": "participant group (simulated; no planted group difference)",
                  "Levels": {"control": "control participant", "patient": "patient"}},
    })
    _write_json(root / f"task-{TASK}_bold.json", {"RepetitionTime": tr, "TaskName": TASK})
    _write_json(root / f"task-{TASK}_events.json", {
        "trial_type": {"Description": "flanker trial type",
                       "Levels": {"congruent": "flankers point the same way as the target",
                                  "incongruent": "flankers point the other way"}},
        "response_time": {"Description": "time from stimulus onset to button press", "Units": "s"},
        "block": {"Description": "mini-block label (alternating A/B every few trials)"},
    })
    _write_json(root / "task_information.json", task_information(tr))

    # ---- derivatives description
    _write_json(deriv / "dataset_description.json", {
        "Name": "fMRIPrep - simulated outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "simulated",
                         "Description": "Not produced by fMRIPrep: simulated by glmx_workflows "
                                        "to imitate fMRIPrep's outputs"}],
        "SourceDatasets": [{"URL": "../../"}],
    })

    mask_img = _image(mask.astype(np.uint8), affine)
    locations = surface_locations() if surfaces else None
    subjects_record = {}
    for s in range(n_subjects):
        sub = f"sub-{s + 1:02d}"
        result = sim.simulate_subject(s, n_runs, n_volumes, tr, anatomy, baseline, weights, seed)
        subjects_record[sub] = {"scales": _round(result["scales"]), "runs": {}}
        func = root / sub / "func"
        dfunc = deriv / sub / "func"
        for r, run in enumerate(result["runs"]):
            stem = f"{sub}_task-{TASK}_run-{r + 1}"
            bold = run["bold"]
            zooms = (voxel, voxel, voxel, tr)
            # raw
            raw = np.clip(np.rint(bold), -32768, 32767).astype(np.int16)
            _write_nifti(func / f"{stem}_bold.nii.gz", _image(raw, affine, zooms, code=1))
            _write_json(func / f"{stem}_bold.json", {"RepetitionTime": tr, "TaskName": TASK})
            _write_tsv(func / f"{stem}_events.tsv", run["events"])
            # derivatives
            prefix = f"{stem}_space-{SPACE}"
            _write_nifti(dfunc / f"{prefix}_desc-preproc_bold.nii.gz", _image(bold, affine, zooms))
            _write_json(dfunc / f"{prefix}_desc-preproc_bold.json", {
                "RepetitionTime": tr, "TaskName": TASK, "SkullStripped": False,
                "Sources": [f"bids:raw:{sub}/func/{stem}_bold.nii.gz"]})
            _write_nifti(dfunc / f"{prefix}_desc-brain_mask.nii.gz", mask_img)
            _write_json(dfunc / f"{prefix}_desc-brain_mask.json", {"Type": "Brain"})
            _write_tsv(dfunc / f"{stem}_desc-confounds_timeseries.tsv", run["confounds"])
            _write_json(dfunc / f"{stem}_desc-confounds_timeseries.json", _round(run["confounds_meta"]))
            if surfaces:
                _write_surface_run(dfunc, stem, run, tr, (seed, s, r + 1, 77), result["scales"], locations)
            subjects_record[sub]["runs"][f"run-{r + 1}"] = {
                "n_trials": int(len(run["events"])),
                "n_nonsteady": run["n_nonsteady"],
                "motion_spikes": run["n_spikes"],
                "motion_outlier_volumes": [int(v) for v in np.flatnonzero(
                    np.nan_to_num(run["confounds"]["framewise_displacement"].to_numpy()) > 0.5)],
            }

    # ---- planted effects record
    _write_nifti(root / "code" / "planted_effects.nii.gz", _image(labels, affine))
    effects = []
    for eff in sim.PLANTED_EFFECTS:
        w = weights[eff["name"]]
        effects.append({
            "name": eff["name"],
            "label": eff["label"],
            "contrast": eff["contrast"],
            "description": eff["description"],
            "centers_mm": eff["centers_mm"],
            "sigma_mm": max(eff["sigma_mm"], voxel),
            "betas_percent": eff["betas_percent"],
            "n_support_voxels": int((w > 0).sum()),
            "core_voxels": [[int(i) for i in ijk] for ijk in np.argwhere(w >= 0.5)],
        })
    _write_json(root / "code" / "planted_effects.json", _round({
        "description": "Ground truth of this simulated dataset. Each effect adds "
                       "betas_percent[regressor] * subject scale * profile percent of the voxel "
                       "baseline per unit regressor, where the profile is a Gaussian of sd sigma_mm "
                       "around each centre, truncated at 2 sd (the support, labelled in "
                       "planted_effects.nii.gz); core_voxels (voxel indices i, j, k) are where the "
                       "profile is >= 0.5. In-mask voxels labelled 0 carry no task signal. Age and "
                       "group have no effect.",
        "generator": "glmx_workflows.io.example.make_example_dataset",
        "parameters": {"n_subjects": n_subjects, "n_runs": n_runs, "shape": list(shape),
                       "n_volumes": n_volumes, "tr": tr, "seed": seed},
        "space": SPACE,
        "affine": affine.tolist(),
        "voxel_size_mm": voxel,
        "n_mask_voxels": int(mask.sum()),
        "labels_image": "planted_effects.nii.gz",
        "signal_model": {
            "hrf_model": "glover",
            "convolution": "nilearn compute_regressor, oversampling 50, frame_times = arange(n_volumes) * tr "
                           "(slice_time_ref 0)",
            "regressors": list(sim.REGRESSORS),
            "modulator_centering": "response_time minus its mean within condition over all the "
                                   "subject's runs",
            "units": "percent of the voxel's baseline per unit regressor",
            "noise_percent": sim.NOISE_PERCENT,
            "ar1_rho_range": list(sim.AR_RHO),
        },
        "expected_contrasts": EXPECTED_CONTRASTS,
        "effects": effects,
        "subjects": subjects_record,
    }))
    return root


def read_planted_effects(dataset_dir):
    """Read ``code/planted_effects.json`` of an example dataset, with masks ready for tests.

    Parameters
    ----------
    dataset_dir : str or path-like
        Root of a dataset written by :func:`make_example_dataset`.

    Returns
    -------
    dict
        The JSON record, plus ``labels`` (uint8 array of the grid: 0 null, else the effect's
        ``label``) and, in each item of ``effects``, ``core_mask`` and ``support_mask`` (bool arrays
        of the grid).
    """
    root = Path(dataset_dir)
    record = json.loads((root / "code" / "planted_effects.json").read_text())
    labels = np.asarray(nib.load(root / "code" / record["labels_image"]).dataobj).astype(np.uint8)
    record["labels"] = labels
    for eff in record["effects"]:
        core = np.zeros(labels.shape, bool)
        idx = np.asarray(eff["core_voxels"], dtype=int).reshape(-1, 3)
        core[tuple(idx.T)] = True
        eff["core_mask"] = core
        eff["support_mask"] = labels == eff["label"]
    return record
