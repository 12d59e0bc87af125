"""BIDS Stats Models → the same plan objects task_information.json produces.

pybids' ``BIDSStatsModelsGraph`` runs the model's nodes on the dataset's variables (events, fMRIPrep
confounds, participants.tsv) with the model's transformations, as fitlins does; that needs no image, so
the whole graph is walked while planning. Its outputs become:

- Run level (``Type: glm``): one :class:`~glmx_workflows.planning.SubjectPlan` per subject whose user
  design matrices are the graph's run designs exactly (``X`` after the transformations, n/a filled with
  0 as pybids does for fitlins; nothing added), and whose contrasts are the node's contrasts and
  DummyContrasts. The fit, contrasts, sinks and engine are the task_information.json ones.
- Subject level (``Type: meta``, ``X: [1]``): fixed effects of the runs, the first-level workflow's
  ``fixed_effects`` node, published under the subject node's folder.
- Dataset level (``Type: glm``): the group level's OLS over the subject maps, its design from the graph.

Everything the data decides is checked here with the model's JSON path: an ``X`` entry or wildcard that
matches no variable, a contrast naming a regressor the run's design lacks.
"""

import fnmatch
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.errors import GlmxError
from .planning import SubjectPlan, _check_mask, _checked_design, resolve_tr

WILDCARDS = "*?["


@dataclass
class ModelGraph:
    """The walked graph of a model: each node's outputs as plain data.

    Parameters
    ----------
    model : dict
        The validated document (from ``spec.bsm.load_model``).
    nodes : list of str
        Node names in order (Run first).
    outputs : dict
        ``{node name: list of dict}``; each output has ``entities`` (dict), ``X`` (DataFrame),
        ``contrasts`` (list of dict: name, conditions, weights, test) and ``inputs`` (DataFrame of the
        rows' entities above the Run level, else None).
    """

    model: dict
    nodes: list
    outputs: dict = field(default_factory=dict)

    @property
    def run_node(self):
        """str: the Run-level node (the first)."""
        return self.nodes[0]

    def node(self, level):
        """The node of a level.

        Parameters
        ----------
        level : str
            'Run', 'Session', 'Subject' or 'Dataset'.

        Returns
        -------
        str or None
            Its name, None when the model has no node of that level.
        """
        for n in self.model["Nodes"]:
            if n["Level"] == level:
                return n["Name"]
        return None


def _path(model, node_name):
    from .spec.bsm import node_index

    return f"Nodes[{node_index(model, node_name)}]"


def _contrast_path(model, node_name, contrast):
    """JSON path of the contrast called ``contrast`` of a node (its Contrasts entry, else DummyContrasts)."""
    from .spec.bsm import node_index

    i = node_index(model, node_name)
    for k, con in enumerate(model["Nodes"][i].get("Contrasts") or []):
        if con.get("Name") == contrast:
            return f"Nodes[{i}].Contrasts[{k}].ConditionList"
    return f"Nodes[{i}].DummyContrasts"


def _as_dict(output):
    return {"entities": dict(output.entities), "X": output.X.copy(),
            "contrasts": [{"name": c.name, "conditions": list(c.conditions), "weights": c.weights, "test": c.test}
                          for c in output.contrasts],
            "inputs": None if output.metadata is None or "contrast" not in getattr(output.metadata, "columns", [])
            else output.metadata.copy()}


def check_run_output(model, node_name, out, file):
    """The data-dependent checks of one run's design: every X entry and wildcard matches a variable, every
    contrast's conditions are columns of the design.

    Parameters
    ----------
    model : dict
        The validated document.
    node_name : str
        The Run-level node.
    out : dict
        One run's output (see :class:`ModelGraph`).
    file : str
        The model file, for messages.

    Raises
    ------
    GlmxError
        Naming the JSON path of the X entry or contrast, and the run.
    """
    columns = list(out["X"].columns)
    run = ", ".join(f"{k}-{v}" for k, v in sorted(out["entities"].items()))
    check_x_entries(model, node_name, out, file, f"the run ({run}); a mistyped confound or condition?")
    for con in out["contrasts"]:
        missing = [c for c in con["conditions"] if c not in columns]
        if missing:
            raise GlmxError(f"contrast '{con['name']}' names {', '.join(map(str, missing))}, not a column of the "
                            f"design of run ({run}); columns: {', '.join(columns)}", file=file,
                            field=_contrast_path(model, node_name, con["name"]))


