"""End-to-end benchmark: ``glmx BIDS OUT participant`` against a plain nilearn script, one fmriprep-sized run.

The dataset (seeded, written once and cached in --data) is the run of ``benchmarks/first_level.py``
(97x115x97 voxels, MNI 2 mm, float32 ``.nii.gz``, ~230k-voxel brain mask, 3 conditions with planted
effects, 12 confounds; 200 volumes, ``--volumes 300`` for the longer run) laid out as a BIDS dataset with
fmriprep derivatives, as ``glmx example`` lays out its own (one subject, one run, task ``faces``): raw
events and sidecars, ``derivatives/fmriprep`` with the preprocessed BOLD, brain mask and a confounds table
whose 12 columns are the ones the generator put into the data. ``task_information.json`` asks for AR(1),
the glover HRF, cosine drifts (0.01 Hz, nilearn's default), the 12 confounds and three t contrasts.

Sides, each a cold process (nothing cached but the OS page cache; empty work and output folders),
interleaved over --repeats, medians reported:

* ``glmx``    -- ``glmx BIDS OUT participant`` (Linear plugin by default, so that node runtimes add up into
  the breakdown): design, fit, maps (effect, variance, t, z, p per contrast), design figure, the subject's
  HTML report and the dataset's index. The breakdown comes from ``benchmarks/participant.py`` (imports,
  pybids index and planning timed in their own cold process; node categories from nipype's result files);
* ``nilearn`` -- a plain script: ``FirstLevelModel(noise_model="ar1")`` with the same mask, events,
  confounds and drift/HRF settings, ``fit``, ``compute_contrast(..., output_type="all")`` for the same
  contrasts and every map (effect, variance, t, z, p) written as float32 ``.nii.gz`` (the type glmx writes),
  no report.

Both are timed as whole processes (Python start and imports included). BLAS/OpenMP are pinned to
--threads (default 1) in both, as ``first_level.py`` does. At the end the z maps of the two sides are
compared (max |dz| in the mask) so that the timing compares the same analysis.

    python benchmarks/end_to_end.py [--data DIR] [--volumes 200] [--repeats 3] [--plugin Linear]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import first_level as fl  # noqa: E402  (the run's generator)
import participant as pt  # noqa: E402  (the participant run's breakdown)

TASK = "faces"
SUBJECT = "01"
# the generator's confounds, named as fmriprep names its motion parameters and their derivatives
CONFOUND_NAMES = [f"{kind}_{axis}{suffix}" for suffix in ("", "_derivative1") for kind in ("trans", "rot")
                  for axis in "xyz"]
CONTRASTS = {"faces": "faces", "facesVhouses": "faces - houses", "all": "faces + houses + scrambled"}
WEIGHTS = {"faces": {"faces": 1.0}, "facesVhouses": {"faces": 1.0, "houses": -1.0},
           "all": {"faces": 1.0, "houses": 1.0, "scrambled": 1.0}}
STATS = {"effect": "effect_size", "variance": "effect_variance", "t": "stat", "z": "z_score", "p": "p_value"}


# ----------------------------------------------------------------------------------------------- data
def _events_and_confounds(n_vol, seed=97):
    """The events and confounds ``first_level.generate`` drew (its rng replayed in the same order)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    confounds = pd.DataFrame(rng.standard_normal((n_vol, 12)).cumsum(0) * 0.05, columns=CONFOUND_NAMES)
    return fl._events(n_vol, rng), confounds


