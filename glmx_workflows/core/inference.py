"""The one list of group inference methods (spec schema, CLI choices, workflow, report and
:mod:`glmx_workflows.core.group` read it).

Kept apart from :mod:`glmx_workflows.core.group` so that reading the spec or parsing the command line does
not import scipy.stats and pandas (about a second of every ``glmx`` start).
"""

#: Parametric methods threshold the group z/p maps.
PARAMETRIC_METHODS = ("uncorrected", "fdr", "bonferroni", "cluster")
#: Permutation methods run :func:`glmx_workflows.core.group.permutation_inference`.
PERMUTATION_METHODS = ("perm_fwe", "perm_cluster_mass", "tfce")
INFERENCE_METHODS = PARAMETRIC_METHODS + PERMUTATION_METHODS