def check_x_entries(model, node_name, out, file, what=None):
    """Every ``X`` entry of a node (a name, or a wildcard such as ``cosine*``) matches a column of its design.

    pybids drops what it cannot find (``invalid_inputs='drop'``, as fitlins runs it): a mistyped confound
    or participants.tsv column would vanish from the model silently.

    Parameters
    ----------
    model : dict
        The validated document.
    node_name : str
        Any node.
    out : dict
        One of its outputs (see :class:`ModelGraph`).
    file : str
        The model file, for messages.
    what : str, optional
        What the design is, for the message (default: the node and participants.tsv).

    Raises
    ------
    GlmxError
        Naming the JSON path of the X entry.
    """
    from .spec.bsm import node_index

    i = node_index(model, node_name)
    columns = [str(c) for c in out["X"].columns]
    what = what or f"node '{node_name}' (participants.tsv columns and the node's transformations);"
    for j, entry in enumerate(model["Nodes"][i]["Model"]["X"]):
        if entry == 1 and "intercept" in columns:
            continue
        entry = str(entry)
        hit = (any(fnmatch.fnmatchcase(c, entry) for c in columns) if any(ch in entry for ch in WILDCARDS)
               else entry in columns)
        if not hit:
            raise GlmxError(f"'{entry}' matches no variable of {what} design columns found: {', '.join(columns)}",
                            file=file, field=f"Nodes[{i}].Model.X[{j}]")


def walk_graph(layout, model, subjects=None):
    """Run the model's graph with pybids on the dataset's variables (no images are read).

    Parameters
    ----------
    layout : bids.BIDSLayout
        The dataset with its fMRIPrep derivatives (``io.bids.open_layout``).
    model : dict
        The validated document.
    subjects : list of str, optional
        Only these subjects (labels without 'sub-').

    Returns
    -------
    ModelGraph
        Every node's outputs.

    Raises
    ------
    GlmxError
        pybids refuses the model on this dataset (e.g. a transformation's input is not a variable), an X
        entry matches nothing, or a contrast names a missing regressor; each with its JSON path.
    """
    import warnings

    from bids.modeling import BIDSStatsModelsGraph

    from .spec.bsm import model_task

    file = model["_model_file"]
    doc = {k: v for k, v in model.items() if not k.startswith("_")}
    names = [n["Name"] for n in model["Nodes"]]
    filters = {"task": model_task(model)}
    if subjects:
        filters["subject"] = list(subjects)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = BIDSStatsModelsGraph(layout, doc)
            graph.load_collections(**filters)
        except Exception as exc:  # pybids' own message is the most precise one it has
            raise GlmxError(f"pybids could not load the model's variables: {exc}", file=file) from None
        result = ModelGraph(model=model, nodes=names)
        node = graph.root_node
        inputs, edge_filter = None, {}
        while node is not None:
            where = _path(model, node.name)
            try:
                if inputs is None:
                    outs = node.run(group_by=node.group_by, force_dense=False, invalid_inputs="drop",
                                    invalid_contrasts="ignore", missing_values="fill")
                else:
                    # the incoming edge's Filter, applied by pybids as fitlins has it (BIDSStatsModelsGraph's
                    # run_graph); n/a in a covariate (participants.tsv) is an error above the Run level, not 0
                    outs = node.run(inputs=inputs, group_by=node.group_by, invalid_inputs="drop",
                                    invalid_contrasts="ignore", missing_values="error", **edge_filter)
            except GlmxError:
                raise
            except Exception as exc:
                raise GlmxError(f"pybids could not build node '{node.name}': {type(exc).__name__}: {exc}",
                                file=file, field=where) from None
            if not outs:
                raise GlmxError(f"node '{node.name}' has no input on this dataset (task "
                                f"'{filters['task']}'{', subjects ' + ', '.join(subjects) if subjects else ''})",
                                file=file, field=where)
            result.outputs[node.name] = [_as_dict(o) for o in outs]
            for o in result.outputs[node.name]:
                if inputs is None:
                    check_run_output(model, node.name, o, file)
                else:  # pybids drops an X entry it cannot find (a mistyped participants.tsv column): refused here
                    check_x_entries(model, node.name, o, file)
            inputs = [c for o in outs for c in o.contrasts]
            edge_filter = dict(node.children[0].filter or {}) if node.children else {}
            node = node.children[0].destination if node.children else None
    check_f_inputs(result)
    return result


