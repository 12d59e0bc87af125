"""The end of every ``glmx`` dataset run (task or resting state): the summary on stdout, one error line
naming each failed subject on stderr, and the exit code."""

import sys


def finish(report):
    """Print a dataset run's summary and return the exit code.

    Parameters
    ----------
    report : glmx_workflows.engine.dataset.RunReport
        What the run did.

    Returns
    -------
    int
        0 when every subject is done, 1 when some subject failed (each named with its reason on stderr).
    """
    print(report.summary())
    if report.ok:
        return 0
    print(f"glmx: error: {len(report.failed)} of {len(report.failed) + len(report.done)} subject(s) failed: "
          + "; ".join(f"sub-{s}: {r}" for s, (r, _) in sorted(report.failed.items())), file=sys.stderr)
    return 1
