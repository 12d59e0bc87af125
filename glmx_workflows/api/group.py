"""``GroupLevel``: second-level models of a task over the first level's subject maps.

validate the spec → find the subject maps in OUTPUT_DIR and participants.tsv → check every design →
build the workflow → run it on the engine (same plugins and cache as the first level).
"""

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import group as cg
from ..core.errors import GlmxError
from ..core.formula import bids_label
from ..io.bids import parse_space
from ..io.derivatives import check_name_length, current_contrasts, settle_group_outputs, written_since
from ..io.group_inputs import find_subject_maps, read_participants
from ..reports.index import build_index
from ..spec.group_keys import group_settings
from ..spec.model import normalize_subject
from ..workflows.group_level import init_group_level_wf
from .base import Project, writes
from ..engine.dataset import published_files

LOG = logging.getLogger("glmx_workflows.group")
_SPACE_ENTITY = {"resolution": "res", "density": "den", "cohort": "cohort"}


@dataclass
class GroupPlan:
    """What the group level will model: per first-level contrast, its subjects and maps.

    Parameters
    ----------
    contrasts : dict
        ``{contrast: {'subjects', 'effect_files', 'variance_files'}}``, lists in subject order.
    excluded : list of str
        Subjects left out by the spec's ``excludes``.
    missing : dict
        ``{contrast: [subjects expected but without maps]}``.
    base_entities : dict
        Entities of the group outputs (``task``, ``space``, ...).
    participants_file : str, optional
        participants.tsv used for the covariates, None without one.
    log : list of str, optional
        Lines saying what was left out.
    """

    contrasts: dict
    excluded: list
    missing: dict
    base_entities: dict
    participants_file: str = None
    log: list = field(default_factory=list)


@dataclass
class GroupResult:
    """Outcome of :meth:`GroupLevel.run`: files written, the report, and the log lines.

    Parameters
    ----------
    outputs : list of str
        Files written under ``OUTPUT_DIR/group``.
    report : str or None
        The group report (HTML).
    log : list of str
        Lines saying what was left out.
    written : list of str, optional
        The outputs this run wrote (default: all of them; the others already held the same bytes).
    removed : list of str, optional
        Group outputs of earlier runs deleted because the current settings no longer produce them.
    """

    outputs: list
    report: str
    log: list
    written: list = None
    removed: list = field(default_factory=list)

    def summary(self):
        """Human-readable lines: what was left out, and how many files were written.

        Returns
        -------
        str
            The log lines and a last line with the file count and the report path.
        """
        written = self.outputs if self.written is None else self.written
        removed = f", {len(self.removed)} outdated file(s) removed" if self.removed else ""
        return "\n".join(self.log + [f"{len(written)} file(s) written{removed} under "
                                     f"{Path(self.report).parent if self.report else '?'}; report: {self.report}"])