def check_f_inputs(graph):
    """Refuse an F contrast that reaches a node fitting a model over its maps.

    An F contrast's maps hold an F statistic, not one effect size per run or subject, so a Subject node of
    ``Type: glm`` or the Dataset node has nothing to model for it (fitlins fits a t test on whatever effect
    map the F left; glmx refuses). The user keeps it at the lower levels with the incoming edge's ``Filter``.
    A Subject node of ``Type: meta`` carries it on (nilearn's approximate fixed effects of F).

    Parameters
    ----------
    graph : ModelGraph
        The walked graph.

    Raises
    ------
    GlmxError
        Naming the F contrast's JSON path and the edge to filter.
    """
    from .spec.bsm import node_index

    f_names = {c["name"]: _contrast_path(graph.model, graph.run_node, c["name"]).rsplit(".", 1)[0]
               for o in graph.outputs[graph.run_node] for c in o["contrasts"] if c["test"] == "F"}
    edges = graph.model.get("Edges") or []
    for name in graph.nodes[1:]:
        node = graph.model["Nodes"][node_index(graph.model, name)]
        outs = graph.outputs.get(name, [])
        incoming = {str(o["entities"].get("contrast")) for o in outs}
        if node["Level"] == "Dataset" or node["Model"]["Type"] == "glm":
            reached = sorted(incoming & set(f_names))
            if reached:
                k = next((i for i, e in enumerate(edges) if e.get("Destination") == name), None)
                edge = f"Edges[{k}].Filter" if k is not None else f"an Edges entry into '{name}' with a Filter"
                kept = sorted(incoming - set(f_names))
                raise GlmxError(f"F contrast '{reached[0]}' reaches node '{name}', which has no effect size per input "
                                f"to model for it; keep it at the lower levels with {edge} "
                                f"{{\"contrast\": {json.dumps(kept)}}}", file=graph.model["_model_file"],
                                field=f_names[reached[0]])
        for o in outs:
            for con in o["contrasts"]:
                if con["test"] == "F":
                    own = _own_name(con, str(o["entities"].get("contrast")))
                    f_names[con["name"]] = _contrast_path(graph.model, name, own).rsplit(".", 1)[0]


def model_entry(model):
    """A spec entry (task_information.json keys with their defaults) for a model's first level.

    Only the keys that apply to a user design matter: no censoring, no smoothing, glmx's fit, the noise
    model from ``Model.Software.glmx.NoiseModel`` (AR(1) by default, as fitlins).

    Parameters
    ----------
    model : dict
        The validated document.

    Returns
    -------
    dict
        The entry, with ``_spec_file`` (the model file), ``_task`` and ``_model`` (the document).
    """
    from .spec.bsm import model_task, noise_model
    from .spec.keys import defaults

    entry = defaults()
    space = (model.get("Input") or {}).get("space")
    entry.update({"tr": None, "confound_regressors": [], "design_contrasts": {}, "condition_maps": False,
                  "noise_model": noise_model(model, model["Nodes"][0]["Name"]), "estimator": "glmx",
                  "smoothing_fwhm": None, "dummy_scans": 0, "fd_threshold": None, "excludes": [], "overrides": {},
                  "_spec_file": model["_model_file"], "_task": model_task(model), "_model": model})
    if space:
        entry["space"] = space if isinstance(space, str) else space[0]
    return entry


def _write_if_changed(frame, path):
    """Write a design TSV only when its bytes change: nipype's timestamp hashing would otherwise rerun
    every fit after each planning."""
    from .io.atomic import write_text

    buf = io.StringIO()
    frame.to_csv(buf, sep="\t", index=False, na_rep="n/a")
    text = buf.getvalue()
    path = Path(path)
    if not (path.is_file() and path.read_text() == text):
        write_text(path, text)
    return str(path)


def _run_key(entities):
    run = entities.get("run", "")
    try:  # a run label '01', an entity 1 or a design value 1.0 (an entity the node's X names) are the same run
        run = int(float(run))
    except (TypeError, ValueError):
        run = str(run)
    return (str(entities.get("session") or ""), run)


