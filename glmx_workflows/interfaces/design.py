"""build_design: events + confounds + run length → the run's design matrix (TSV and figure)."""

import json
import os

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..core.design import run_design
from ..io.atomic import write_text
from ..io.images import bold_length
from ..io.tables import read_tsv, write_tsv


class BuildDesignInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`BuildDesign` (each trait is described by its ``desc``)."""

    events_file = File(exists=True, mandatory=True, desc="normalised events TSV from load_events")
    confounds_file = File(exists=True, mandatory=True, desc="selected confounds TSV from select_confounds")
    censor_file = File(exists=True, mandatory=True, desc="kept-volume TSV from select_confounds")
    bold_file = File(exists=True, mandatory=True, desc="the run's BOLD (for its number of volumes)")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    hrf_model = traits.Str("glover", usedefault=True, desc="nilearn HRF model")
    drift_model = traits.Either(None, traits.Str, default="cosine", usedefault=True, desc="cosine | polynomial")
    high_pass = traits.Float(0.01, usedefault=True, desc="high-pass cut-off (Hz)")
    drift_order = traits.Int(1, usedefault=True, desc="polynomial drift order")
    user_design_file = traits.Either(None, File(exists=True), usedefault=True,
                                     desc="a user's own design TSV replacing the built one")
    source_events = traits.Str("", usedefault=True, desc="raw events file, named in messages")


class BuildDesignOutputSpec(TraitedSpec):
    """Outputs of :class:`BuildDesign` (each trait is described by its ``desc``)."""

    design_file = File(exists=True, desc="design matrix TSV, one row per volume")
    figure_file = File(exists=True, desc="design matrix figure (SVG)")
    manifest_file = File(exists=True, desc="JSON list of the files to publish with their BIDS suffix")


class BuildDesign(SimpleInterface):
    """Make (or check the user's) design matrix and refuse one that cannot be estimated.

    Parameters are the traits of `BuildDesignInputSpec`; outputs those of `BuildDesignOutputSpec`.

    Raises
    ------
    GlmxError
        When a user design has the wrong number of rows or non-numeric/n/a values, an event starts
        after the run ends, or the design (on the kept volumes) cannot be estimated.
    """

    input_spec = BuildDesignInputSpec
    output_spec = BuildDesignOutputSpec

    def _run_interface(self, runtime):
        n_scans = bold_length(self.inputs.bold_file)
        keep = read_tsv(self.inputs.censor_file)["kept"].to_numpy(bool)
        user_design = src = None
        if self.inputs.user_design_file:
            src = self.inputs.user_design_file
            user_design = read_tsv(src, "design matrix")
            events = confounds = None
        else:
            events = read_tsv(self.inputs.events_file)
            confounds = read_tsv(self.inputs.confounds_file)
        design = run_design(n_scans, self.inputs.tr, keep, events, confounds, user_design, self.inputs.hrf_model,
                            self.inputs.drift_model, self.inputs.high_pass, self.inputs.drift_order,
                            events_source=self.inputs.source_events or self.inputs.events_file, design_source=src,
                            bold=self.inputs.bold_file)
        design_file = write_tsv(design, os.path.join(runtime.cwd, "design.tsv"))
        from ..reports.figures import plot_design  # matplotlib.pyplot: only where a design is drawn

        figure_file = plot_design(design, os.path.join(runtime.cwd, "design.svg"))
        manifest = [{"path": str(design_file), "entities": {}, "suffix": "design"},
                    {"path": str(figure_file), "entities": {}, "suffix": "design"}]
        self._results.update(design_file=str(design_file), figure_file=str(figure_file),
                             manifest_file=str(write_text(os.path.join(runtime.cwd, "manifest.json"),
                                                          json.dumps(manifest, indent=1))))
        return runtime
