"""select_confounds: fmriprep confounds table → the model's confound regressors and kept volumes."""

import os

import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from ..core.confounds import MIN_VOLUMES, censor_table, check_confounds_rows, select_confounds
from ..io.images import bold_length
from ..io.tables import read_tsv, write_tsv


class SelectConfoundsInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`SelectConfounds` (each trait is described by its ``desc``)."""

    confounds_file = File(exists=True, mandatory=True, desc="fmriprep desc-confounds_timeseries.tsv")
    bold_file = File(exists=True, mandatory=True, desc="the run's BOLD (its length is checked)")
    confound_regressors = traits.List(traits.Str, usedefault=True, desc="column names or shell wildcards")
    include_motion_outliers = traits.Bool(False, usedefault=True, desc="add motion_outlier* columns")
    non_steady_state = traits.Bool(False, usedefault=True, desc="add non_steady_state_outlier* columns")
    dummy_scans = traits.Int(0, usedefault=True, desc="leading volumes left out of the fit")
    fd_threshold = traits.Either(None, traits.Float, usedefault=True, desc="censor volumes with FD above (mm)")
    min_volumes = traits.Int(MIN_VOLUMES, usedefault=True, desc="refuse the run when fewer volumes remain")


class SelectConfoundsOutputSpec(TraitedSpec):
    """Outputs of :class:`SelectConfounds` (each trait is described by its ``desc``)."""

    confounds_file = File(exists=True, desc="selected, NaN-filled regressors (n_scans rows)")
    censor_file = File(exists=True, desc="TSV: volume, kept (1/0), reason")


class SelectConfounds(SimpleInterface):
    """Pick the spec's confound columns, fill NaNs, and decide which volumes the fit keeps.

    Parameters are the traits of `SelectConfoundsInputSpec`; outputs those of
    `SelectConfoundsOutputSpec`.

    Raises
    ------
    GlmxError
        When the confounds table is unreadable, its row count differs from the BOLD run's volumes, a
        requested pattern matches no column, a column is non-numeric or all n/a, or too few volumes
        are left after censoring.
    """

    input_spec = SelectConfoundsInputSpec
    output_spec = SelectConfoundsOutputSpec

    def _run_interface(self, runtime):
        src = self.inputs.confounds_file
        table = read_tsv(src, "confounds file")
        n_scans = bold_length(self.inputs.bold_file)
        check_confounds_rows(table, n_scans, src, self.inputs.bold_file)
        chosen = select_confounds(table, self.inputs.confound_regressors, self.inputs.include_motion_outliers,
                                  self.inputs.non_steady_state, source=src)
        outliers = censor_table(table, n_scans, self.inputs.dummy_scans, self.inputs.fd_threshold,
                                self.inputs.min_volumes, source=src)
        censor = pd.DataFrame({"volume": range(n_scans), "kept": 1 - outliers["censored"],
                               "reason": outliers["reason"].replace("n/a", "")})
        self._results["confounds_file"] = str(write_tsv(chosen, os.path.join(runtime.cwd, "confounds.tsv")))
        self._results["censor_file"] = str(write_tsv(censor, os.path.join(runtime.cwd, "censor.tsv")))
        return runtime
