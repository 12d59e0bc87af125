"""ds_*: publish a node's files under OUTPUT_DIR with BIDS-Derivatives names."""

import json

from nipype.interfaces.base import (BaseInterfaceInputSpec, Directory, File, InputMultiObject, OutputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..io.derivatives import publish


class DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`DerivativesSink` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, mandatory=True, desc="JSON list of {path, entities, suffix}")
    entities = traits.Dict(traits.Str, traits.Str, mandatory=True, desc="base entities: sub, ses, task, run, space")
    out_dir = Directory(mandatory=True, desc="OUTPUT_DIR of the derivatives dataset")
    wait_for = traits.Any(desc="connect the unit's last node: nothing is published until the whole unit "
                               "(e.g. a subject) has succeeded")


class DerivativesSinkOutputSpec(TraitedSpec):
    """Outputs of :class:`DerivativesSink` (each trait is described by its ``desc``)."""

    out_files = OutputMultiObject(File(exists=True), desc="published files")


class DerivativesSink(SimpleInterface):
    """Copy each listed file to ``OUTPUT_DIR/sub-<s>/[ses-<x>/]func/<BIDS name>`` atomically.

    Parameters are the traits of `DerivativesSinkInputSpec`; outputs those of
    `DerivativesSinkOutputSpec`.
    """

    input_spec = DerivativesSinkInputSpec
    output_spec = DerivativesSinkOutputSpec

    def _run_interface(self, runtime):
        self._results["out_files"] = _publish_manifest(self.inputs.manifest_file, self.inputs.entities,
                                                       self.inputs.out_dir)
        return runtime


def _publish_manifest(manifest_file, entities, out_dir):
    """Publish the files a manifest lists under ``entities`` into ``out_dir``; their published paths."""
    with open(manifest_file) as fh:
        return publish(json.load(fh), dict(entities), out_dir)


class SubjectSinkInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`SubjectSink` (each trait is described by its ``desc``)."""

    out_dir = Directory(mandatory=True, desc="OUTPUT_DIR: designs, run maps, single-trial maps and the report")
    subject_out_dir = Directory(desc="where the subject-level maps go (default: out_dir)")
    session_out_dir = Directory(desc="where the session-level maps go (default: out_dir)")
    run_design_entities = traits.List(traits.Dict(traits.Str, traits.Str), mandatory=True,
                                      desc="base entities of each run's design")
    run_map_entities = traits.List(traits.Dict(traits.Str, traits.Str), mandatory=True,
                                   desc="base entities of each run's maps")
    subject_entities = traits.Dict(traits.Str, traits.Str, mandatory=True,
                                   desc="base entities of the subject-level files (maps, report)")
    design_manifests = InputMultiObject(File(exists=True), mandatory=True, desc="per run: its design's manifest")
    run_manifests = InputMultiObject(File(exists=True), desc="per run: its maps' manifest")
    subject_manifest = File(exists=True, mandatory=True, desc="the subject-level maps' manifest")
    report_manifest = File(exists=True, desc="the report's manifest")
    single_trial_manifests = InputMultiObject(File(exists=True), desc="per run: its beta series' manifest")
    session_manifest = File(exists=True, desc="the session-level maps' manifest")


class SubjectSink(SimpleInterface):
    """Publish everything a first-level subject produced, in one node (as :class:`DerivativesSink` does per
    manifest): designs, run maps, subject maps, report, beta series, session maps, in that order.

    One node instead of a sink per kind of file and per run: sinks run on every run of the subject (so
    that a deleted output is written again), and nipype's bookkeeping of a node (hashing, result and
    report files) cost far more than copying the few files that differ.

    Parameters are the traits of `SubjectSinkInputSpec`; outputs those of `DerivativesSinkOutputSpec`.
    """

    input_spec = SubjectSinkInputSpec
    output_spec = DerivativesSinkOutputSpec

    def _run_interface(self, runtime):
        ins = self.inputs
        out_dir = ins.out_dir

        def opt(value, default=None):
            return value if isdefined(value) else default

        groups = [(ins.design_manifests, ins.run_design_entities, out_dir),
                  (opt(ins.run_manifests, []), ins.run_map_entities, out_dir),
                  ([ins.subject_manifest], [ins.subject_entities], opt(ins.subject_out_dir, out_dir)),
                  ([ins.report_manifest] if isdefined(ins.report_manifest) else [], [ins.subject_entities], out_dir),
                  (opt(ins.single_trial_manifests, []), ins.run_map_entities, out_dir),
                  ([ins.session_manifest] if isdefined(ins.session_manifest) else [], [ins.subject_entities],
                   opt(ins.session_out_dir, out_dir))]
        files = []
        for manifests, entities, folder in groups:
            if len(manifests) and len(manifests) != len(entities):
                raise ValueError(f"{len(manifests)} manifests for {len(entities)} entity sets")
            for manifest_file, ents in zip(manifests, entities):
                files.extend(_publish_manifest(manifest_file, ents, folder))
        self._results["out_files"] = files
        return runtime
