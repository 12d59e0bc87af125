"""Files kept under the digest of everything they are computed from, so that a node nipype reruns (its folder
emptied) takes back what it computed before instead of computing it again.

A subject's ``compute_contrasts`` and ``fixed_effects`` nodes rerun whenever the spec's contrasts change, e.g.
when one contrast is added; each contrast's maps are kept here under the digest of the stored fit (its bytes),
the mask (path, size, mtime), the contrast's definition and the code that computes and writes maps (its
modules' bytes and the numeric libraries' versions), and only the new contrast is computed. A kept entry is
never stale: different material is a different key. Each node call names its scope (one run's contrasts, the
subject's fixed effects) and deletes the entries of that scope it did not use (:meth:`FileParts.prune`), so a
scope holds one run's worth. The kept files are linked (hard links; copied where links are not possible) into
the node's folder: its outputs stay within it, as nipype expects.
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .atomic import write_text

RECORD = "part.json"
_ENTRY = re.compile(r"^[A-Za-z0-9]+-[0-9a-f]{40}$")
_CODE = {}


def code_digest(relative_paths):
    """SHA-1 of the package version, the numeric libraries' versions and the bytes of some of its modules.

    Parameters
    ----------
    relative_paths : iterable of str
        Modules or folders (every ``.py`` below) relative to the package folder, e.g. ``"core"``,
        ``"interfaces/glm.py"``.

    Returns
    -------
    str
        40 hex digits (computed once per process for a given list).
    """
    paths = tuple(relative_paths)
    if paths not in _CODE:
        from importlib import metadata

        from .. import __version__

        h = hashlib.sha1(__version__.encode())
        for dist in ("numpy", "scipy", "nibabel"):
            try:
                h.update(f"{dist}={metadata.version(dist)};".encode())
            except metadata.PackageNotFoundError:
                h.update(f"{dist}=;".encode())
        pkg = Path(__file__).resolve().parents[1]
        for rel in paths:
            target = pkg / rel
            files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
            for f in files:
                h.update(str(f.relative_to(pkg)).encode())
                h.update(f.read_bytes())
        _CODE[paths] = h.hexdigest()
    return _CODE[paths]


def file_digest(path):
    """SHA-1 of a file's bytes.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
        40 hex digits.
    """
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_identity(path):
    """A file as its resolved path, size and modification time (for inputs glmx never rewrites).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    list
        ``[path, size, mtime_ns]``.
    """
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _link(src, dst):
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


class FileParts:
    """Entries of files kept under ``folder/scope``, one folder ``<name>-<digest>`` each.

    Parameters
    ----------
    folder : str or Path or None
        Where entries are kept; None or ``""`` keeps nothing (every part is computed).
    scope : str
        Sub-folder of the calling node (letters, digits, ``-`` and ``_``); :meth:`prune` works within it.
    code : str
        Digest of the code that computes the parts (see :func:`code_digest`); part of every key.

    Attributes
    ----------
    computed : list of str
        Names of the parts computed (not taken back) by this caller.
    """

    def __init__(self, folder, scope, code):
        self.folder = Path(folder) / scope if folder else None
        self.code = code
        self.used = set()
        self.computed = []

    def _entry(self, name, material):
        h = hashlib.sha1(self.code.encode())
        h.update(json.dumps(material, sort_keys=True, default=str).encode())
        entry = f"{re.sub('[^A-Za-z0-9]', '', str(name)) or 'x'}-{h.hexdigest()}"
        self.used.add(entry)
        return entry

    def get(self, name, material, cwd):
        """Link the files kept for ``material`` into ``cwd`` and return their record, or None.

        Parameters
        ----------
        name : str
            Which part (a contrast's name); other characters than letters and digits are dropped.
        material : list
            JSON-able: everything the part is computed from.
        cwd : str or Path
            The node's folder.

        Returns
        -------
        object or None
            The ``data`` given to :meth:`put`, or None when nothing is kept (then :meth:`put` it).
        """
        entry = self._entry(name, material)
        if self.folder is None:
            return None
        path = self.folder / entry
        try:
            record = json.loads((path / RECORD).read_text(encoding="utf-8"))
            for fname in record["files"]:
                _link(path / fname, Path(cwd) / fname)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not kept, or incomplete: computed again
        return record["data"]

    def put(self, name, material, cwd, files, data):
        """Keep ``files`` (names in ``cwd``) and ``data`` (JSON-able) for ``material``.

        Parameters
        ----------
        name, material
            As for :meth:`get`.
        cwd : str or Path
            The folder holding ``files``.
        files : iterable of str
            File names (no folders) in ``cwd``.
        data : object
            JSON-able record returned by :meth:`get`.
        """
        entry = self._entry(name, material)
        self.computed.append(entry)
        if self.folder is None:
            return
        target = self.folder / entry
        tmp = self.folder / f".tmp-{os.getpid()}-{entry}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            files = [Path(f).name for f in files]
            for fname in files:
                _link(Path(cwd) / fname, tmp / fname)
            write_text(tmp / RECORD, json.dumps({"files": files, "data": data}))
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)  # complete or absent: a killed run never leaves a half entry under a key
        except OSError:
            pass  # a part that cannot be kept is computed again next time
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def prune(self):
        """Delete this scope's entries that this caller did not use (see :func:`remove_unused`)."""
        remove_unused(self.folder, self.used, _ENTRY)


def remove_unused(folder, used, pattern):
    """Delete what ``folder`` holds named like ``pattern`` and not in ``used`` (files, or folders with all below).

    The one pruning rule of the keyed caches (these entries, the reports' parts in ``reports.cache``).

    Parameters
    ----------
    folder : Path or None
        The cache folder (None or missing: nothing to do).
    used : set of str
        Names asked for by the latest caller.
    pattern : re.Pattern
        Names of the cache's own entries: nothing else is ever deleted.

    Returns
    -------
    list of Path
        What was deleted.
    """
    removed = []
    if folder is None or not Path(folder).is_dir():
        return removed
    for path in Path(folder).iterdir():
        if not pattern.match(path.name) or path.name in used:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
