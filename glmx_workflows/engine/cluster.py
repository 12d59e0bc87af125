"""Cluster jobs: what each job requests, the plugin arguments nipype needs, and waiting for the jobs of a
Graph plugin.

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

import os
import re
import time
from pathlib import Path

from ..core.errors import GlmxError


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


def scheduler_of(plugin):
    """The queue a cluster plugin submits to.

    Parameters
    ----------
    plugin : str
        One of ``CLUSTER_PLUGINS``.

    Returns
    -------
    str
        ``"slurm"`` or ``"sge"``.
    """
    return "slurm" if plugin.startswith("SLURM") else "sge"


def _cancel(scheduler, job_ids):
    """``scancel`` / ``qdel`` of ``job_ids`` (nothing when empty); a scheduler that does not answer is left."""
    import subprocess

    if job_ids:
        try:
            subprocess.run(["scancel" if scheduler == "slurm" else "qdel", *job_ids], capture_output=True,
                           timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            pass


def cancel_jobs(batch_dir, scheduler, settle=15.0):
    """Cancel the queued and running jobs this run submitted: those whose batch script lies in ``batch_dir``.

    Called when a run is interrupted (Ctrl-C, SIGTERM): the jobs of SLURM, SGE and their Graph variants
    would otherwise go on writing into the work directory after glmx has exited. Other jobs of the user,
    other glmx runs' included (each has its own work directory and batch folder), are left alone.

    Parameters
    ----------
    batch_dir : path
        The workflow's ``batch`` directory (``<work_dir>/<workflow>/batch``).
    scheduler : {"slurm", "sge"}
        Which queue.
    settle : float
        Seconds during which the queue is asked again until it shows none of the run's jobs (a cancelled job
        is listed until it has left).

    Returns
    -------
    list of str
        The job ids cancelled (empty when none, or when the scheduler did not answer).
    """
    if not Path(batch_dir).is_dir():
        return []
    cancelled, known = set(), {}
    deadline = time.monotonic() + settle
    # again until the queue shows none: a submission under way when the run stopped may still add one
    while True:
        jobs = _our_jobs(scheduler, batch_dir, known)
        if not jobs or time.monotonic() > deadline:
            return sorted(cancelled, key=lambda j: (len(j), j))
        _cancel(scheduler, sorted(jobs))
        cancelled.update(jobs)
        time.sleep(1.0)


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
        _cancel(scheduler, stuck)
        if progress is not None and len(queued) != last:
            last = len(queued)
            # jobs stand for nodes here: the Graph plugins report nothing else
            progress.done = round(progress.total * (submitted - len(queued)) / max(submitted, 1))
            progress.show()
        time.sleep(poll)


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

