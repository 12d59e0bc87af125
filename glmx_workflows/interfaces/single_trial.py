"""single_trial: one run's trial-wise betas (LSS or LSA), beta series and beta-series connectivity."""

import json
import os
import re

import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits
from threadpoolctl import threadpool_limits

from ..core import single_trial as st
from ..core.design import frame_times
from ..core.events import conditions_to_drop, modelled_rows
from ..io.atomic import write_text
from ..io.geometry import read_run
from ..io.images import load_image
from ..io.map_series import write_series
from ..io.tables import read_tsv, write_tsv


class SingleTrialInputSpec(BaseInterfaceInputSpec):
    """Inputs of :class:`SingleTrial` (each trait is described by its ``desc``)."""

    bold_file = File(exists=True, mandatory=True, desc="preprocessed BOLD run (4D NIfTI, CIFTI dtseries, or the left "
                                                        "hemisphere's GIfTI)")
    mask_file = File(exists=True, mandatory=True, desc="the run's brain mask (NIfTI), the dtseries itself (CIFTI) or "
                                                       "the right hemisphere's GIfTI (see io.geometry)")
    events_file = File(exists=True, mandatory=True, desc="normalised events TSV from load_events")
    source_events = File(exists=True, mandatory=True, desc="the run's raw BIDS events (columns of the TSVs)")
    design_file = File(exists=True, mandatory=True, desc="the run's main design (all volumes): nuisance columns")
    censor_file = File(exists=True, mandatory=True, desc="kept-volume TSV from select_confounds")
    tr = traits.Float(mandatory=True, desc="repetition time (s)")
    hrf_model = traits.Str("glover", usedefault=True, desc="nilearn HRF model")
    noise_model = traits.Enum("ar1", "ols", usedefault=True, desc="temporal noise model")
    smoothing_fwhm = traits.Either(None, traits.Float, usedefault=True, desc="Gaussian smoothing (mm FWHM)")
    condition_identifier = traits.Str("trial_type", usedefault=True, desc="events column of the conditions")
    conditions = traits.Either(None, traits.List(traits.Str), usedefault=True, desc="modelled conditions")
    drop_conditions = traits.List(traits.Str, usedefault=True, desc="conditions left unmodelled")
    modulators = traits.List(traits.Str, usedefault=True, desc="modulator columns (left out of these models)")
    single_trial = traits.Str(mandatory=True, desc="JSON of the resolved single_trial key")
    space = traits.Str("", usedefault=True, desc="space of the BOLD (coordinate atlases need MNI)")
    spec_dir = traits.Str("", usedefault=True, desc="folder against which relative atlas paths are read")
    num_threads = traits.Int(1, usedefault=True, desc="BLAS threads")


class SingleTrialOutputSpec(TraitedSpec):
    """Outputs of :class:`SingleTrial` (each trait is described by its ``desc``)."""

    manifest_file = File(exists=True, desc="JSON list of the beta series (and connectivity) files with entities")
    summary_file = File(exists=True, desc="JSON for the report: design shown, per-trial beta summaries, outliers")


def _trial_names(onsets):
    """A name per map of a beta series: ``trial-<n>_onset-<s>`` (n from 1: the row of the series' TSV)."""
    return [f"trial-{i + 1:03d}_onset-{float(o):g}" for i, o in enumerate(onsets)]