def run_contrasts(graph, subject):
    """A subject's run-level contrasts as plan contrasts: ``{name: {'label', 'rows', 'type'}}``.

    Parameters
    ----------
    graph : ModelGraph
        The walked graph.
    subject : str
        Label without 'sub-'.

    Returns
    -------
    dict
        As :func:`glmx_workflows.planning.resolve_contrasts` returns (F contrasts with one row per weight row).

    Raises
    ------
    GlmxError
        Two contrasts giving the same BIDS label, or one name with different weights in two runs.
    """
    from .core.formula import bids_label

    file = graph.model["_model_file"]
    out = {}
    for o in graph.outputs[graph.run_node]:
        if str(o["entities"].get("subject")) != subject:
            continue
        for con in o["contrasts"]:
            weights = con["weights"]
            rows = weights if con["test"] == "F" else [weights]
            rows = [{c: float(w) for c, w in zip(con["conditions"], row) if float(w) != 0.0} for row in rows]
            item = {"label": bids_label(con["name"]), "rows": rows, "type": "F" if con["test"] == "F" else "t"}
            if con["name"] in out and out[con["name"]] != item:
                raise GlmxError(f"contrast '{con['name']}' has different weights in different runs of sub-{subject}",
                                file=file, field=_contrast_path(graph.model, graph.run_node, con["name"]))
            out[con["name"]] = item
    labels = {}
    for name, c in out.items():
        if c["label"] in labels:
            raise GlmxError(f"contrasts '{labels[c['label']]}' and '{name}' both give the output label "
                            f"'{c['label']}'; rename one", file=file,
                            field=_contrast_path(graph.model, graph.run_node, name))
        labels[c["label"]] = name
    return out


