"""Resting-state steps: denoise_run (per run), compute_connectivity (per subject), rest_report and
rest_group.

Files travel between nodes; what is published is listed in JSON manifests ``[{path, entities, suffix}]``
that the ``ds_*`` sinks copy under OUTPUT_DIR with BIDS-Derivatives names (xcp_d's: ``seg-<atlas>``,
``stat-<kind>``, ``_timeseries``, ``_relmat``, ``_boldmap``, ``_outliers``).
"""

import json
import os
import re
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec,
                                    traits)

from ..core import connectivity as cc
from ..core.confounds import censor_table, check_confounds_rows
from ..core.errors import GlmxError
from ..io.atlases import load_atlas, region_signals
from ..io.atomic import write_text
from ..io.geometry import check_cifti_run, cifti_image, file_form, is_surface_file
from ..io.images import load_image, load_mask, unmask, write_image
from ..io.tables import read_tsv, write_tsv


def _write_json(cwd, name, obj):
    return str(write_text(os.path.join(cwd, name), json.dumps(obj, indent=1)))


def _read_json(path):
    with open(path) as fh:
        return json.load(fh)


def write_matrix(matrix, labels, path):
    """Write a square matrix as TSV with the labels as header and index (n/a for NaN).

    Parameters
    ----------
    matrix : numpy.ndarray of shape (n, n)
        Values to write.
    labels : list of str, length n
        Region names, used as header and as the ``region`` index column.
    path : str or Path
        Output TSV (written atomically).

    Returns
    -------
    Path
        The written file.
    """
    frame = pd.DataFrame(np.asarray(matrix, float), index=list(labels), columns=list(labels))
    frame.index.name = "region"
    return write_tsv(frame, path, index=True)


def read_matrix(path):
    """Read a relmat TSV written by :func:`write_matrix`.

    Parameters
    ----------
    path : str or Path
        TSV with a ``region`` index column and one column per region.

    Returns
    -------
    matrix : numpy.ndarray of shape (n, n)
        Values (n/a read as NaN).
    labels : list of str
        Region names, in column order.

    Raises
    ------
    GlmxError
        When the file is missing or not a readable table.
    """
    frame = read_tsv(path, "connectivity matrix").set_index("region")
    return frame.to_numpy(float), [str(c) for c in frame.columns]


def read_timeseries(path):
    """Read a timeseries TSV (one column per region).

    Parameters
    ----------
    path : str or Path
        TSV with one row per volume and one column per region.

    Returns
    -------
    series : numpy.ndarray of shape (n_volumes, n_regions)
        Region signals.
    labels : list of str
        Region names, in column order.

    Raises
    ------
    GlmxError
        When the file is missing or not a readable table.
    """
    frame = read_tsv(path, "time series")
    return frame.to_numpy(float), [str(c) for c in frame.columns]


def _one_thread(method):
    """Run a node's computation with BLAS/OpenMP limited to one thread: each node is accounted one
    process by the engine, and oversubscribed BLAS made the group's eigendecompositions 30x slower."""
    import functools

    @functools.wraps(method)
    def wrapper(self, runtime):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return method(self, runtime)

    return wrapper


def _surface_series(bold_file, mask_file):
    """A surface run as (locations × time) float32 and the locations used (those with a finite series).

    Parameters
    ----------
    bold_file, mask_file : str
        The run's two files (``io.geometry``): a CIFTI dtseries twice, or the left and right GIfTI.

    Returns
    -------
    data : numpy.ndarray of shape (n_locations, n_scans)
        CIFTI grayordinates, or the left hemisphere's vertices then the right's.
    mask : numpy.ndarray of bool, shape (n_locations,)
        Locations whose series is finite (a vertex holding NaN is left out of its parcel's mean).

    Raises
    ------
    GlmxError
        Not a dense time series, or hemispheres of different lengths, naming the file.
    """
    from ..io.geometry import gifti_series

    if file_form(bold_file) == "cifti":
        check_cifti_run(bold_file)
        data = np.asarray(cifti_image(bold_file).dataobj, dtype=np.float32).T
    else:
        left, right = gifti_series(bold_file), gifti_series(mask_file)
        if left.shape[0] != right.shape[0]:
            raise GlmxError(f"hemispheres have different lengths: {left.shape[0]} volumes in {Path(bold_file).name}, "
                            f"{right.shape[0]} in this file", file=mask_file, field="hemi")
        data = np.ascontiguousarray(np.concatenate([left, right], axis=1).T)
    return data, np.isfinite(data).all(axis=1)


