"""fit_glm, compute_contrasts and fixed_effects: the model fit and its maps."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec,
                                    traits)
from threadpoolctl import threadpool_limits

from ..core.formula import contrast_matrix
from ..core.glm import (ContrastEstimate, GLMFit, combine_fixed_effects, contrast_statistics, estimate_contrast,
                        fit_glm, goodness_of_fit, subset_estimate)
from ..core.glm_reference import fit_glm_nilearn
from ..io.atomic import atomic_path, write_text
from ..io.geometry import load_geometry, read_run
from ..io.parts import FileParts, code_digest, file_digest, file_identity
from ..io.tables import read_tsv

T_STATS = ("effect", "variance", "t", "z", "p")
F_STATS = ("F", "z", "p")


class FitGLMInputSpec(BaseInterfaceInputSpec):
    """Inputs of FitGLM: one run's BOLD, mask, design, kept volumes and fit options."""

    bold_file = File(exists=True, mandatory=True, desc="preprocessed BOLD run (4D NIfTI, CIFTI dtseries, or the "
                                                        "left hemisphere's GIfTI)")
    mask_file = File(exists=True, mandatory=True, desc="the run's brain mask (NIfTI), the dtseries itself (CIFTI) or "
                                                       "the right hemisphere's GIfTI (see io.geometry)")
    design_file = File(exists=True, mandatory=True, desc="design matrix TSV (all volumes)")
    censor_file = File(exists=True, mandatory=True, desc="kept-volume TSV")
    noise_model = traits.Enum("ar1", "ols", usedefault=True, desc="temporal noise model")
    estimator = traits.Enum("glmx", "nilearn", usedefault=True, desc="glmx's fit or nilearn's FirstLevelModel")
    smoothing_fwhm = traits.Either(None, traits.Float, usedefault=True, desc="Gaussian smoothing (mm FWHM)")
    num_threads = traits.Int(1, usedefault=True, desc="BLAS/OpenMP threads; nipype sets it from the node's n_procs")


class FitGLMOutputSpec(TraitedSpec):
    """Outputs of FitGLM: the stored fit and the run's mean image."""

    fit_file = File(exists=True, desc="NPZ with the fitted model (betas, per-bin covariances, design columns)")
    mean_file = File(exists=True, desc="mean of the kept volumes in the mask (0 outside), float32 NIfTI: the "
                                       "report's underlay, so that the run is not read a second time (surfaces: "
                                       "the map in the input's form, the left hemisphere's for GIfTI)")
    mask_file = File(exists=True, desc="where the fitted locations are (io.geometry.load_geometry): the brain mask, "
                                       "the dtseries, or the kept vertices of a GIfTI pair (.npz)")


class FitGLM(SimpleInterface):
    """Read the run once, scale to percent signal change, fit OLS or AR(1); keep the run's mean image."""

    input_spec = FitGLMInputSpec
    output_spec = FitGLMOutputSpec

    def _run_interface(self, runtime):
        # BLAS would otherwise start a thread per core in every worker: the engine accounts this node
        # for n_procs cores, so it must use no more (MultiProc, SLURM and SGE requests stay true)
        with threadpool_limits(limits=max(int(self.inputs.num_threads), 1)):
            return self._fit(runtime)

    def _fit(self, runtime):
        keep = read_tsv(self.inputs.censor_file)["kept"].to_numpy(bool)
        design = read_tsv(self.inputs.design_file)
        # the run is held once (float32 scaled in place, or its stored integers): peak ~ the in-mask data + work
        Y, mean, geometry = read_run(self.inputs.bold_file, self.inputs.mask_file, keep, self.inputs.smoothing_fwhm)
        self._results["mean_file"] = geometry.write(mean, os.path.join(runtime.cwd, "mean"))[0][0]
        if geometry.form == "gifti":  # the kept vertices depend on the data: recorded beside the fit
            self._results["mask_file"] = geometry.save(os.path.join(runtime.cwd, "locations.npz"))
        else:
            self._results["mask_file"] = self.inputs.bold_file if geometry.form == "cifti" else self.inputs.mask_file
        X = design.to_numpy(float)[keep]
        engine = fit_glm if self.inputs.estimator == "glmx" else fit_glm_nilearn
        fit = engine(Y, X, noise_model=self.inputs.noise_model)
        # fitlins' per-run rSquare / logLikelihood maps, while the run is in memory (ComputeContrasts writes them)
        r_square, log_likelihood = goodness_of_fit(Y, X, fit)
        del Y
        out = os.path.join(runtime.cwd, "fit.npz")
        with atomic_path(out) as tmp:
            np.savez(tmp, columns=np.array(design.columns, dtype=str), r_square=r_square,
                     log_likelihood=log_likelihood, **fit.to_arrays())
        self._results["fit_file"] = out
        return runtime


