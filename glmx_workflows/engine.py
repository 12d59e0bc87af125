"""Running a built workflow on a Nipype plugin, and turning failures into one-line reasons.

Hashing: nodes are cached with nipype's ``timestamp`` hash method (file size + mtime). Content
hashing would read every BOLD run (hundreds of MB each) on every rerun just to learn that nothing
changed; a cached rerun of a large dataset must finish in seconds. The cost is that touching an
input without changing it reruns what depends on it, which is safe.
"""

import glob
import os
import re
import time
from pathlib import Path

from .core.errors import GlmxError

PLUGINS = ("Linear", "MultiProc", "SLURM", "SLURMGraph", "SGE", "SGEGraph")


def configure(wf, work_dir, crash_dir=None, plugin="MultiProc", verbose=False):
    """Set the work directory and execution options of a workflow (in place).

    Local plugins poll for finished nodes every 50 ms (nipype's 2 s default dominated small runs);
    cluster plugins keep 2 s so that the scheduler is not queried in a tight loop.
    """
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    wf.base_dir = str(work_dir)
    crash_dir = Path(crash_dir or work_dir / "crash").resolve()
    wf.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "hash_method": "timestamp",
        "remove_unnecessary_outputs": "false",
        "stop_on_first_crash": "false",
        "parameterize_dirs": "true",
        "poll_sleep_duration": "0.05" if plugin in ("Linear", "MultiProc") else "2",
    })
    import logging

    level = logging.INFO if verbose else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(level)
    wf.config["monitoring"] = {"enabled": "false"}
    return crash_dir


def crash_reason(crash_file):
    """The last meaningful line of a nipype crash file: our GlmxError line when there is one."""
    text = Path(crash_file).read_text(errors="replace")
    ours = re.findall(r"GlmxError: (.+)", text)
    if ours:
        return ours[-1].strip()
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\w*(Error|Exception)\b", ln.strip())]
    return lines[-1] if lines else text.strip().splitlines()[-1]


def crash_node(crash_file):
    """Node name recorded in a nipype text crash file."""
    text = Path(crash_file).read_text(errors="replace")
    found = re.search(r"^Node: (.+)$", text, re.M)
    return found.group(1).strip() if found else Path(crash_file).name


def new_crash_files(crash_dir, since):
    """Crash files written at or after ``since`` (a time.time() value)."""
    files = glob.glob(os.path.join(str(crash_dir), "crash-*"))
    return sorted(f for f in files if os.path.getmtime(f) >= since - 1)


def execute(wf, plugin, plugin_args):
    """``wf.run`` with the objects alive before it frozen out of the garbage collector.

    nipype's MultiProc calls ``gc.collect()`` each time it submits nodes; with a pybids index in
    memory each call cost ~0.15 s, most of a small run's wall time. Frozen objects are not scanned.
    """
    import gc

    gc.collect()
    gc.freeze()
    try:
        return wf.run(plugin=plugin, plugin_args=dict(plugin_args or {}))
    finally:
        gc.unfreeze()


def run_workflow(wf, plugin="MultiProc", plugin_args=None):
    """Run ``wf``; on failure raise GlmxError with the reason of the first crash.

    Returns
    -------
    networkx.DiGraph
        The executed graph nipype returns.
    """
    if plugin not in PLUGINS:
        raise GlmxError(f"unknown plugin '{plugin}'; expected one of {', '.join(PLUGINS)}", field="--plugin")
    crash_dir = wf.config["execution"]["crashdump_dir"]
    start = time.time()
    try:
        return execute(wf, plugin, plugin_args)
    except RuntimeError as exc:
        crashes = new_crash_files(crash_dir, start)
        if not crashes:
            raise GlmxError(f"the workflow failed ({exc})") from None
        raise GlmxError(f"{crash_reason(crashes[0])} (node {crash_node(crashes[0])}; crash file {crashes[0]})") \
            from None
