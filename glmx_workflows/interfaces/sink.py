"""ds_*: publish a node's files under OUTPUT_DIR with BIDS-Derivatives names."""

import json

from nipype.interfaces.base import (BaseInterfaceInputSpec, Directory, File, OutputMultiObject, SimpleInterface,
                                    TraitedSpec, traits)

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
        with open(self.inputs.manifest_file) as fh:
            manifest = json.load(fh)
        self._results["out_files"] = publish(manifest, dict(self.inputs.entities), self.inputs.out_dir)
        return runtime
