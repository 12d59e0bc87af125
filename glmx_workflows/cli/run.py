"""The ``glmx`` command.

BIDS-App form::

    glmx BIDS_DIR OUTPUT_DIR participant --task T [options]

Utility commands::

    glmx example DIR            write a small simulated fmriprep-style BIDS dataset
    glmx init BIDS_DIR          write a starter task_information.json
    glmx validate BIDS_DIR      check the spec and the inputs without fitting
"""

import argparse
import gc
import os
import sys
from pathlib import Path

from .. import __version__
from ..core.errors import GlmxError

COMMANDS = ("example", "init", "validate")


_EPILOG = """\
Entries of the spec with "analysis": "connectivity" run resting-state connectivity instead of a GLM.

outputs under OUTPUT_DIR (BIDS Derivatives):
  sub-<s>/func/sub-<s>_task-<t>[_run-<r>]_space-<sp>_contrast-<c>_stat-<stat>_statmap.nii.gz
  sub-<s>/sub-<s>_task-<t>_report.html   the subject's report (design diagnostics, maps, clusters)
  group/task-<t>_...                      group level maps, cluster tables and report
  index.html                              every report; subjects x contrasts: done / failed / excluded

exit status: 0 every subject done; 1 some subject failed (each named with its reason and crash
file); 2 bad input, an OUTPUT_DIR or work dir touching an input, or a folder in use by another glmx
run (one line on stderr naming the file and field; --debug for the traceback); 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM): nothing of the run recorded as failed; 141 stdout closed by its reader.

examples:
  glmx example /tmp/ex && glmx /tmp/ex /tmp/out participant --task flanker
  glmx /tmp/ex /tmp/out group --task flanker --inference fdr tfce
  glmx BIDS_DIR OUT participant --task flanker --plugin SLURM --plugin-args configs/slurm.yml
"""


