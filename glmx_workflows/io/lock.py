"""One glmx run at a time per folder: a lock file naming its holder (host, pid, start).

The lock is ``<folder>/.glmx.lock``, created with ``O_CREAT | O_EXCL`` (atomic on local file systems and
on NFS v3+), holding JSON: ``host``, ``pid``, the process's start time (``/proc/<pid>/stat``, so that a
recycled pid is not taken for the holder), the boot id, the time and the command. It is removed when the
run ends, normally, by an exception or by SIGINT/SIGTERM. A lock left by a process that was killed
(SIGKILL, a crash, a reboot) is stale: a later run on the same host finds its pid gone (or another
process, or another boot) and takes the lock over. A lock of another host cannot be checked from here;
the error names the host and pid and the file to delete once that run is known to be gone.
"""

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..core.errors import GlmxError
from .atomic import _alive

LOCK_NAME = ".glmx.lock"
# a lock file still empty this long after its creation belongs to a writer that died before writing it
_EMPTY_GRACE_S = 30.0

_held = {}  # {lock path: count}: a process may take the lock it already holds (nested facades)


def _boot_id():
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid):
    """Start time of process ``pid`` in clock ticks since boot ('' where /proc is not available)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may contain spaces: count from its end
    return stat.rsplit(")", 1)[1].split()[19]


def lock_record():
    """What this process writes into a lock it takes.

    Returns
    -------
    dict
        ``host``, ``pid``, ``start`` (process start ticks), ``boot`` (boot id), ``time`` (ISO, UTC) and
        ``command``.
    """
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid()),
            "boot": _boot_id(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["glmx", *sys.argv[1:]])[:300]}


def holder_gone(record):
    """True when the process a lock record names has certainly ended (same host only).

    Parameters
    ----------
    record : dict
        A lock record (:func:`lock_record` of the process that took the lock).

    Returns
    -------
    bool
        True when the record is from this host and its process no longer runs (the pid is free, or now
        belongs to a process started at another time, or the machine was rebooted since). False for
        another host's lock, which cannot be checked from here.
    """
    if record.get("host") != socket.gethostname():
        return False
    if record.get("boot") and _boot_id() and record["boot"] != _boot_id():
        return True
    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    if not _alive(pid):
        return True
    return bool(record.get("start")) and _start_ticks(pid) not in ("", record["start"])


def read_lock(path):
    """The record of a lock file, {} when it is empty or unreadable, None when there is none.

    Parameters
    ----------
    path : str or Path
        The lock file.

    Returns
    -------
    dict or None
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _stale(path, record):
    if record:
        return holder_gone(record)
    try:  # empty: being written right now, or its writer died before writing
        return time.time() - os.stat(path).st_mtime > _EMPTY_GRACE_S
    except OSError:
        return False


def _take(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(lock_record()) + "\n")


def _break(path, record):
    """Remove a stale lock unless another process replaced it meanwhile (one breaker at a time)."""
    import fcntl

    with open(str(path) + ".break", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # the breakers are on this host: a local flock orders them
        try:
            if read_lock(path) == record:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def acquire(folder, what="OUTPUT_DIR"):
    """Take the lock of ``folder`` (created when missing) or fail with one line naming its holder.

    Parameters
    ----------
    folder : str or Path
        The folder a run writes into.
    what : str
        How the folder is named in the message (``OUTPUT_DIR``, ``--work-dir``).

    Returns
    -------
    Path
        The lock file (pass it to :func:`release`).

    Raises
    ------
    GlmxError
        Another live run holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = (folder / LOCK_NAME).resolve()
    if path in _held:
        _held[path] += 1
        return path
    for _ in range(20):
        try:
            _take(path)
        except FileExistsError:
            record = read_lock(path)
            if record is None:
                continue  # released between our attempt and the read
            if _stale(path, record):
                _break(path, record)
                continue
            who = (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('time')}" if record
                   else "a run that is starting")
            raise GlmxError(f"another glmx run is using this folder ({who}); wait for it to end, or delete "
                            f"{path} if that run is gone", file=folder, field=what) from None
        _held[path] = 1
        return path
    raise GlmxError(f"could not take the lock {path} (it keeps changing hands)", file=folder, field=what)


def release(path):
    """Give up a lock taken by :func:`acquire` (the file is removed when this process's last hold ends).

    Parameters
    ----------
    path : Path
        As returned by :func:`acquire`.
    """
    count = _held.get(path, 0) - 1
    if count > 0:
        _held[path] = count
        return
    _held.pop(path, None)
    record = read_lock(path)
    # never remove a lock another process took over (ours was broken as stale, which it was not)
    if record and record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _remove_if_bookkeeping(folder):
    """Delete ``folder`` (made by this run) when every file in it is a state record (``glmx_state/``)."""
    import shutil

    folder = Path(folder)
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    if all("glmx_state" in p.relative_to(folder).parts[:1] for p in files):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def locked(folders):
    """Hold the locks of ``folders`` (``{folder: what}``, taken in order) for the duration of the block.

    Parameters
    ----------
    folders : dict
        ``{folder: name for messages}``; the same resolved folder is locked once.

    Yields
    ------
    list of Path
        The lock files held.
    """
    taken, created = [], []
    try:
        for folder, what in folders.items():
            if not Path(folder).exists():
                created.append(Path(folder))
            path = acquire(folder, what)
            if path not in taken:
                taken.append(path)
            else:
                release(path)
    except GlmxError:
        for path in reversed(taken):
            release(path)
        for folder in reversed(created):  # a refused run leaves nothing behind, not even an empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield taken
    except GlmxError:
        for path in reversed(taken):
            release(path)
        taken = []
        for folder in reversed(created):  # refused input: a folder this run made goes, if it holds no more
            _remove_if_bookkeeping(folder)  # than the run's own state records (crash files and outputs stay)
        raise
    finally:
        for path in reversed(taken):
            release(path)
