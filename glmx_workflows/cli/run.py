"""The ``glmx`` command.

BIDS-App form::

    glmx BIDS_DIR OUTPUT_DIR participant --task T [options]

Utility commands::

    glmx example DIR            write a small simulated fmriprep-style BIDS dataset
    glmx init BIDS_DIR          write a starter task_information.json
    glmx validate BIDS_DIR      check the spec and the inputs without fitting
"""

import argparse
import sys
from pathlib import Path

from .. import __version__
from ..core.errors import GlmxError

COMMANDS = ("example", "init", "validate")


def _app_parser():
    p = argparse.ArgumentParser(
        prog="glmx",
        description="First-level task GLMs on BIDS datasets preprocessed by fmriprep, as Nipype workflows. "
                    "Other commands: 'glmx example DIR', 'glmx init BIDS_DIR', 'glmx validate BIDS_DIR' "
                    "(each has --help).")
    p.add_argument("bids_dir", type=Path, help="the raw BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where the BIDS-Derivatives outputs are written")
    p.add_argument("analysis_level", choices=["participant"], help="'participant': first level per subject")
    p.add_argument("--task", required=True, help="task to model (a key of the spec)")
    p.add_argument("--spec", type=Path, help="task_information.json (default: BIDS_DIR/task_information.json)")
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
    return p


def _example_parser():
    p = argparse.ArgumentParser(prog="glmx example",
                                description="Write a small simulated BIDS dataset with fmriprep-style derivatives, "
                                            "events with a parametric modulator, confounds and planted effects, "
                                            "plus its task_information.json.")
    p.add_argument("dir", type=Path, help="folder to create")
    p.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _cmd_example(args):
    from ..io.example import make_example_dataset

    out = make_example_dataset(args.dir, n_subjects=args.subjects, seed=args.seed)
    print(f"example dataset written to {out}")
    print(f"next: glmx {out} {out}/derivatives/glmx participant --task flanker")
    return 0


def _cmd_participant(args):
    from ..api import Aggregator
    from ..engine import parse_plugin_args

    plugin_args = parse_plugin_args(args.plugin_args)
    agg = Aggregator(args.bids_dir, args.task, spec=args.spec, derivatives=args.derivatives,
                     output_dir=args.output_dir, work_dir=args.work_dir, participant_label=args.participant_label,
                     design_dir=args.design_dir)
    report = agg.run(plugin=args.plugin, plugin_args=plugin_args, n_procs=args.n_procs, progress=not args.quiet)
    print(report.summary())
    if not report.ok:
        print(f"glmx: error: {len(report.failed)} of {len(report.failed) + len(report.done)} subject(s) failed: "
              + "; ".join(f"sub-{s}: {r}" for s, (r, _) in sorted(report.failed.items())), file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    """Entry point of the ``glmx`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if argv and argv[0] in COMMANDS:
            cmd = argv[0]
            args = {"example": _example_parser}[cmd]().parse_args(argv[1:])
            return {"example": _cmd_example}[cmd](args)
        args = _app_parser().parse_args(argv)
        return _cmd_participant(args)
    except GlmxError as exc:
        if debug:
            raise
        print(f"glmx: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glmx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
