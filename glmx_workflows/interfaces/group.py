"""Group-level steps: load_maps, build_design, fit_group, compute_contrasts, threshold_maps, permute,
cluster_tables, plot_figures and group_report.

Files travel between nodes; maps are listed in JSON manifests ``[{path, entities, suffix}]`` that the
``ds_*`` sinks publish under ``OUTPUT_DIR/group`` with BIDS-Derivatives names.
"""

import json
import os

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec,
                                    traits)

from ..core import group as cg
from ..core.clusters import cluster_extent_mask, cluster_table
from ..core.errors import GlmxError
from ..core.group import PARAMETRIC_METHODS, PERMUTATION_METHODS
from ..core.mixed import MIXED_TESTS
from ..io.atomic import atomic_path, write_text
from ..core.tfce import mask_edges
from ..io.geometry import is_surface_file, read_map, right_of
from ..io.images import load_image, unmask, write_image
from ..io.tables import read_tsv, write_tsv

MAP_STATS = ("effect", "variance", "t", "z", "p")
#: Design TSV column naming each row's first-level contrast in a within-subject design (not a regressor).
WITHIN_COLUMN = "first_level_contrast"


def _write_json(cwd, name, obj):
    return str(write_text(os.path.join(cwd, name), json.dumps(obj, indent=1)))


def _read_json(path):
    with open(path) as fh:
        return json.load(fh)


def _load_data(path):
    with np.load(path, allow_pickle=False) as data:
        where = data["affine"]
        if "reference" in data.files:  # surfaces: the first subject's map tells where the group maps live
            where = read_map(str(data["reference"]))[1]
        return data["Y"], data["mask"].astype(bool), where, [str(s) for s in data["subjects"]]


def _load_variances(path):
    """The subjects' variance maps stored by load_maps (None when the model did not need them)."""
    with np.load(path, allow_pickle=False) as data:
        return data["V"] if "V" in data.files else None


def _load_present(path):
    """Per-voxel subject sets stored by load_maps (None unless group_min_subjects is set)."""
    with np.load(path, allow_pickle=False) as data:
        return data["P"].astype(bool) if "P" in data.files else None


def _sidecar(model, stat, test=None):
    """The JSON sidecar of a group map: which model was fitted (and, mixed, how its contrasts are tested) and what
    the map holds."""
    side = {"GroupModel": model, "GroupModelDescription": cg.GROUP_MODELS[model], "Statistic": stat}
    if model == "mixed" and test:
        side.update(MixedEffectsTest=test, MixedEffectsTestDescription=MIXED_TESTS[test])
    return side


def _method_desc(group_desc, method):
    """desc of a thresholded/corrected map: the method's (mean) or the group contrast's + the method's."""
    desc = cg.INFERENCE_DESC[method]
    return desc if not group_desc else group_desc + desc[0].upper() + desc[1:]


def _entities(contrast, stat, desc):
    ent = {"contrast": contrast, "stat": stat}
    if desc:
        ent["desc"] = desc
    return ent


def _write_map(values, mask, affine, cwd, name):
    if hasattr(affine, "write"):  # a surface geometry from _load_data: the map in the inputs' own form
        return affine.write(np.asarray(values, dtype=np.float32), os.path.join(cwd, name), mask=mask)[0][0]
    path = os.path.join(cwd, name + ".nii.gz")
    write_image(unmask(np.asarray(values, dtype=np.float32), mask, affine), path)
    return path


# ---------------------------------------------------------------------------------------------- load_maps


def _modelled(data, min_subjects):
    """Where each subject's map is defined (finite, non-zero), and the locations modelled: defined in every
    subject, or in at least ``min_subjects`` (group_min_subjects)."""
    defined = np.isfinite(data) & (data != 0)
    return defined, (defined.sum(axis=0) >= min_subjects if min_subjects else np.all(defined, axis=0))


def _modelled_where(min_subjects):
    """The rule of :func:`_modelled` in words, for the error when it leaves nothing."""
    return f"in at least {min_subjects} subjects' maps" if min_subjects else "in every subject's map"


class LoadGroupMapsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`LoadGroupMaps` (each trait is described by its ``desc``)."""

    effect_files = InputMultiObject(File(exists=True), mandatory=True, desc="subject-level stat-effect maps")
    variance_files = traits.List(traits.Either(None, File(exists=True)), desc="matching stat-variance maps or None")
    subjects = traits.List(traits.Str, mandatory=True, desc="subject labels, one per map")
    smoothing_fwhm = traits.Either(None, traits.Float, usedefault=True, desc="Gaussian smoothing (mm FWHM)")
    model = traits.Enum(*cg.GROUP_MODELS, usedefault=True,
                        desc="group model: 'mixed' needs every subject's variance map (stored as V)")
    min_subjects = traits.Either(None, traits.Int, usedefault=True,
                                 desc="group_min_subjects: keep voxels defined in at least this many subjects "
                                      "(per-voxel subject sets, stored as P); None: defined in every subject")


class LoadGroupMapsOutputSpec(TraitedSpec):
    """Outputs of :class:`LoadGroupMaps` (each trait is described by its ``desc``)."""

    data_file = File(exists=True, desc="NPZ: Y (n_subjects, n_voxels), mask, affine, subjects (and V for 'mixed')")
    mask_file = File(exists=True, desc="group mask NIfTI (voxels defined in every subject)")


class LoadGroupMaps(SimpleInterface):
    """Read the subject maps on one grid, keep the voxels every subject defines, smooth if asked.

    Parameters are the traits of `LoadGroupMapsInputSpec`; outputs those of
    `LoadGroupMapsOutputSpec`.

    Raises
    ------
    GlmxError
        When a map cannot be read, the maps are not all on one grid, or no voxel is defined (finite,
        non-zero, positive variance) in every subject; with the 'mixed' model, when a subject's variance
        map is missing, or not finite and positive wherever every subject's effect is defined.
    """

    input_spec = LoadGroupMapsInputSpec
    output_spec = LoadGroupMapsOutputSpec

    def _run_interface(self, runtime):
        from nilearn.image import smooth_img

        if is_surface_file(self.inputs.effect_files[0]):
            return self._surfaces(runtime)
        imgs = [load_image(f, "subject effect map") for f in self.inputs.effect_files]
        ref = imgs[0]
        for f, img in zip(self.inputs.effect_files, imgs):
            if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
                raise GlmxError(f"map grid {img.shape[:3]} differs from {self.inputs.effect_files[0]} "
                                f"{ref.shape[:3]}; every subject's map must be on the same grid", file=f)
        data = np.stack([np.asarray(img.get_fdata(), dtype=np.float64).reshape(ref.shape[:3]) for img in imgs])
        min_subjects = self.inputs.min_subjects
        defined, mask = _modelled(data, min_subjects)
        mixed = self.inputs.model == "mixed"
        variance_files = list(self.inputs.variance_files or [])
        var_imgs = []
        if mixed:
            var_imgs = self._variance_images(variance_files, defined & mask if min_subjects else mask[None], ref)
        else:
            for f in variance_files:
                if f:
                    var = np.asarray(load_image(f, "subject variance map").get_fdata()).reshape(ref.shape[:3])
                    mask &= np.isfinite(var) & (var > 0)
        if not mask.any():
            raise GlmxError(f"no voxel is defined (finite, non-zero) {_modelled_where(min_subjects)}",
                            file=os.path.dirname(self.inputs.effect_files[0]))
        if self.inputs.smoothing_fwhm:
            data = np.stack([np.asarray(smooth_img(img, self.inputs.smoothing_fwhm).get_fdata()).reshape(
                ref.shape[:3]) for img in imgs])
        extra = {}
        if min_subjects:  # absent subjects hold 0 (any value: they get no weight)
            present = defined[:, mask]
            extra["P"] = present
            data = np.where(defined, np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
        if mixed:
            # smoothed variances: the variance maps get the effects' kernel (the usual approximation; the
            # variance of a smoothed map is not the smoothed variance)
            extra["V"] = np.stack([np.asarray((smooth_img(img, self.inputs.smoothing_fwhm) if
                                               self.inputs.smoothing_fwhm else img).get_fdata()).reshape(
                ref.shape[:3])[mask] for img in var_imgs])
            if min_subjects:
                extra["V"] = np.where(extra["P"], np.nan_to_num(extra["V"], nan=1.0), 1.0)
        out = os.path.join(runtime.cwd, "data.npz")
        with atomic_path(out) as tmp:
            np.savez(tmp, Y=data[:, mask], mask=mask, affine=ref.affine,
                     subjects=np.array(self.inputs.subjects, dtype=str), **extra)
        self._results["data_file"] = out
        self._results["mask_file"] = str(write_image(unmask(np.ones(int(mask.sum()), np.uint8), mask, ref.affine,
                                                            dtype=np.uint8), os.path.join(runtime.cwd, "mask.nii.gz")))
        return runtime

    def _variance_images(self, variance_files, mask, ref):
        """Every subject's variance map, checked finite and positive where its effect is used (``mask``: one
        (x, y, z) mask for all subjects, or one per subject)."""
        def read(f):
            img = load_image(f, "subject variance map")
            if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
                raise GlmxError(f"variance map grid {img.shape[:3]} differs from the effect maps' {ref.shape[:3]}",
                                file=f)
            return img, np.asarray(img.get_fdata()).reshape(ref.shape[:3])

        return self._checked_variances(variance_files, mask, read)

    def _checked_variances(self, variance_files, mask, read, file_of=None):
        """The one rule for the mixed model's variance maps, volumes and surfaces alike: one per subject, finite
        and positive wherever the subject's effect is used (``mask``: one mask for all subjects, or one per
        subject); ``read(path)`` gives (what to keep, the values in the effects' layout); ``file_of(path,
        location)`` the file holding a location (a GIfTI pair's right hemisphere), default ``path``."""
        if len(variance_files) != len(self.inputs.effect_files):
            raise GlmxError(f"{len(variance_files)} variance map(s) for {len(self.inputs.effect_files)} effect maps; "
                            "group_model 'mixed' needs one per subject", field="group_model")
        out = []
        for effect, f in zip(self.inputs.effect_files, variance_files):
            if not f:
                raise GlmxError("no subject-level stat-variance map beside this effect map; group_model 'mixed' "
                                "needs it (rerun the participant level, or use group_model 'ols')", file=effect,
                                field="group_model")
            kept, values = read(f)
            where = mask[len(out)] if len(mask) > 1 else mask[0]
            var = values[where]
            bad = ~(np.isfinite(var) & (var > 0))
            if bad.any():
                named = file_of(f, int(np.flatnonzero(where.ravel())[np.argmax(bad)])) if file_of else f
                raise GlmxError(f"the variance map is not finite and positive in {int(bad.sum())} location(s) where "
                                "the group model uses the subject's effect; group_model 'mixed' needs a positive "
                                "first-level variance there", file=named, field="group_model")
            out.append(kept)
        return out

    def _surfaces(self, runtime):
        """CIFTI or GIfTI-pair maps: the locations the subjects define, in the first map's geometry (the volume
        rules: group_min_subjects, and for 'mixed' every subject's variance map read in the same geometry)."""
        files = self.inputs.effect_files
        if self.inputs.smoothing_fwhm:
            raise GlmxError("group smoothing_fwhm is not available on surfaces (no geodesic smoothing); set it to "
                            "null", file=files[0], field="smoothing_fwhm")
        maps, geometry = [], None

        def read(f):
            values, g = read_map(f)
            if maps and values.shape != maps[0].shape:
                raise GlmxError(f"map has {values.size} locations but {files[0]} has {maps[0].size}; every subject's "
                                "map must be in one space and density", file=f)
            return values, g

        for f in files:
            values, g = read(f)
            geometry = geometry or g
            maps.append(values)
        data = np.stack(maps)
        min_subjects = self.inputs.min_subjects
        defined, mask = _modelled(data, min_subjects)
        mixed = self.inputs.model == "mixed"
        variances = None
        if mixed:
            def file_of(f, location):  # a GIfTI pair's right hemisphere is its own file
                n_left = getattr(geometry, "n_vertices", (np.inf,))[0]
                return right_of(f) if location >= n_left else f

            variances = np.stack(self._checked_variances(list(self.inputs.variance_files or []),
                                                         defined & mask if min_subjects else mask[None],
                                                         lambda f: (read(f)[0],) * 2, file_of))
        else:
            for f in self.inputs.variance_files or []:
                if f:
                    var = read(f)[0]
                    mask &= np.isfinite(var) & (var > 0)
        if not mask.any():
            raise GlmxError(f"no location is defined (finite, non-zero) {_modelled_where(min_subjects)}",
                            file=files[0])
        extra = {}
        if min_subjects:  # absent subjects hold 0 (any value: they get no weight)
            extra["P"] = defined[:, mask]
            data = np.where(defined, np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
        if mixed:
            extra["V"] = variances[:, mask]
            if min_subjects:
                extra["V"] = np.where(extra["P"], np.nan_to_num(extra["V"], nan=1.0), 1.0)
        out = os.path.join(runtime.cwd, "data.npz")
        with atomic_path(out) as tmp:
            np.savez(tmp, Y=data[:, mask], mask=mask, affine=np.eye(4), subjects=np.array(self.inputs.subjects, str),
                     reference=np.array(str(files[0])), **extra)
        self._results["data_file"] = out
        self._results["mask_file"] = _write_map(np.ones(int(mask.sum())), mask, geometry, runtime.cwd, "mask")
        return runtime


# ---------------------------------------------------------------------------------------------- build_design


class BuildGroupDesignInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`BuildGroupDesign` (each trait is described by its ``desc``)."""

    participants_file = traits.Either(None, File(exists=True), usedefault=True, desc="participants.tsv")
    subjects = traits.List(traits.Str, mandatory=True, desc="subject labels, design rows in this order")
    regressors = traits.List(traits.Str, usedefault=True, desc="participants.tsv columns (group_level_regressors)")
    group_contrasts = traits.Dict(traits.Str, traits.Either(traits.Str, traits.List(traits.Str)), usedefault=True,
                                  desc="{name: formula (t) or list of formulas (F)} besides the mean")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label (names the outputs)")
    design_type = traits.Enum("between", *cg.WITHIN_DESIGNS, usedefault=True,
                              desc="'between' (participants.tsv design), or a within-subject 'paired'/'repeated' one")
    conditions = traits.List(traits.Str, usedefault=True,
                             desc="first-level contrast of each row (within-subject designs)")
    user_design_file = traits.Either(None, File(exists=True), usedefault=True,
                                     desc="a design given as is (participant_id, then its columns with 'intercept'): "
                                          "a BIDS Stats Model's Dataset node; replaces the participants.tsv design")


class BuildGroupDesignOutputSpec(TraitedSpec):
    """Outputs of :class:`BuildGroupDesign` (each trait is described by its ``desc``)."""

    design_file = File(exists=True, desc="design TSV: participant_id then one column per regressor")
    contrasts_file = File(exists=True, desc="JSON list of {name, desc, weights}")
    manifest_file = File(exists=True, desc="the design TSV to publish")


class BuildGroupDesign(SimpleInterface):
    """Design from participants.tsv (centred covariates, group indicators) and the group contrasts."""

    input_spec = BuildGroupDesignInputSpec
    output_spec = BuildGroupDesignOutputSpec

    def _run_interface(self, runtime):
        source = self.inputs.participants_file
        if self.inputs.user_design_file:
            design = _read_design(self.inputs.user_design_file, index=True).loc[list(self.inputs.subjects)]
            mean = {"intercept": 1.0}
        elif self.inputs.design_type == "between":
            table = read_tsv(source, "participants table") if source else None
            design, mean = cg.group_design(table, self.inputs.subjects, self.inputs.regressors, source=source)
        else:
            design, mean = cg.within_subject_design(self.inputs.subjects, self.inputs.conditions,
                                                    self.inputs.design_type)
        contrasts = cg.group_contrasts(design.columns, mean, self.inputs.group_contrasts)
        frame = design.copy()
        if self.inputs.design_type != "between":
            frame.insert(0, WITHIN_COLUMN, list(self.inputs.conditions))
        frame.insert(0, "participant_id", ["sub-" + s for s in design.index])
        path = os.path.join(runtime.cwd, "design.tsv")
        write_tsv(frame, path)
        self._results["design_file"] = path
        self._results["contrasts_file"] = _write_json(runtime.cwd, "contrasts.json", contrasts)
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", [
            {"path": path, "entities": {"contrast": self.inputs.contrast}, "suffix": "design"}])
        return runtime


def _read_design(path, index=False):
    frame = read_tsv(path, "group design")
    if index:  # rows by subject label, for picking the subjects with maps
        return frame.set_index(frame["participant_id"].astype(str).str.replace("sub-", "", regex=False)).drop(
            columns=["participant_id"])
    return _model_columns(frame)


def _model_columns(frame):
    """The design's model columns, without the row labels (participant_id, first_level_contrast)."""
    return frame.drop(columns=[c for c in ("participant_id", WITHIN_COLUMN) if c in frame.columns])


# ---------------------------------------------------------------------------------------------- fit / contrasts


class FitGroupInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`FitGroup` (each trait is described by its ``desc``)."""

    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps")
    design_file = File(exists=True, mandatory=True, desc="design TSV from build_design")
    model = traits.Enum(*cg.GROUP_MODELS, usedefault=True, desc="group model (spec key group_model)")
    mixed_test = traits.Enum(*MIXED_TESTS, usedefault=True, desc="test of mixed contrasts (spec key group_mixed_test)")


class FitGroupOutputSpec(TraitedSpec):
    """Outputs of :class:`FitGroup` (each trait is described by its ``desc``)."""

    fit_file = File(exists=True, desc="NPZ of the fit (OLS or mixed effects)")


class FitGroup(SimpleInterface):
    """The group model of the subject maps on the group design: OLS, or mixed effects with their variances."""

    input_spec = FitGroupInputSpec
    output_spec = FitGroupOutputSpec

    def _run_interface(self, runtime):
        Y, _, _, _ = _load_data(self.inputs.data_file)
        fit = cg.fit_group_model(Y, _read_design(self.inputs.design_file).to_numpy(float), model=self.inputs.model,
                                 variances=_load_variances(self.inputs.data_file),
                                 present=_load_present(self.inputs.data_file), mixed_test=self.inputs.mixed_test)
        out = os.path.join(runtime.cwd, "fit.npz")
        with atomic_path(out) as tmp:
            np.savez(tmp, **{**fit.to_arrays(), "model": np.array(self.inputs.model)})
        self._results["fit_file"] = out
        return runtime


class ComputeGroupContrastsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`ComputeGroupContrasts` (each trait is described by its ``desc``)."""

    fit_file = File(exists=True, mandatory=True, desc="NPZ from fit_group")
    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps (mask and affine)")
    contrasts_file = File(exists=True, mandatory=True, desc="JSON from build_design")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label")


class ComputeGroupContrastsOutputSpec(TraitedSpec):
    """Outputs of :class:`ComputeGroupContrasts` (each trait is described by its ``desc``)."""

    maps_file = File(exists=True, desc="JSON list of group contrasts with their map paths and dof")
    manifest_file = File(exists=True, desc="maps to publish")


class ComputeGroupContrasts(SimpleInterface):
    """Effect, variance, t, z and p maps of every group contrast."""

    input_spec = ComputeGroupContrastsInputSpec
    output_spec = ComputeGroupContrastsOutputSpec

    def _run_interface(self, runtime):
        from ..core.glm import GLMFit
        from ..core.mixed import MixedFit

        with np.load(self.inputs.fit_file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        model = str(arrays["model"]) if "model" in arrays else "ols"
        fit = MixedFit.from_arrays(arrays) if "tau2" in arrays else GLMFit.from_arrays(arrays)
        _, mask, affine, _ = _load_data(self.inputs.data_file)
        listing, manifest = [], []

        def publish(values, name, entities, stat):
            path = _write_map(values, mask, affine, runtime.cwd, name)
            side = _write_json(runtime.cwd, name + ".json", _sidecar(model, stat, getattr(fit, "test", None)))
            manifest.extend([{"path": path, "entities": entities, "suffix": "statmap"},
                             {"path": side, "entities": entities, "suffix": "statmap"}])
            return path

        if model == "mixed":
            publish(fit.tau2, "tau2", _entities(self.inputs.contrast, "tau2", None), "tau2")
        if _load_present(self.inputs.data_file) is not None:  # group_min_subjects: subjects modelled per voxel
            publish(fit.n, "n", _entities(self.inputs.contrast, "n", None), "n")
        for con in _read_json(self.inputs.contrasts_file):
            maps = cg.contrast_maps(fit, con["weights"])
            stats = MAP_STATS if con.get("stat", "t") == "t" else ("F", "z", "p")
            paths = {stat: publish(maps[stat], f"{con['name']}_{stat}",
                                   _entities(self.inputs.contrast, stat, con["desc"]), stat) for stat in stats}
            listing.append({**con, "maps": paths, "dof": maps["dof"], "model": model})
        self._results["maps_file"] = _write_json(runtime.cwd, "maps.json", listing)
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", manifest)
        return runtime


# ---------------------------------------------------------------------------------------------- inference


def _volume_values(path, mask):
    if is_surface_file(path):
        return read_map(path)[0][mask]
    return np.asarray(load_image(path).get_fdata(), dtype=np.float64)[mask]


class ThresholdGroupMapsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`ThresholdGroupMaps` (each trait is described by its ``desc``)."""

    maps_file = File(exists=True, mandatory=True, desc="JSON from compute_contrasts")
    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps (mask and affine)")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label")
    methods = traits.List(traits.Enum(*PARAMETRIC_METHODS), usedefault=True,
                          desc="parametric methods")
    alpha = traits.Float(0.05, usedefault=True, desc="corrected significance level")
    z_threshold = traits.Float(mandatory=True, desc="height in z (uncorrected, cluster)")
    cluster_extent = traits.Int(10, usedefault=True, desc="smallest cluster kept (voxels)")
    surface_meshes = traits.Dict(traits.Str, traits.Str, usedefault=True,
                                 desc="{'L': mesh, 'R': mesh} of fsLR CIFTI maps (cluster neighbours)")


def _meshes(paths):
    """The spec's surface_meshes read, or None (fsaverage5's come from nilearn)."""
    from ..io.meshes import read_mesh

    return {h: read_mesh(p) for h, p in paths.items()} if paths else None


class InferenceOutputSpec(TraitedSpec):
    """Outputs of :class:`ThresholdGroupMaps` and :class:`PermuteGroup` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="thresholded and corrected maps to publish")
    inference_file = File(exists=True, desc="JSON: per group contrast, {method: {'z': path, 'p': path, ...}}")


class ThresholdGroupMaps(SimpleInterface):
    """Parametric thresholds: uncorrected height, FDR, Bonferroni, cluster extent."""

    input_spec = ThresholdGroupMapsInputSpec
    output_spec = InferenceOutputSpec

    def _run_interface(self, runtime):
        _, mask, affine, _ = _load_data(self.inputs.data_file)
        mask3d = mask
        manifest, record = [], {}
        for con in _read_json(self.inputs.maps_file):
            z = _volume_values(con["maps"]["z"], mask)
            p = _volume_values(con["maps"]["p"], mask)
            record[con["name"]] = {}
            for method in self.inputs.methods:
                desc = _method_desc(con["desc"], method)
                corrected = None
                if method == "uncorrected":
                    keep = z > self.inputs.z_threshold
                elif method == "fdr":
                    corrected = cg.fdr_qvalues(p)
                    keep = corrected <= self.inputs.alpha
                elif method == "bonferroni":
                    corrected = cg.bonferroni(p)
                    keep = corrected <= self.inputs.alpha
                elif hasattr(affine, "edges"):  # surfaces: clusters along mesh edges (and voxel faces)
                    keep = cluster_extent_mask(z, self.inputs.z_threshold, self.inputs.cluster_extent,
                                                  connectivity=mask_edges(
                                                      affine.edges(_meshes(self.inputs.surface_meshes)), mask))
                else:
                    vol = np.zeros(mask3d.shape)
                    vol[mask3d] = z
                    keep = cluster_extent_mask(vol, self.inputs.z_threshold, self.inputs.cluster_extent)[mask3d]
                entry = {"z": _write_map(np.where(keep, z, 0.0), mask, affine, runtime.cwd, f"{con['name']}_{desc}_z")}
                manifest.append({"path": entry["z"], "entities": _entities(self.inputs.contrast, "z", desc),
                                 "suffix": "statmap"})
                if corrected is not None:
                    entry["p"] = _write_map(corrected, mask, affine, runtime.cwd, f"{con['name']}_{desc}_p")
                    manifest.append({"path": entry["p"], "entities": _entities(self.inputs.contrast, "p", desc),
                                     "suffix": "statmap"})
                entry["n_significant"] = int(keep.sum())
                record[con["name"]][method] = entry
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", manifest)
        self._results["inference_file"] = _write_json(runtime.cwd, "inference.json", record)
        return runtime


class PermuteGroupInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`PermuteGroup` (each trait is described by its ``desc``)."""

    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps")
    design_file = File(exists=True, mandatory=True, desc="design TSV")
    maps_file = File(exists=True, mandatory=True, desc="JSON from compute_contrasts")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label")
    methods = traits.List(traits.Enum(*PERMUTATION_METHODS), mandatory=True, desc="permutation methods")
    n_permutations = traits.Int(5000, usedefault=True, desc="permutations to draw")
    seed = traits.Int(0, usedefault=True, desc="seed of the permutations")
    alpha = traits.Float(0.05, usedefault=True, desc="FWE level of the thresholded maps")
    p_threshold = traits.Float(0.001, usedefault=True, desc="cluster-forming uncorrected p (cluster mass)")
    model = traits.Enum(*cg.GROUP_MODELS, usedefault=True, desc="group model whose t is permuted")
    mixed_test = traits.Enum(*MIXED_TESTS, usedefault=True, desc="test of mixed contrasts (spec key group_mixed_test)")
    surface_meshes = traits.Dict(traits.Str, traits.Str, usedefault=True,
                                 desc="{'L': mesh, 'R': mesh} of fsLR CIFTI maps (cluster neighbours)")


class PermuteGroup(SimpleInterface):
    """Permutation inference (max-t FWE, cluster mass, TFCE) for every group t contrast (F contrasts: parametric
    inference only)."""

    input_spec = PermuteGroupInputSpec
    output_spec = InferenceOutputSpec

    def _run_interface(self, runtime):
        Y, mask, affine, _ = _load_data(self.inputs.data_file)
        V = _load_variances(self.inputs.data_file) if self.inputs.model == "mixed" else None
        P = _load_present(self.inputs.data_file)
        frame = read_tsv(self.inputs.design_file, "group design")
        X = _model_columns(frame).to_numpy(float)
        # within-subject designs (paired / repeated): a subject's maps are permuted among themselves only
        blocks = frame["participant_id"].astype(str).to_numpy() if WITHIN_COLUMN in frame.columns else None
        manifest, record = [], {}
        for con in _read_json(self.inputs.maps_file):
            if not cg.permutation_applies(con):
                continue
            methods = list(self.inputs.methods)
            spatial = {"perm_cluster_mass", "tfce"} & set(methods)
            # surfaces: neighbours are mesh edges (refused with a message when no mesh is known)
            neighbours = (mask_edges(affine.edges(_meshes(self.inputs.surface_meshes)), mask)
                          if spatial and hasattr(affine, "edges") else 1)
            out = cg.permutation_inference(Y, X, con["weights"], mask=mask, n_permutations=self.inputs.n_permutations,
                                           seed=self.inputs.seed, methods=methods, variances=V, present=P,
                                           mixed_test=self.inputs.mixed_test,
                                           blocks=blocks,
                                           connectivity=neighbours,
                                           cluster_threshold=cg.z_threshold(self.inputs.p_threshold) if P is not None
                                           else cg.t_threshold(self.inputs.p_threshold, con["dof"]))
            z = _volume_values(con["maps"]["z"], mask)
            info = {"scheme": out["scheme"], "n_permutations": out["n_permutations"], "exhaustive": out["exhaustive"]}
            record[con["name"]] = {}
            for method in (m for m in PERMUTATION_METHODS if m in methods):
                key = cg.PERMUTATION_P[method]
                desc = _method_desc(con["desc"], method)
                keep = out[key] <= self.inputs.alpha
                entry = {"p": _write_map(out[key], mask, affine, runtime.cwd, f"{con['name']}_{desc}_p"),
                         "z": _write_map(np.where(keep, z, 0.0), mask, affine, runtime.cwd, f"{con['name']}_{desc}_z"),
                         "n_significant": int(keep.sum()), **info}
                manifest += [{"path": entry["p"], "entities": _entities(self.inputs.contrast, "p", desc),
                              "suffix": "statmap"},
                             {"path": entry["z"], "entities": _entities(self.inputs.contrast, "z", desc),
                              "suffix": "statmap"}]
                if method == "tfce":
                    entry["tfce"] = _write_map(out["tfce"], mask, affine, runtime.cwd, f"{con['name']}_{desc}_tfce")
                    manifest.append({"path": entry["tfce"], "entities": _entities(self.inputs.contrast, "tfce", desc),
                                     "suffix": "statmap"})
                record[con["name"]][method] = entry
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", manifest)
        self._results["inference_file"] = _write_json(runtime.cwd, "inference.json", record)
        return runtime


# ---------------------------------------------------------------------------------------------- clusters


class ClusterTablesInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`ClusterTables` (each trait is described by its ``desc``)."""

    maps_file = File(exists=True, mandatory=True, desc="JSON from compute_contrasts")
    inference_files = InputMultiObject(File(exists=True), desc="JSON from threshold_maps / permute")
    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps (mask, affine)")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label")
    z_threshold = traits.Float(mandatory=True, desc="cluster-forming height in z")
    cluster_extent = traits.Int(10, usedefault=True, desc="smallest cluster listed (voxels)")
    surface_meshes = traits.Dict(traits.Str, traits.Str, usedefault=True,
                                 desc="{'L': mesh, 'R': mesh} of fsLR CIFTI maps (cluster neighbours)")