def generate(data_dir, n_vol):
    """Write the run (once) and its BIDS + fmriprep layout; return the dataset root."""
    import pandas as pd
    from nilearn.glm.first_level import make_first_level_design_matrix

    from glmx_workflows.io.example import SPACE, _write_json, _write_tsv

    data_dir = Path(data_dir)
    paths = fl.generate(data_dir / f"run{n_vol}", n_vol)
    root = data_dir / f"bids{n_vol}"
    stamp = root / "params.json"
    params = {"n_vol": n_vol, "bold": str(paths["bold"]), "size": paths["bold"].stat().st_size, "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return root
    if root.exists():
        shutil.rmtree(root)
    events, confounds = _events_and_confounds(n_vol)
    # the replay must give the generator's design exactly: otherwise the data would not carry these events
    X = make_first_level_design_matrix(np.arange(n_vol) * fl.TR, events, hrf_model="glover", drift_model="cosine",
                                       high_pass=0.01, add_regs=confounds.to_numpy(),
                                       add_reg_names=[f"conf{i:02d}" for i in range(12)])
    ref = pd.read_csv(paths["design"], sep="\t")
    if list(ref.columns) != list(X.columns) or not np.allclose(ref.to_numpy(), X.to_numpy(), atol=1e-9):
        raise RuntimeError("replayed events/confounds do not reproduce first_level.generate's design")

    stem = f"sub-{SUBJECT}_task-{TASK}_run-1"
    func, dfunc = root / f"sub-{SUBJECT}" / "func", root / "derivatives" / "fmriprep" / f"sub-{SUBJECT}" / "func"
    _write_json(root / "dataset_description.json", {"Name": "glmx end-to-end benchmark", "BIDSVersion": "1.9.0",
                                                    "DatasetType": "raw"})
    _write_json(root / f"task-{TASK}_bold.json", {"RepetitionTime": fl.TR, "TaskName": TASK})
    _write_tsv(root / "participants.tsv", pd.DataFrame({"participant_id": [f"sub-{SUBJECT}"]}))
    _write_json(root / "task_information.json", {TASK: {
        "tr": fl.TR, "condition_identifier": "trial_type", "confound_regressors": CONFOUND_NAMES,
        "design_contrasts": CONTRASTS, "condition_maps": False, "noise_model": "ar1",
        "hrf_model": "glover", "drift_model": "cosine", "high_pass": 0.01}})
    _write_text(root / ".bidsignore", "task_information.json\nparams.json\n")
    _write_tsv(func / f"{stem}_events.tsv", events)
    _write_json(root / "derivatives" / "fmriprep" / "dataset_description.json", {
        "Name": "fMRIPrep - simulated outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "simulated"}]})
    prefix = dfunc / f"{stem}_space-{SPACE}"
    dfunc.mkdir(parents=True, exist_ok=True)
    for src, dst in ((paths["bold"], f"{prefix}_desc-preproc_bold.nii.gz"),
                     (paths["mask"], f"{prefix}_desc-brain_mask.nii.gz")):
        try:
            os.link(src, dst)  # the 300-500 MB run is not copied
        except OSError:
            shutil.copyfile(src, dst)
    _write_json(f"{prefix}_desc-preproc_bold.json", {"RepetitionTime": fl.TR, "TaskName": TASK})
    _write_tsv(dfunc / f"{stem}_desc-confounds_timeseries.tsv", confounds)
    stamp.write_text(json.dumps(params))
    return root


def _write_text(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def _run_files(root):
    bold = next(root.rglob("*_desc-preproc_bold.nii.gz"))
    return {"bold": bold, "mask": next(root.rglob("*_desc-brain_mask.nii.gz")),
            "events": next(root.rglob("*_events.tsv")), "confounds": next(root.rglob("*_desc-confounds_timeseries.tsv"))}


# ---------------------------------------------------------------------------------------------- nilearn
def _nilearn_script(root, out_dir):
    """The plain nilearn analysis (what the child process runs)."""
    import nibabel as nb
    import pandas as pd
    from nilearn.glm.first_level import FirstLevelModel

    files = _run_files(Path(root))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events = pd.read_csv(files["events"], sep="\t")
    confounds = pd.read_csv(files["confounds"], sep="\t")
    flm = FirstLevelModel(t_r=fl.TR, mask_img=str(files["mask"]), noise_model="ar1", hrf_model="glover",
                          drift_model="cosine", high_pass=0.01, minimize_memory=True)
    flm.fit(str(files["bold"]), events=events, confounds=confounds)
    columns = list(flm.design_matrices_[0].columns)
    for name, weights in WEIGHTS.items():
        maps = flm.compute_contrast(np.array([weights.get(c, 0.0) for c in columns]), output_type="all")
        for stat, key in STATS.items():
            img = nb.Nifti1Image(maps[key].get_fdata(dtype=np.float32), maps[key].affine)
            img.to_filename(str(out_dir / f"sub-{SUBJECT}_task-{TASK}_contrast-{name}_stat-{stat}_statmap.nii.gz"))


def _env(threads):
    return {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}


def run_nilearn(root, out_dir, threads):
    """Wall time of the nilearn script in a fresh process."""
    t0 = time.time()
    subprocess.run([sys.executable, __file__, "--child-nilearn", str(root), "--out", str(out_dir)], check=True,
                   env=_env(threads))
    return time.time() - t0


def max_dz(glmx_out, nilearn_out, mask_path):
    """Largest |z_glmx - z_nilearn| in the mask over the contrasts."""
    import nibabel as nb

    mask = np.asarray(nb.load(str(mask_path)).dataobj) > 0
    worst = 0.0
    for name in WEIGHTS:
        ours = next(Path(glmx_out).rglob(f"*_contrast-{name}_stat-z_statmap.nii.gz"))
        ref = next(Path(nilearn_out).rglob(f"*_contrast-{name}_stat-z_statmap.nii.gz"))
        a = np.asarray(nb.load(str(ours)).dataobj, dtype=np.float64)[mask]
        b = np.asarray(nb.load(str(ref)).dataobj, dtype=np.float64)[mask]
        worst = max(worst, float(np.nanmax(np.abs(a - b))))
    return worst


# ---------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "glmx_bench_end_to_end"))
    ap.add_argument("--volumes", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plugin", default="Linear", choices=["Linear", "MultiProc"])
    ap.add_argument("--n-procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads of both sides (default 1)")
    ap.add_argument("--only", default="glmx,nilearn", help="sides to run (comma-separated)")
    ap.add_argument("--child-nilearn")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child_nilearn:
        return _nilearn_script(a.child_nilearn, a.out)

    t = time.perf_counter()
    root = generate(a.data, a.volumes)
    files = _run_files(root)
    import nibabel as nb

    n_vox = int((np.asarray(nb.load(str(files["mask"])).dataobj) > 0).sum())
    print(f"dataset ready in {time.perf_counter() - t:.1f} s: 1 subject x 1 run of {a.volumes} volumes, grid "
          f"{fl.SHAPE}, {n_vox} in-mask voxels, {files['bold'].stat().st_size / 1e6:.0f} MB; plugin {a.plugin}, "
          f"{a.threads} BLAS thread(s), cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}", flush=True)
    # the CLI child inherits the pinned BLAS threads (measure() passes os.environ on)
    os.environ.update(_env(a.threads))
    sides = a.only.split(",")
    walls, rows_all, dz = {s: [] for s in sides}, [], None
    for rep in range(a.repeats):  # interleaved: machine noise hits both sides alike
        with tempfile.TemporaryDirectory(dir=a.data) as scratch:
            scratch = Path(scratch)
            if "glmx" in sides:
                rows, wall, n_maps = pt.measure(root, TASK, a.plugin, a.n_procs, scratch)
                walls["glmx"].append(wall)
                rows_all.append(rows)
                reports = list((scratch / "out").rglob("*_report.html"))
                print(f"  rep {rep} glmx    {wall:6.2f} s, {n_maps} maps, {len(reports)} report(s)  "
                      + "  ".join(f"{k} {v:.2f}" for k, v in rows.items()), flush=True)
            if "nilearn" in sides:
                wall = run_nilearn(root, scratch / "nilearn", a.threads)
                walls["nilearn"].append(wall)
                n_maps = sum(1 for _ in (scratch / "nilearn").glob("*_statmap.nii.gz"))
                print(f"  rep {rep} nilearn {wall:6.2f} s, {n_maps} maps  (load {os.getloadavg()[0]:.1f})", flush=True)
            if rep == 0 and len(sides) == 2:
                dz = max_dz(scratch / "out", scratch / "nilearn", files["mask"])

    med = {s: statistics.median(v) for s, v in walls.items()}
    print(f"\nmedians of {a.repeats} cold, interleaved runs ({a.volumes} volumes):")
    for s in sides:
        print(f"  {s:8s} {med[s]:7.2f} s   (runs: {', '.join(f'{w:.1f}' for w in walls[s])})")
    summary = {"volumes": a.volumes, "walls": walls, "medians": med}
    if len(sides) == 2:
        ratios = [n / g for g, n in zip(walls["glmx"], walls["nilearn"])]
        summary["ratio"] = med["nilearn"] / med["glmx"]
        summary["ratio_per_repeat"] = ratios
        print(f"  nilearn / glmx = {summary['ratio']:.2f} (ratio of the medians); per repeat "
              f"{', '.join(f'{r:.2f}' for r in ratios)}, median {statistics.median(ratios):.2f}; "
              f"max |dz| in the mask {dz:.1e}")
        summary["max_abs_dz"] = dz
    if rows_all:
        print(f"\nglmx participant run, breakdown (medians; imports, index and planning timed in their own cold "
              f"process):\n{'part':17s} {'s':>7s} {'share':>6s}")
        breakdown = {}
        for row in pt.ROWS:
            vals = [r[row] for r in rows_all]
            breakdown[row] = float("nan") if any(v != v for v in vals) else statistics.median(vals)
            print(f"{row:17s} {breakdown[row]:7.2f} {breakdown[row] / med['glmx']:6.1%}")
        summary["breakdown"] = breakdown
    Path(a.data, f"summary{a.volumes}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
