"""What the engine keeps between runs besides nipype's node cache: one state record per unit.

A *unit* is a top-level item of a workflow the engine runs: a subject's sub-workflow in a dataset run
(``sub_<s>_<task>``), a contrast's group sub-workflow, a node. Its record, ``<work_dir>/glmx_state/
<workflow>/<unit>.pkl`` (written atomically), holds:

- ``plan`` (first-level subjects), with its key: a digest of what the plan was made from, the size and
  modification time of every file of the dataset it could read, the spec entry, the options and the code
  (:func:`code_fingerprint`);
- ``outputs``: the size and modification time of every file the unit published, with their key: a digest
  of what they were made from, the plan, the size and modification time of the files it reads, OUTPUT_DIR
  and the code;
- ``code``: the code its node cache was written by.

One rule invalidates every entry: it counts only while what it was made from is unchanged, i.e. under
its own key. Under the current key the plan is used (no pybids query, no reading of events and headers);
when the outputs' key holds too and every output is still there unmodified, the unit is not even built:
nothing changed. Anything else (an input touched, the spec or an option changed, an output deleted or
edited, an upgrade) sends the unit through nipype, whose node cache recomputes only the nodes whose
inputs changed; the code is the one thing nipype's hash cannot see, so a unit whose node cache was
written by other code has that cache dropped first. Outputs are recorded only after the unit published
them in a run, and forgotten before it runs again, so a run killed half-way is never taken for a
complete one. Deleting the work directory forgets everything; the next run recomputes all.
"""

import os
import re
import shutil
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


def digest(material):
    """A stable hex digest of JSON-able material (dict keys sorted, other objects by ``str``).

    Parameters
    ----------
    material : object
        Nested dicts, lists, strings and numbers.

    Returns
    -------
    str
        SHA-256 hex digest.
    """
    import hashlib
    import json

    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


_CODE = None


