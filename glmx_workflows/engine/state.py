"""What the engine remembers between runs besides nipype's node cache."""

import os
from pathlib import Path


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

    from ..io.atomic import write_text

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

