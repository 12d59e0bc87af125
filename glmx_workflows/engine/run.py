"""Running a built workflow on a Nipype plugin: the one verb every facade goes through.

Hashing: nodes are cached with nipype's ``timestamp`` hash method (file size + mtime). Content
hashing would read every BOLD run (hundreds of MB each) on every rerun just to learn that nothing
changed; a cached rerun of a large dataset must finish in seconds. The cost is that touching an
input without changing it reruns what depends on it, which is safe.
"""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from ..core.errors import GlmxError
from .cluster import (CLUSTER_PLUGINS, cancel_jobs, prepare_plugin, request_resources, scheduler_of,
                      wait_for_graph_jobs)
from .crashes import crash_files, crash_node, crash_reason, new_crash_files
from .state import check_code


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
    from ..spec.plugin_keys import check_plugin_args

    args = dict(check_plugin_args(plugin, plugin_args))
    if plugin == "MultiProc" and n_procs:
        args.setdefault("n_procs", int(n_procs))
    return args


class Interrupted(KeyboardInterrupt):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM (``scancel``, ``kill``).

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum=signal.SIGINT):
        self.signum = int(signum)
        self.cancelled = []  # ids of the cluster jobs of the run cancelled on the way out
        super().__init__(signal.Signals(self.signum).name)


def _child_processes():
    """Pids of this process's direct children, from /proc (empty where there is none)."""
    me, pids = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(me):
            pids.append(int(entry))
    return pids


