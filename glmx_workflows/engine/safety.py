"""Where a run may write: never into an input.

One rule, used by every command that writes (participant and group levels, GLM and connectivity, the
Python facades, ``glmx init`` and ``glmx example``): a folder a run writes into (OUTPUT_DIR, the work
directory) must not be, contain or lie inside a dataset it reads (the raw BIDS folder, the derivatives
folder given by ``--derivatives`` or found under ``BIDS_DIR/derivatives``, the ``--design-dir``), with
every symlink resolved. The one exception is a new pipeline folder under the raw dataset's
``derivatives/`` (``BIDS_DIR/derivatives/glmx``, the default), the place BIDS gives derivatives; it must
still not be or lie inside an input derivatives folder, and ``derivatives/`` itself is refused. A folder
that already holds a dataset another program wrote (its ``dataset_description.json`` is not glmx's) is
refused too: it is somebody's input. Everything is checked before the first file is written.
"""

import os
import tempfile
from pathlib import Path

from ..core.errors import GlmxError


def input_folders(bids_root, derivatives=None, extra=()):
    """The folders a run reads: the raw dataset, its derivatives folder (given, or found), and ``extra``.

    Parameters
    ----------
    bids_root : str or Path
        The raw BIDS dataset.
    derivatives : str or Path, optional
        ``--derivatives``; when None, the fmriprep folder :func:`glmx_workflows.io.bids.find_derivatives`
        finds, if any (a run that needs one and has none fails later with its own message).
    extra : iterable of path, optional
        Other inputs (``--design-dir``); None entries are skipped.

    Returns
    -------
    list of Path
        The input folders, raw dataset first.
    """
    from ..io.bids import find_derivatives

    folders = [Path(bids_root)]
    if derivatives is not None:
        folders.append(Path(derivatives))
    else:
        try:
            folders.append(find_derivatives(bids_root))
        except GlmxError:
            pass
    folders += [Path(p) for p in extra if p is not None]
    return folders


def input_conflict(path, bids_root, inputs=()):
    """Why writing into ``path`` would write into an input (None when it would not).

    Parameters
    ----------
    path : str or Path
        A folder a run would write into (need not exist; symlinks in it are resolved).
    bids_root : str or Path
        The raw BIDS dataset.
    inputs : iterable of path
        Every other folder the run reads (derivatives, design folder).

    Returns
    -------
    str or None
        The reason, naming the input; None when ``path`` is safe.
    """
    out = Path(path).resolve()
    root = Path(bids_root).resolve()
    derivatives = root / "derivatives"
    for folder in [root, *inputs]:
        folder = Path(folder).resolve()
        kind = "the raw BIDS dataset" if folder == root else "an input folder"
        if out == folder:
            return f"is {kind} {folder}"
        if out in folder.parents:
            return f"contains {kind} {folder}"
        if folder in out.parents and not (folder == root and derivatives in out.parents):
            return f"lies inside {kind} {folder}" + (
                " (outside its derivatives/ folder)" if folder == root and out != derivatives else "")
    desc = out / "dataset_description.json"
    if desc.is_file():
        from ..io.derivatives import written_by_glmx

        if not written_by_glmx(out):
            return f"holds a dataset glmx did not write ({desc})"
    return None


def linked_inputs(folder, bids_root, inputs=()):
    """Folders below ``folder`` that are symlinks into an input (writing through them writes into it).

    Parameters
    ----------
    folder : str or Path
        An existing OUTPUT_DIR or work directory (a missing one has none).
    bids_root, inputs
        As for :func:`input_conflict`.

    Returns
    -------
    list of tuple
        ``(link, reason)`` for every such symlink.
    """
    found = []
    for top, dirs, _ in os.walk(folder):
        for name in dirs:
            link = Path(top, name)
            if link.is_symlink():
                why = input_conflict(link, bids_root, inputs)
                if why and not why.startswith("holds"):
                    found.append((link, why))
    return found


def check_output_dir(output_dir, bids_root, inputs=(), field="OUTPUT_DIR"):
    """Refuse a folder to write into that touches an input, or that cannot be written.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR or the work directory; need not exist yet (its nearest existing parent is probed with a
        real write).
    bids_root : str or Path
        The raw BIDS dataset.
    inputs : iterable of path, optional
        Every other folder the run reads (see :func:`input_folders`).
    field : str
        How the folder is named in the message.

    Returns
    -------
    Path
        ``output_dir`` resolved.

    Raises
    ------
    GlmxError
        The folder is, contains or lies inside an input (see the module docstring), links into one, or is
        not writable.
    """
    out = Path(output_dir).resolve()
    why = input_conflict(output_dir, bids_root, inputs)
    if why:
        raise GlmxError(f"refusing to write here: this folder {why}; choose a folder outside every input "
                        f"(e.g. {Path(bids_root).resolve() / 'derivatives' / 'glmx'})", file=out, field=field)
    if out.is_dir():
        for link, why in linked_inputs(out, bids_root, inputs):
            raise GlmxError(f"refusing to write here: {link} links to a folder that {why}", file=out,
                            field=field)
    probe = out
    while not probe.exists():
        probe = probe.parent
    # os.access says yes to root everywhere; only a real write answers (read-only mounts, /proc, quotas)
    try:
        if not probe.is_dir():
            raise OSError("not a directory")
        fd, tmp = tempfile.mkstemp(prefix=".glmx-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise GlmxError(f"output directory is not writable ({exc.strerror or exc})", file=probe,
                        field=field) from None
    return out


def check_new_dataset_dir(path, field="DIR"):
    """Refuse to create a dataset (``glmx example``) in or inside a dataset that glmx did not write.

    Parameters
    ----------
    path : str or Path
        Folder of the dataset to write.
    field : str
        How the folder is named in the message.

    Returns
    -------
    Path
        ``path`` resolved.

    Raises
    ------
    GlmxError
        ``path`` or one of its parents holds a ``dataset_description.json`` that glmx did not write.
    """
    from ..io.derivatives import written_by_glmx

    out = Path(path).resolve()
    for folder in [out, *out.parents]:
        if (folder / "dataset_description.json").is_file() and not written_by_glmx(folder):
            where = "is" if folder == out else "lies inside"
            raise GlmxError(f"refusing to write here: this folder {where} a dataset glmx did not write "
                            f"({folder})", file=out, field=field)
    return out
