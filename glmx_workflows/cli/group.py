"""``glmx BIDS_DIR OUTPUT_DIR group --task T``: the group level from the command line."""

import sys

from ..spec.group_keys import INFERENCE_METHODS

GROUP_ONLY = ("inference", "n_permutations", "seed", "contrast", "group_smoothing_fwhm", "group_model",
              "group_mixed_test", "group_min_subjects")


def add_group_arguments(parser):
    """Options of the group level (ignored by ``participant``, which refuses them).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Parser to add the ``group level`` argument group to.
    """
    grp = parser.add_argument_group("group level")
    grp.add_argument("--inference", nargs="+", metavar="METHOD",
                     choices=INFERENCE_METHODS,
                     help="thresholded/corrected maps (default: the spec's group_inference): "
                          + ", ".join(INFERENCE_METHODS))
    grp.add_argument("--n-permutations", type=int, help="permutations for perm_* and tfce (spec: group_n_permutations)")
    grp.add_argument("--seed", type=int, help="seed of the permutations (spec: group_seed)")
    grp.add_argument("--contrast", nargs="+", metavar="NAME",
                     help="first-level contrasts to model (default: every contrast with subject maps)")
    grp.add_argument("--group-smoothing-fwhm", type=float, help="smooth subject maps (mm FWHM) before the group fit")
    grp.add_argument("--group-model", choices=["ols", "mixed"],
                     help="group model (spec: group_model): ols, or mixed effects with the subjects' variance maps")
    grp.add_argument("--group-mixed-test", choices=["knapp-hartung", "wald"],
                     help="test of mixed-effects contrasts (spec: group_mixed_test): knapp-hartung (default) or wald, "
                          "the model-based covariance of FSL FLAME1")
    grp.add_argument("--group-min-subjects", type=int, metavar="K",
                     help="model each voxel with the subjects defined there when at least K are (spec: "
                          "group_min_subjects)")


def group_options_given(args):
    """Names of group-only options set on the command line (for refusing them at the participant level).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.

    Returns
    -------
    list of str
        Option names as typed (``--n-permutations``, ...).
    """
    return ["--" + name.replace("_", "-") for name in GROUP_ONLY if getattr(args, name, None) is not None]


def run_group(args):
    """Run the group level from parsed arguments; return the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of ``glmx BIDS_DIR OUTPUT_DIR group``.

    Returns
    -------
    int
        0 (errors are raised as ``GlmxError`` and turned into exit code 2 by the CLI).
    """
    from ..api.group import GroupLevel
    from .options import plugin_options

    plugin_args = plugin_options(args)
    group = GroupLevel(args.task, args.bids_dir, spec=args.spec, output_dir=args.output_dir, work_dir=args.work_dir,
                       contrasts=args.contrast, participant_label=args.participant_label,
                       model=getattr(args, "model", None), derivatives=args.derivatives,
                       group_inference=args.inference, group_n_permutations=args.n_permutations,
                       group_seed=args.seed, group_smoothing_fwhm=args.group_smoothing_fwhm,
                       group_model=args.group_model, group_mixed_test=args.group_mixed_test,
                       group_min_subjects=args.group_min_subjects)
    result = group.run(plugin=args.plugin, plugin_args=plugin_args, n_procs=args.n_procs)
    print(result.summary())
    sys.stdout.flush()
    return 0
