"""``OUTPUT_DIR/index.html``: one page linking every report of a derivatives folder, with a table of
subjects × contrasts per task saying what was done, what failed (and why) and what was excluded.

The status of each subject comes from the last dataset run of its task, kept in
``OUTPUT_DIR/logs/task-<t>_status.json`` (merged across runs, so that running subjects in batches
gives one table); maps and reports are found by listing OUTPUT_DIR, so reports written by other
commands (group level, resting state) appear as soon as the index is rebuilt. Of a subject whose outputs
glmx recorded (``OUTPUT_DIR/logs/outputs``), only the maps of its latest run are shown, and a task's
columns are the contrasts of its latest run: a contrast since removed from the spec is not listed.
"""

import json
import re
from pathlib import Path
from urllib.parse import quote

from ..io.atomic import write_text
from ..io.derivatives import current_contrasts, current_subject_files
from . import html as H

STATUS_DIR = "logs"
_SUBJECT_MAP = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)_(?:ses-[A-Za-z0-9]+_)?task-(?P<task>[A-Za-z0-9]+)_"
                          r"(?:.*_)?contrast-(?P<contrast>[A-Za-z0-9]+)_stat-z_statmap\.nii\.gz$")
_REPORT = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)_(?:ses-[A-Za-z0-9]+_)?task-(?P<task>[A-Za-z0-9]+)_report\.html$")


def status_path(output_dir, task):
    """Where the subjects' status of a task is kept.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.
    task : str
        Task name.

    Returns
    -------
    Path
        ``OUTPUT_DIR/logs/task-<t>_status.json``.
    """
    return Path(output_dir) / STATUS_DIR / f"task-{task}_status.json"


def record_status(output_dir, task, done=(), failed=None, excluded=()):
    """Merge a run's outcome into the task's status file (subjects of this run replace earlier entries).

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.
    task : str
        Task name.
    done : iterable of str
        Subjects that finished.
    failed : dict, optional
        ``{subject: (reason, crash file or None)}``.
    excluded : iterable of str
        Subjects excluded by the spec.

    Returns
    -------
    dict
        ``{subject: {'status': 'done' | 'failed' | 'excluded', 'reason': str, 'crash': str}}``, all
        subjects recorded for the task.
    """
    path = status_path(output_dir, task)
    subjects = read_status(output_dir, task)
    for sub in done:
        subjects[sub] = {"status": "done", "reason": "", "crash": ""}
    for sub, (reason, crash) in (failed or {}).items():
        subjects[sub] = {"status": "failed", "reason": str(reason), "crash": str(crash or "")}
    for sub in excluded:
        subjects[sub] = {"status": "excluded", "reason": "in the spec's excludes", "crash": ""}
    write_text(path, json.dumps({"task": task, "subjects": dict(sorted(subjects.items()))}, indent=1) + "\n")
    return subjects


def read_status(output_dir, task):
    """The recorded status of a task's subjects (empty when none was recorded).

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.
    task : str
        Task name.

    Returns
    -------
    dict
        As :func:`record_status` returns.
    """
    path = status_path(output_dir, task)
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("subjects", {}))
    except (ValueError, AttributeError):
        return {}  # a damaged status file only loses the history; the maps on disk still show


def find_subject_maps(output_dir):
    """Subject-level z maps under OUTPUT_DIR (per-run maps left out).

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.

    Returns
    -------
    dict
        ``{task: {subject: {contrast label: Path}}}``; of a subject whose outputs are recorded (see
        :func:`glmx_workflows.io.derivatives.record_outputs`), only the maps its latest run produced.
    """
    found, current = {}, {}
    root = Path(output_dir).resolve()
    # a BIDS Stats Model's subject maps are its nodes' (OUTPUT_DIR/node-<name>/sub-<s>/...)
    for path in sorted([*root.glob("sub-*/**/*_stat-z_statmap.nii.gz"),
                        *root.glob("node-*/sub-*/**/*_stat-z_statmap.nii.gz")]):
        m = _SUBJECT_MAP.match(path.name)
        if m is None or "_run-" in path.name:
            continue
        key = (m["task"], m["sub"])
        if key not in current:
            current[key] = current_subject_files(root, *key)
        if current[key] is not None and str(path) not in current[key]:
            continue  # not produced by the subject's latest run (a contrast since removed from the spec)
        found.setdefault(m["task"], {}).setdefault(m["sub"], {})[m["contrast"]] = path
    return found


def find_reports(output_dir):
    """Every HTML report under OUTPUT_DIR.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.

    Returns
    -------
    dict
        ``subjects``: ``{subject: [Path, ...]}`` (first-level and resting-state reports);
        ``first_level``: ``{(task, subject): Path}``; ``group``: ``[Path, ...]`` (``group/*.html``).
    """
    out = Path(output_dir)
    subjects, first_level = {}, {}
    for path in sorted([*out.glob("sub-*/**/*_report.html"), *out.glob("node-*/sub-*/**/*_report.html")]):
        sub = next(p for p in path.relative_to(out).parts if p.startswith("sub-"))[len("sub-"):]
        subjects.setdefault(sub, []).append(path)
        m = _REPORT.match(path.name)
        if m:
            first_level[(m["task"], m["sub"])] = path
    group = sorted([*out.glob("group/**/*.html"), *out.glob("node-*/*_report.html")])
    return {"subjects": subjects, "first_level": first_level, "group": group}


