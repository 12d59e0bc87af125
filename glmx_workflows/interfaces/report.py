"""report: the first-level HTML report of one subject and task, from what the first-level nodes wrote."""

import json
import os

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface, TraitedSpec,
                                    isdefined, traits)
from threadpoolctl import threadpool_limits

from ..io.atomic import write_text
from ..io.tables import read_tsv
from ..reports.cache import PartCache

# entities of the subject's maps that the report's name leaves out: one report per subject and task
_DROPPED = {"space": "", "res": "", "den": "", "cohort": ""}


class SubjectReportInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`SubjectReport`: the outputs of the first-level nodes, per run and per subject."""

    design_manifests = InputMultiObject(File(exists=True), mandatory=True,
                                        desc="build_design's manifest of each run (design TSV and figure)")
    confounds_files = InputMultiObject(File(exists=True), mandatory=True,
                                       desc="select_confounds' confound regressors of each run")
    censor_files = InputMultiObject(File(exists=True), mandatory=True,
                                    desc="select_confounds' kept-volume table of each run")
    subject_manifest = File(exists=True, mandatory=True, desc="fixed_effects' manifest of the subject-level maps")
    mean_files = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="fit_glm's mean image of each run; the first is the slices' underlay")
    run_entities = traits.List(traits.Dict(traits.Str, traits.Str), mandatory=True,
                               desc="BIDS entities of each run (sub, ses, task, run), same order")
    subject_entities = traits.Dict(traits.Str, traits.Str, mandatory=True,
                                   desc="entities of the subject-level maps (sub, [ses,] task, space)")
    contrasts = traits.Dict(traits.Str, traits.Dict, mandatory=True,
                            desc="{name: {'label', 'rows', 'type'}} as compute_contrasts got them")
    settings = traits.Str("{}", usedefault=True, desc="model settings shown in the report, as JSON")
    # the defaults are reports.first_level's Z_THRESHOLD and CLUSTER_EXTENT, read when the node runs: that module
    # (pandas, scipy.ndimage: most of a second; matplotlib when it draws) is then imported by the workers only,
    # never by the process building the workflow
    z_threshold = traits.Float(desc="|z| height of the shown maps and cluster tables (default: the z of a "
                                    "one-sided p of 0.001)")
    cluster_extent = traits.Int(desc="smallest cluster listed (voxels; default 5)")
    cache_dir = traits.Str("", usedefault=True,
                           desc="folder keeping the drawn parts (a run's diagnostics, a contrast's section) under "
                                "the digest of what they show, so that a rebuild draws only what changed; "
                                "'' draws everything")
    single_trial_files = InputMultiObject(File(exists=True), desc="single_trial's summary JSON of each run")


class SubjectReportOutputSpec(TraitedSpec):
    """Outputs of :class:`SubjectReport`."""

    report_file = File(exists=True, desc="the self-contained HTML report")
    manifest_file = File(exists=True, desc="JSON list for the sink: the report, named sub-<s>_task-<t>_report.html")


class SubjectReport(SimpleInterface):
    """Design diagnostics of every run and the thresholded maps of every contrast, in one HTML page."""

    input_spec = SubjectReportInputSpec
    output_spec = SubjectReportOutputSpec
    # imported by each MultiProc worker when it starts (see engine.run), while the main process prepares the graph
    worker_modules = ("glmx_workflows.reports.first_level",)

    def _run_interface(self, runtime):
        # drawing is single-threaded; BLAS threads would only compete with the fits next to this node
        with threadpool_limits(limits=1):
            return self._report(runtime)

    def _report(self, runtime):
        inp = self.inputs
        runs = []
        for i, (manifest, confounds, censor, ent) in enumerate(zip(inp.design_manifests, inp.confounds_files,
                                                                   inp.censor_files, inp.run_entities)):
            with open(manifest) as fh:
                items = json.load(fh)
            design = next(it["path"] for it in items if it["path"].endswith(".tsv"))
            figure = next((it["path"] for it in items if it["path"].endswith((".svg", ".png"))), None)
            label = " ".join(f"{k}-{ent[k]}" for k in ("ses", "run") if ent.get(k)).replace("run-", "") or str(i + 1)
            runs.append({"label": label, "design": read_tsv(design, "design matrix"), "design_figure": figure,
                         "confounds": _header(confounds),
                         "censor": read_tsv(censor, "censoring table")})
        with open(inp.subject_manifest) as fh:
            maps = json.load(fh)
        by_label = {spec["label"]: name for name, spec in inp.contrasts.items()}
        z_maps = {}
        for m in sorted(maps, key=lambda m: m["entities"].get("hemi", "")):
            if m["entities"].get("stat") == "z" and m["entities"].get("contrast") in by_label:
                name = by_label[m["entities"]["contrast"]]
                if "hemi" in m["entities"]:  # a GIfTI pair: both hemispheres, left first
                    z_maps.setdefault(name, []).append(m["path"])
                else:
                    z_maps[name] = m["path"]
        from ..reports.first_level import CLUSTER_EXTENT, Z_THRESHOLD, build_subject_report

        ent = inp.subject_entities
        path = os.path.join(runtime.cwd, "report.html")
        cache = PartCache(inp.cache_dir or None)
        build_subject_report(path, ent["sub"], ent["task"], runs, dict(inp.contrasts), z_maps,
                             background=inp.mean_files[0], settings=json.loads(inp.settings),
                             threshold=inp.z_threshold if isdefined(inp.z_threshold) else Z_THRESHOLD,
                             extent=inp.cluster_extent if isdefined(inp.cluster_extent) else CLUSTER_EXTENT,
                             session=ent.get("ses"),
                             cache=cache,
                             single_trial=[json.loads(open(f).read()) for f in inp.single_trial_files or []])
        cache.prune()  # the folder keeps this report's parts only
        manifest = [{"path": path, "suffix": "report", "entities": dict(_DROPPED), "datatype": ""}]
        self._results["report_file"] = path
        self._results["manifest_file"] = str(write_text(os.path.join(runtime.cwd, "manifest.json"),
                                                        json.dumps(manifest, indent=1)))
        return runtime


def _header(tsv):
    """Column names of a TSV from its first line; none for the empty table select_confounds writes when no
    confound is selected (a BIDS Stats Model's design, or confound_regressors [])."""
    with open(tsv) as fh:
        first = fh.readline().rstrip("\r\n")
    return first.split("\t") if first else []
