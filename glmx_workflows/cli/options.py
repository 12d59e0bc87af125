"""Execution options shared by every ``glmx`` run command, checked before anything is read or written."""

from pathlib import Path

from ..core.errors import GlmxError


def plugin_options(args):
    """``--plugin-args`` parsed and type-checked for ``--plugin``, and ``--n-procs`` checked.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``glmx`` arguments (``plugin``, ``plugin_args``, ``n_procs``).

    Returns
    -------
    dict
        The plugin arguments.

    Raises
    ------
    GlmxError
        The text or file is not a mapping, a value has the wrong type, or ``--n-procs`` is below 1.
    """
    from ..engine import parse_plugin_args
    from ..spec.plugin_keys import check_plugin_args

    if args.n_procs is not None and args.n_procs < 1:
        raise GlmxError(f"expected a number of processes >= 1, got {args.n_procs}", field="--n-procs")
    value = args.plugin_args
    source = value if value is not None and not str(value).lstrip().startswith("{") and Path(value).is_file() \
        else None
    return check_plugin_args(args.plugin, parse_plugin_args(value), source=source)
