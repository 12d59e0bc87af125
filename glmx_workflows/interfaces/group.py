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
from ..core.errors import GlmxError
from ..io.atomic import atomic_path, write_text
from ..io.images import load_image, unmask, write_image
from ..io.tables import read_tsv, write_tsv

MAP_STATS = ("effect", "variance", "t", "z", "p")


def _write_json(cwd, name, obj):
    return str(write_text(os.path.join(cwd, name), json.dumps(obj, indent=1)))


def _read_json(path):
    with open(path) as fh:
        return json.load(fh)


def _load_data(path):
    with np.load(path, allow_pickle=False) as data:
        return data["Y"], data["mask"].astype(bool), data["affine"], [str(s) for s in data["subjects"]]


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
    path = os.path.join(cwd, name + ".nii.gz")
    write_image(unmask(np.asarray(values, dtype=np.float32), mask, affine), path)
    return path


# ---------------------------------------------------------------------------------------------- load_maps


class LoadGroupMapsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`LoadGroupMaps` (each trait is described by its ``desc``)."""

    effect_files = InputMultiObject(File(exists=True), mandatory=True, desc="subject-level stat-effect maps")
    variance_files = traits.List(traits.Either(None, File(exists=True)), desc="matching stat-variance maps or None")
    subjects = traits.List(traits.Str, mandatory=True, desc="subject labels, one per map")
    smoothing_fwhm = traits.Either(None, traits.Float, usedefault=True, desc="Gaussian smoothing (mm FWHM)")


class LoadGroupMapsOutputSpec(TraitedSpec):
    """Outputs of :class:`LoadGroupMaps` (each trait is described by its ``desc``)."""

    data_file = File(exists=True, desc="NPZ: Y (n_subjects, n_voxels), mask, affine, subjects")
    mask_file = File(exists=True, desc="group mask NIfTI (voxels defined in every subject)")


class LoadGroupMaps(SimpleInterface):
    """Read the subject maps on one grid, keep the voxels every subject defines, smooth if asked.

    Parameters are the traits of `LoadGroupMapsInputSpec`; outputs those of
    `LoadGroupMapsOutputSpec`.

    Raises
    ------
    GlmxError
        When a map cannot be read, the maps are not all on one grid, or no voxel is defined (finite,
        non-zero, positive variance) in every subject.
    """

    input_spec = LoadGroupMapsInputSpec
    output_spec = LoadGroupMapsOutputSpec

    def _run_interface(self, runtime):
        from nilearn.image import smooth_img

        imgs = [load_image(f, "subject effect map") for f in self.inputs.effect_files]
        ref = imgs[0]
        for f, img in zip(self.inputs.effect_files, imgs):
            if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
                raise GlmxError(f"map grid {img.shape[:3]} differs from {self.inputs.effect_files[0]} "
                                f"{ref.shape[:3]}; every subject's map must be on the same grid", file=f)
        data = np.stack([np.asarray(img.get_fdata(), dtype=np.float64).reshape(ref.shape[:3]) for img in imgs])
        mask = np.all(np.isfinite(data) & (data != 0), axis=0)
        for f in self.inputs.variance_files or []:
            if f:
                var = np.asarray(load_image(f, "subject variance map").get_fdata()).reshape(ref.shape[:3])
                mask &= np.isfinite(var) & (var > 0)
        if not mask.any():
            raise GlmxError("no voxel is defined (finite, non-zero) in every subject's map", file=os.path.dirname(
                self.inputs.effect_files[0]))
        if self.inputs.smoothing_fwhm:
            data = np.stack([np.asarray(smooth_img(img, self.inputs.smoothing_fwhm).get_fdata()).reshape(
                ref.shape[:3]) for img in imgs])
        out = os.path.join(runtime.cwd, "data.npz")
        with atomic_path(out) as tmp:
            np.savez(tmp, Y=data[:, mask], mask=mask, affine=ref.affine,
                     subjects=np.array(self.inputs.subjects, dtype=str))
        self._results["data_file"] = out
        self._results["mask_file"] = str(write_image(unmask(np.ones(int(mask.sum()), np.uint8), mask, ref.affine,
                                                            dtype=np.uint8), os.path.join(runtime.cwd, "mask.nii.gz")))
        return runtime


# ---------------------------------------------------------------------------------------------- build_design


class BuildGroupDesignInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`BuildGroupDesign` (each trait is described by its ``desc``)."""

    participants_file = traits.Either(None, File(exists=True), usedefault=True, desc="participants.tsv")
    subjects = traits.List(traits.Str, mandatory=True, desc="subject labels, design rows in this order")
    regressors = traits.List(traits.Str, usedefault=True, desc="participants.tsv columns (group_level_regressors)")
    group_contrasts = traits.Dict(traits.Str, traits.Str, usedefault=True, desc="{name: formula} besides the mean")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label (names the outputs)")
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
        else:
            table = read_tsv(source, "participants table") if source else None
            design, mean = cg.group_design(table, self.inputs.subjects, self.inputs.regressors, source=source)
        contrasts = cg.group_contrasts(design.columns, mean, self.inputs.group_contrasts)
        frame = design.copy()
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
    return frame.drop(columns=["participant_id"])