def _seed_maps(inp, data, mask, affine, raw, names, confounds, clean, cwd):
    """Fisher-z maps of the seeds: MNI spheres (volumes), or parcels of the label atlas by name (any run).

    On surfaces a seed is a parcel: its raw mean series (as in the time series TSV, before cleaning), cleaned
    like every location's, correlated with every grayordinate / vertex. Maps are written in the run's own form
    (NIfTI; CIFTI dscalar with the run's brain models; a GIfTI pair, named by its left file).

    Returns
    -------
    dict
        ``{seed name: path}``.
    """
    surface = affine is None
    coordinate = sorted(n for n, v in inp.seeds.items() if not isinstance(v, str))
    if coordinate and (surface or (inp.space and not inp.space.startswith("MNI"))):
        raise GlmxError(f"seed '{coordinate[0]}' is MNI coordinates but the BOLD is in space '{inp.space}'"
                        + ("; on surfaces a seed names a parcel of the atlas (\"seeds\": {\"PCC\": \"<parcel name>\"})"
                           if surface else ""), file=inp.bold_file, field="seeds")
    for name, value in sorted(inp.seeds.items()):
        if isinstance(value, str) and value not in names:
            raise GlmxError(f"seed '{name}' names parcel '{value}', which the atlas does not have (parcels: "
                            f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})", file=inp.bold_file,
                            field="seeds")
    if surface:
        from ..io.geometry import CiftiGeometry, GiftiGeometry, gifti_shape

        used = mask & (data.max(axis=1) > data.min(axis=1))  # constant series (medial wall) carry no correlation
        if file_form(inp.bold_file) == "cifti":
            geometry = CiftiGeometry.of_file(inp.bold_file)
        else:
            geometry = GiftiGeometry((gifti_shape(inp.bold_file)[1], gifti_shape(inp.mask_file)[1]))
        locations = cc.denoise_many(data[used].T, confounds, **clean)
    else:
        used = mask
        locations = cc.denoise_many(data[mask].T, confounds, **clean)
    out = {}
    for name, value in sorted(inp.seeds.items()):
        if isinstance(value, str):
            seed = cc.denoise(raw[:, [names.index(value)]], confounds, **clean)
        else:
            seed = cc.denoise(cc.spheres_signals(data, [value], affine, mask, inp.seed_radius), confounds, **clean)
        values = cc.seed_map(locations, seed[:, 0]).astype(np.float32)
        if surface:
            out[name] = geometry.write(values, os.path.join(cwd, f"seed_{name}"), mask=used)[0][0]
        else:
            out[name] = os.path.join(cwd, f"seed_{name}.nii.gz")
            write_image(unmask(values, mask, affine), out[name])
    return out


def _tag(entities):
    return "_".join(f"{k}-{v}" for k, v in sorted(entities.items())) or "single"


# ----------------------------------------------------------------------------------------------- denoise_run


class DenoiseRunInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`DenoiseRun` (each trait is described by its ``desc``)."""

    bold_file = File(exists=True, mandatory=True, desc="preprocessed BOLD run (4D)")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the BOLD grid")
    confounds_file = File(exists=True, mandatory=True, desc="fmriprep desc-confounds_timeseries.tsv")
    run_entities = traits.Dict(traits.Str, traits.Str, usedefault=True, desc="ses/run entities of this run")
    atlas = traits.Str(mandatory=True, desc="the spec's atlas key, as JSON")
    atlas_base_dir = traits.Str("", usedefault=True, desc="folder of relative atlas paths (the spec's)")
    space = traits.Str("", usedefault=True, desc="space of the BOLD (coordinate atlases and seeds are MNI)")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    dummy_scans = traits.Int(0, usedefault=True, desc="leading volumes cut off")
    fd_threshold = traits.Either(None, traits.Float, usedefault=True, desc="FD scrubbing threshold (mm)")
    min_volumes = traits.Int(50, usedefault=True, desc="fewest volumes a run may keep")
    confound_preset = traits.Either(None, traits.Str, usedefault=True, desc="24P, 36P, aCompCor, 6P or None")
    confound_regressors = traits.List(traits.Str, usedefault=True, desc="extra confound column patterns")
    detrend = traits.Bool(True, usedefault=True, desc="linear detrending")
    high_pass = traits.Either(None, traits.Float, default=0.01, usedefault=True, desc="high-pass edge (Hz); None: off")
    low_pass = traits.Either(None, traits.Float, default=0.08, usedefault=True, desc="low-pass edge (Hz); None: off")
    standardize = traits.Bool(True, usedefault=True, desc="z-score the cleaned series")
    seeds = traits.Dict(traits.Str, traits.Either(traits.List(traits.Float), traits.Str), usedefault=True,
                        desc="{name: [x, y, z] MNI mm, or the name of a parcel of a label atlas (surfaces)}")
    seed_radius = traits.Float(6.0, usedefault=True, desc="seed sphere radius (mm)")


class DenoiseRunOutputSpec(TraitedSpec):
    """Outputs of :class:`DenoiseRun` (each trait is described by its ``desc``)."""

    timeseries_file = File(exists=True, desc="denoised region series TSV (labels as header)")
    outliers_file = File(exists=True, desc="per-volume censoring TSV")
    regions_file = File(exists=True, desc="TSV of region name, x, y, z (centres) and network")
    seeds_file = File(exists=True, desc="JSON {seed: Fisher-z map NIfTI} of this run")
    manifest_file = File(exists=True, desc="run-level outputs to publish")


class DenoiseRun(SimpleInterface):
    """Cut dummy scans, scrub by FD, extract region series, clean them (and the seed maps) as nilearn does.

    Parameters are the traits of `DenoiseRunInputSpec`; outputs those of `DenoiseRunOutputSpec`.

    Raises
    ------
    GlmxError
        When the BOLD is not 4D, the confounds' row count differs from its volumes, ``fd_threshold``
        is set without a framewise_displacement column, or MNI seeds are asked for a non-MNI space.
    """

    input_spec = DenoiseRunInputSpec
    output_spec = DenoiseRunOutputSpec

    @_one_thread
    def _run_interface(self, runtime):
        inp = self.inputs
        surface = is_surface_file(inp.bold_file)
        if surface:  # locations × time: every grayordinate of a CIFTI, or both hemispheres' vertices (left first)
            img, surface_data, mask = None, *_surface_series(inp.bold_file, inp.mask_file)
            n = surface_data.shape[1]
        else:
            img = load_image(inp.bold_file, "BOLD run")
            if len(img.shape) != 4:
                raise GlmxError(f"BOLD image is {len(img.shape)}D; expected a 4D run", file=inp.bold_file)
            mask, _ = load_mask(inp.mask_file, img, inp.bold_file)
            n = img.shape[3]
        table = read_tsv(inp.confounds_file, "confounds file")
        check_confounds_rows(table, n, inp.confounds_file, inp.bold_file)
        outliers = censor_table(table, n, inp.dummy_scans, inp.fd_threshold, inp.min_volumes,
                                source=inp.confounds_file)
        confounds = cc.select_rest_confounds(table, inp.confound_preset, inp.confound_regressors,
                                             source=inp.confounds_file)
        clean = dict(t_r=inp.tr, outliers=outliers, detrend=inp.detrend, high_pass=inp.high_pass,
                     low_pass=inp.low_pass, standardize=inp.standardize)
        data = surface_data if surface else np.asarray(img.get_fdata(dtype=np.float32))
        atlas = load_atlas(json.loads(inp.atlas), img, inp.bold_file, space=inp.space or None,
                           base_dir=inp.atlas_base_dir or None, mask_path=inp.mask_file)
        if surface and atlas.kind != "labels":
            raise GlmxError("on a surface run the atlas must be a label atlas: a .dlabel.nii for fsLR CIFTI "
                            "({'labels_img': '...dlabel.nii'}), a GIfTI label file per hemisphere for fsaverage* "
                            "({'labels_img': {'L': '...label.gii', 'R': '...label.gii'}})",
                            file=inp.bold_file, field="atlas")
        raw, names = region_signals(atlas, data, None if surface else img.affine, mask)
        series = cc.denoise(raw, confounds, **clean)
        cwd = runtime.cwd
        ts_path = os.path.join(cwd, "timeseries.tsv")
        write_tsv(pd.DataFrame(series, columns=names), ts_path)
        out_path = os.path.join(cwd, "outliers.tsv")
        write_tsv(outliers, out_path)
        keep = [atlas.names.index(nm) for nm in names]
        regions = pd.DataFrame({"name": names, "x": atlas.centres[keep, 0], "y": atlas.centres[keep, 1],
                                "z": atlas.centres[keep, 2],
                                "network": [atlas.networks[i] for i in keep] if atlas.networks else "n/a"})
        reg_path = os.path.join(cwd, "regions.tsv")
        write_tsv(regions, reg_path)
        run_ent = dict(inp.run_entities)
        manifest = [{"path": ts_path, "suffix": "timeseries",
                     "entities": {**run_ent, "seg": atlas.name, "stat": "mean"}},
                    {"path": out_path, "suffix": "outliers", "entities": {**run_ent, "space": ""}}]
        seeds = {}
        if inp.seeds:
            seeds = _seed_maps(inp, data, mask, None if surface else img.affine, raw, names, confounds, clean, cwd)
            for name, path in seeds.items():
                manifest.append({"path": path, "suffix": "boldmap", "entities": {**run_ent, "desc": name,
                                                                                "stat": "z"}})
        self._results.update(timeseries_file=ts_path, outliers_file=out_path, regions_file=reg_path,
                             seeds_file=_write_json(cwd, "seeds.json", {"atlas": atlas.name, "maps": seeds}),
                             manifest_file=_write_json(cwd, "manifest.json", manifest))
        return runtime


# -------------------------------------------------------------------------------------- compute_connectivity


class ComputeConnectivityInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`ComputeConnectivity` (each trait is described by its ``desc``)."""

    timeseries_files = InputMultiObject(File(exists=True), mandatory=True, desc="denoised series, one per run")
    seeds_files = InputMultiObject(File(exists=True), mandatory=True, desc="seeds JSON, one per run")
    run_entities = traits.List(traits.Dict(traits.Str, traits.Str), mandatory=True, desc="per run, same order")
    kinds = traits.List(traits.Str, mandatory=True, desc="connectivity kinds")
    run_combination = traits.Enum(*cc.RUN_COMBINATIONS, usedefault=True, desc="average, concatenate or separate")