# fitlins' names of the per-run model maps (BIDS stat entity) for the fit's goodness-of-fit arrays
FIT_MAPS = {"r_square": "rSquare", "log_likelihood": "logLikelihood"}


def _load_fit(path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    columns = [str(c) for c in arrays.pop("columns")]
    return GLMFit.from_arrays(arrays), columns


def _write_fit_maps(path, geometry, cwd):
    """The stored fit's per-run model maps (stat-rSquare, stat-logLikelihood) as manifest entries."""
    entries = []
    with np.load(path, allow_pickle=False) as data:
        for key, stat in FIT_MAPS.items():
            if key not in data.files:  # a fit stored before these maps existed
                continue
            for out, extra in geometry.write(np.asarray(data[key], dtype=np.float32), os.path.join(cwd, f"stat-{stat}")):
                entries.append({"path": out, "entities": {"stat": stat, **extra}, "suffix": "statmap"})
    return entries


# What computes and writes a contrast's maps: part of the key of every kept map (see io.parts).
MAP_CODE = ("core", "io", "interfaces/glm.py")


def _entries_out(entries):
    """Manifest entries with their files named relative to the node's folder (as kept in io.parts)."""
    return [{**e, "path": os.path.basename(e["path"])} for e in entries]


def _entries_in(entries, cwd):
    """Kept manifest entries with their files in ``cwd`` again (None stays None)."""
    return None if entries is None else [{**e, "path": os.path.join(cwd, e["path"])} for e in entries]


def _write_maps(est, label, geometry, cwd, prefix, mask=None):
    stats = contrast_statistics(est)
    names = T_STATS if est.stat_type == "t" else F_STATS
    entries = []
    for stat in names:
        key = "stat" if stat in ("t", "F") else stat
        for path, extra in geometry.write(np.asarray(stats[key], dtype=np.float32),
                                          os.path.join(cwd, f"{prefix}{label}_stat-{stat}"), mask=mask):
            entries.append({"path": path, "entities": {"contrast": label, "stat": stat, **extra},
                            "suffix": "statmap"})
    return entries


def _save_estimate(est, path):
    with atomic_path(path) as tmp:
        np.savez(tmp, **est.to_arrays())
    return path


class ComputeContrastsInputSpec(BaseInterfaceInputSpec):
    """Inputs of ComputeContrasts: a stored fit, its mask and the contrasts to compute."""

    fit_file = File(exists=True, mandatory=True, desc="NPZ from fit_glm")
    mask_file = File(exists=True, mandatory=True, desc="fit_glm's mask_file: where the fitted locations are")
    contrasts = traits.Dict(traits.Str, traits.Dict, mandatory=True,
                            desc="{name: {'label': BIDS label, 'rows': [{regressor: weight}], 'type': 't'|'F'}}")
    cache_dir = traits.Str("", usedefault=True, desc="folder keeping each contrast's maps under the digest of what "
                                                     "they come from (see io.parts); '' keeps none")


class ComputeContrastsOutputSpec(TraitedSpec):
    """Outputs of ComputeContrasts: the stat-map manifest and the per-contrast estimates."""

    manifest_file = File(exists=True, desc="JSON list of stat maps with their BIDS entities")
    fit_manifest_file = File(exists=True, desc="JSON list of the run's model maps only (stat-rSquare, "
                                               "stat-logLikelihood): published even when the contrast maps of a "
                                               "single run are not")
    estimates_file = File(exists=True, desc="JSON {contrast: NPZ of the estimate} for fixed effects")


class ComputeContrasts(SimpleInterface):
    """Every contrast of one run from the stored fit (no refit): effect, variance, t/F, z, p maps."""

    input_spec = ComputeContrastsInputSpec
    output_spec = ComputeContrastsOutputSpec

    def _run_interface(self, runtime):
        cwd = runtime.cwd
        # each contrast's maps are kept under the fit's bytes, the mask and the contrast's definition: a rerun
        # after a contrast-only change computes only the new or changed ones (the node's folder is emptied)
        base = [file_digest(self.inputs.fit_file), file_identity(self.inputs.mask_file)]
        parts = FileParts(self.inputs.cache_dir, "run-" + hashlib.sha1(
            str(Path(self.inputs.fit_file).resolve()).encode()).hexdigest()[:16], code_digest(MAP_CODE))
        loaded = {}

        def fit_and_geometry():
            if not loaded:
                loaded["fit"], loaded["columns"] = _load_fit(self.inputs.fit_file)
                loaded["geometry"] = load_geometry(self.inputs.mask_file)
            return loaded["fit"], loaded["columns"], loaded["geometry"]

        fit_maps = _entries_in(parts.get("model", ["model", *base], cwd), cwd)
        if fit_maps is None:
            fit_maps = _write_fit_maps(self.inputs.fit_file, fit_and_geometry()[2], cwd)
            parts.put("model", ["model", *base], cwd, [e["path"] for e in fit_maps], _entries_out(fit_maps))
        self._results["fit_manifest_file"] = str(write_text(os.path.join(cwd, "fit_manifest.json"),
                                                            json.dumps(fit_maps, indent=1)))
        manifest, estimates = list(fit_maps), {}
        for name, spec in sorted(self.inputs.contrasts.items()):
            label = spec["label"]
            material = ["contrast", name, spec, *base]
            kept = parts.get(name, material, cwd)
            if kept is None:
                fit, columns, geometry = fit_and_geometry()
                con = contrast_matrix(spec["rows"], columns)
                if con is None:  # a regressor of this contrast is absent from this run
                    parts.put(name, material, cwd, [], {"absent": True})
                    continue
                est = estimate_contrast(fit, con if spec["type"] == "F" else con[0], stat_type=spec["type"])
                entries = _write_maps(est, label, geometry, cwd, "contrast-")
                estimate = _save_estimate(est, os.path.join(cwd, f"estimate-{label}.npz"))
                parts.put(name, material, cwd, [e["path"] for e in entries] + [estimate],
                          {"entries": _entries_out(entries)})
            elif kept.get("absent"):
                continue
            else:
                entries, estimate = _entries_in(kept["entries"], cwd), os.path.join(cwd, f"estimate-{label}.npz")
            manifest += entries
            estimates[name] = {"label": label, "path": estimate, "mask": self.inputs.mask_file}
        parts.prune()
        self._results["manifest_file"] = str(write_text(os.path.join(runtime.cwd, "manifest.json"),
                                                        json.dumps(manifest, indent=1)))
        self._results["estimates_file"] = str(write_text(os.path.join(runtime.cwd, "estimates.json"),
                                                         json.dumps(estimates, indent=1)))
        return runtime


class FixedEffectsInputSpec(BaseInterfaceInputSpec):
    """Inputs of FixedEffects: the contrast estimates of every run."""

    estimates_files = InputMultiObject(File(exists=True), mandatory=True,
                                       desc="estimates.json of every run from compute_contrasts")
    cache_dir = traits.Str("", usedefault=True, desc="folder keeping each contrast's maps under the digest of what "
                                                     "they come from (see io.parts); '' keeps none")
    run_models = traits.Dict(traits.Str, traits.Dict, usedefault=True,
                             desc="a BIDS Stats Model's Subject node, {run contrast: {'type': 'meta'|'glm', 'X': rows "
                                  "(one per run, in estimates_files order), 'contrasts': [{'label', 'weights', "
                                  "'test'}]}}; when given, only these contrasts, 'glm' as an OLS over the runs' "
                                  "effects (fitlins' SecondLevelModel); empty: fixed effects of every contrast")


class FixedEffectsOutputSpec(TraitedSpec):
    """Output of FixedEffects: the subject-level stat-map manifest."""

    manifest_file = File(exists=True, desc="JSON list of subject-level stat maps with their BIDS entities")
    session_manifest_file = File(exists=True, desc="JSON list of session-level stat maps (a BIDS Stats Model's "
                                                   "Session node; empty otherwise), each with its 'ses' entity")


def _by_session(estimates, sessions, label, geometry, cwd, mask):
    """A Session node then a Subject node, both fixed effects (fitlins' meta-analyses): the runs of each
    session combined, then the sessions. Returns (session-level estimates, their manifest)."""
    combined, manifest = [], []
    for ses in dict.fromkeys(sessions):
        est = combine_fixed_effects([e for e, s in zip(estimates, sessions) if s == ses])
        items = _write_maps(est, label, geometry, cwd, f"ses-{ses}_contrast-", mask=mask)
        for item in items:
            item["entities"]["ses"] = ses
        combined.append(est)
        manifest += items
    return combined, manifest


def _run_level_glm(name, estimates, model, geometry, cwd, mask):
    """A Subject-level ``Type: glm`` node: OLS over the runs' effects of one t contrast, its contrasts' maps."""
    from ..core.errors import GlmxError

    X = np.asarray(model["X"], dtype=np.float64)
    if any(e.stat_type != "t" for e in estimates) or len(estimates) != X.shape[0]:
        raise GlmxError(f"contrast {name}: the Subject node's GLM needs one t effect per run ({X.shape[0]}), got "
                        f"{len(estimates)} {estimates[0].stat_type} estimate(s)")
    fit = fit_glm(np.vstack([e.effect for e in estimates]), X, noise_model="ols")
    out = []
    for con in model["contrasts"]:
        est = estimate_contrast(fit, np.asarray(con["weights"], dtype=np.float64), stat_type=con["test"])
        out += _write_maps(est, con["label"], geometry, cwd, "contrast-", mask=mask)
    return out


class FixedEffects(SimpleInterface):
    """Combine runs per contrast as nilearn's FirstLevelModel does, on the voxels all runs share."""

    input_spec = FixedEffectsInputSpec
    output_spec = FixedEffectsOutputSpec

    def _run_interface(self, runtime):
        cwd = runtime.cwd
        runs = [json.loads(open(f).read()) for f in self.inputs.estimates_files]
        names = sorted(set().union(*runs))
        parts = FileParts(self.inputs.cache_dir, "subject", code_digest(MAP_CODE))
        manifest, sessions = [], []
        for name in names:
            items = [r[name] for r in runs if name in r]
            model = self.inputs.run_models.get(name)
            if self.inputs.run_models and model is None:
                continue  # the model's Subject node does not take this contrast (its edge's Filter)
            # the runs' estimates by their bytes (a kept estimate linked back has the same), the masks as files;
            # a BIDS Stats Model's Subject node writes session maps too, so only plain fixed effects are kept
            material = ["fixed", name, items[0]["label"],
                        [[file_digest(it["path"]), file_identity(it["mask"])] for it in items]]
            kept = parts.get(name, material, cwd) if model is None else None
            if kept is not None:
                manifest += _entries_in(kept, cwd)
                continue
            geometries = [load_geometry(it["mask"]) for it in items]
            common = np.logical_and.reduce([g.mask for g in geometries])
            ests = []
            for it, m in zip(items, [g.mask for g in geometries]):
                with np.load(it["path"], allow_pickle=False) as data:
                    est = ContrastEstimate.from_arrays({k: data[k] for k in data.files})
                ests.append(subset_estimate(est, common[m]))
            if model is not None and model["type"] == "glm":
                manifest += _run_level_glm(name, ests, model, geometries[0], runtime.cwd, common)
                continue
            if model is not None and model.get("sessions"):
                ests, done = _by_session(ests, model["sessions"], items[0]["label"], geometries[0], runtime.cwd,
                                         common)
                sessions += done
            combined = combine_fixed_effects(ests)
            entries = _write_maps(combined, items[0]["label"], geometries[0], cwd, "contrast-", mask=common)
            if model is None:
                parts.put(name, material, cwd, [e["path"] for e in entries], _entries_out(entries))
            manifest += entries
        parts.prune()
        self._results["manifest_file"] = str(write_text(os.path.join(runtime.cwd, "manifest.json"),
                                                        json.dumps(manifest, indent=1)))
        self._results["session_manifest_file"] = str(write_text(os.path.join(runtime.cwd, "session_manifest.json"),
                                                                json.dumps(sessions, indent=1)))
        return runtime
