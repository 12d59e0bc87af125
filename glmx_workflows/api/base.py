"""What every facade shares: a dataset and its spec entry, OUTPUT_DIR and the work directory, a pybids
layout indexed on first use, and running a workflow on the engine with the dataset's bookkeeping."""

from pathlib import Path

from .. import __version__
from ..core.errors import GlmxError
from ..engine import configure, plugin_arguments, run_workflow
from ..io.atomic import remove_stale_temporaries
from ..io.bids import open_layout
from ..io.derivatives import write_dataset_description
from ..spec.bsm import is_bsm_file, load_model
from ..spec.model import load_spec, task_entry


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
        self.bids_root = Path(bids_root)
        self.spec_path = Path(spec) if spec else default_spec_path(bids_root)
        self.derivatives = derivatives
        self.output_dir = Path(output_dir) if output_dir else self.bids_root / "derivatives" / "glmx"
        self.work_dir = Path(work_dir) if work_dir else Path(str(self.output_dir) + "_work")
        self._layout = None
        self._graph = None
        self.model = None
        if model is None and spec is not None and is_bsm_file(spec):
            model = spec  # a BIDS Stats Models document passed as the spec
        if model is not None:
            self._use_model(model)
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

    @property
    def layout(self):
        """The pybids layout of the dataset and its derivatives (indexed on first use)."""
        if self._layout is None:
            self._layout = open_layout(self.bids_root, self.derivatives)
        return self._layout

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
        configure(wf, self.work_dir, plugin=plugin)
        remove_stale_temporaries(publish_dir or self.output_dir)
        write_dataset_description(self.output_dir, __version__, [self.bids_root])
        return run_workflow(wf, plugin, plugin_arguments(plugin, plugin_args, n_procs))