class ComputeConnectivityOutputSpec(TraitedSpec):
    """Outputs of :class:`ComputeConnectivity` (each trait is described by its ``desc``)."""

    matrices_file = File(exists=True, desc="JSON list of {kind, level, path} (level: run tag or 'subject')")
    manifest_file = File(exists=True, desc="matrices (and combined series/seed maps) to publish")


class ComputeConnectivity(SimpleInterface):
    """Per-run matrices, and the subject-level matrix (average in Fisher z, or of the concatenated series).

    Parameters are the traits of `ComputeConnectivityInputSpec`; outputs those of
    `ComputeConnectivityOutputSpec`.

    Raises
    ------
    GlmxError
        When ``run_entities`` does not match the time series files one to one, or the runs have
        different regions.
    """

    input_spec = ComputeConnectivityInputSpec
    output_spec = ComputeConnectivityOutputSpec

    @_one_thread
    def _run_interface(self, runtime):
        inp = self.inputs
        if len(inp.timeseries_files) != len(inp.run_entities):
            raise GlmxError("one run_entities entry per time series file is needed", field="run_entities")
        atlas = _read_json(inp.seeds_files[0])["atlas"]
        runs = [read_timeseries(f) for f in inp.timeseries_files]
        labels = runs[0][1]
        if any(r[1] != labels for r in runs):
            raise GlmxError("runs have different regions; one atlas and one mask grid are needed for all runs",
                            file=inp.timeseries_files[0])
        cwd = runtime.cwd
        manifest, matrices = [], []
        several = len(runs) > 1

        def add(matrix, kind, ent, level):
            path = os.path.join(cwd, f"{level}_{kind}.tsv")
            write_matrix(matrix, labels, path)
            manifest.append({"path": path, "suffix": "relmat", "entities": {**ent, "seg": atlas, "stat": kind}})
            matrices.append({"kind": kind, "level": level, "path": path})

        per_run = {k: [] for k in inp.kinds}
        for (series, _), ent in zip(runs, inp.run_entities):
            for kind in inp.kinds:
                m = cc.connectivity(series, kind)
                per_run[kind].append(m)
                if inp.run_combination != "concatenate" or not several:
                    add(m, kind, dict(ent), _tag(ent))
        if several and inp.run_combination == "average":
            for kind in inp.kinds:
                add(cc.average_matrices(per_run[kind], kind), kind, {}, "subject")
        if several and inp.run_combination == "concatenate":
            joined = np.concatenate([s for s, _ in runs], axis=0)
            path = os.path.join(cwd, "concatenated_timeseries.tsv")
            write_tsv(pd.DataFrame(joined, columns=labels), path)
            manifest.append({"path": path, "suffix": "timeseries", "entities": {"seg": atlas, "stat": "mean"}})
            for kind in inp.kinds:
                add(cc.connectivity(joined, kind), kind, {}, "subject")
        seed_runs = [_read_json(f)["maps"] for f in inp.seeds_files]
        if several and inp.run_combination != "separate":
            for name in sorted(seed_runs[0]):
                if is_surface_file(seed_runs[0][name]):  # the mean map in the runs' own form (io.geometry)
                    from ..io.geometry import read_map

                    maps = [read_map(s[name]) for s in seed_runs]
                    mean = np.mean([v for v, _ in maps], axis=0).astype(np.float32)
                    path = maps[0][1].write(mean, os.path.join(cwd, f"seed_{name}_mean"))[0][0]
                else:
                    imgs = [load_image(s[name], "seed map") for s in seed_runs]
                    mean = np.mean([np.asarray(i.get_fdata()) for i in imgs], axis=0).astype(np.float32)
                    path = os.path.join(cwd, f"seed_{name}_mean.nii.gz")
                    write_image(nb.Nifti1Image(mean, imgs[0].affine), path)
                manifest.append({"path": path, "suffix": "boldmap", "entities": {"desc": name, "stat": "z"}})
        self._results["matrices_file"] = _write_json(cwd, "matrices.json", matrices)
        self._results["manifest_file"] = _write_json(cwd, "manifest.json", manifest)
        return runtime