def _href(path, root):
    return "/".join(quote(p) for p in Path(path).relative_to(root).parts)


def _task_table(task, statuses, maps, reports, root):
    subjects = sorted(set(statuses) | set(maps))
    contrasts = current_contrasts(root, task)  # those of the spec of the latest run, when recorded
    if contrasts is None:
        contrasts = sorted({c for per in maps.values() for c in per})
    rows, classes = [], []
    for sub in subjects:
        state = statuses.get(sub, {"status": "done", "reason": "", "crash": ""})
        status = state["status"]
        report = reports.get((task, sub))
        link = H.tag("a", "report", href=_href(report, root)) if report is not None else ""
        kind = {"done": "ok"}.get(status, status)
        row, cls = [f"sub-{sub}", status, link], [None, kind, None]
        for contrast in contrasts:
            if status != "done":
                row.append(status)
                cls.append(kind)
            elif contrast in maps.get(sub, {}):
                target = (f"{_href(report, root)}#contrast-{H.anchor(contrast)}" if report is not None
                          else _href(maps[sub][contrast], root))
                row.append(H.tag("a", "done", href=target))
                cls.append("ok")
            else:
                row.append("no map")
                cls.append("missing")
        rows.append(row)
        classes.append(cls)
    counts = {k: sum(1 for s in subjects if statuses.get(s, {"status": "done"})["status"] == k)
              for k in ("done", "failed", "excluded")}
    parts = [H.tag("h2", f"Task {task}", id=f"task-{H.anchor(task)}"),
             H.tag("p", f"{len(subjects)} subject(s): {counts['done']} done, {counts['failed']} failed, "
                        f"{counts['excluded']} excluded; {len(contrasts)} contrast(s). A cell links to the "
                        "contrast in the subject's report.")]
    parts.append(H.table(rows, header=["subject", "status", "report", *contrasts], cell_classes=classes) if rows
                 else H.tag("p", "No subject recorded.", cls="none"))
    failed = [(sub, statuses[sub]) for sub in subjects if statuses.get(sub, {}).get("status") == "failed"]
    if failed:
        parts.append(H.tag("h3", "Failures", id=f"failures-{H.anchor(task)}"))
        parts.append(H.table([[f"sub-{sub}", st["reason"], st.get("crash") or "(none: refused before running)"]
                              for sub, st in failed], header=["subject", "reason", "crash file"],
                             cell_classes=[["failed", None, None]] * len(failed)))
    return parts


def build_index(output_dir):
    """Write ``OUTPUT_DIR/index.html`` from the recorded statuses and the files under OUTPUT_DIR.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.

    Returns
    -------
    Path
        ``OUTPUT_DIR/index.html``.
    """
    root = Path(output_dir).resolve()
    maps = find_subject_maps(root)
    reports = find_reports(root)
    tasks = {p.name[len("task-"):-len("_status.json")] for p in (root / STATUS_DIR).glob("task-*_status.json")}
    tasks |= set(maps) | {t for t, _ in reports["first_level"]}
    parts = [H.tag("h1", f"glmx outputs: {root.name}")]
    if tasks:
        parts.append(H.tag("nav", H.tag("ul", H.join(*[H.tag("li", H.tag("a", f"Task {t}", href=f"#task-{H.anchor(t)}"))
                                                     for t in sorted(tasks)]))))
    for task in sorted(tasks):
        parts += _task_table(task, read_status(root, task), maps.get(task, {}), reports["first_level"], root)

    parts.append(H.tag("h2", "Group reports", id="group"))
    if reports["group"]:
        parts.append(H.tag("ul", H.join(*[H.tag("li", H.tag("a", _href(p, root), href=_href(p, root)))
                                          for p in reports["group"]])))
    else:
        parts.append(H.tag("p", "None yet (run the group level: glmx BIDS_DIR OUTPUT_DIR group --task T).",
                           cls="none"))
    parts.append(H.tag("h2", "Subject reports", id="subjects"))
    if reports["subjects"]:
        rows = [[f"sub-{sub}", H.join(*[H.Raw(str(H.tag("a", p.name, href=_href(p, root))) + "<br>")
                                         for p in paths])]
                for sub, paths in sorted(reports["subjects"].items())]
        parts.append(H.table(rows, header=["subject", "reports"]))
    else:
        parts.append(H.tag("p", "None yet.", cls="none"))
    return H.write_page(root / "index.html", f"glmx outputs: {root.name}", parts)


def write_index(output_dir, task, done=(), failed=None, excluded=()):
    """Record a dataset run's outcome and rebuild ``OUTPUT_DIR/index.html``.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR of the run.
    task : str
        Task name.
    done, failed, excluded
        As :func:`record_status`.

    Returns
    -------
    Path
        The index.
    """
    record_status(output_dir, task, done, failed, excluded)
    return build_index(output_dir)