def code_fingerprint():
    """What the package is: its version, the (name, size, mtime_ns) of its modules, and the versions of
    the libraries its plans and models depend on.

    Part of every state record's key (see :class:`UnitState`): an edited module or an upgraded nilearn
    makes the next run plan and check again, and drops the node cache written by the former code.

    Returns
    -------
    list
        JSON-able, equal between two processes running the same installation.
    """
    global _CODE
    if _CODE is None:
        import os
        from importlib import metadata

        from .. import __version__

        pkg = Path(__file__).resolve().parents[1]  # the whole package (this module is in engine/)
        files = []
        for top, dirs, names in os.walk(pkg):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for name in sorted(names):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(top, name))
                    files.append((os.path.relpath(os.path.join(top, name), pkg), st.st_size, st.st_mtime_ns))
        libs = {}
        for dist in ("pybids", "nipype", "nilearn", "nibabel", "numpy", "pandas", "scipy"):
            try:
                libs[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                libs[dist] = None
        _CODE = [__version__, libs, files]
    return _CODE


STATE_DIR = "glmx_state"


class UnitState:
    """The state record of one unit (see the module docstring).

    Parameters
    ----------
    work_dir : str or Path
        Nipype work directory (the workflow's ``base_dir``).
    workflow : str
        Name of the workflow the unit belongs to (e.g. ``glmx_flanker``).
    unit : str
        Name of the unit (e.g. ``sub_01_flanker``).
    """

    FORMAT = 2

    def __init__(self, work_dir, workflow, unit):
        import pickle

        self.path = Path(work_dir) / STATE_DIR / workflow / f"{unit}.pkl"
        self.node_dir = Path(work_dir) / workflow / unit
        data = None
        try:
            with open(self.path, "rb") as fh:
                data = pickle.load(fh)
        except Exception:  # missing, truncated, or written by other code: an empty record
            data = None
        if not isinstance(data, dict) or data.get("format") != self.FORMAT:
            data = {"format": self.FORMAT, "key": None, "plan": None, "outputs": None, "code": None}
        data.setdefault("outputs_key", None)
        self.data = data
        self._code_checked = False

    def plan(self, key):
        """The plan made under ``key``, else None.

        Parameters
        ----------
        key : str
            The unit's current key.

        Returns
        -------
        object or None
        """
        return self.data["plan"] if self.data["key"] == key else None

    def outputs(self, key):
        """The files the unit published, when it completed under ``key`` and all are unmodified; else None.

        Parameters
        ----------
        key : str
            The current key of the unit's outputs.

        Returns
        -------
        list of str or None
            None means the unit must run.
        """
        recorded = self.data["outputs"] if self.data["outputs_key"] == key else None
        if not recorded:
            return None
        recorded = [tuple(x) for x in recorded]
        if file_stats(p for p, _, _ in recorded) != recorded:
            return None
        return [p for p, _, _ in recorded]

    def set_plan(self, key, plan):
        """Record ``plan`` under ``key``.

        Parameters
        ----------
        key : str
            The current key of the unit's plan.
        plan : object
            Its checked plan.
        """
        self.data.update(key=key, plan=plan)

    def forget_outputs(self):
        """Forget the recorded outputs and save (before the unit runs again)."""
        if self.data["outputs"] is not None:
            self.data.update(outputs=None, outputs_key=None)
            self.save()

    def set_outputs(self, key, outputs):
        """Record that the unit completed under ``key`` and published ``outputs`` (their sizes and times now).

        Parameters
        ----------
        key : str
            The key of its outputs it ran under.
        outputs : iterable of str
            The files its sinks published.

        Returns
        -------
        bool
            True when recorded (False when an output is missing or the record could not be written).
        """
        stats = file_stats(sorted(set(map(str, outputs))))
        if not stats or any(size < 0 for _, size, _ in stats):
            return False
        self.data.update(outputs=stats, outputs_key=key)
        return self.save()

    def check_code(self):
        """Drop the unit's node cache when other code wrote it (or nothing says which), and record this code.

        Returns
        -------
        bool
            True when a node cache was dropped.
        """
        code = digest(code_fingerprint())
        if self.data["code"] == code:
            return False
        dropped = self.node_dir.is_dir()
        if dropped:
            shutil.rmtree(self.node_dir, ignore_errors=True)
        self.data["code"] = code
        self._code_checked = True
        self.save()
        return dropped

    def save(self):
        """Write the record atomically; a failure to write only costs the next run the full path.

        Returns
        -------
        bool
            True when written.
        """
        import pickle

        from ..io.atomic import atomic_path

        if not self._code_checked:
            # the run checked the code through another instance of this record meanwhile: keep what it wrote
            self.data["code"] = UnitState(self.path.parent.parent.parent, self.path.parent.name,
                                          self.path.stem).data["code"]
        try:
            with atomic_path(self.path) as tmp:
                with open(tmp, "wb") as fh:
                    pickle.dump(self.data, fh, protocol=pickle.HIGHEST_PROTOCOL)
        except OSError:
            return False
        self._retire_former_records()
        return True

    def _retire_former_records(self):
        """Delete what the former state format kept for this unit, now that its record replaces it: the plan
        cache ``glmx_state/task-<t>/plans.pkl`` and the done stamp ``glmx_state/task-<t>/sub-<s>_done.json``
        (those names only; the folder goes when nothing else is left in it)."""
        match = re.fullmatch(r"sub_(?P<sub>[A-Za-z0-9]+)_(?P<task>[A-Za-z0-9]+)", self.path.stem)
        if match is None:
            return
        former = self.path.parent.parent / f"task-{match['task']}"
        if not former.is_dir() or former.is_symlink():
            return
        for name in ("plans.pkl", f"sub-{match['sub']}_done.json"):
            path = former / name
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
        try:
            former.rmdir()  # only when empty
        except OSError:
            pass


def units(wf):
    """Names of the top-level items of a workflow (its units).

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        A workflow.

    Returns
    -------
    list of str
    """
    return sorted(item.name for item in wf._graph.nodes())


def check_code(wf):
    """:meth:`UnitState.check_code` for every unit of ``wf`` (configured: ``base_dir`` set).

    Parameters
    ----------
    wf : nipype.pipeline.engine.Workflow
        The workflow about to run.

    Returns
    -------
    list of str
        Units whose node cache was dropped.
    """
    if not wf.base_dir:
        return []
    return [unit for unit in units(wf) if UnitState(wf.base_dir, wf.name, unit).check_code()]


def unit_keys(options, stats, subjects):
    """Keys of a dataset's subject list and of each subject's unit.

    Parameters
    ----------
    options : dict
        Everything besides the dataset's files that a subject's results depend on: the spec entry,
        overrides, folders (OUTPUT_DIR included), the design folder's file stats, :func:`code_fingerprint`.
    stats : dict
        From :func:`glmx_workflows.io.bids.input_file_stats`: ``{'sub-<s>' or '': [(path, size, mtime_ns)]}``.
    subjects : iterable of str
        Labels (without 'sub-') whose keys are wanted.

    Returns
    -------
    dataset_key : str
        Covers every file: the subject list may depend on any of them.
    subject_keys : dict
        ``{subject: key}`` covering the files outside any subject folder (top-level sidecars, ...) and
        those of the subject's own folders, so that another subject's change leaves it valid.
    """
    common = stats.get("", [])
    dataset_key = digest(["dataset", options, stats])
    return dataset_key, {s: digest(["subject", s, {k: v for k, v in options.items() if k != "participant_label"},
                                    common, stats.get(f"sub-{s}", [])]) for s in subjects}


class SubjectList:
    """The subject list of a dataset run, kept under the dataset key (``<workflow>/subjects.json``).

    Parameters
    ----------
    work_dir : str or Path
        Nipype work directory.
    workflow : str
        Name of the dataset workflow.
    """

    def __init__(self, work_dir, workflow):
        import json

        self.path = Path(work_dir) / STATE_DIR / workflow / "subjects.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, key):
        """``(to_run, excluded)`` when recorded under ``key``, else None.

        Parameters
        ----------
        key : str
            The dataset key.

        Returns
        -------
        tuple of (list of str, list of str), or None
        """
        if not isinstance(self.data, dict) or self.data.get("key") != key:
            return None
        return list(self.data["to_run"]), list(self.data["excluded"])

    def set(self, key, to_run, excluded):
        """Record the lists under ``key`` (atomically; a failure to write is not an error).

        Parameters
        ----------
        key : str
            The dataset key.
        to_run, excluded : list of str
            The subjects.
        """
        import json

        from ..io.atomic import write_text

        self.data = {"key": key, "to_run": list(to_run), "excluded": list(excluded)}
        try:
            write_text(self.path, json.dumps(self.data) + "\n")
        except OSError:
            pass
