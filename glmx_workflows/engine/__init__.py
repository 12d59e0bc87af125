"""Running built workflows: configuration and the one verb (``run``), crash files, cluster jobs, the
progress line, the state kept between runs, and dataset runs with per-subject accounting.

| module | what |
|---|---|
| ``run`` | ``configure``, ``run`` (the one way a workflow is run), ``run_workflow`` (raise on failure) |
| ``dataset`` | ``run_dataset``: a workflow of one sub-workflow per subject; ``RunReport``; published files |
| ``crashes`` | which crash files a run wrote, their subject, node and one-line reason |
| ``cluster`` | job resource requests, plugin arguments, waiting for Graph plugins' jobs |
| ``progress`` | the progress line |
| ``state`` | what is remembered between runs besides nipype's node cache |
| ``safety`` | where a run may write (never into an input) |

Import from the submodules; the names below are re-exported for callers of the former ``engine.py``.
"""

from .cluster import job_requests, parse_plugin_args, prepare_plugin, request_resources, wait_for_graph_jobs
from .crashes import crash_files, crash_node, crash_reason, crash_subject, new_crash_files
from .dataset import RunReport, published_files, run_dataset
from .progress import Progress, count_nodes
from .run import PLUGINS, configure, executed_nodes, plugin_arguments, run, run_workflow
from .safety import check_output_dir
from .state import file_stats

__all__ = ["PLUGINS", "Progress", "RunReport", "check_output_dir", "configure", "count_nodes", "crash_files",
           "crash_node", "crash_reason", "crash_subject", "executed_nodes", "file_stats", "job_requests",
           "new_crash_files", "parse_plugin_args", "plugin_arguments", "prepare_plugin", "published_files",
           "request_resources", "run", "run_dataset", "run_workflow", "wait_for_graph_jobs"]
