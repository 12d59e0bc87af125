"""Atomic writes: a temporary file beside the target, renamed over it once complete.

A killed process therefore never leaves a truncated NIfTI or TSV under a published name, only a hidden
``.tmp-<host>-<pid>-*`` file; :func:`remove_stale_temporaries` deletes those whose process is gone (run at
the start of every dataset run), so a resumed run leaves nothing half-written behind.
"""

import contextlib
import os
import socket
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _read_umask():
    # read once at import: os.umask can only be read by setting it, which races with other threads
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _owner_tag():
    # host and pid in the name let a later run tell a dead writer's leftovers from a live writer's file
    return f"{socket.gethostname().replace('-', '_')}-{os.getpid()}"


# Longest file name most file systems take (ext4, xfs, btrfs, APFS, NTFS: 255 bytes).
NAME_MAX = 255


def longest_name():
    """Longest target name :func:`atomic_path` can write: its temporary adds a prefix, the owner tag and a
    random part to the name.

    Returns
    -------
    int
        Bytes left for a published file's name.
    """
    # '.tmp-' + host-pid (pid up to 7 digits) + '-' + name + '-' + 8 random characters
    return NAME_MAX - len(TMP_PREFIX) - len(socket.gethostname()) - 1 - 7 - 1 - 1 - 8


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path in the target's folder; rename it to ``target`` on success.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.tsv``) so that writers that
    choose a format from the file name behave as for the target.

    Parameters
    ----------
    target : str or Path
        Final path; its folder is created.

    Yields
    ------
    Path
        Temporary file to write to; on an exception it is deleted and ``target`` left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_owner_tag()}-{target.name.split('.')[0]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; a published file gets the permissions a plain open() would give it
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(target, text):
    """Write ``text`` to ``target`` atomically; an identical existing file is left untouched.

    Parameters
    ----------
    target : str or Path
        File to write.
    text : str
        Content, written as UTF-8.

    Returns
    -------
    Path
        ``target``.
    """
    target = Path(target)
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return target
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(target)


def same_content(a, b, chunk=1 << 20):
    """True when two files hold the same bytes.

    Parameters
    ----------
    a, b : str or Path
        The files; a missing file is never the same.
    chunk : int, optional
        Bytes compared at a time.

    Returns
    -------
    bool
        Both exist, have the same size and the same bytes.
    """
    a, b = Path(a), Path(b)
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(chunk), fb.read(chunk)
            if ca != cb:
                return False
            if not ca:
                return True


def copy_file(source, target):
    """Copy ``source`` to ``target`` atomically (content only); an identical target is left untouched,
    so a rerun that recomputes nothing leaves OUTPUT_DIR's timestamps as they were.

    Parameters
    ----------
    source : str or Path
        File to copy.
    target : str or Path
        Destination; folders are created.

    Returns
    -------
    Path
        ``target``.
    """
    import shutil

    if same_content(source, target):
        return Path(target)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete temporaries under ``folder`` left by killed writers of this host.

    A temporary of another host, or of a live process, may belong to a run still writing (a cluster
    job) and is left alone.

    Parameters
    ----------
    folder : str or Path
        Searched recursively; a missing folder removes nothing.

    Returns
    -------
    list of Path
        The removed temporaries.
    """
    host = socket.gethostname().replace("-", "_")
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.rglob(f"{TMP_PREFIX}*"):
        parts = path.name[len(TMP_PREFIX):].split("-")
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
