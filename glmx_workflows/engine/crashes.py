"""Nipype crash files: which were written by a run, which subject and node they belong to, and the one line
that says why."""

import glob
import os
import re
from pathlib import Path


def crash_reason(crash_file):
    """The last meaningful line of a nipype crash file: our GlmxError line when there is one.

    Parameters
    ----------
    crash_file : str or Path
        Nipype text crash file.

    Returns
    -------
    str
        The GlmxError message when one is recorded, else the last ``...Error``/``...Exception`` line,
        else the file's last line.
    """
    text = Path(crash_file).read_text(errors="replace")
    ours = re.findall(r"GlmxError: (.+)", text)
    if ours:
        return ours[-1].strip()
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\w*(Error|Exception)\b", ln.strip())]
    return lines[-1] if lines else text.strip().splitlines()[-1]


def crash_subject(crash_file, subjects, task):
    """Which of ``subjects`` a crash file belongs to (its node ran under ``sub_<s>_<task>/``).

    Parameters
    ----------
    crash_file : str or Path
        Nipype text crash file.
    subjects : iterable of str
        Subject labels (without ``sub-``) to look for.
    task : str
        Task label used in the per-subject sub-workflow names.

    Returns
    -------
    str or None
        The first subject whose sub-workflow path appears in the file, or None.
    """
    text = Path(crash_file).read_text(errors="replace")
    for sub in subjects:
        if f"/sub_{sub}_{task}/" in text or f".sub_{sub}_{task}." in text:
            return sub
    return None


def crash_node(crash_file):
    """Node name recorded in a nipype text crash file.

    Parameters
    ----------
    crash_file : str or Path
        Nipype text crash file.

    Returns
    -------
    str
        The ``Node:`` line's value, or the file name when the file records none.
    """
    text = Path(crash_file).read_text(errors="replace")
    found = re.search(r"^Node: (.+)$", text, re.M)
    return found.group(1).strip() if found else Path(crash_file).name


def crash_files(crash_dir):
    """The crash files present now, with their modification times.

    Parameters
    ----------
    crash_dir : str or Path
        Directory holding ``crash-*`` files.

    Returns
    -------
    dict
        ``{path: mtime}``; pass it as ``known`` to :func:`new_crash_files` after the run.
    """
    out = {}
    for f in glob.glob(os.path.join(str(crash_dir), "crash-*")):
        try:
            out[f] = os.path.getmtime(f)
        except OSError:
            pass
    return out


def new_crash_files(crash_dir, since, known=None):
    """Crash files written at or after ``since`` (a time.time() value), oldest first.

    Ordered by modification time: the first is the root cause when a failure made dependent jobs
    fail too (Grid Engine's ``-hold_jid`` starts dependants whatever the exit status), and names
    (second-resolution time stamps, then node names) cannot order failures within one second.

    Parameters
    ----------
    crash_dir : str or Path
        Directory holding ``crash-*`` files.
    since : float
        Start time of the run (``time.time()``); files up to 1 s older are included (coarse
        file-system clocks), unless listed in ``known``.
    known : dict, optional
        From :func:`crash_files` before the run: those files, unchanged, are a previous run's (a rerun
        started within a second of a failed run must not inherit its failures).

    Returns
    -------
    list of str
        Paths of the crash files, oldest first.
    """
    known = known or {}
    found = [(t, f) for f, t in crash_files(crash_dir).items() if t >= since - 1 and known.get(f) != t]
    return [f for _, f in sorted(found)]

