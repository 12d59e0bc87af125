"""glmx_workflows: task GLMs and resting-state connectivity on BIDS + fmriprep data, as Nipype workflows."""

__version__ = "0.1.0"