def subject_models(graph, subject, runs, contrasts):
    """The Subject node of one subject as the first level's ``fixed_effects`` runs it (``run_models``).

    ``Type: meta`` (``X: [1]``): fixed effects of the runs, as fitlins' meta-analysis, one output per incoming
    contrast named as it. ``Type: glm``: an OLS over the runs' effect maps with the graph's design (one row
    per run) and the node's contrasts, as fitlins' SecondLevelModel. Contrasts the node's incoming edge
    filters out get no subject-level maps.

    Parameters
    ----------
    graph : ModelGraph
    subject : str
    runs : list of glmx_workflows.io.bids.Run
        The subject's runs, in the order of the first-level fit.
    contrasts : dict
        The subject's run contrasts (from :func:`run_contrasts`).

    Returns
    -------
    dict
        ``{run contrast: {'type', 'X' (rows in run order), 'contrasts': [{'label', 'weights', 'test'}]}}``;
        empty without a Subject node.

    Raises
    ------
    GlmxError
        A meta node combining contrasts (only the intercept is supported), a design row per run missing, or a
        design with no more runs than columns.
    """
    from .core.formula import bids_label
    from .spec.bsm import node_index

    name = graph.node("Subject")
    if name is None:
        return {}
    file = graph.model["_model_file"]
    where = _path(graph.model, name)
    mtype = graph.model["Nodes"][node_index(graph.model, name)]["Model"]["Type"]
    order = [_run_key({"session": r.session, "run": r.run or ""}) for r in runs]
    session_node = graph.node("Session")
    if session_node is not None:
        lacking = [Path(r.bold).name for r in runs if not r.session]
        if lacking:
            raise GlmxError(f"the model has a Session node but {lacking[0]} has no session", file=file,
                            field=_path(graph.model, session_node))
        # the contrasts the Session node takes (its incoming edge's Filter); the Subject node takes them all
        taken = {str(o["entities"].get("contrast")) for o in graph.outputs.get(session_node, [])
                 if str(o["entities"].get("subject")) == subject and o["contrasts"]}
    out = {}
    for o in graph.outputs.get(name, []):
        if str(o["entities"].get("subject")) != subject:
            continue
        incoming = str(o["entities"].get("contrast"))
        if incoming not in contrasts:
            continue
        cons = o["contrasts"]
        if not cons:
            continue  # the node's DummyContrasts name a subset: no subject-level maps of this one
        if mtype == "meta":
            for con in cons:
                if con["conditions"] != ["intercept"] or [float(w) for w in con["weights"]] != [1.0]:
                    raise GlmxError("only the intercept (each run contrast's fixed effect) is supported at a Subject "
                                    f"node of Type 'meta'; got {con['name']}", file=file, field=where)
            out[incoming] = {"type": "meta", "X": [], "contrasts": []}
            if session_node is not None:
                if incoming not in taken:
                    del out[incoming]
                    continue
                out[incoming]["sessions"] = [str(r.session) for r in runs]
            continue
        meta = o["inputs"].copy()
        for ent in ("run", "session"):  # pybids moves an entity the node's X names out of the metadata
            if ent not in meta.columns and ent in o["X"].columns:
                meta[ent] = o["X"][ent].to_numpy()
        rows = {_run_key({"session": r.get("session"), "run": r.get("run", "")}): i
                for i, r in enumerate(meta.to_dict("records"))}
        lacking = [k for k in order if k not in rows]
        if lacking:
            raise GlmxError(f"the Subject node's design of sub-{subject}, contrast '{incoming}' has no row for run(s) "
                            f"{lacking}", file=file, field=where)
        X = o["X"].iloc[[rows[k] for k in order]]
        if len(X) <= len(X.columns) or np.linalg.matrix_rank(X.to_numpy(float)) < len(X.columns):
            raise GlmxError(f"the Subject node's GLM of sub-{subject} cannot be estimated: {len(X)} run(s), design "
                            f"columns {', '.join(map(str, X.columns))} (an OLS over runs needs more runs than "
                            "independent columns)", file=file, field=f"{where}.Model.X")
        columns = list(X.columns)
        items = []
        for con in cons:
            rows_w = np.zeros((len(con["weights"]) if con["test"] == "F" else 1, len(columns)))
            weights = np.atleast_2d(np.asarray(con["weights"], dtype=float))
            for j, c in enumerate(con["conditions"]):
                if c not in columns:
                    raise GlmxError(f"contrast '{con['name']}' names {c}, not a column of the Subject node's design "
                                    f"({', '.join(map(str, columns))})", file=file,
                                    field=_contrast_path(graph.model, name, _own_name(con, incoming)))
                rows_w[:, columns.index(c)] = weights[:, j]
            items.append({"label": bids_label(str(con["name"])), "test": con["test"],
                          "weights": (rows_w if con["test"] == "F" else rows_w[0]).tolist()})
        out[incoming] = {"type": "glm", "X": X.to_numpy(float).tolist(), "contrasts": items}
    return out


def plan_model_subject(layout, entry, settings, graph, work_dir):
    """Check one subject against a walked model and return its first-level plan.

    Parameters
    ----------
    layout : bids.BIDSLayout
        The dataset with its fMRIPrep derivatives.
    entry : dict
        From :func:`model_entry`.
    settings : dict
        Subject settings (``spec.model.subject_settings`` of ``entry``).
    graph : ModelGraph
        From :func:`walk_graph`.
    work_dir : str or Path
        The run designs are written under ``work_dir/bsm_designs/``.

    Returns
    -------
    SubjectPlan
        Runs, TR, the graph's run designs as user design files, and the run node's contrasts.

    Raises
    ------
    GlmxError
        A run without a design in the graph (or the reverse), wrong design length, a design that cannot
        be estimated, or anything :func:`run_contrasts` and :func:`subject_models` refuse.
    """
    from .io.bids import find_runs

    subject, task = settings["_subject"], entry["_task"]
    file = entry["_spec_file"]
    runs = find_runs(layout, subject, task, settings["space"])
    settings = dict(settings, tr=resolve_tr(settings, entry, runs))
    run_group = graph.model["Nodes"][0].get("GroupBy") or []
    with_session = [r for r in runs if r.session]
    if with_session and "session" not in run_group:
        # pybids would pool the same run number of different sessions into one design
        raise GlmxError(f"{Path(with_session[0].bold).name} has a session: the Run node must group by 'session' too "
                        "(\"GroupBy\": [\"run\", \"session\", \"subject\"])", file=file,
                        field=f"{_path(graph.model, graph.run_node)}.GroupBy")
    # the contrasts and the nodes above the Run level first: nothing is written for a model refused there
    contrasts = run_contrasts(graph, subject)
    if not contrasts:
        raise GlmxError("the Run node has no contrast (add Contrasts or DummyContrasts)", file=file,
                        field=_path(graph.model, graph.run_node))
    settings["subject_models"] = subject_models(graph, subject, runs, contrasts)
    designs = {_run_key(o["entities"]): o for o in graph.outputs[graph.run_node]
               if str(o["entities"].get("subject")) == subject}
    design_files = []
    for run in runs:
        key = _run_key({"session": run.session, "run": run.run or ""})
        if key not in designs:
            raise GlmxError(f"the model's Run node has no design for {Path(run.bold).name}", file=file,
                            field=_path(graph.model, graph.run_node))
        _check_mask(run)
        X = designs.pop(key)["X"]
        if len(X) != run.n_scans:
            raise GlmxError(f"the model's design of {Path(run.bold).name} has {len(X)} rows but the run has "
                            f"{run.n_scans} volumes", file=file, field=_path(graph.model, graph.run_node))
        name = "_".join(f"{k}-{v}" for k, v in run.entities().items()) + "_design.tsv"
        path = _write_if_changed(X, Path(work_dir) / "bsm_designs" / graph.run_node / name)
        _checked_design(settings, run, user_design=path)
        design_files.append(path)
    if designs:
        raise GlmxError(f"the model's Run node has designs for runs without a preprocessed BOLD: "
                        f"{sorted(designs)}", file=file, field=_path(graph.model, graph.run_node))
    from .io.tables import read_tsv

    return SubjectPlan(subject=subject, task=task, settings=settings, runs=runs, contrasts=contrasts,
                       design_files=design_files,
                       run_regressors=[sorted(read_tsv(p).columns) for p in design_files])