# ---------------------------------------------------------------------------------------------- fit / contrasts


class FitGroupInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`FitGroup` (each trait is described by its ``desc``)."""

    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps")
    design_file = File(exists=True, mandatory=True, desc="design TSV from build_design")


class FitGroupOutputSpec(TraitedSpec):
    """Outputs of :class:`FitGroup` (each trait is described by its ``desc``)."""

    fit_file = File(exists=True, desc="NPZ of the OLS fit")


class FitGroup(SimpleInterface):
    """Ordinary least squares of the subject maps on the group design."""

    input_spec = FitGroupInputSpec
    output_spec = FitGroupOutputSpec

    def _run_interface(self, runtime):
        Y, _, _, _ = _load_data(self.inputs.data_file)
        fit = cg.fit_group_model(Y, _read_design(self.inputs.design_file).to_numpy(float))
        out = os.path.join(runtime.cwd, "fit.npz")
        with atomic_path(out) as tmp:
            np.savez(tmp, **fit.to_arrays())
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

        with np.load(self.inputs.fit_file, allow_pickle=False) as data:
            fit = GLMFit.from_arrays({k: data[k] for k in data.files})
        _, mask, affine, _ = _load_data(self.inputs.data_file)
        listing, manifest = [], []
        for con in _read_json(self.inputs.contrasts_file):
            maps = cg.contrast_maps(fit, con["weights"])
            paths = {}
            for stat in MAP_STATS:
                paths[stat] = _write_map(maps[stat], mask, affine, runtime.cwd, f"{con['name']}_{stat}")
                manifest.append({"path": paths[stat], "entities": _entities(self.inputs.contrast, stat, con["desc"]),
                                 "suffix": "statmap"})
            listing.append({**con, "maps": paths, "dof": maps["dof"]})
        self._results["maps_file"] = _write_json(runtime.cwd, "maps.json", listing)
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", manifest)
        return runtime


# ---------------------------------------------------------------------------------------------- inference


def _volume_values(path, mask):
    return np.asarray(load_image(path).get_fdata(), dtype=np.float64)[mask]


class ThresholdGroupMapsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`ThresholdGroupMaps` (each trait is described by its ``desc``)."""

    maps_file = File(exists=True, mandatory=True, desc="JSON from compute_contrasts")
    data_file = File(exists=True, mandatory=True, desc="NPZ from load_maps (mask and affine)")
    contrast = traits.Str(mandatory=True, desc="first-level contrast label")
    methods = traits.List(traits.Enum("uncorrected", "fdr", "bonferroni", "cluster"), usedefault=True,
                          desc="parametric methods")
    alpha = traits.Float(0.05, usedefault=True, desc="corrected significance level")
    z_threshold = traits.Float(mandatory=True, desc="height in z (uncorrected, cluster)")
    cluster_extent = traits.Int(10, usedefault=True, desc="smallest cluster kept (voxels)")


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
                else:
                    vol = np.zeros(mask3d.shape)
                    vol[mask3d] = z
                    keep = cg.cluster_extent_mask(vol, self.inputs.z_threshold, self.inputs.cluster_extent)[mask3d]
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
    methods = traits.List(traits.Enum(*cg.PERMUTATION_METHODS), mandatory=True, desc="permutation methods")
    n_permutations = traits.Int(5000, usedefault=True, desc="permutations to draw")
    seed = traits.Int(0, usedefault=True, desc="seed of the permutations")
    alpha = traits.Float(0.05, usedefault=True, desc="FWE level of the thresholded maps")
    p_threshold = traits.Float(0.001, usedefault=True, desc="cluster-forming uncorrected p (cluster mass)")


