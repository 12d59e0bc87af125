"""What every facade shares: a dataset and its spec entry, OUTPUT_DIR and the work directory, a pybids
layout indexed on first use, and running a workflow on the engine with the dataset's bookkeeping."""

import contextlib
import functools
import os
from pathlib import Path

from .. import __version__
from ..core.errors import GlmxError
from ..engine.run import configure, plugin_arguments, run_workflow
from ..engine.safety import check_output_dir, input_folders
from ..io.atomic import remove_stale_temporaries
from ..io.bids import open_layout
from ..io.derivatives import write_dataset_description
from ..io.lock import locked
from ..spec.bsm import is_bsm_file, load_model
from ..spec.model import load_spec, task_entry


def writes(run):
    """Decorator of a facade's ``run``: it runs inside :meth:`Project.writing` (checked folders, locks held).

    Parameters
    ----------
    run : callable
        The method.

    Returns
    -------
    callable
        The wrapped method.
    """

    @functools.wraps(run)
    def guarded(self, *args, **kwargs):
        with self.writing(self.read_folders()):
            return run(self, *args, **kwargs)

    return guarded


def default_spec_path(bids_root):
    """``BIDS_DIR/task_information.json``.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.

    Returns
    -------
    Path
        The default spec path (not checked).
    """
    return Path(bids_root) / "task_information.json"


def _absolute(path):
    """``path`` made absolute against the working directory, without resolving symlinks."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


class Project:
    """A task of a BIDS dataset as the facades see it.

    Parameters
    ----------
    task : str
        Task label (the spec entry's name).
    bids_root : str or Path
        Raw BIDS dataset.
    spec : str or Path, optional
        The spec (default ``bids_root/task_information.json``).
    derivatives : str or Path, optional
        fmriprep derivatives (default: found under ``bids_root/derivatives``).
    output_dir : str or Path, optional
        OUTPUT_DIR (default ``bids_root/derivatives/glmx``).
    work_dir : str or Path, optional
        Nipype work directory, where nodes are cached (default ``OUTPUT_DIR`` + ``_work``).
    model : str or Path, optional
        A BIDS Stats Models file used instead of the spec (also detected when ``spec`` is one); the
        task is then its ``Input.task``.
    """

    def __init__(self, task, bids_root, spec=None, derivatives=None, output_dir=None, work_dir=None, model=None):
        if bids_root is None:
            raise GlmxError("bids_root is required", field="bids_root")
        self.task = task
        # absolute from here on: nodes run in their own folders, so a path relative to the caller's working
        # directory would name nothing there (symlinks are kept as given)
        self.bids_root = _absolute(bids_root)
        self.spec_path = _absolute(spec) if spec else default_spec_path(self.bids_root)
        self.derivatives = _absolute(derivatives) if derivatives is not None else None
        self.output_dir = _absolute(output_dir) if output_dir else self.bids_root / "derivatives" / "glmx"
        self.work_dir = _absolute(work_dir) if work_dir else Path(str(self.output_dir) + "_work")
        self._layout = None
        self._graph = None
        self.model = None
        if model is None and spec is not None and is_bsm_file(self.spec_path):
            model = self.spec_path  # a BIDS Stats Models document passed as the spec
        if model is not None:
            self._use_model(_absolute(model))
        else:
            self.entry = task_entry(load_spec(self.spec_path), task, self.spec_path)

    def _use_model(self, path):
        """Validate a BIDS Stats Models file and take its first level's entry (see ``glmx_workflows.bsm``)."""
        from ..bsm import model_entry

        self.model = load_model(path)
        self.entry = model_entry(self.model)
        if self.task is not None and self.task != self.entry["_task"]:
            raise GlmxError(f"--task is '{self.task}' but the model's Input.task is '{self.entry['_task']}'",
                            file=path, field="Input.task")
        self.task = self.entry["_task"]
        self.spec_path = Path(path)

    def model_graph(self, subjects=None):
        """The model's graph walked by pybids on this dataset (once; see ``glmx_workflows.bsm.walk_graph``).

        Parameters
        ----------
        subjects : list of str, optional
            Restrict the walk to these subjects.

        Returns
        -------
        glmx_workflows.bsm.ModelGraph
        """
        from ..bsm import walk_graph

        if self._graph is None:
            self._graph = walk_graph(self.layout, self.model, subjects)
        return self._graph

    def node_dirs(self):
        """``{node name: OUTPUT_DIR/node-<name>}`` of the model's nodes (empty without a model)."""
        from ..bsm import node_dirs

        return node_dirs(self.model, self.output_dir) if self.model else {}

    def is_spec_error(self, exc):
        """True when ``exc`` is about the spec file itself: every subject would fail with it, so a dataset run
        stops on it (one line, exit 2) instead of reporting it once per subject.

        Parameters
        ----------
        exc : GlmxError
            An error raised while planning a subject.

        Returns
        -------
        bool
        """
        if not exc.file:
            return False
        try:
            return Path(exc.file).resolve() == self.spec_path.resolve()
        except OSError:
            return False

    @property
    def layout(self):
        """The pybids layout of the dataset and its derivatives (indexed on first use)."""
        if self._layout is None:
            self._layout = open_layout(self.bids_root, self.derivatives)
        return self._layout

    def read_folders(self):
        """Folders this facade reads besides the raw dataset and its derivatives (none here).

        Returns
        -------
        list of Path
        """
        return []

    @contextlib.contextmanager
    def writing(self, inputs=()):
        """Check where the run writes, then hold the run's locks for the block.

        OUTPUT_DIR and the work directory must not touch any input (the raw dataset, the derivatives folder
        given or found, ``inputs``; see :mod:`glmx_workflows.engine.safety`) and must be writable; then
        both are locked against a second glmx run (see :mod:`glmx_workflows.io.lock`) until the block ends,
        however it ends. Nothing is written before the checks pass.

        Parameters
        ----------
        inputs : iterable of path, optional
            Further folders the run reads (``--design-dir``).

        Yields
        ------
        None

        Raises
        ------
        GlmxError
            A folder touches an input or is not writable, or another run holds a lock.
        """
        others = input_folders(self.bids_root, self.derivatives, inputs)[1:]
        check_output_dir(self.output_dir, self.bids_root, others)
        check_output_dir(self.work_dir, self.bids_root, others, field="--work-dir")
        with locked({self.output_dir: "OUTPUT_DIR", self.work_dir: "--work-dir"}):
            yield

    def _execute(self, wf, plugin="MultiProc", plugin_args=None, n_procs=None, publish_dir=None):
        """Run ``wf`` (cached under the work directory) after clearing dead writers' temporaries.

        Parameters
        ----------
        wf : nipype.pipeline.engine.Workflow
            The workflow to run.
        plugin, plugin_args, n_procs
            As for the facades' ``run``.
        publish_dir : Path, optional
            Where the workflow publishes (default OUTPUT_DIR): its stale temporaries are removed.

        Returns
        -------
        networkx.DiGraph
            The executed graph.
        """
        args = plugin_arguments(plugin, plugin_args, n_procs)  # checked before anything is written
        configure(wf, self.work_dir, plugin=plugin)
        remove_stale_temporaries(publish_dir or self.output_dir)
        write_dataset_description(self.output_dir, __version__, [self.bids_root])
        return run_workflow(wf, plugin, args)