class GroupLevel(Project):
    """Second-level models of one task over the first level's subject-level maps.

    Parameters
    ----------
    task : str
        Task name (a key of the spec).
    bids_root : str or Path
        The raw BIDS dataset (its participants.tsv gives the covariates and groups).
    spec : str or Path, optional
        task_information.json (default ``bids_root/task_information.json``).
    output_dir : str or Path, optional
        OUTPUT_DIR of the first level (default ``bids_root/derivatives/glmx``); the group outputs go
        to ``OUTPUT_DIR/group``.
    work_dir : str or Path, optional
        Nipype work directory (default ``OUTPUT_DIR`` + ``_work``).
    contrasts : list of str, optional
        First-level contrasts to model (default: every contrast with subject maps).
    participant_label : list of str, optional
        Subjects to include (default: every subject with maps, less the spec's ``excludes``).
    model : str or Path, optional
        A BIDS Stats Models file: its Dataset node is fitted over its Subject node's maps
        (``OUTPUT_DIR/node-<subject>``) and written to ``OUTPUT_DIR/node-<dataset>`` (``task`` may be None).
    derivatives : str or Path, optional
        fmriprep derivatives (for the model's graph; default: found under ``bids_root/derivatives``).
    **overrides
        Group keys of the spec for this run: ``group_inference``, ``group_n_permutations``,
        ``group_seed``, ``group_contrasts``, ``group_level_regressors``, ...
    """

    def __init__(self, task, bids_root, spec=None, output_dir=None, work_dir=None, contrasts=None,
                 participant_label=None, model=None, derivatives=None, **overrides):
        super().__init__(task, bids_root, spec, derivatives=derivatives, output_dir=output_dir, work_dir=work_dir,
                         model=model)
        self.wanted_contrasts = list(contrasts) if contrasts else None
        self.participant_label = [normalize_subject(s) for s in participant_label] if participant_label else None
        self.settings = group_settings(self.entry, **overrides)
        if self.settings.get("surface_meshes"):  # mesh paths are read relative to the spec file
            self.settings["surface_meshes"] = {h: str((Path(self.spec_path).parent / p).resolve())
                                               for h, p in self.settings["surface_meshes"].items()}

    @property
    def group_dir(self):
        """``OUTPUT_DIR/group`` (a BIDS Stats Model's: ``OUTPUT_DIR/node-<Dataset node>``)."""
        if self.model is not None:
            return self._model_dirs()[1]
        return self.output_dir / "group"

    def _model_dirs(self):
        """(folder of the Subject node's maps, folder of the Dataset node) of a model."""
        from ..spec.bsm import node_index

        levels = {n["Level"]: n["Name"] for n in self.model["Nodes"]}
        if "Dataset" not in levels or "Subject" not in levels:
            raise GlmxError("the group level runs the model's Dataset node over its Subject node's maps; the model "
                            f"has {', '.join(levels.values())}", file=self.spec_path,
                            field=f"Nodes[{len(self.model['Nodes']) - 1}]")
        dirs = self.node_dirs()
        node_index(self.model, levels["Dataset"])
        return dirs[levels["Subject"]], dirs[levels["Dataset"]]

    def z_threshold(self):
        """The height in z (group_z_threshold, or the z of group_p_threshold).

        Returns
        -------
        float
            The z threshold.
        """
        return cg.z_threshold(self.settings["group_p_threshold"], self.settings["group_z_threshold"])

    def _dataset_subjects(self):
        return sorted(p.name[4:] for p in self.bids_root.glob("sub-*") if p.is_dir())

    def plan(self):
        """Find the maps, decide the subjects of every contrast and check every design.

        Returns
        -------
        GroupPlan
            Subjects and maps of every contrast, exclusions and log lines.

        Raises
        ------
        GlmxError
            No maps, an unknown contrast, a subject missing a covariate, a design that cannot be fitted.
        """
        space, extra = parse_space(self.settings["space"])
        extra = {_SPACE_ENTITY[k]: v for k, v in extra.items()}
        if self.model is not None:
            from ..bsm import plan_model_group

            found = find_subject_maps(self._model_dirs()[0], self.task, space, extra)
            plan = plan_model_group(self.model_graph(self.participant_label), found,
                                    self.work_dir / "bsm_designs", self.wanted_contrasts)
            self.settings["group_contrasts"] = plan.pop("group_contrasts")
            for line in plan["log"]:
                LOG.info(line)
            shared = plan.pop("shared")
            return GroupPlan(**plan, base_entities={"task": self.task, **shared})
        found = find_subject_maps(self.output_dir, self.task, space, extra)
        shared = found.pop(None)
        current = current_contrasts(self.output_dir, self.task)
        if current is not None:  # only what the spec of the latest first-level run produces
            found = {c: subs for c, subs in found.items() if c in current}
            if not found:
                raise GlmxError(f"no subject-level stat-effect maps of the contrasts of task '{self.task}' "
                                f"({', '.join(current) or 'none'})", file=self.output_dir, field="OUTPUT_DIR")
        contrasts = list(found)
        if self.wanted_contrasts:
            unknown = [c for c in self.wanted_contrasts if c not in found]
            if unknown:
                raise GlmxError(f"no subject maps of contrast(s) {', '.join(unknown)}; contrasts found: "
                                f"{', '.join(contrasts)}", file=self.output_dir, field="--contrast")
            contrasts = list(self.wanted_contrasts)
        regressors = list(self.settings["group_level_regressors"])
        participants, participants_file = read_participants(self.bids_root, required=bool(regressors))
        excludes = set(self.settings["excludes"])
        expected = set(self._dataset_subjects()) | {s for c in contrasts for s in found[c]}
        if self.participant_label:
            expected &= set(self.participant_label)
        excluded = sorted(s for s in expected if s in excludes)
        log = []
        if excluded:
            log.append("excluded by the spec (left out of every group model): "
                       + ", ".join(f"sub-{s}" for s in excluded))
        chosen, missing = {}, {}
        within = self.settings.get("group_design")
        if within:
            return self._plan_within(within, found, expected, excludes, excluded, shared, log)
        for contrast in contrasts:
            maps = {s: m for s, m in found[contrast].items() if s in expected and s not in excludes}
            missing[contrast] = sorted(expected - excludes - set(maps))
            if missing[contrast]:
                log.append(f"contrast {contrast}: no subject-level stat-effect map for "
                           + ", ".join(f"sub-{s}" for s in missing[contrast]) + "; left out")
            subjects = sorted(maps)
            self._check_min_subjects(f"contrast {contrast}", len(subjects))
            self._check_variances(contrast, subjects, maps)
            design, mean = cg.group_design(participants, subjects, regressors,
                                           source=str(participants_file) if participants is not None else None)
            group_cons = cg.group_contrasts(design.columns, mean, self.settings["group_contrasts"],
                                            source=str(self.spec_path), field=f"{self.task}.group_contrasts")
            log += self._f_without_permutations(contrast, group_cons)
            # the longest map name of each group contrast (desc + the longest method desc) must fit a file name
            longest_method = max(cg.INFERENCE_DESC.values(), key=len)
            for con in group_cons:
                desc = (con["desc"] or "") + longest_method[0].upper() + longest_method[1:]
                check_name_length({"task": self.task, **shared, "contrast": contrast, "desc": desc,
                                   "stat": "variance"}, "statmap", ".nii.gz", f"group contrast '{con['name']}'",
                                  self.spec_path, f"{self.task}.group_contrasts")
            chosen[contrast] = {"subjects": subjects, "effect_files": [maps[s]["effect"] for s in subjects],
                                "variance_files": [maps[s]["variance"] for s in subjects]}
        for line in log:
            LOG.info(line)
        return GroupPlan(contrasts=chosen, excluded=excluded, missing=missing,
                         base_entities={"task": self.task, **shared},
                         participants_file=str(participants_file) if participants is not None else None, log=log)

    def _f_without_permutations(self, contrast, group_cons):
        """Log lines for the F tests that get no asked-for permutation method (they test t contrasts only)."""
        asked = [m for m in self.settings["group_inference"] if m in cg.PERMUTATION_METHODS]
        return [f"contrast {contrast}: {', '.join(asked)} not applied to F test '{con['name']}' (permutation "
                "methods test t contrasts only; parametric inference)"
                for con in group_cons if not cg.permutation_applies(con) and asked]

    def _check_min_subjects(self, what, n_maps):
        """group_min_subjects above the model's number of maps would leave no voxel: say so before running."""
        least = self.settings.get("group_min_subjects")
        if least and least > n_maps:
            raise GlmxError(f"group_min_subjects is {least} but {what} has {n_maps} subject map(s); no voxel could "
                            "be modelled", file=self.spec_path, field=f"{self.task}.group_min_subjects")

    def _check_variances(self, contrast, subjects, maps):
        if self.settings["group_model"] != "mixed":
            return
        lacking = [s for s in subjects if not maps[s]["variance"]]
        if lacking:
            raise GlmxError(f"contrast {contrast}: sub-{lacking[0]} has no subject-level stat-variance map "
                            "beside its effect map; group_model 'mixed' needs one per subject",
                            file=maps[lacking[0]]["effect"], field="group_model")

    def _plan_within(self, within, found, expected, excludes, excluded, shared, log):
        """The plan of a paired / repeated-measures model: one model over several first-level contrasts."""
        names = list(within["contrasts"])
        unknown = [c for c in names if c not in found]
        if unknown:
            raise GlmxError(f"group_design names contrast(s) {', '.join(unknown)} without subject maps; contrasts "
                            f"found: {', '.join(found)}", file=self.spec_path, field="group_design.contrasts")
        label = bids_label(within.get("name") or "Vs".join(names))
        pool = expected - excludes
        subjects = sorted(s for s in pool if all(s in found[c] for c in names))
        lacking = sorted(pool - set(subjects))
        if lacking:
            log.append(f"{within['type']} design {label}: " + ", ".join(f"sub-{s}" for s in lacking)
                       + f" lack(s) a map of one of {', '.join(names)}; left out")
        for c in names:
            self._check_variances(c, subjects, found[c])
        rows = [(s, c) for c in names for s in subjects]
        self._check_min_subjects(f"{within['type']} design {label}", len(rows))
        design, main = cg.within_subject_design([s for s, _ in rows], [c for _, c in rows], within["type"],
                                                source=str(self.spec_path))
        log += self._f_without_permutations(label, cg.group_contrasts(
            design.columns, main, self.settings["group_contrasts"], source=str(self.spec_path),
            field=f"{self.task}.group_contrasts"))
        for line in log:
            LOG.info(line)
        plan = {"subjects": [s for s, _ in rows], "conditions": [c for _, c in rows],
                "effect_files": [found[c][s]["effect"] for s, c in rows],
                "variance_files": [found[c][s]["variance"] for s, c in rows]}
        return GroupPlan(contrasts={label: plan}, excluded=excluded, missing={label: lacking},
                         base_entities={"task": self.task, **shared}, participants_file=None, log=log)

    def workflow(self, plan=None, output_dir=True):
        """Build the group workflow with its inputs set (not run).

        Parameters
        ----------
        plan : GroupPlan, optional
            From :meth:`plan` (made if omitted).
        output_dir : bool
            False builds no sinks and no report (for embedding).

        Returns
        -------
        nipype.pipeline.engine.Workflow
            ``group_<task>`` with one ``contrast_<c>`` sub-workflow per contrast.
        """
        plan = plan or self.plan()
        self._template_meshes(plan)
        wf = init_group_level_wf(self.task, list(plan.contrasts), self.settings, self.z_threshold(),
                                 output_dir=str(self.group_dir.resolve()) if output_dir else None,
                                 base_entities=plan.base_entities, excluded=plan.excluded,
                                 name=f"group_{self.task}")
        for contrast, inputs in plan.contrasts.items():
            node = wf.get_node(f"contrast_{contrast}").inputs.inputnode
            node.effect_files = inputs["effect_files"]
            node.variance_files = inputs["variance_files"]
            node.subjects = inputs["subjects"]
            node.conditions = inputs.get("conditions", [])
            node.participants_file = plan.participants_file
            node.missing = plan.missing[contrast]
            node.design_file = inputs.get("design_file")
        return wf

    def _template_meshes(self, plan):
        """fsLR CIFTI maps, a cluster/TFCE method and no ``surface_meshes``: the mesh neighbours come from the
        average of the group's fMRIPrep fsLR midthickness meshes (:func:`glmx_workflows.io.meshes.group_fslr_meshes`);
        without any, the methods are refused here, before any work, saying what to provide."""
        from ..io.geometry import cifti_axes
        from ..io.meshes import FSLR_MESH_DENSITY, MESH_METHODS, group_fslr_meshes

        if self.settings.get("surface_meshes") or not set(self.settings["group_inference"]) & set(MESH_METHODS):
            return
        effects = [f for c in plan.contrasts.values() for f in c["effect_files"]]
        if not effects or not str(effects[0]).endswith(".dscalar.nii") or not any(
                name.startswith("CIFTI_STRUCTURE_CORTEX") for name, _, _ in cifti_axes(effects[0])[1].iter_structures()):
            return
        density = FSLR_MESH_DENSITY.get(str(plan.base_entities.get("den")), "32k")
        subjects = sorted({s for c in plan.contrasts.values() for s in c.get("subjects", [])})
        try:
            meshes, used = group_fslr_meshes(self.layout, subjects, self.work_dir / "fslr_meshes", density)
        except GlmxError:  # no fmriprep derivatives to look in
            meshes, used = None, []
        if meshes is None:
            methods = [m for m in self.settings["group_inference"] if m in MESH_METHODS]
            raise GlmxError(f"{', '.join(methods)} on fsLR maps need the midthickness meshes: none found in fMRIPrep's "
                            f"anatomical derivatives (sub-<s>/anat/sub-<s>_hemi-L|R_space-fsLR_den-{density}_"
                            "midthickness.surf.gii, written with --cifti-output); set 'surface_meshes' to {\"L\": "
                            "\"...surf.gii\", \"R\": \"...surf.gii\"}, or choose a voxel-wise method (perm_fwe, fdr, "
                            "bonferroni, uncorrected)", file=self.spec_path, field=f"{self.task}.surface_meshes")
        self.settings["surface_meshes"] = meshes
        methods = [m for m in self.settings["group_inference"] if m in MESH_METHODS]
        shown = ", ".join("sub-" + s for s in used[:5]) + (", ..." if len(used) > 5 else "")
        line = (f"fsLR mesh neighbours of {', '.join(methods)}: the average midthickness of {len(used)} subject(s) "
                f"from fMRIPrep's anatomical derivatives ({shown})")
        plan.log.append(line)
        LOG.info(line)

    @writes
    def run(self, plugin="MultiProc", plugin_args=None, n_procs=None):
        """Fit every group model and write the maps, tables, figures and report under ``OUTPUT_DIR/group``.

        Parameters
        ----------
        plugin : str
            Nipype plugin (Linear, MultiProc, SLURM, SLURMGraph, SGE, SGEGraph).
        plugin_args : dict, optional
            Passed to the plugin.
        n_procs : int, optional
            Processes for MultiProc.

        Returns
        -------
        GroupResult
            Files written, the report path and the log lines.

        Raises
        ------
        GlmxError
            A bad OUTPUT_DIR or any problem found by :meth:`plan`.
        """
        plan = self.plan()
        start = time.time()
        graph = self._execute(self.workflow(plan), plugin, plugin_args, n_procs, publish_dir=self.group_dir)
        outputs = published_files(graph)
        # a group_design replaces the one-model-per-contrast outputs: its model is all the spec produces
        producible = (list(plan.contrasts) if self.model is None and self.settings.get("group_design")
                      else current_contrasts(self.output_dir, self.task))
        removed = settle_group_outputs(self.output_dir, self.task,
                                       {c: published_files(graph, unit=f"contrast_{c}") for c in plan.contrasts},
                                       sorted(set(outputs).difference(*[published_files(graph, unit=f"contrast_{c}")
                                                                        for c in plan.contrasts])),
                                       producible)
        report = next((f for f in outputs if f.endswith("_report.html")), None)
        build_index(self.output_dir)  # the dataset index links the new group report
        return GroupResult(outputs=outputs, report=report, log=plan.log,
                           written=written_since(outputs, start - 0.05), removed=removed)