# ------------------------------------------------------------------------------------------------ rest_report


class RestReportInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`RestReport` (each trait is described by its ``desc``)."""

    matrices_file = File(exists=True, mandatory=True, desc="from compute_connectivity")
    regions_file = File(exists=True, mandatory=True, desc="region names and centres")
    outliers_files = InputMultiObject(File(exists=True), mandatory=True, desc="per-run censoring tables")
    run_entities = traits.List(traits.Dict(traits.Str, traits.Str), mandatory=True, desc="per run")
    subject = traits.Str(mandatory=True, desc="subject label")
    task = traits.Str(mandatory=True, desc="task")
    settings = traits.Str("{}", usedefault=True, desc="the denoising settings, as JSON (shown in the report)")


class RestReportOutputSpec(TraitedSpec):
    """Outputs of :class:`RestReport` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="the HTML report to publish")


class RestReport(SimpleInterface):
    """Matrix figures, a glass-brain connectome and a self-contained HTML page for one subject."""

    input_spec = RestReportInputSpec
    output_spec = RestReportOutputSpec

    @_one_thread
    def _run_interface(self, runtime):
        from ..reports.rest import subject_report

        inp = self.inputs
        matrices = []
        for item in _read_json(inp.matrices_file):
            m, labels = read_matrix(item["path"])
            matrices.append((item["kind"], item["level"], m, labels))
        regions = read_tsv(inp.regions_file, "regions table")
        outliers = [(_tag(e), read_tsv(f, "outliers table")) for f, e in zip(inp.outliers_files, inp.run_entities)]
        path = os.path.join(runtime.cwd, "report.html")
        subject_report(path, inp.subject, inp.task, matrices, regions, outliers, json.loads(inp.settings),
                       runtime.cwd)
        self._results["manifest_file"] = _write_json(runtime.cwd, "manifest.json", [
            {"path": path, "suffix": "report", "entities": {"space": "", "desc": "connectivity"}}])
        return runtime


