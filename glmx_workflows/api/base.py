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
    """

    def __init__(self, task, bids_root, spec=None, derivatives=None, output_dir=None, work_dir=None):
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
        self.entry = task_entry(load_spec(self.spec_path), task, self.spec_path)
        self._layout = None

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
