"""load_events: a subject's raw events tables → one normalised events TSV per run."""

import os

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, OutputMultiObject,
                                    SimpleInterface, TraitedSpec, traits)

from ..core.events import conditions_to_drop, normalize_events
from ..io.tables import read_tsv, write_tsv


class LoadEventsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`LoadEvents` (each trait is described by its ``desc``)."""

    events_files = InputMultiObject(File(exists=True), mandatory=True, desc="BIDS events.tsv, one per run")
    condition_identifier = traits.Str("trial_type", usedefault=True, desc="events column used as trial_type")
    modulators = traits.List(traits.Str, usedefault=True, desc="parametric modulator columns")
    block_identifier = traits.Either(None, traits.Str, usedefault=True, desc="block column or None")
    conditions = traits.Either(None, traits.List(traits.Str), usedefault=True,
                               desc="condition values to model (None: all)")
    drop_conditions = traits.List(traits.Str, usedefault=True, desc="condition values left unmodelled")


class LoadEventsOutputSpec(TraitedSpec):
    """Outputs of :class:`LoadEvents` (each trait is described by its ``desc``)."""

    events_files = OutputMultiObject(File(exists=True), desc="normalised events (onset, duration, trial_type, "
                                                             "modulation), one per run, same order")


class LoadEvents(SimpleInterface):
    """Read every run's events, split by block, add centred modulators, write one TSV per run.

    Parameters are the traits of `LoadEventsInputSpec`; outputs those of `LoadEventsOutputSpec`.

    Raises
    ------
    GlmxError
        When an events file is unreadable, a column is missing or malformed, or a modulator has n/a
        values for a modelled event (see `glmx_workflows.core.events.normalize_events`).
    """

    input_spec = LoadEventsInputSpec
    output_spec = LoadEventsOutputSpec

    def _run_interface(self, runtime):
        sources = list(self.inputs.events_files)
        frames = [read_tsv(f, "events file") for f in sources]
        drop = conditions_to_drop(frames, self.inputs.condition_identifier, self.inputs.conditions,
                                  self.inputs.drop_conditions)
        events = normalize_events(frames, sources, self.inputs.condition_identifier, self.inputs.modulators,
                                  self.inputs.block_identifier, drop)
        outs = []
        for i, ev in enumerate(events):
            outs.append(str(write_tsv(ev, os.path.join(runtime.cwd, f"events_{i:03d}.tsv"))))
        self._results["events_files"] = outs
        return runtime