# ------------------------------------------------------------------------------------------------- rest_group


class RestGroupInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`RestGroup` (each trait is described by its ``desc``)."""

    matrix_files = InputMultiObject(File(exists=True), mandatory=True,
                                    desc="subject-level pearsoncorrelation relmats, one per subject")
    timeseries_files = traits.List(traits.List(File(exists=True)), mandatory=True,
                                   desc="per subject, its denoised series (concatenated for the tangent space)")
    subjects = traits.List(traits.Str, mandatory=True, desc="subject labels, same order")
    groups = traits.List(traits.Str, usedefault=True, desc="group of each subject (empty: no comparison)")
    alpha = traits.Float(0.05, usedefault=True, desc="FDR level of the edge comparison")
    atlas = traits.Str(mandatory=True, desc="atlas name (seg entity)")


class RestGroupOutputSpec(TraitedSpec):
    """Outputs of :class:`RestGroup` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="group matrices to publish")


class RestGroup(SimpleInterface):
    """Group mean (Fisher z), tangent-space mean of the subjects, two-group edge comparison with FDR.

    Parameters are the traits of `RestGroupInputSpec`; outputs those of `RestGroupOutputSpec`.

    Raises
    ------
    GlmxError
        When the subjects' matrices have different regions.
    """

    input_spec = RestGroupInputSpec
    output_spec = RestGroupOutputSpec

    @_one_thread
    def _run_interface(self, runtime):
        inp = self.inputs
        cwd = runtime.cwd
        mats = [read_matrix(f) for f in inp.matrix_files]
        labels = mats[0][1]
        if any(m[1] != labels for m in mats):
            raise GlmxError("subjects' matrices have different regions", file=inp.matrix_files[0])
        z = np.stack([cc.fisher_z(m) for m, _ in mats])
        manifest = []

        def add(matrix, stat, desc, name):
            path = os.path.join(cwd, name + ".tsv")
            write_matrix(matrix, labels, path)
            manifest.append({"path": path, "suffix": "relmat", "entities": {"seg": inp.atlas, "stat": stat,
                                                                           "desc": desc}})

        with warnings.catch_warnings():  # regions outside every mask stay n/a
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_z = np.nanmean(z, axis=0)
        add(cc.inverse_fisher_z(mean_z), "pearsoncorrelation", "mean", "mean_r")
        series = []
        for files in inp.timeseries_files:
            series.append(np.concatenate([read_timeseries(f)[0] for f in files], axis=0))
        valid = ~np.isnan(np.stack([s.sum(axis=0) for s in series])).any(axis=0)
        if len(series) > 1:
            tangents, _ = cc.tangent_matrices([s[:, valid] for s in series])
            full = np.full((len(labels), len(labels)), np.nan)
            full[np.ix_(valid, valid)] = tangents.mean(axis=0)
            add(full, "tangent", "mean", "mean_tangent")
        if inp.groups:
            result = cc.edge_group_comparison(z, inp.groups, inp.alpha)
            a, b = (_bids_label(x) for x in result["levels"])
            for stat in ("t", "p", "q"):
                add(result[stat], stat, f"{a}V{b}", f"compare_{stat}")
        self._results["manifest_file"] = _write_json(cwd, "manifest.json", manifest)
        return runtime


def _bids_label(value):
    """A group value as a BIDS label (letters and digits)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(value)) or "group"
