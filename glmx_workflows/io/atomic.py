"""Atomic writes: a temporary file beside the target, renamed over it once complete.

A killed process therefore never leaves a truncated NIfTI or TSV under the output directory, only a
``.tmp-*`` file that the next write of the same target replaces.
"""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path in the target's folder; rename it to ``target`` on success.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.tsv``) so that writers that
    choose a format from the file name behave as for the target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name.split('.')[0]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(target, text):
    """Write ``text`` to ``target`` atomically; an identical existing file is left untouched."""
    target = Path(target)
    if target.is_file() and target.read_text(encoding="utf-8") == text:
        return target
    with atomic_path(target) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(target)


def same_content(a, b, chunk=1 << 20):
    """True when two files hold the same bytes."""
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
    so a rerun that recomputes nothing leaves OUTPUT_DIR's timestamps as they were."""
    import shutil

    if same_content(source, target):
        return Path(target)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)