def call_interruptibly(target):
    """``target()``, stopped cleanly by SIGINT (Ctrl-C) or SIGTERM: :class:`Interrupted` is raised instead.

    nipype records any exception raised inside a node, KeyboardInterrupt included, as the node's failure
    and carries on: a Ctrl-C became failed subjects, and a Ctrl-C that landed in a node run by nipype's own
    process was swallowed. Here ``target`` runs in a helper thread while this (main) thread only waits, so
    that the signal is received where no nipype code can catch it. Processes forked meanwhile (the MultiProc
    workers) ignore SIGINT and die on SIGTERM: only this process decides. On a signal the worker processes
    still running are terminated, the helper thread is told to stop, and :class:`Interrupted` is raised; what
    the run had not finished stays unrecorded (the node cache keeps what finished). A signal that is ignored
    when the call starts (``SIG_IGN``, as for a background job of a non-interactive shell) stays ignored.
    Outside the main thread signals cannot be handled, and ``target`` is simply called.

    Parameters
    ----------
    target : callable
        Called without arguments.

    Returns
    -------
    object
        What ``target`` returned.

    Raises
    ------
    Interrupted
        A signal arrived before ``target`` returned.
    BaseException
        Whatever ``target`` raised.
    """
    import ctypes
    import multiprocessing
    import threading

    if threading.current_thread() is not threading.main_thread():
        return target()
    main = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main:  # a forked worker: the main process decides
            if signum == signal.SIGTERM:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Interrupted(signum)

    box = {}
    streams = sys.stdout, sys.stderr

    def body():
        try:
            box["value"] = target()
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    worker = threading.Thread(target=body, name="glmx-run", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    except Interrupted:
        for child in multiprocessing.active_children():
            child.terminate()
        # and the commands nipype runs (a Graph plugin's submit_jobs.sh would go on submitting jobs)
        for pid in _child_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        # the helper thread stops at its next Python instruction (nipype may catch it: it is abandoned then)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(Interrupted))
        worker.join(5)
        for child in multiprocessing.active_children():
            child.join(1)
        # a block that redirects the streams (contextlib.redirect_stderr) may never reach its end
        sys.stdout, sys.stderr = streams
        raise
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Outcome:
    """What :func:`run` did: the executed graph, the crash files written during the run, its start time.

    Parameters
    ----------
    graph : networkx.DiGraph or None
        The graph ``wf.run`` returned (None when nipype raised).
    crashes : list of str
        Crash files written during the run, oldest first.
    error : Exception or None
        nipype's own failure, when it raised one.
    start : float
        ``time.time()`` when the run started.
    """

    def __init__(self, graph, crashes, error, start):
        self.graph = graph
        self.crashes = list(crashes)
        self.error = error
        self.start = start

    @property
    def ok(self):
        """True when nipype raised nothing and no crash file was written."""
        return self.error is None and not self.crashes


def check_plugin(plugin):
    """Refuse a plugin name glmx does not run on.

    Parameters
    ----------
    plugin : str
        Name given by the user.

    Raises
    ------
    GlmxError
        ``plugin`` is not one of ``PLUGINS``.
    """
    if plugin not in PLUGINS:
        raise GlmxError(f"unknown plugin '{plugin}'; expected one of {', '.join(PLUGINS)}", field="--plugin")


def run(wf, plugin="MultiProc", plugin_args=None):
    """Run a configured workflow and collect its failures: the one way glmx runs a workflow.

    nipype's MultiProc calls ``gc.collect()`` each time it submits nodes; with a pybids index in
    memory each call cost ~0.15 s, most of a small run's wall time: the objects alive before the run are
    frozen out of the garbage collector. Resource requests are added to the nodes first; with a Graph
    plugin, waits until every submitted job has left the scheduler's queue. The Graph plugins raise
    nothing when a job fails (nipype never sees the jobs end): the crash files written during the run are
    the record of failures for every plugin.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        Workflow set up by :func:`configure`.
    plugin : str
        One of ``PLUGINS``.
    plugin_args : dict, optional
        nipype plugin arguments, plus glmx's own (``memory_resource``, ``parallel_environment``,
        removed before nipype sees them).

    Returns
    -------
    Outcome
        The executed graph, the new crash files and nipype's error, if any.

    Raises
    ------
    GlmxError
        Unknown plugin.
    Interrupted
        SIGINT or SIGTERM arrived during the run (see :func:`call_interruptibly`); nothing is recorded. With
        a cluster plugin the jobs the run submitted are cancelled first (their ids in ``cancelled``).
    """
    import gc

    check_plugin(plugin)
    crash_dir = wf.config["execution"]["crashdump_dir"]
    known = crash_files(crash_dir)
    start = time.time()
    check_code(wf)  # nipype's hash does not see code: a cache other code wrote is dropped
    request_resources(wf, plugin, plugin_args)
    args = prepare_plugin(plugin, plugin_args)
    gc.collect()
    gc.freeze()
    try:
        graph, error = call_interruptibly(lambda: _run_nipype(wf, plugin, plugin_args, args))
    except Interrupted as exc:
        if plugin in CLUSTER_PLUGINS:  # the jobs this run submitted would go on without it
            exc.cancelled = cancel_jobs(Path(wf.base_dir) / wf.name / "batch", scheduler_of(plugin))
        raise
    finally:
        gc.unfreeze()
    return Outcome(graph, new_crash_files(crash_dir, start, known), error, start)


def _run_nipype(wf, plugin, plugin_args, args):
    """``wf.run`` → (graph, None), or (None, error) when nipype raised RuntimeError; waits for Graph jobs."""
    graph, error = None, None
    try:
        graph = wf.run(plugin=_plugin(plugin, args, wf), plugin_args=args)
    except RuntimeError as exc:
        error = exc
    if plugin.endswith("Graph"):
        wait_for_graph_jobs(Path(wf.base_dir) / wf.name / "batch", scheduler_of(plugin),
                            progress=plugin_args.get("status_callback") if plugin_args else None)
    return graph, error


def _import_plugins():
    """Import nipype's plugins without IPython, unless IPython is already loaded.

    ``nipype.pipeline.plugins`` imports all its plugins, and the IPython one imports IPython (half a
    second, a sixth of a small rerun) only to learn whether ipyparallel is there; glmx never runs on it.
    """
    if "nipype.pipeline.plugins" in sys.modules:
        return
    hidden = "IPython" not in sys.modules
    if hidden:
        sys.modules["IPython"] = None  # makes ``import IPython`` raise ImportError, which nipype catches
    try:
        import nipype.pipeline.plugins  # noqa: F401
    finally:
        if hidden and sys.modules.get("IPython", False) is None:
            del sys.modules["IPython"]


def _worker_start(cwd, modules, parent):
    """Start of a MultiProc worker: nipype's own set-up, an end with the thread that started it, then
    ``modules`` imported.

    A worker left behind by a main process killed outright (SIGKILL) would wait for work forever, holding
    its parent's output streams open: Linux ends it (SIGTERM, which :func:`call_interruptibly` makes fatal in
    workers) when the thread that started the pool ends. A failed import only leaves the module to the node
    that needs it, which then reports the error.
    """
    import importlib

    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent ended before that was set
            os._exit(0)
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _plugin(plugin, args, wf):
    """The plugin ``wf.run`` gets: its name, or for MultiProc an instance that leaves nipype's graph to the
    permanent generation of the garbage collector and starts its workers at once.

    The workers start (fork) as the instance is made, and each imports the ``worker_modules`` the interfaces of
    ``wf`` name (modules their nodes need but the process that builds the workflow does not, such as the
    report's), while this process expands the graph and looks up the cache: those imports leave the path
    every run waits on (see :func:`_worker_start`).

    MultiProc calls ``gc.collect()`` before each round of submissions (every 50 ms poll that has a
    node ready); the execution graph nipype deep-copies from the workflow just before running it (every
    node, its inputs and config) made each call cost tens of milliseconds, seconds of a small rerun
    spent walking objects that live for the whole run. They are frozen once the graph is built; objects
    made later are collected as usual, and :func:`run` unfreezes everything at the end.
    """
    _import_plugins()
    if plugin != "MultiProc":
        return plugin
    import gc
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from nipype.pipeline.plugins.multiproc import MultiProcPlugin as Base

    modules = tuple(sorted({m for node in wf._get_all_nodes()
                            for m in getattr(node.interface, "worker_modules", ())}))

    class MultiProcPlugin(Base):  # the name nipype derives the plugin's name from
        def __init__(self, plugin_args=None):
            super().__init__(plugin_args=plugin_args)
            self.pool.shutdown(wait=False)  # nipype's pool, which has started no process yet
            self.pool = ProcessPoolExecutor(
                max_workers=self.processors, initializer=_worker_start, initargs=(self._cwd, modules, os.getpid()),
                mp_context=multiprocessing.get_context(self.plugin_args.get("mp_context")))
            if modules:
                self.pool.submit(int)  # the pool starts all its workers at its first task

        def _prerun_check(self, graph):
            super()._prerun_check(graph)
            gc.collect()
            gc.freeze()

        def _send_procs_to_workers(self, updatehash=False, graph=None):
            # A node found in the cache, a node run in this process (the sinks) and a MapNode expanded into
            # its runs all finish inside this call; nipype would look for the nodes they made ready only
            # after its next 50 ms poll, once per step of each subject's chain of nodes. Looking again
            # at once while such steps happen leaves only the nodes sent to the workers to the poll.
            while True:
                before = len(self.procs), int((self.proc_done & ~self.proc_pending).sum())
                super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
                if (len(self.procs), int((self.proc_done & ~self.proc_pending).sum())) == before:
                    return

    return MultiProcPlugin(plugin_args=args)


def run_workflow(wf, plugin="MultiProc", plugin_args=None):
    """:func:`run`, raising GlmxError with the reason of the first crash when anything failed.

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        A workflow set up by ``configure``.
    plugin : str
        One of ``PLUGINS``.
    plugin_args : dict, optional
        As for :func:`run`.

    Returns
    -------
    networkx.DiGraph
        The executed graph nipype returns.
    """
    outcome = run(wf, plugin, plugin_args)
    if outcome.ok:
        return outcome.graph
    if not outcome.crashes:
        raise GlmxError(f"the workflow failed ({outcome.error})") from None
    first = outcome.crashes[0]
    raise GlmxError(f"{crash_reason(first)} (node {crash_node(first)}; crash file {first})") from None


def finished_nodes(work_dir):
    """Nodes nipype will find in its cache: a result file and a finished (not ``_unfinished``) hash file.

    nipype saves ``result_<node>.pklz`` before it renames ``_0x<hash>_unfinished.json`` to
    ``_0x<hash>.json``; a process killed between the two leaves a result file that nipype rightly
    reruns, so the result file alone does not say a node finished.

    Parameters
    ----------
    work_dir : str or Path
        Directory searched recursively for node folders.

    Returns
    -------
    set of str
        Node directories relative to ``work_dir`` (MapNode subnodes as ``<node>/mapflow/_<node><i>``).
    """
    work_dir = Path(work_dir)
    out = set()
    for res in work_dir.rglob("result_*.pklz"):
        if any(not h.name.endswith("_unfinished.json") for h in res.parent.glob("_0x*.json")):
            out.add(str(res.parent.relative_to(work_dir)))
    return out


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

