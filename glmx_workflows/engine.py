"""Running a built workflow on a Nipype plugin, and turning failures into one-line reasons.

Hashing: nodes are cached with nipype's ``timestamp`` hash method (file size + mtime). Content
hashing would read every BOLD run (hundreds of MB each) on every rerun just to learn that nothing
changed; a cached rerun of a large dataset must finish in seconds. The cost is that touching an
input without changing it reruns what depends on it, which is safe.

Done stamps: even with every node cached, nipype spends about a second per subject building,
hashing and checking its nodes. A dataset run therefore records, for each subject that completed,
the key of everything its results depend on and the size and mtime of every file it published
(:func:`write_done_stamp`); on the next run a subject with the same key and all its outputs
unmodified is not built into the workflow at all (:func:`read_done_stamp`). Anything else goes
through nipype, whose node cache stays the mechanism for partial changes.

Resources: a node that needs more than nipype's defaults declares them when it is built,
``pe.Node(..., mem_gb=..., n_procs=...)`` (``fit_glm``: ``mem_gb`` from the run's size, see
``workflows/first_level.py``). MultiProc schedules nodes so that the declared memory and cores fit the
machine; on SLURM/SGE each job requests them (``request_resources``). For the accounting to be true a
node must not compute on more cores than it declared: ``fit_glm`` runs inside
``threadpoolctl.threadpool_limits(n_procs)`` (its interface's ``num_threads``, which nipype sets from
``n_procs``), and every cluster job starts with ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/
``MKL_NUM_THREADS`` set to its node's ``n_procs``. Jobs run ``sys.executable`` (nipype writes it into
each batch script) with the submitting environment (Slurm exports it by default, nipype's Grid
Engine template has ``#$ -V``), so they use the same Python and installation as ``glmx``.
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

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        Workflow to configure; its ``base_dir`` and ``config`` are changed.
    work_dir : str or Path
        Nipype work directory (created when missing).
    crash_dir : str or Path, optional
        Where crash files go; default ``<work_dir>/crash``.
    plugin : str, optional
        Nipype plugin name the workflow will run on (sets the polling interval).
    verbose : bool, optional
        Show nipype's INFO log messages instead of silencing them.

    Returns
    -------
    Path
        The resolved crash directory.
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

    # Failures reach the user through the summary and crash files; nipype's own tracebacks on
    # stdout would bury them.
    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(level)
    wf.config["monitoring"] = {"enabled": "false"}
    return crash_dir


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


def execute(wf, plugin, plugin_args):
    """``wf.run`` with the objects alive before it frozen out of the garbage collector.

    nipype's MultiProc calls ``gc.collect()`` each time it submits nodes; with a pybids index in
    memory each call cost ~0.15 s, most of a small run's wall time. Frozen objects are not scanned.
    Resource requests are added to the nodes first; with a Graph plugin, waits until every submitted
    job has left the scheduler's queue.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        Configured workflow (see `configure`).
    plugin : str
        Nipype plugin name.
    plugin_args : dict or None
        Plugin arguments, including glmx's own keys (removed before nipype sees them).

    Returns
    -------
    networkx.DiGraph
        The execution graph ``wf.run`` returns.
    """
    import gc

    drop_stale_results(wf)
    request_resources(wf, plugin, plugin_args)
    args = prepare_plugin(plugin, plugin_args)
    gc.collect()
    gc.freeze()
    try:
        graph = wf.run(plugin=plugin, plugin_args=args)
    finally:
        gc.unfreeze()
    if plugin.endswith("Graph"):
        wait_for_graph_jobs(Path(wf.base_dir) / wf.name / "batch", "slurm" if plugin.startswith("SLURM") else "sge",
                            progress=plugin_args.get("status_callback") if plugin_args else None)
    return graph


def drop_stale_results(wf):
    """Delete cached node results that lack an output the node's interface now declares.

    nipype reuses a node's result when its inputs hash the same, whatever code wrote it; after an
    upgrade that adds an output to an interface (and a connection from it), the cached result has no
    such field and the run stops with a KeyError in nipype. Such a node (and a MapNode's subnodes) is
    made to run again instead. Results are only read (one small pickle per cached node), so a rerun
    with everything up to date pays a few milliseconds per node.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        A configured workflow (``base_dir`` set).

    Returns
    -------
    list of str
        Node directories whose results were dropped.
    """
    from nipype.pipeline.engine import MapNode
    from nipype.pipeline.engine.utils import load_resultfile

    dropped = []
    if not wf.base_dir:
        return dropped
    for node in wf._create_flat_graph().nodes():
        try:
            declared = set(node.interface.output_spec().copyable_trait_names())
        except Exception:  # interfaces without a static output spec
            continue
        if not declared:
            continue
        folder = Path(wf.base_dir, *(node._hierarchy or wf.name).split("."), node.name)
        result_file = folder / f"result_{node.name}.pklz"
        if not result_file.is_file():
            continue
        try:
            outputs = load_resultfile(str(result_file), resolve=False).outputs
            have = set(outputs.trait_get() if hasattr(outputs, "trait_get") else outputs.dictcopy())
        except Exception:  # unreadable: nipype will rerun it anyway
            continue
        if declared <= have:
            continue
        stale = [result_file]
        if isinstance(node, MapNode):
            stale += list((folder / "mapflow").glob("*/result_*.pklz"))
        for path in stale:
            try:
                path.unlink()
            except OSError:
                pass
        dropped.append(str(folder))
    return dropped


CLUSTER_PLUGINS = ("SLURM", "SLURMGraph", "SGE", "SGEGraph")
# keys of --plugin-args read by glmx itself, removed before nipype sees them
GLMX_PLUGIN_KEYS = ("memory_resource", "parallel_environment")


# BLAS/OpenMP libraries read these when they load, i.e. when the job's Python imports numpy
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def job_requests(mem_gb, n_procs, plugin, plugin_args=None, resources=True):
    """Scheduler arguments for one job: the node's declared memory and cores, and its thread limit.

    Slurm: ``--mem`` and ``--cpus-per-task``. Grid Engine has no standard memory complex: memory is
    requested only when ``memory_resource`` names the site's (``-l <resource>=<mem>G``), and more
    than one core only with a ``parallel_environment`` (``-pe <pe> <n>``). Both: the job's
    environment sets ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` to ``n_procs``
    (Slurm ``--export=ALL,...``, unless your ``sbatch_args`` already has an ``--export``; Grid Engine
    ``-v``), so a job computes on the cores it was given and no more.

    Parameters
    ----------
    mem_gb : float
        Memory the node declared (nipype's ``mem_gb``).
    n_procs : int
        Cores the node declared (nipype's ``n_procs``).
    plugin : str
        One of the cluster plugins (``SLURM``, ``SLURMGraph``, ``SGE``, ``SGEGraph``).
    plugin_args : dict, optional
        The run's plugin arguments (``sbatch_args``, ``memory_resource``, ``parallel_environment``).
    resources : bool
        Request memory and cores (False: thread limit only, for light nodes that Graph plugins
        submit anyway; the site's default request fits them).

    Returns
    -------
    str
        Arguments to append to the job's ``sbatch``/``qsub`` arguments ('' when none apply).
    """
    import math

    plugin_args = plugin_args or {}
    n = max(int(n_procs or 1), 1)
    threads = ",".join(f"{v}={n}" for v in THREAD_VARIABLES)
    out = ""
    if plugin.startswith("SLURM"):
        if resources:
            out += f" --mem={max(int(math.ceil(mem_gb * 1024)), 1)}M --cpus-per-task={n}"
        if "--export" not in str(plugin_args.get("sbatch_args", "")):
            out += f" --export=ALL,{threads}"
    elif plugin.startswith("SGE"):
        if resources and plugin_args.get("memory_resource"):
            out += f" -l {plugin_args['memory_resource']}={mem_gb:.2f}G"
        if resources and plugin_args.get("parallel_environment") and n > 1:
            out += f" -pe {plugin_args['parallel_environment']} {n}"
        out += f" -v {threads}"
    return out


def request_resources(wf, plugin, plugin_args=None):
    """Add each job's ``mem_gb``/``n_procs`` requests and thread limit to its scheduler arguments.

    nipype's SLURM/SGE plugins ignore both; without this every job gets the cluster's default
    memory and one core whatever the node declared, and BLAS starts a thread per core of the
    machine. Nodes that run in the submitting process (``run_without_submitting``) are left alone,
    except under the Graph plugins, which submit every node: those get the thread limit only.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        The workflow about to run (changed in place).
    plugin : str
        The plugin it runs on; nothing is done for local plugins.
    plugin_args : dict, optional
        The run's plugin arguments.
    """
    if plugin not in CLUSTER_PLUGINS:
        return
    key = "sbatch_args" if plugin.startswith("SLURM") else "qsub_args"
    for node in wf._get_all_nodes():
        light = node.run_without_submitting
        if light and not plugin.endswith("Graph"):
            continue
        extra = job_requests(node.mem_gb, node.n_procs, plugin, plugin_args, resources=not light)
        mine = dict(node.plugin_args or {})
        # appended to what the node already asks for; a second run of the same workflow adds nothing
        if extra and extra not in mine.get(key, ""):
            node.plugin_args = {**mine, key: mine.get(key, "") + extra}


def prepare_plugin(plugin, plugin_args):
    """Plugin arguments completed for what nipype's cluster plugins need but do not say.

    - nipype's SLURM/SGE plugins read ``os.environ["LOGNAME"]`` (unset in CI containers and some
      cron/batch shells): it is set from the current user when missing.
    - the Graph plugins fail on empty arguments and resubmit finished nodes unless told not to:
      ``dont_resubmit_completed_jobs`` defaults to true, so a rerun submits only what changed.
    - the Graph plugins cannot report progress: a ``status_callback`` is kept for our own waiting.

    Glmx's own keys (``memory_resource``, ``parallel_environment``) are removed.

    Parameters
    ----------
    plugin : str
        Nipype plugin name.
    plugin_args : dict or None
        Plugin arguments as given by the user.

    Returns
    -------
    dict
        A new dict of the arguments to pass to ``wf.run``.
    """
    import getpass

    args = dict(plugin_args or {})
    for key in GLMX_PLUGIN_KEYS:
        args.pop(key, None)
    if plugin in CLUSTER_PLUGINS:
        os.environ.setdefault("LOGNAME", getpass.getuser())
    if plugin.endswith("Graph"):
        args.pop("status_callback", None)
        args.setdefault("dont_resubmit_completed_jobs", True)
    return args


def _scheduler_output(cmd):
    """stdout of a scheduler query; None when the scheduler did not answer (timeout, error)."""
    import subprocess

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _our_jobs(scheduler, batch_dir, known):
    """{job id: (state, reason)} of the queued or running jobs whose script lies in ``batch_dir``.

    Jobs are recognised by their batch script's path, not by name: the Graph plugins name jobs
    ``j<i>_<node>`` in every run, so two runs of the same user would otherwise wait for each other.
    ``known`` caches {job id: ours?} across polls (Grid Engine shows the script only per job).
    Returns None when the scheduler does not answer.
    """
    import pwd

    # the account the jobs were submitted under, whatever LOGNAME says
    user = pwd.getpwuid(os.getuid()).pw_name
    prefix = str(Path(batch_dir).resolve()) + os.sep
    if scheduler == "slurm":
        out = _scheduler_output(["squeue", "-h", "-u", user, "-o", "%i|%T|%r|%o"])
        if out is None:
            return None
        jobs = {}
        for line in out.splitlines():
            jobid, state, reason, command = line.split("|", 3)
            if command.strip().startswith(prefix):
                jobs[jobid] = (state, reason)
        return jobs
    out = _scheduler_output(["qstat", "-u", user, "-xml"])
    if out is None:
        return None
    listed = re.findall(r"<JB_job_number>(\d+)</JB_job_number>.*?<state>(.*?)</state>", out, re.S)
    unknown = [jobid for jobid, _ in listed if jobid not in known]
    if unknown:
        detail = _scheduler_output(["qstat", "-xml", "-j", ",".join(unknown)])
        if detail is None:
            return None
        # the lookahead keeps a job without a script file from taking the next job's
        scripts = dict(re.findall(r"<JB_job_number>(\d+)</JB_job_number>(?:(?!<JB_job_number>).)*?"
                                  r"<JB_script_file>(.*?)</JB_script_file>", detail, re.S))
        for jobid in unknown:
            known[jobid] = scripts.get(jobid, "").startswith(prefix)
    return {jobid: (state, "") for jobid, state in listed if known.get(jobid)}


def wait_for_graph_jobs(batch_dir, scheduler, poll=2.0, progress=None, patience=300.0):
    """Block until every job a Graph plugin submitted from ``batch_dir`` has left the queue.

    nipype's SLURMGraph/SGEGraph return as soon as the jobs are submitted; outputs, failures and
    reruns must wait for them. A job that can never start because a job it depends on failed
    (Slurm's DependencyNeverSatisfied, Grid Engine's error states) is cancelled; the failure itself
    is reported through its crash file.

    Parameters
    ----------
    batch_dir : path
        The workflow's ``batch`` directory holding the plugin's ``submit_jobs.sh`` and job scripts.
    scheduler : {"slurm", "sge"}
        Which queue to poll (``squeue`` or ``qstat``).
    poll : float
        Seconds between queue queries.
    progress : Progress, optional
        Updated with the share of jobs that have left the queue.
    patience : float
        Seconds the scheduler may fail to answer in a row before GlmxError is raised.
    """
    import subprocess

    script = Path(batch_dir) / "submit_jobs.sh"
    if not script.is_file():
        return
    submitted = len(re.findall(r"\$\((?:sbatch|qsub) ", script.read_text()))
    known, last, silent_since = {}, None, None
    while True:
        queued = _our_jobs(scheduler, batch_dir, known)
        if queued is None:
            # a busy controller times out now and then; only a long silence is an error
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > patience:
                raise GlmxError(f"the {scheduler} scheduler stopped answering while glmx waited for its jobs "
                                f"(submitted from {script})")
            time.sleep(poll)
            continue
        silent_since = None
        if not queued:
            if progress is not None:
                progress.done = progress.total
            return
        stuck = [jobid for jobid, (state, reason) in queued.items()
                 if "DependencyNeverSatisfied" in reason or (scheduler == "sge" and "E" in state)]
        if stuck:
            subprocess.run(["scancel" if scheduler == "slurm" else "qdel", *stuck], capture_output=True, timeout=60)
        if progress is not None and len(queued) != last:
            last = len(queued)
            # jobs stand for nodes here: the Graph plugins report nothing else
            progress.done = round(progress.total * (submitted - len(queued)) / max(submitted, 1))
            progress.show()
        time.sleep(poll)


def plugin_arguments(plugin, plugin_args=None, n_procs=None):
    """nipype plugin arguments with ``n_procs`` for MultiProc (unless ``plugin_args`` sets it).

    Parameters
    ----------
    plugin : str
        One of ``PLUGINS``.
    plugin_args : dict, optional
        The caller's plugin arguments (not modified).
    n_procs : int, optional
        Worker processes for MultiProc.

    Returns
    -------
    dict

    Raises
    ------
    GlmxError
        A plugin argument has a value of the wrong type.
    """
    from .spec.plugin_keys import check_plugin_args

    args = dict(check_plugin_args(plugin, plugin_args))
    if plugin == "MultiProc" and n_procs:
        args.setdefault("n_procs", int(n_procs))
    return args


def run_workflow(wf, plugin="MultiProc", plugin_args=None):
    """Run ``wf``; on failure raise GlmxError with the reason of the first crash.

    The Graph plugins raise nothing when a job fails (nipype never sees the jobs end): after
    waiting for their jobs, a crash file written during the run is a failure as with the others.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        A workflow set up by ``configure``.
    plugin : str
        One of ``PLUGINS``.
    plugin_args : dict, optional
        nipype plugin arguments, plus glmx's own (``memory_resource``, ``parallel_environment``).

    Returns
    -------
    networkx.DiGraph
        The executed graph nipype returns.
    """
    if plugin not in PLUGINS:
        raise GlmxError(f"unknown plugin '{plugin}'; expected one of {', '.join(PLUGINS)}", field="--plugin")
    crash_dir = wf.config["execution"]["crashdump_dir"]
    known = crash_files(crash_dir)
    start = time.time()
    try:
        graph = execute(wf, plugin, plugin_args)
        failure = None
    except RuntimeError as exc:
        failure = exc
    crashes = new_crash_files(crash_dir, start, known)
    if failure is None and not crashes:
        return graph
    if not crashes:
        raise GlmxError(f"the workflow failed ({failure})") from None
    raise GlmxError(f"{crash_reason(crashes[0])} (node {crash_node(crashes[0])}; crash file {crashes[0]})") \
        from None


def parse_plugin_args(value):
    """``--plugin-args``: inline JSON, or a path to a YAML/JSON file → dict.

    Parameters
    ----------
    value : str or None
        Inline JSON object, or the path of a YAML/JSON file (a top-level ``plugin_args`` mapping is
        unwrapped).

    Returns
    -------
    dict
        The plugin arguments; empty when ``value`` is None.

    Raises
    ------
    GlmxError
        When the file is not valid YAML, the text is neither a file nor JSON, or the result is not
        a mapping.
    """
    import json

    if value is None:
        return {}
    path = Path(value)
    if not str(value).lstrip().startswith("{") and path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise GlmxError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})", file=path,
                            field="--plugin-args") from None
        except yaml.YAMLError as exc:
            raise GlmxError(f"not valid YAML ({str(exc).splitlines()[0]})", file=path, field="--plugin-args") \
                from None
        data = data or {}
        if not isinstance(data, dict):
            raise GlmxError("expected a mapping of plugin arguments", file=path, field="--plugin-args")
        return data.get("plugin_args", data)
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise GlmxError(f"neither a file nor inline JSON ({exc})", field="--plugin-args") from None
    if not isinstance(data, dict):
        raise GlmxError("expected a JSON object of plugin arguments", field="--plugin-args")
    return data


class Progress:
    """A nipype ``status_callback`` that shows done / running / pending nodes on one updating line.

    Parameters
    ----------
    total : int
        Expected number of node executions (MapNode subnodes counted once each when known).
    stream : file, optional
        Where to write (default ``sys.stderr``); None keeps counts without printing.
    """

    def __init__(self, total, stream="stderr"):
        import sys

        self.total = int(total)
        self.stream = sys.stderr if stream == "stderr" else stream
        self.running = set()
        self.done = 0
        self.failed = 0
        self.events = []
        self.started = time.monotonic()
        self._last = (-1.0, -1)  # time and tenth of the work of the last line written to a log

    def __deepcopy__(self, memo):
        # nipype deep-copies plugin_args into MapNodes; the display must stay one shared object.
        return self

    def __getstate__(self):
        # Cluster plugins pickle nodes with their plugin_args; the copy in a job prints nothing.
        return {**self.__dict__, "stream": None}

    def __call__(self, node, status):
        name = node.fullname
        self.events.append((name, status))
        if status == "start":
            self.running.add(name)
        else:
            self.running.discard(name)
            if status == "end":
                self.done += 1
            elif status == "exception":
                self.failed += 1
        self.show()

    @property
    def pending(self):
        return max(self.total - self.done - self.failed - len(self.running), 0)

    def line(self):
        """The progress line: share done, done / running / pending (/ failed) counts, elapsed time.

        Returns
        -------
        str
            One line of text, without line terminator.
        """
        share = 100 * (self.done + self.failed) // max(self.total, 1)
        return (f"[glmx] {min(share, 100):3d}% nodes: {self.done} done, {len(self.running)} running, "
                f"{self.pending} pending" + (f", {self.failed} failed" if self.failed else "")
                + f" ({time.monotonic() - self.started:.0f} s)")

    def show(self, final=False):
        """Write the progress line to the stream.

        On a terminal the line overwrites itself; in a log file a line is written only per tenth of
        the work or every 10 s, unless ``final``.

        Parameters
        ----------
        final : bool, optional
            Write the line (ended by a newline) whatever the throttling.
        """
        if self.stream is None:
            return
        tty = self.stream.isatty()
        if not (tty or final):
            # a log file (SLURM job output, CI) gets a line per tenth of the work or per 10 s, not per event
            now, tenth = time.monotonic(), 10 * (self.done + self.failed) // max(self.total, 1)
            if tenth == self._last[1] and now - self._last[0] < 10:
                return
            self._last = (now, tenth)
        self.stream.write(self.line() + ("\r" if tty and not final else "\n"))
        self.stream.flush()


def count_nodes(wf):
    """Node executions a run of ``wf`` will report to the status callback.

    A MapNode reports each subnode and then itself; identity nodes report nothing. A MapNode whose
    iterfield comes from another node is counted with the longest list its sub-workflow is given
    (in glmx every MapNode of a subject iterates over that subject's runs).

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        Workflow to count.

    Returns
    -------
    int
        Expected number of node executions (the ``total`` of `Progress`).
    """
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline.engine import MapNode

    def lists(node, fields):
        values = [getattr(node.inputs, f, None) for f in fields]
        if isinstance(node, MapNode) and not all(isinstance(v, list) for v in values):
            return []  # some iterfield comes from a connection; what is set is only a default
        return [len(v) for v in values if isinstance(v, list) and v]

    nodes = list(wf._create_flat_graph().nodes())
    longest = {}
    for node in nodes:
        group = node.fullname.rsplit(".", 1)[0]
        fields = node.iterfield if isinstance(node, MapNode) else (
            node.inputs.copyable_trait_names() if isinstance(node.interface, IdentityInterface) else [])
        longest[group] = max([longest.get(group, 1), *lists(node, fields)])
    total = 0
    for node in nodes:
        if isinstance(node, MapNode):
            set_lengths = lists(node, node.iterfield)
            total += (max(set_lengths) if set_lengths else longest[node.fullname.rsplit(".", 1)[0]]) + 1
        elif not isinstance(node.interface, IdentityInterface):
            total += 1
    return total


def executed_nodes(work_dir, since):
    """Nodes whose result file was written at or after ``since``: what a run actually executed.

    nipype rewrites ``result_<node>.pklz`` only when it runs a node; a node found in the cache keeps
    its old file. Returns node paths relative to ``work_dir`` (MapNode subnodes as
    ``<node>/mapflow/_<node><i>``), sorted.

    Parameters
    ----------
    work_dir : str or Path
        Directory searched recursively for ``result_*.pklz`` files.
    since : float
        Start time of the run (``time.time()``).

    Returns
    -------
    list of str
        Sorted node directories relative to ``work_dir``.
    """
    work_dir = Path(work_dir)
    out = []
    for res in work_dir.rglob("result_*.pklz"):
        if res.stat().st_mtime >= since:
            out.append(str(res.parent.relative_to(work_dir)))
    return sorted(out)


def file_stats(paths):
    """``(path, size, mtime_ns)`` of each file; ``(path, -1, -1)`` for one that does not exist.

    Parameters
    ----------
    paths : iterable of str or Path
        Files to stat (links followed).

    Returns
    -------
    list of tuple
        In the order given.
    """
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), -1, -1))
    return out


def done_stamp_path(work_dir, task, subject):
    """Where the record of a subject's last complete run is kept (in the work directory, beside nipype's
    cache: deleting the work directory forgets it too).

    Parameters
    ----------
    work_dir : str or Path
        Nipype work directory.
    task : str
        Task label.
    subject : str
        Label without 'sub-'.

    Returns
    -------
    Path
        ``<work_dir>/glmx_state/task-<task>/sub-<subject>_done.json``.
    """
    return Path(work_dir) / "glmx_state" / f"task-{task}" / f"sub-{subject}_done.json"


def read_done_stamp(path, key):
    """The outputs of a subject's last complete run, when nothing has changed since.

    A stamp holds the key of everything the subject's results depend on (its plan, the size and
    modification time of its input files, the spec entry, options and code; computed by the caller) and
    the size and modification time of every file it published. It is valid only when the key is the
    same and every output is still there, unmodified (same size and modification time); then the
    subject's nipype workflow has nothing to do and need not even be built. Anything else (a changed
    input, spec or option, an output deleted or rewritten, no stamp, an unreadable one) returns None and
    the subject goes through nipype, whose node cache reruns only what changed.

    Parameters
    ----------
    path : str or Path
        From :func:`done_stamp_path`.
    key : str
        The subject's current key.

    Returns
    -------
    list of str or None
        The published files, or None when the subject must run.
    """
    import json

    try:
        stamp = json.loads(Path(path).read_text())
        if stamp.get("key") != key:
            return None
        recorded = [tuple(x) for x in stamp["outputs"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not recorded or file_stats(p for p, _, _ in recorded) != recorded:
        return None
    return [p for p, _, _ in recorded]


def write_done_stamp(path, key, outputs):
    """Record that a subject completed under ``key`` and published ``outputs`` (their sizes and
    modification times now). Written atomically, only after the outputs were published; a failure to
    write only costs the next run the nipype path.

    Parameters
    ----------
    path : str or Path
        From :func:`done_stamp_path`.
    key : str
        The key the subject ran under.
    outputs : iterable of str
        The files its sinks published.

    Returns
    -------
    bool
        True when written (False when an output is missing or the stamp could not be written).
    """
    import json

    from .io.atomic import write_text

    stats = file_stats(sorted(set(map(str, outputs))))
    if not stats or any(size < 0 for _, size, _ in stats):
        return False
    try:
        write_text(path, json.dumps({"key": key, "outputs": stats}) + "\n")
    except OSError:
        return False
    return True


def forget_done_stamp(path):
    """Remove a subject's stamp (before it runs again, so that a run killed half-way is never taken for
    a complete one).

    Parameters
    ----------
    path : str or Path
        From :func:`done_stamp_path`.
    """
    try:
        os.unlink(path)
    except OSError:
        pass