def _label(value):
    """A condition as a BIDS label (letters and digits)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(value)) or "condition"


class SingleTrial(SimpleInterface):
    """Fit the run's single-trial models and write one beta series per condition.

    Raises
    ------
    GlmxError
        A condition with fewer than 2 trials, a trial outside the run or wholly in censored volumes,
        LSA with too few kept volumes, or a bad atlas.
    """

    input_spec = SingleTrialInputSpec
    output_spec = SingleTrialOutputSpec

    def _run_interface(self, runtime):
        with threadpool_limits(limits=max(int(self.inputs.num_threads), 1)):
            return self._fit(runtime)

    def _fit(self, runtime):
        opts = json.loads(self.inputs.single_trial)
        src = self.inputs.source_events
        keep = read_tsv(self.inputs.censor_file)["kept"].to_numpy(bool)
        events = read_tsv(self.inputs.events_file)
        design = read_tsv(self.inputs.design_file)
        n_scans, tr = len(design), float(self.inputs.tr)
        trials, _ = st.trial_table(events, self.inputs.modulators, opts["conditions"])
        nuisance = st.nuisance_columns(design, sorted(set(trials["trial_type"])), self.inputs.modulators)
        raw = st.raw_trial_regressors(trials["onset"], trials["duration"], frame_times(n_scans, tr), tr,
                                      self.inputs.hrf_model)
        k = raw.shape[2]
        st.check_trials(trials, n_scans, tr, keep, opts["method"], nuisance.shape[1], k, source=src)
        # read as the main fit reads it, whatever the form (io.geometry): percent signal change, kept volumes
        Y, _, geometry = read_run(self.inputs.bold_file, self.inputs.mask_file, keep, self.inputs.smoothing_fwhm)
        if opts["method"] == "lsa":
            shown = st.lsa_design(raw, trials, nuisance)
            betas = st.fit_lsa(Y, shown.to_numpy(float)[keep], len(trials), k, self.inputs.noise_model)
        else:
            groups, _ = st.trial_groups(trials, opts["others"])
            betas = st.fit_lss(Y, raw, groups, nuisance.to_numpy(float), keep, self.inputs.noise_model)
            shown = st.lss_design(raw, trials, nuisance, 0, opts["others"])
        del Y

        table = self._trial_rows(trials)
        atlas = None
        if opts.get("atlas") is not None:
            from ..io.atlases import load_atlas

            atlas = load_atlas(opts["atlas"], load_image(self.inputs.bold_file, "BOLD run"), self.inputs.bold_file,
                               space=self.inputs.space or None, base_dir=self.inputs.spec_dir or None,
                               mask_path=self.inputs.mask_file)
        manifest, summary = [], {"method": opts["method"], "others": opts["others"], "conditions": {}}
        design_path = write_tsv(shown, os.path.join(runtime.cwd, "single_trial_design.tsv"))
        summary["design_file"] = str(design_path)
        summary["design_kept"] = [bool(x) for x in keep]
        for cond in sorted(set(trials["trial_type"])):
            rows = np.flatnonzero((trials["trial_type"] == cond).to_numpy())
            label = _label(cond)
            # one map per trial in the run's own form (io.map_series): 4D NIfTI, CIFTI dscalar, GIfTI per hemisphere
            written = write_series(geometry, betas[rows], os.path.join(runtime.cwd, f"desc-{label}_betaseries"),
                                   _trial_names(trials["onset"].to_numpy()[rows]))
            tsv = str(write_tsv(table.iloc[rows].reset_index(drop=True),
                                os.path.join(runtime.cwd, f"desc-{label}_betaseries.tsv")))
            # a GIfTI pair travels as its left file (io.derivatives.publish writes both hemispheres)
            manifest += [{"path": written[0][0], "entities": {"desc": label}, "suffix": "betaseries"},
                         {"path": tsv, "entities": {"desc": label}, "suffix": "betaseries"}]
            rms, z, flagged = st.outlier_trials(betas[rows])
            summary["conditions"][cond] = {
                "label": label, "onset": trials["onset"].to_numpy()[rows].tolist(), "rms": rms.tolist(),
                "robust_z": z.tolist(), "outlier": flagged.tolist(),
                "quantiles": np.percentile(betas[rows], [1, 25, 50, 75, 99], axis=1).T.tolist()}
            if atlas is not None:
                manifest += self._connectivity(atlas, betas[rows], geometry, label, runtime.cwd)
        self._results["manifest_file"] = str(write_text(os.path.join(runtime.cwd, "manifest.json"),
                                                        json.dumps(manifest, indent=1)))
        self._results["summary_file"] = str(write_text(os.path.join(runtime.cwd, "summary.json"),
                                                       json.dumps(summary, indent=1)))
        return runtime

    def _trial_rows(self, trials):
        """onset, duration, trial_type and the raw events' other columns of every trial (trials' order)."""
        raw = read_tsv(self.inputs.source_events, "events file")
        drop = conditions_to_drop([raw], self.inputs.condition_identifier, self.inputs.conditions,
                                  self.inputs.drop_conditions)
        kept = raw.loc[modelled_rows(raw, self.inputs.condition_identifier, drop)].reset_index(drop=True)
        extra = kept.iloc[trials["row"].to_numpy()].reset_index(drop=True)
        extra = extra.drop(columns=[c for c in ("onset", "duration", "trial_type") if c in extra.columns])
        base = trials[["onset", "duration", "trial_type"]].reset_index(drop=True)
        return pd.concat([base, extra], axis=1)

    @staticmethod
    def _connectivity(atlas, betas, geometry, label, cwd):
        from ..core.connectivity import connectivity
        from ..io.atlases import region_signals
        from .connectivity import write_matrix

        if geometry.form == "volume":
            from ..io.images import unmask_series

            data, affine = np.asarray(unmask_series(betas, geometry.mask, geometry.affine).dataobj), geometry.affine
        else:  # locations × trials over every grayordinate / vertex; parcels average the fitted ones
            data, affine = np.zeros((len(geometry.mask), betas.shape[0])), None
            data[geometry.mask] = betas.T
        signals, names = region_signals(atlas, data, affine, geometry.mask)
        matrix = connectivity(signals, "pearsoncorrelation")
        ent = {"seg": atlas.name, "desc": label}
        rel = str(write_matrix(matrix, names, os.path.join(cwd, f"seg-{atlas.name}_desc-{label}_relmat.tsv")))
        series = pd.DataFrame(signals, columns=list(names))
        mean = str(write_tsv(series, os.path.join(cwd, f"seg-{atlas.name}_desc-{label}_stat-mean_betaseries.tsv")))
        return [{"path": rel, "entities": {**ent, "stat": "pearsoncorrelation"}, "suffix": "relmat"},
                {"path": mean, "entities": {**ent, "stat": "mean"}, "suffix": "betaseries"}]