class ClusterTablesOutputSpec(TraitedSpec):
    """Outputs of :class:`ClusterTables` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="cluster TSVs to publish")
    tables_file = File(exists=True, desc="JSON {group contrast: TSV path}")


class ClusterTables(SimpleInterface):
    """A cluster table per group contrast: peaks, sub-peaks, sizes, and each corrected p at the peaks."""

    input_spec = ClusterTablesInputSpec
    output_spec = ClusterTablesOutputSpec

    def _run_interface(self, runtime):
        _, mask, affine, _ = _load_data(self.inputs.data_file)
        inference = {}
        for f in self.inputs.inference_files or []:
            for name, methods in _read_json(f).items():
                inference.setdefault(name, {}).update(methods)

        surface = hasattr(affine, "write")

        def vol(path):  # a volume's grid, or a surface map's values at the group's locations
            if surface:
                return _volume_values(path, mask)
            return np.asarray(load_image(path).get_fdata(), dtype=np.float64)

        neighbours = None
        if surface:  # clusters along the mesh edges (and voxel faces); without a mesh, no table
            try:
                neighbours = mask_edges(affine.edges(_meshes(self.inputs.surface_meshes)), mask)
            except GlmxError:
                neighbours = None

        manifest, tables = [], {}
        for con in _read_json(self.inputs.maps_file) if not surface or neighbours is not None else []:
            values = {"p_uncorrected": vol(con["maps"]["p"])}
            for method, entry in sorted(inference.get(con["name"], {}).items()):
                if "p" in entry:
                    values[f"p_{cg.INFERENCE_DESC[method]}"] = vol(entry["p"])
            if surface:
                table = cluster_table(vol(con["maps"]["z"]), None, self.inputs.z_threshold,
                                      min_size=self.inputs.cluster_extent, connectivity=neighbours, values=values)
                where = affine.locate(np.flatnonzero(mask)[table["location"].to_numpy(int)])
                table = table.drop(columns=["location"])
                for k, (name, column) in enumerate(where.items()):
                    table.insert(1 + k, name, column)
                table = table.rename(columns={"size_locations": "size_vertices" if affine.form == "gifti"
                                              else "size_grayordinates"})
            else:
                table = cluster_table(vol(con["maps"]["z"]) * mask, affine, self.inputs.z_threshold,
                                      min_size=self.inputs.cluster_extent, values=values)
            table = table.rename(columns={"peak_stat": "peak_z"})
            path = os.path.join(runtime.cwd, f"{con['name']}_clusters.tsv")
            write_tsv(table, path)
            tables[con["name"]] = path
            ent = {"contrast": self.inputs.contrast}
            if con["desc"]:
                ent["desc"] = con["desc"]
            manifest.append({"path": path, "entities": ent, "suffix": "clusters"})
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", manifest)
        self._results["tables_file"] = _write_json(runtime.cwd, "tables.json", tables)
        return runtime


# ---------------------------------------------------------------------------------------------- figures, report


class PlotGroupInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`PlotGroup` (each trait is described by its ``desc``)."""

    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps")
    design_file = File(exists=True, mandatory=True, desc="design TSV")
    maps_file = File(exists=True, mandatory=True, desc="JSON from compute_contrasts")
    inference_files = InputMultiObject(File(exists=True), desc="JSON from threshold_maps / permute")
    tables_file = File(exists=True, mandatory=True, desc="JSON from cluster_tables")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label")
    missing = traits.List(traits.Str, usedefault=True, desc="subjects left out for lack of a map")
    permutation_methods = traits.List(traits.Enum(*PERMUTATION_METHODS), usedefault=True,
                                      desc="permutation methods asked for (noted where a contrast cannot have them)")


