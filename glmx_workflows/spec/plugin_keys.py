"""Types of the ``--plugin-args`` values nipype's plugins (and glmx's cluster helpers) read.

A value of the wrong type (``"n_procs": "four"``) would otherwise surface as a traceback from inside
nipype's scheduler, after the outputs folder was prepared; checked here first, naming the key. Keys not
listed are passed to nipype unchecked (its plugins take a few more, rarely used).
"""

import json

import jsonschema

from ..core.errors import GlmxError

_POS_INT = {"type": "integer", "minimum": 1}
_POS_NUM = {"type": "number", "exclusiveMinimum": 0}
_NONNEG_NUM = {"type": "number", "minimum": 0}
_STR = {"type": "string"}
_STR_OR_NULL = {"type": ["string", "null"]}  # null: the site has no such complex / environment
_BOOL = {"type": "boolean"}

# key: (schema, plugins that read it)
PLUGIN_KEYS = {
    "n_procs": (_POS_INT, ("MultiProc",)),
    "memory_gb": (_POS_NUM, ("MultiProc",)),
    "raise_insufficient": (_BOOL, ("MultiProc",)),
    "maxtasksperchild": (_POS_INT, ("MultiProc",)),
    "scheduler": ({"enum": ["tsort", "mem_thread"]}, ("MultiProc",)),
    "mp_context": ({"enum": ["fork", "spawn", "forkserver"]}, ("MultiProc",)),
    "sbatch_args": (_STR, ("SLURM", "SLURMGraph")),
    "qsub_args": (_STR, ("SGE", "SGEGraph")),
    "template": (_STR, ("SLURM", "SLURMGraph", "SGE", "SGEGraph")),
    "max_jobs": (_POS_INT, ("SLURM", "SGE", "SLURMGraph", "SGEGraph")),
    "max_tries": (_POS_INT, ("SLURM", "SGE", "SLURMGraph", "SGEGraph")),
    "retry_timeout": (_NONNEG_NUM, ("SLURM", "SGE", "SLURMGraph", "SGEGraph")),
    "poll_sleep_duration": (_NONNEG_NUM, ("SLURM", "SGE", "SLURMGraph", "SGEGraph")),
    "max_jobname_len": (_POS_INT, ("SGE",)),
    "dont_resubmit_completed_jobs": (_BOOL, ("SLURMGraph", "SGEGraph")),
    "memory_resource": (_STR_OR_NULL, ("SGE", "SGEGraph")),
    "parallel_environment": (_STR_OR_NULL, ("SGE", "SGEGraph")),
}


def _kind(schema):
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    kind = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
            "null": "null"}
    limit = "".join(f" {'>' if k.startswith('exclusive') else '>='} {schema[k]}"
                    for k in ("exclusiveMinimum", "minimum") if k in schema)
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    return " or ".join(kind[t] for t in types) + limit


def check_plugin_args(plugin, plugin_args, source=None):
    """Refuse plugin arguments of the wrong type or shape before anything runs.

    Parameters
    ----------
    plugin : str
        Nipype plugin name (``MultiProc``, ``SLURM``, ...).
    plugin_args : dict or None
        The arguments as parsed from ``--plugin-args`` or given in Python.
    source : str, optional
        The YAML/JSON file they came from (for messages).

    Returns
    -------
    dict
        ``plugin_args`` (an empty dict for None).

    Raises
    ------
    GlmxError
        ``plugin_args`` is not a mapping, or a known key has a value of the wrong type.
    """
    if plugin_args is None:
        return {}
    if not isinstance(plugin_args, dict):
        raise GlmxError(f"expected a mapping of plugin arguments, got {type(plugin_args).__name__}", file=source,
                        field="--plugin-args")
    for key, value in plugin_args.items():
        if key not in PLUGIN_KEYS or key == "status_callback":
            continue
        schema, _ = PLUGIN_KEYS[key]
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            raise GlmxError(f"{key} must be {_kind(schema)} for the {plugin} plugin, got {json.dumps(value, default=str)}",
                            file=source, field=f"--plugin-args {key}") from None
    return plugin_args
