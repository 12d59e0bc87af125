"""``glmx BIDS_DIR OUTPUT_DIR participant|group --task T`` for a task whose spec entry says
``"analysis": "connectivity"``."""

from pathlib import Path

from ..core.errors import GlmxError


def is_connectivity(args):
    """True when the task's spec entry is a connectivity analysis (a missing spec or task is left to the
    GLM path, which reports it).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``glmx`` arguments (``spec``, ``bids_dir``, ``task`` are read).

    Returns
    -------
    bool
        True when the task's entry has ``"analysis": "connectivity"``.
    """
    from ..spec.model import load_spec

    spec_path = Path(args.spec) if args.spec else Path(args.bids_dir) / "task_information.json"
    try:
        spec = load_spec(spec_path)
    except GlmxError:
        return False
    return spec.get(args.task, {}).get("analysis") == "connectivity"


def run_rest(args):
    """Run the participant or group level of a connectivity task; return the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``glmx`` arguments.

    Returns
    -------
    int
        0 when every subject (or the group step) succeeded, 1 when some subject failed.

    Raises
    ------
    GlmxError
        When GLM-only options are given for a connectivity task, ``--plugin-args`` is invalid, or
        the inputs are not usable (printed by :func:`glmx_workflows.cli.run.main`).
    """
    from ..api.rest import RestingStateDataset, RestingStateGroup
    from .options import plugin_options
    from .outcome import finish

    unsupported = [opt for opt, value in (("--design-dir", args.design_dir),) if value is not None]
    if args.analysis_level == "group":
        unsupported += ["--" + n.replace("_", "-") for n in ("inference", "n_permutations", "contrast",
                                                             "group_smoothing_fwhm") if getattr(args, n, None)]
    else:
        from .group import group_options_given

        unsupported += group_options_given(args)
    if unsupported:
        raise GlmxError(f"{', '.join(unsupported)} do not apply to connectivity task '{args.task}'", field=args.task)
    plugin_args = plugin_options(args)
    if args.analysis_level == "group":
        group = RestingStateGroup(args.task, args.bids_dir, spec=args.spec, output_dir=args.output_dir,
                          work_dir=args.work_dir, participant_label=args.participant_label)
        outputs = group.run(plugin=args.plugin, plugin_args=plugin_args, n_procs=args.n_procs)
        removed = f", {len(group.removed)} outdated file(s) removed" if group.removed else ""
        print(f"{len(outputs)} group file(s) written under {Path(args.output_dir) / 'group'}{removed}")
        return 0
    dataset = RestingStateDataset(args.bids_dir, args.task, spec=args.spec, derivatives=args.derivatives,
                                  output_dir=args.output_dir, work_dir=args.work_dir,
                                  participant_label=args.participant_label)
    report = dataset.run(plugin=args.plugin, plugin_args=plugin_args, n_procs=args.n_procs,
                         progress=not args.quiet)
    return finish(report)