class PlotGroupOutputSpec(TraitedSpec):
    """Outputs of :class:`PlotGroup` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="design figure and subject mosaic to publish")
    section_file = File(exists=True, desc="JSON section of the report for this contrast")


class PlotGroup(SimpleInterface):
    """Design figure, subject mosaic and every group contrast's map figures."""

    input_spec = PlotGroupInputSpec
    output_spec = PlotGroupOutputSpec

    def _run_interface(self, runtime):
        from ..reports.figures import plot_design
        from ..reports.group import plot_stat_figures, plot_subject_mosaic

        Y, mask, where, subjects = _load_data(self.inputs.data_file)
        frame = read_tsv(self.inputs.design_file, "group design")
        design = _model_columns(frame)
        # a within-subject design has a row per subject and first-level contrast: label rows with both
        within = frame.get(WITHIN_COLUMN)
        rows = [f"{s} {c}" for s, c in zip(subjects, within)] if within is not None else list(subjects)
        design.index = [f"sub-{r}" for r in rows]
        cwd = runtime.cwd
        design_svg = str(plot_design(design, os.path.join(cwd, "design.svg")))
        surface = hasattr(where, "write")
        if surface:  # maps on the inflated mesh when one is packaged (no subject mosaic on surfaces yet)
            from ..reports.surface import surface_figure_file

            def draw(path, prefix, threshold=None, title="", kinds=None):
                return surface_figure_file(path, f"{prefix}_surface.png", threshold, title)
            mosaic = None
        else:
            def draw(path, prefix, **kw):
                return plot_stat_figures(load_image(path), prefix, **kw)

            mosaic = str(plot_subject_mosaic(Y, mask, rows, os.path.join(cwd, "mosaic.png"),
                                             title=f"{self.inputs.contrast}: subject effect maps"))
        inference = {}
        for f in self.inputs.inference_files or []:
            for name, methods in _read_json(f).items():
                inference.setdefault(name, {}).update(methods)
        tables = _read_json(self.inputs.tables_file)
        sections = []
        for con in _read_json(self.inputs.maps_file):
            figures = []
            for path in draw(con["maps"]["z"], os.path.join(cwd, f"{con['name']}_z"),
                             title=f"{self.inputs.contrast} {con['name']}: z (unthresholded)"):
                figures.append({"path": str(path), "caption": f"z map, unthresholded ({path.stem.split('_')[-1]})"})
            notes = [f"Group model: {con.get('model', 'ols')} ({cg.GROUP_MODELS[con.get('model', 'ols')]})"
                     + (f"; F test on {len(con['weights'])} rows" if con.get("stat") == "F" else "") + "."]
            if not cg.permutation_applies(con) and self.inputs.permutation_methods:
                notes.append(f"{', '.join(self.inputs.permutation_methods)}: not applied, permutation methods "
                             "test t contrasts only; this F test has parametric inference only.")
            for method, entry in inference.get(con["name"], {}).items():
                label = cg.INFERENCE_DESC[method]
                detail = (f"; {entry['n_permutations']} {'enumerated' if entry['exhaustive'] else 'random'} "
                          f"{'sign flips' if entry['scheme'] == 'sign_flip' else 'permutations'}"
                          if "scheme" in entry else "")
                notes.append(f"{label}: {entry['n_significant']} voxel(s) significant{detail}.")
                for path in draw(entry["z"], os.path.join(cwd, f"{con['name']}_{label}"), threshold=1e-6,
                                 title=f"{con['name']}: {label}", kinds=("glass",))[:1]:
                    figures.append({"path": str(path), "caption": f"z map thresholded by {label}"})
            sections.append({"name": con["name"] if not con["desc"] else f"{con['name']} (desc-{con['desc']})",
                             "figures": figures, "clusters": tables.get(con["name"]), "notes": notes})
        section = {"contrast": self.inputs.contrast, "subjects": subjects, "missing": list(self.inputs.missing),
                   "design_figure": design_svg, "mosaic": mosaic, "group_contrasts": sections}
        self._results["section_file"] = _write_json(cwd, "section.json", section)
        self._results["manifest_file"] = _write_json(cwd, "manifest.json", [
            {"path": design_svg, "entities": {"contrast": self.inputs.contrast}, "suffix": "design"}] + (
            [{"path": mosaic, "entities": {"contrast": self.inputs.contrast, "desc": "subjects"}, "suffix": "mosaic"}]
            if mosaic else []))
        return runtime


class GroupReportInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`GroupReport` (each trait is described by its ``desc``)."""

    section_files = InputMultiObject(File(exists=True), mandatory=True, desc="JSON sections from plot_figures")
    task = traits.Str(mandatory=True, desc="task name")
    excluded = traits.List(traits.Str, usedefault=True, desc="subjects excluded by the spec")
    settings = traits.Dict(usedefault=True, desc="group-level settings shown in the report")
    wait_for = traits.Any(desc="the sinks of the maps: the report is written after them")


class GroupReportOutputSpec(TraitedSpec):
    """Outputs of :class:`GroupReport` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="the report to publish")


class GroupReport(SimpleInterface):
    """The task's self-contained HTML report."""

    input_spec = GroupReportInputSpec
    output_spec = GroupReportOutputSpec

    def _run_interface(self, runtime):
        from ..reports.group import build_group_report

        sections = sorted((_read_json(f) for f in self.inputs.section_files), key=lambda s: s["contrast"])
        path = os.path.join(runtime.cwd, "report.html")
        build_group_report(self.inputs.task, sections, {"excluded": list(self.inputs.excluded),
                                                        "settings": dict(self.inputs.settings)}, path)
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json",
                                                     [{"path": path, "entities": {}, "suffix": "report"}])
        return runtime