class PermuteGroup(SimpleInterface):
    """Permutation inference (max-t FWE, cluster mass, TFCE) for every group contrast."""

    input_spec = PermuteGroupInputSpec
    output_spec = InferenceOutputSpec

    def _run_interface(self, runtime):
        Y, mask, affine, _ = _load_data(self.inputs.data_file)
        X = _read_design(self.inputs.design_file).to_numpy(float)
        manifest, record = [], {}
        for con in _read_json(self.inputs.maps_file):
            methods = list(self.inputs.methods)
            out = cg.permutation_inference(Y, X, con["weights"], mask=mask, n_permutations=self.inputs.n_permutations,
                                           seed=self.inputs.seed, methods=methods,
                                           cluster_threshold=cg.t_threshold(self.inputs.p_threshold, con["dof"]))
            z = _volume_values(con["maps"]["z"], mask)
            info = {"scheme": out["scheme"], "n_permutations": out["n_permutations"], "exhaustive": out["exhaustive"]}
            record[con["name"]] = {}
            for method, key in (("perm_fwe", "p_fwe"), ("perm_cluster_mass", "p_cluster_mass"), ("tfce", "p_tfce")):
                if method not in methods:
                    continue
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

        def vol(path):
            return np.asarray(load_image(path).get_fdata(), dtype=np.float64)

        manifest, tables = [], {}
        for con in _read_json(self.inputs.maps_file):
            values = {"p_uncorrected": vol(con["maps"]["p"])}
            for method, entry in sorted(inference.get(con["name"], {}).items()):
                if "p" in entry:
                    values[f"p_{cg.INFERENCE_DESC[method]}"] = vol(entry["p"])
            table = cg.cluster_table(vol(con["maps"]["z"]) * mask, affine, self.inputs.z_threshold,
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

        Y, mask, _, subjects = _load_data(self.inputs.data_file)
        design = _read_design(self.inputs.design_file)
        design.index = [f"sub-{s}" for s in subjects]
        cwd = runtime.cwd
        design_svg = str(plot_design(design, os.path.join(cwd, "design.svg")))
        mosaic = str(plot_subject_mosaic(Y, mask, subjects, os.path.join(cwd, "mosaic.png"),
                                         title=f"{self.inputs.contrast}: subject effect maps"))
        inference = {}
        for f in self.inputs.inference_files or []:
            for name, methods in _read_json(f).items():
                inference.setdefault(name, {}).update(methods)
        tables = _read_json(self.inputs.tables_file)
        sections = []
        for con in _read_json(self.inputs.maps_file):
            figures = []
            for path in plot_stat_figures(load_image(con["maps"]["z"]), os.path.join(cwd, f"{con['name']}_z"),
                                          title=f"{self.inputs.contrast} {con['name']}: z (unthresholded)"):
                figures.append({"path": str(path), "caption": f"z map, unthresholded ({path.stem.split('_')[-1]})"})
            notes = []
            for method, entry in inference.get(con["name"], {}).items():
                label = cg.INFERENCE_DESC[method]
                detail = (f"; {entry['n_permutations']} {'enumerated' if entry['exhaustive'] else 'random'} "
                          f"{'sign flips' if entry['scheme'] == 'sign_flip' else 'permutations'}"
                          if "scheme" in entry else "")
                notes.append(f"{label}: {entry['n_significant']} voxel(s) significant{detail}.")
                path = plot_stat_figures(load_image(entry["z"]), os.path.join(cwd, f"{con['name']}_{label}"),
                                         threshold=1e-6, title=f"{con['name']}: {label}", kinds=("glass",))[0]
                figures.append({"path": str(path), "caption": f"z map thresholded by {label}"})
            sections.append({"name": con["name"] if not con["desc"] else f"{con['name']} (desc-{con['desc']})",
                             "figures": figures, "clusters": tables.get(con["name"]), "notes": notes})
        section = {"contrast": self.inputs.contrast, "subjects": subjects, "missing": list(self.inputs.missing),
                   "design_figure": design_svg, "mosaic": mosaic, "group_contrasts": sections}
        self._results["section_file"] = _write_json(cwd, "section.json", section)
        self._results["manifest_file"] = _write_json(cwd, "manifest.json", [
            {"path": design_svg, "entities": {"contrast": self.inputs.contrast}, "suffix": "design"},
            {"path": mosaic, "entities": {"contrast": self.inputs.contrast, "desc": "subjects"}, "suffix": "mosaic"}])
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