def node_dirs(graph, output_dir):
    """Where each node publishes: ``OUTPUT_DIR/node-<name>`` (fitlins' layout).

    Parameters
    ----------
    graph : ModelGraph or dict
        The walked graph (or a validated document).
    output_dir : str or Path
        OUTPUT_DIR.

    Returns
    -------
    dict
        ``{node name: Path}``.
    """
    model = graph.model if isinstance(graph, ModelGraph) else graph
    return {n["Name"]: Path(output_dir) / f"node-{n['Name']}" for n in model["Nodes"]}


def _formula(conditions, weights, columns):
    return " + ".join(f"{float(w)!r}*{columns[c]}" for c, w in zip(conditions, weights) if float(w) != 0.0)


def _safe_columns(columns):
    """Design column → a name the group's contrast formulas can parse (``group.patient`` → ``group_patient``)."""
    import re

    out = {}
    for c in columns:
        safe = re.sub(r"\W", "_", str(c))
        safe = safe if re.match(r"[A-Za-z_]", safe) else "_" + safe
        out[c] = safe
    return out


def _own_name(con, incoming):
    """A Dataset-node contrast's own name: pybids prefixes the incoming contrast's (``<incoming>_<name>``)."""
    name = str(con["name"])
    if name == incoming:  # a DummyContrast of the intercept
        return "_".join(map(str, con["conditions"]))
    return name[len(incoming) + 1:] if name.startswith(incoming + "_") else name