def _app_parser():
    p = argparse.ArgumentParser(
        prog="glmx",
        description="First-level task GLMs on BIDS datasets preprocessed by fmriprep, as Nipype workflows. "
                    "Other commands: 'glmx example DIR', 'glmx init BIDS_DIR', 'glmx validate BIDS_DIR' "
                    "(each has --help).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bids_dir", type=Path, help="the raw BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where the BIDS-Derivatives outputs are written")
    p.add_argument("analysis_level", choices=["participant", "group"],
                   help="'participant': first level per subject; 'group': second level over OUTPUT_DIR's subject maps")
    p.add_argument("--task", help="task to model (a key of the spec); required unless --model gives it")
    p.add_argument("--spec", type=Path, help="task_information.json (default: BIDS_DIR/task_information.json); "
                                             "a BIDS Stats Models document here is read as --model")
    p.add_argument("--model", type=Path, metavar="MODEL.json",
                   help="a BIDS Stats Models file (model-<name>_smdl.json) instead of task_information.json; its "
                        "nodes publish under OUTPUT_DIR/node-<name>/")
    p.add_argument("--derivatives", type=Path,
                   help="fmriprep derivatives folder (default: BIDS_DIR/derivatives/fmriprep)")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="subjects to run, with or without 'sub-' (default: every subject not excluded)")
    p.add_argument("--work-dir", type=Path, help="Nipype work directory holding the node cache "
                                                 "(default: OUTPUT_DIR + '_work')")
    p.add_argument("--n-procs", type=int, help="processes for the MultiProc plugin (default: all cores)")
    p.add_argument("--design-dir", type=Path,
                   help="folder of user design matrices named ..._run-<r>_design.tsv (one per run)")
    p.add_argument("--plugin", default="MultiProc",
                   choices=["Linear", "MultiProc", "SLURM", "SLURMGraph", "SGE", "SGEGraph"],
                   help="Nipype execution plugin (default MultiProc)")
    p.add_argument("--plugin-args", metavar="JSON_OR_FILE",
                   help="plugin arguments: inline JSON or a YAML file (see configs/slurm.yml, configs/sge.yml)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("-v", "--verbose", action="store_true", help="show nipype's own log")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"glmx {__version__}")
    from .group import add_group_arguments

    add_group_arguments(p)
    return p


def _example_parser():
    p = argparse.ArgumentParser(prog="glmx example",
                                description="Write a small simulated BIDS dataset with fmriprep-style derivatives, "
                                            "events with a parametric modulator, confounds and planted effects, "
                                            "plus its task_information.json.")
    p.add_argument("dir", type=Path, help="folder to create")
    p.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rest", action="store_true",
                   help="also write simulated resting-state runs (task 'rest', two planted networks) and its "
                        "connectivity entry in task_information.json")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _validate_parser():
    p = argparse.ArgumentParser(prog="glmx validate",
                                description="Check the spec and every subject's inputs without fitting (files, TR, "
                                            "events, confound patterns, masks, designs, contrasts); report every "
                                            "problem at once. Exit 0 when all is well, 1 otherwise.")
    p.add_argument("bids_dir", type=Path, nargs="?", help="the raw BIDS dataset (optional with --model: the model "
                                                          "alone is checked against the schema)")
    p.add_argument("--spec", type=Path, help="task_information.json (default: BIDS_DIR/task_information.json)")
    p.add_argument("--model", type=Path, metavar="MODEL.json",
                   help="check a BIDS Stats Models file: every schema and support problem with its JSON path, "
                        "then (with BIDS_DIR) its designs and contrasts on the dataset")
    p.add_argument("--task", nargs="+", help="tasks to check (default: every task of the spec)")
    p.add_argument("--derivatives", type=Path, help="fmriprep derivatives folder")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL", help="subjects to check (default: all)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _init_parser():
    p = argparse.ArgumentParser(prog="glmx init",
                                description="Write a starter task_information.json: one entry per task found, TR "
                                            "from the sidecars, the condition column and its trial types, and "
                                            "motion/CompCor confound patterns that exist in the confounds files.")
    p.add_argument("bids_dir", type=Path, help="the raw BIDS dataset")
    p.add_argument("--spec", type=Path, help="where to write (default: BIDS_DIR/task_information.json)")
    p.add_argument("--derivatives", type=Path, help="fmriprep derivatives folder")
    p.add_argument("--force", action="store_true", help="overwrite an existing spec file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _cmd_validate_model(args):
    """``glmx validate --model``: every problem of the model file, one per line (exit 2 when any)."""
    from ..spec.bsm import model_problems, read_model_file

    problems = model_problems(read_model_file(args.model))
    for path, message in problems:
        print(f"PROBLEM  {args.model}: {path}: {message}")
    if not problems and args.bids_dir is not None:
        from ..api import Aggregator

        agg = Aggregator(args.bids_dir, model=args.model, derivatives=args.derivatives,
                         participant_label=args.participant_label, output_dir=args.bids_dir / "derivatives" / "glmx")
        graph = agg.model_graph(agg.subjects()[0])  # designs and contrasts of every subject, checked on the data
        for node in graph.nodes:
            print(f"ok       node {node}: {len(graph.outputs[node])} design(s)")
    if problems:
        print(f"glmx: error: {len(problems)} problem(s) in the model; the first: {problems[0][0]}: "
              f"{problems[0][1]}", file=sys.stderr)
        return 2
    print(f"model {args.model} ok")
    return 0


def _cmd_validate(args):
    from ..api.dataset import validate_dataset

    if args.model is not None:
        return _cmd_validate_model(args)
    if args.bids_dir is None:
        raise GlmxError("BIDS_DIR is required (or --model MODEL.json to check a model file)", field="BIDS_DIR")

    checked, problems = validate_dataset(args.bids_dir, args.spec, args.derivatives, args.task,
                                         args.participant_label)
    for task, sub, summary in checked:
        print(f"ok       {task} sub-{sub}: {summary}")
    for task, sub, message in problems:
        where = " ".join(x for x in (task, f"sub-{sub}" if sub else None) if x)
        print(f"PROBLEM  {where}: {message}")
    print(f"{len(checked)} subject-task pair(s) ok, {len(problems)} problem(s)")
    if problems:
        print(f"glmx: error: {len(problems)} problem(s) found; the first: {problems[0][2]}", file=sys.stderr)
        return 1
    return 0


def _cmd_init(args):
    from ..api.dataset import write_starter_spec

    path, spec = write_starter_spec(args.bids_dir, args.spec, args.derivatives, args.force)
    print(f"wrote {path} with task(s): {', '.join(spec)}")
    return 0


def _cmd_example(args):
    from ..engine.safety import check_new_dataset_dir
    from ..io.example import make_example_dataset

    check_new_dataset_dir(args.dir)
    out = make_example_dataset(args.dir, n_subjects=args.subjects, seed=args.seed)
    if args.rest:
        from ..io.example_rest import add_rest_runs

        add_rest_runs(out, seed=args.seed)
    print(f"example dataset written to {out}")
    print(f"next: glmx {out} {out}/derivatives/glmx participant --task flanker")
    if args.rest:
        print(f"      glmx {out} {out}/derivatives/glmx participant --task rest")
    return 0


def _cmd_participant(args):
    from ..api import Aggregator
    from .options import plugin_options
    from .outcome import finish

    plugin_args = plugin_options(args)
    agg = Aggregator(args.bids_dir, args.task, spec=args.spec, derivatives=args.derivatives,
                     output_dir=args.output_dir, work_dir=args.work_dir, participant_label=args.participant_label,
                     design_dir=args.design_dir, model=args.model)
    report = agg.run(plugin=args.plugin, plugin_args=plugin_args, n_procs=args.n_procs, progress=not args.quiet)
    return finish(report)


def main(argv=None):
    """Entry point of the ``glmx`` console script; returns the exit code.

    Dispatches to ``example``, ``init``, ``validate``, resting-state, group or participant runs.
    A GlmxError is printed as one ``glmx: error: ...`` line (re-raised with ``--debug``).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 every subject done; 1 some subject failed; 2 bad input (a GlmxError); 130 interrupted by SIGINT
        (Ctrl-C), 143 by SIGTERM.
    """
    import signal

    from ..engine.run import Interrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # nipype asks a web service for its latest version when the first interface is made (a request per run,
    # ~0.2 s offline, up to its timeout on a slow network, and from every cluster job)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    # the stream as it is now: a run interrupted inside a block that redirects sys.stderr leaves it redirected
    stderr = sys.stderr

    def terminate(signum, frame):
        raise Interrupted(signum)

    # SIGTERM (kill, scancel) ends a run as Ctrl-C does: locks released, nothing recorded as failed
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous_term = signal.signal(signal.SIGTERM, terminate)
    else:
        previous_term = None
    try:
        if argv and argv[0] in COMMANDS:
            cmd = argv[0]
            parser, command = {"example": (_example_parser, _cmd_example), "init": (_init_parser, _cmd_init),
                               "validate": (_validate_parser, _cmd_validate)}[cmd]
            return command(parser().parse_args(argv[1:]))
        args = _app_parser().parse_args(argv)
        from .group import group_options_given, run_group
        from .rest import is_connectivity, run_rest

        if args.model is None and args.spec is not None:
            from ..spec.bsm import is_bsm_file

            if is_bsm_file(args.spec):  # a BIDS Stats Models document passed as the spec
                args.model, args.spec = args.spec, None
        if args.model is None and args.task is None:
            raise GlmxError("--task is required (or --model MODEL.json, whose Input.task names it)", field="--task")
        if args.model is None and is_connectivity(args):  # "analysis": "connectivity" entries: both levels are resting state
            return run_rest(args)
        if args.analysis_level == "group":
            return run_group(args)
        if group_options_given(args):
            raise GlmxError(f"{', '.join(group_options_given(args))} apply to the group level only", field="participant")
        return _cmd_participant(args)
    except GlmxError as exc:
        if debug:
            raise
        print(f"glmx: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        cancelled = getattr(exc, "cancelled", [])
        print("glmx: interrupted" + ("" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})")
              + (f"; {len(cancelled)} cluster job(s) of this run cancelled ({', '.join(cancelled)})" if cancelled
                 else "") + "; nothing of this run was recorded as failed, rerun to finish", file=stderr)
        return 128 + signum
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def console():
    """The ``glmx`` console script: :func:`main`, then exit with its code.

    Returns
    -------
    None
        Exits the process.
    """
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader of stdout went away (``glmx ... | head``): the rest of the output is dropped, without a
        # traceback, and the exit code is a SIGPIPE's, as for other commands in a pipeline
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    if code > 128:
        # interrupted: the locks are released and nothing more is to be written; a run stopped mid-way can leave
        # threads inside native code whose teardown at interpreter exit aborts the process (SIGABRT instead of
        # exit code 130), so the process ends here without that teardown.
        for stream in (sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    # A run leaves a large heap (nipype graphs and results, imported libraries); the interpreter's final
    # garbage collection of it took ~0.6 s after the work was done. Frozen objects are left out of it; every
    # output is closed and published by now.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