def plan_model_group(graph, found, design_dir, wanted=None):
    """The Dataset node as the group level's plan: per incoming contrast, its subjects, maps and design.

    The design is the graph's ``X`` for that contrast (after the node's transformations, with the
    participants.tsv variables it names), rows of the subjects that have maps, written as a TSV
    (``participant_id`` then the columns) that the group's ``build_design`` uses as is. The node's t
    contrast of the intercept alone is the group level's mean; every other contrast becomes a named group
    contrast, t or F (an F contrast's rows are one formula each, the group spec's F form).

    Parameters
    ----------
    graph : ModelGraph
        The walked graph.
    found : dict
        From :func:`glmx_workflows.io.group_inputs.find_subject_maps` on the Subject node's folder.
    design_dir : str or Path
        Where the designs are written (``<work_dir>/bsm_designs``).
    wanted : list of str, optional
        Only these first-level contrast labels.

    Returns
    -------
    dict
        ``contrasts`` (``{label: {'subjects', 'effect_files', 'variance_files', 'design_file'}}``),
        ``excluded`` ([]), ``missing``, ``participants_file`` (None), ``log``, ``group_contrasts``
        (``{name: formula or list of formulas}``) and ``shared`` (the maps' space entities).

    Raises
    ------
    GlmxError
        The Dataset node's X lacks the intercept, a contrast names a column X lacks, different incoming
        contrasts get different group contrasts, an incoming contrast has no Subject-node maps, or the
        design cannot be estimated on the subjects with maps.
    """
    from .core import group as cg
    from .core.formula import bids_label

    file = graph.model["_model_file"]
    name = graph.node("Dataset")
    where = _path(graph.model, name)
    found = dict(found)
    shared = found.pop(None)
    chosen, missing, log, formulas = {}, {}, [], None
    for out in graph.outputs[name]:
        incoming = str(out["entities"].get("contrast"))
        label = bids_label(incoming)
        if wanted and label not in wanted:
            continue
        X = out["X"]
        if "intercept" not in X.columns:
            raise GlmxError("the Dataset node's X must include the intercept (1)", file=file, field=f"{where}.Model.X")
        columns = _safe_columns(X.columns)
        if len(set(columns.values())) != len(columns):
            raise GlmxError(f"the Dataset design's columns {', '.join(map(str, X.columns))} give the same name once "
                            "'.' and other symbols become '_'; rename one", file=file, field=f"{where}.Model.X")
        subjects = [str(s) for s in out["inputs"]["subject"]]
        maps = found.get(label, {})
        have = [i for i, s in enumerate(subjects) if s in maps]
        if not have:
            raise GlmxError(f"no Subject-node maps of contrast '{label}'; run the participant level first", file=file,
                            field=where)
        missing[label] = sorted(s for s in subjects if s not in maps)
        if missing[label]:
            log.append(f"contrast {label}: no Subject-node stat-effect map for "
                       + ", ".join(f"sub-{s}" for s in missing[label]) + "; left out")
        mine = {}
        for con in out["contrasts"]:
            lacking = [c for c in con["conditions"] if c not in X.columns]
            if lacking:
                raise GlmxError(f"contrast '{con['name']}' names {', '.join(map(str, lacking))}, not a column of the "
                                f"Dataset design ({', '.join(map(str, X.columns))})", file=file,
                                field=_contrast_path(graph.model, name, _own_name(con, incoming)))
            if con["test"] == "t" and [str(c) for c in con["conditions"]] == ["intercept"]:
                continue  # the group level's mean effect
            own = bids_label(_own_name(con, incoming))
            if con["test"] == "F":
                rows = con["weights"] if isinstance(con["weights"][0], (list, tuple)) else [con["weights"]]
                mine[own] = [_formula(con["conditions"], row, columns) for row in rows]
            else:
                mine[own] = _formula(con["conditions"], con["weights"], columns)
        if formulas is not None and mine != formulas:
            raise GlmxError("the Dataset node's contrasts differ between incoming contrasts; not supported yet",
                            file=file, field=where)
        formulas = mine
        design = X.iloc[have].reset_index(drop=True).rename(columns=columns)
        try:  # what the OLS cannot estimate is refused now, not in the middle of the run
            cg.check_design(design)
            cg.group_contrasts(list(design.columns), {"intercept": 1.0}, mine)
        except GlmxError as exc:
            raise GlmxError(f"contrast {label}: {exc.message}", file=file, field=f"{where}.Model.X") from None
        design.insert(0, "participant_id", ["sub-" + subjects[i] for i in have])
        path = _write_if_changed(design, Path(design_dir) / name / f"contrast-{label}_design.tsv")
        kept = [subjects[i] for i in have]
        chosen[label] = {"subjects": kept, "effect_files": [maps[s]["effect"] for s in kept],
                         "variance_files": [maps[s]["variance"] for s in kept], "design_file": path}
    if wanted:
        unknown = [c for c in wanted if c not in chosen]
        if unknown:
            raise GlmxError(f"the Dataset node has no contrast {', '.join(unknown)}; it has "
                            f"{', '.join(bids_label(str(o['entities'].get('contrast'))) for o in graph.outputs[name])}",
                            file=file, field="--contrast")
    return {"contrasts": chosen, "excluded": [], "missing": missing, "participants_file": None, "log": log,
            "group_contrasts": formulas or {}, "shared": shared}
