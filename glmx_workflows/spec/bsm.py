"""Reading and validating BIDS Stats Models documents (``model-<name>_smdl.json``).

A model is checked in three passes before anything runs, and every problem is reported with its JSON
path (``Nodes[0].Model.X[3]``):

1. strict JSON (no duplicate keys, no NaN), as for task_information.json;
2. the BIDS Stats Models schema, with the maintained validator (``bsmschema``, pydantic models of BSM 1.0);
3. what glmx runs: node names unique, edges naming existing nodes, transformations pybids knows, and
   the features glmx does not run yet refused by name (never silently ignored).

What depends on the data (a contrast naming a regressor the design lacks, an ``X`` entry or wildcard
matching no variable) is checked when the model is planned against the dataset (``glmx_workflows.bsm``).
"""

import json
import re
from pathlib import Path

from ..core.errors import GlmxError
from .model import _Duplicate, _no_duplicates, _reject_constant

# pybids-transforms-v1 instructions that pybids' BIDSStatsModelsGraph executes (bids.modeling.transformations)
TRANSFORMATIONS = ("Assign", "Convolve", "Copy", "Delete", "Demean", "DropNA", "Factor", "Filter", "Group", "Lag",
                   "Not", "And", "Or", "Orthogonalize", "Product", "Rename", "Replace", "Resample", "Scale", "Select",
                   "Split", "Sum", "Threshold", "ToDense")
# the model's software-specific section read by glmx: Model.Software.glmx
SOFTWARE_KEYS = {"NoiseModel": ("ar1", "ols")}
LEVELS_RUN = ("Run",)
# entities an edge out of the Subject node may filter on (pybids applies the filter to the contrasts passed on)
EDGE_FILTERS = ("contrast", "subject")


def read_model_file(path):
    """Parse a model file as strict JSON.

    Parameters
    ----------
    path : str or Path
        The BSM document.

    Returns
    -------
    object
        The parsed JSON (not yet validated).

    Raises
    ------
    GlmxError
        Missing file, not strict JSON, or a duplicate key.
    """
    path = Path(path)
    if not path.is_file():
        raise GlmxError("model file not found", file=path, field="--model")
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise GlmxError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=path) from None
    except _Duplicate as exc:
        raise GlmxError(f"key '{exc.key}' appears twice in the same object; each name must be unique",
                        file=path, field=exc.key) from None
    except ValueError as exc:
        raise GlmxError(str(exc), file=path) from None


def is_bsm_document(data):
    """Whether parsed JSON is a BIDS Stats Models document (has ``Nodes`` and ``BIDSModelVersion``).

    Parameters
    ----------
    data : object
        Parsed JSON.

    Returns
    -------
    bool
    """
    return isinstance(data, dict) and "Nodes" in data and "BIDSModelVersion" in data


def is_bsm_file(path):
    """Whether the file at ``path`` is a BIDS Stats Models document (False when unreadable).

    Parameters
    ----------
    path : str or Path
        Any JSON file (e.g. what was passed to ``--spec``).

    Returns
    -------
    bool
    """
    try:
        return is_bsm_document(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def json_path(loc):
    """A pydantic error location → a JSON path: ``('Nodes', 0, 'Model', 'X', 3)`` → ``Nodes[0].Model.X[3]``.

    Parameters
    ----------
    loc : tuple of (str or int)
        Keys and list indices from the document's root.

    Returns
    -------
    str
        The path (``(root)`` for the empty location).
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += ("." if out else "") + str(part)
        else:
            # pydantic's union branches ('list[...]', 'literal[1]') say which alternative failed: not a key
            continue
    return out or "(root)"


def schema_problems(data):
    """Problems of a document against the BIDS Stats Models schema (``bsmschema``).

    Parameters
    ----------
    data : dict
        Parsed JSON.

    Returns
    -------
    list of (str, str)
        ``(json path, message)``, one per distinct path (a union's failed branches collapsed into one).
    """
    import pydantic
    from bsmschema.models import BIDSStatsModel

    try:
        BIDSStatsModel.model_validate(data)
    except pydantic.ValidationError as exc:
        out = {}
        for err in exc.errors():
            path = json_path(err["loc"])
            out.setdefault(path, err["msg"])
        return list(out.items())
    return []


def _nodes(data):
    return [n for n in data.get("Nodes", []) if isinstance(n, dict)]


def support_problems(data):
    """What glmx refuses in a schema-valid document: bad references, unknown transformations, and the
    BSM features it does not run yet, each with its JSON path.

    Parameters
    ----------
    data : dict
        A document that passed :func:`schema_problems`.

    Returns
    -------
    list of (str, str)
        ``(json path, message)``.
    """
    problems = []
    nodes = _nodes(data)
    names = [n.get("Name") for n in nodes]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append((f"Nodes[{i}].Name", f"node name '{name}' is used by Nodes[{names.index(name)}] too"))
    for i, edge in enumerate(data.get("Edges") or []):
        for key in ("Source", "Destination"):
            if edge.get(key) not in names:
                problems.append((f"Edges[{i}].{key}", f"no node named '{edge.get(key)}'; nodes: {', '.join(names)}"))
        source = next((n for n in nodes if n.get("Name") == edge.get("Source")), {})
        for key in (edge.get("Filter") or {}):
            if source.get("Level") == "Session":
                problems.append((f"Edges[{i}].Filter.{key}", "filters on the edge out of the Session node are not "
                                                              "supported yet; filter the edge out of the Run node"))
            elif source.get("Level") == "Run" and key != "contrast":
                # the Subject node takes every run of the first-level fit
                problems.append((f"Edges[{i}].Filter.{key}", "filters on the edge out of the Run node are "
                                                              "supported on 'contrast' only"))
            elif key not in EDGE_FILTERS:
                problems.append((f"Edges[{i}].Filter.{key}", f"edge filters on '{key}' are not supported yet "
                                                              f"({' and '.join(EDGE_FILTERS)} are)"))
    inputs = data.get("Input") or {}
    tasks = inputs.get("task")
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    if len(tasks) != 1:
        problems.append(("Input.task", "glmx runs a model of exactly one task; name it here, e.g. "
                                       "\"Input\": {\"task\": [\"flanker\"]}"))
    for key in inputs:
        if key not in ("task", "subject", "session", "run", "space"):
            problems.append((f"Input.{key}", "filtering the input on this entity is not supported yet"))
    for i, node in enumerate(nodes):
        where = f"Nodes[{i}]"
        level = node.get("Level")
        model = node.get("Model") or {}
        mtype = model.get("Type")
        if level == "Session":
            # fixed effects of each session's runs, then of the sessions (fitlins' meta-analyses)
            following = nodes[i + 1] if i + 1 < len(nodes) else {}
            if i != 1 or following.get("Level") != "Subject":
                problems.append((f"{where}.Level", "a Session-level node must come right after the Run node and "
                                                   "before a Subject node; other places are not supported yet"))
            elif (following.get("Model") or {}).get("Type") != "meta":
                problems.append((f"Nodes[{i + 1}].Model.Type", "after a Session node the Subject node must be "
                                                               "fixed effects over the sessions (Type 'meta')"))
            if mtype != "meta" or model.get("X") not in ([1],):
                problems.append((f"{where}.Model", "a Session-level node is run as fixed effects of its runs: "
                                                   "Type 'meta' with X [1]"))
            if set(node.get("GroupBy") or []) != {"subject", "session", "contrast"}:
                problems.append((f"{where}.GroupBy", "a Session-level node must group by 'subject', 'session' and "
                                                     "'contrast'"))
            for k, con in enumerate(node.get("Contrasts") or []):
                problems.append((f"{where}.Contrasts[{k}]", "a Session-level node has only the intercept (use "
                                                            "DummyContrasts)"))
            if node.get("Transformations"):
                problems.append((f"{where}.Transformations", "transformations at the Session level are not "
                                                             "supported yet (its fixed effects have no design)"))
        if i == 0 and level != "Run":
            problems.append((f"{where}.Level", "the first node must be the Run level (glmx fits BOLD runs)"))
        if level == "Run":
            if i != 0:
                problems.append((f"{where}.Level", "only the first node may be a Run-level node"))
            if mtype != "glm":
                problems.append((f"{where}.Model.Type", "a Run-level node's Model.Type must be 'glm'"))
            group_by = node.get("GroupBy") or []
            for ent in ("run", "subject"):
                if ent not in group_by:
                    problems.append((f"{where}.GroupBy", f"a Run-level node must group by '{ent}' (one design "
                                                         "per run); concatenated runs are not supported yet"))
        elif level in ("Subject", "Dataset"):
            if level == "Dataset" and mtype != "glm":
                problems.append((f"{where}.Model.Type", "a Dataset-level node is run as the group OLS (Type 'glm'); "
                                                        "'meta' is not supported yet"))
            if level == "Subject" and mtype == "meta" and model.get("X") not in ([1],):
                problems.append((f"{where}.Model.X", "a Subject-level node of Type 'meta' (fixed effects of the "
                                                     "runs) must have X [1]; use Type 'glm' for a design over runs"))
            if node.get("Contrasts") and level == "Subject" and mtype == "meta":
                for k, con in enumerate(node["Contrasts"]):
                    if con.get("ConditionList") != [1] and con.get("ConditionList") != ["intercept"]:
                        problems.append((f"{where}.Contrasts[{k}]", "a Subject-level node of Type 'meta' has only "
                                                                    "the intercept; use Type 'glm' for other "
                                                                    "contrasts"))
            needed = ("subject", "contrast") if level == "Subject" else ("contrast",)
            if set(node.get("GroupBy") or []) != set(needed):
                problems.append((f"{where}.GroupBy", f"a {level}-level node must group by "
                                                     f"{' and '.join(repr(e) for e in needed)} (one model per "
                                                     "incoming contrast); other groupings are not supported yet"))
            if node.get("Transformations") and level == "Subject" and mtype == "meta":
                problems.append((f"{where}.Transformations", "transformations at the Subject level are not "
                                                             "supported yet (its fixed effects have no design)"))
        for key in ("Formula", "HRF"):
            if key in model:
                problems.append((f"{where}.Model.{key}", f"Model.{key} is not supported yet; write the design "
                                                         "with X and Transformations (e.g. Convolve)"))
        for key, value in (model.get("Options") or {}).items():
            if key != "Description":
                problems.append((f"{where}.Model.Options.{key}", f"Model.Options.{key} is not supported yet; "
                                 "name drift regressors (e.g. fMRIPrep's cosine*) in X instead"
                                 if "Filter" in key else f"Model.Options.{key} is not supported yet"))
        software = model.get("Software") or {}
        if not isinstance(software, dict):
            problems.append((f"{where}.Model.Software", "expected an object of software-specific sections"))
            software = {}
        mine = software.get("glmx") or {}
        if not isinstance(mine, dict):
            problems.append((f"{where}.Model.Software.glmx", "expected an object such as {\"NoiseModel\": \"ols\"}"))
            mine = {}
        for key, value in mine.items():
            if key not in SOFTWARE_KEYS:
                problems.append((f"{where}.Model.Software.glmx.{key}", f"unknown key; known: {', '.join(SOFTWARE_KEYS)}"))
            elif value not in SOFTWARE_KEYS[key]:
                problems.append((f"{where}.Model.Software.glmx.{key}",
                                 f"'{value}' is not one of {', '.join(SOFTWARE_KEYS[key])}"))
            elif level != "Run":
                problems.append((f"{where}.Model.Software.glmx.{key}", "applies to Run-level nodes only"))
        for k, con in enumerate(node.get("Contrasts") or []):
            if con.get("Test") not in ("t", "F"):
                problems.append((f"{where}.Contrasts[{k}].Test", f"Test '{con.get('Test')}' is not supported yet "
                                                                 "(t and F are)"))
        dummy = node.get("DummyContrasts")
        # 'pass' hands the estimates on untested: the Subject node's fixed effects are computed either way
        allowed = {"Subject": ("t", "pass") if mtype == "meta" else ("t", "F"), "Session": ("t", "pass"),
                   "Dataset": ("t", "F")}.get(level, ("t",))
        if isinstance(dummy, dict) and dummy.get("Test", "t") not in allowed:
            problems.append((f"{where}.DummyContrasts.Test", f"DummyContrasts Test '{dummy.get('Test')}' is not "
                                                             f"supported here yet ({' or '.join(allowed)})"))
        transforms = node.get("Transformations") or {}
        for k, ins in enumerate(transforms.get("Instructions") or []):
            name = ins.get("Name") if isinstance(ins, dict) else None
            if name not in TRANSFORMATIONS:
                problems.append((f"{where}.Transformations.Instructions[{k}].Name",
                                 f"unknown or unsupported transformation '{name}'; pybids-transforms-v1 has "
                                 f"{', '.join(TRANSFORMATIONS)}"))
    # every node after the first must be reached by an edge, or follow the previous node when Edges is absent
    if data.get("Edges"):
        reached = {e.get("Destination") for e in data["Edges"]}
        for i, name in enumerate(names[1:], start=1):
            if name not in reached:
                problems.append((f"Nodes[{i}]", f"node '{name}' is not the Destination of any edge"))
        for i, edge in enumerate(data["Edges"]):
            src, dst = edge.get("Source"), edge.get("Destination")
            if src in names and dst in names and names.index(dst) != names.index(src) + 1:
                problems.append((f"Edges[{i}]", "edges must chain the nodes in their listed order "
                                                "(Run → Subject → Dataset); branching graphs are not supported yet"))
    return problems


def normalise_input(data):
    """The document with each single ``Input`` entity value as a one-item list.

    The specification's own examples write ``"Input": {"task": "stroop"}``; bsmschema's model of BSM 1.0
    wants lists, and pybids takes either.

    Parameters
    ----------
    data : dict
        Parsed JSON.

    Returns
    -------
    dict
        A shallow copy with ``Input`` normalised (``data`` itself unchanged).
    """
    if not isinstance(data.get("Input"), dict):
        return data
    out = dict(data)
    out["Input"] = {k: [v] if isinstance(v, (str, int)) and not isinstance(v, bool) else v
                    for k, v in data["Input"].items()}
    return out


def model_problems(data):
    """Every problem of a parsed document: schema first, then what glmx refuses.

    Parameters
    ----------
    data : object
        Parsed JSON.

    Returns
    -------
    list of (str, str)
        ``(json path, message)``; empty when the model can be planned.
    """
    if not is_bsm_document(data):
        return [("(root)", "not a BIDS Stats Models document: expected an object with 'BIDSModelVersion' and "
                           "'Nodes'")]
    found = schema_problems(normalise_input(data))
    return found or support_problems(data)


def load_model(path):
    """Read and validate a BIDS Stats Models file; every problem in one line.

    Parameters
    ----------
    path : str or Path
        The BSM document.

    Returns
    -------
    dict
        The document, with ``_model_file`` (str) added.

    Raises
    ------
    GlmxError
        Not strict JSON, or any problem from :func:`model_problems` (all of them, ``path: message``
        joined by ``; `` in one line; ``field`` is the first path).
    """
    data = read_model_file(path)
    problems = model_problems(data)
    if problems:
        text = "; ".join(f"{p}: {m}" for p, m in problems)
        raise GlmxError(f"{len(problems)} problem(s) in the model: {text}", file=path, field=problems[0][0])
    data = normalise_input(dict(data))
    data["_model_file"] = str(path)
    return data


def model_task(model):
    """The model's one task (``Input.task``).

    Parameters
    ----------
    model : dict
        A document from :func:`load_model`.

    Returns
    -------
    str
    """
    task = model["Input"]["task"]
    return task if isinstance(task, str) else task[0]


def model_subjects(model):
    """The subjects the model's ``Input.subject`` names (labels without 'sub-'), or None for every subject.

    Parameters
    ----------
    model : dict
        A validated document.

    Returns
    -------
    list of str or None
    """
    subjects = (model.get("Input") or {}).get("subject")
    if subjects is None:
        return None
    subjects = [subjects] if isinstance(subjects, str) else subjects
    return [str(s)[4:] if str(s).startswith("sub-") else str(s) for s in subjects]


def node_index(model, name):
    """Position of the node called ``name`` in ``Nodes`` (for JSON paths).

    Parameters
    ----------
    model : dict
        A validated document.
    name : str
        Node name.

    Returns
    -------
    int
    """
    return [n["Name"] for n in model["Nodes"]].index(name)


def noise_model(model, node_name):
    """The Run-level noise model: ``Model.Software.glmx.NoiseModel`` or AR(1) (fitlins' default).

    Parameters
    ----------
    model : dict
        A validated document.
    node_name : str
        The Run-level node.

    Returns
    -------
    str
        'ar1' or 'ols'.
    """
    node = model["Nodes"][node_index(model, node_name)]
    return ((node["Model"].get("Software") or {}).get("glmx") or {}).get("NoiseModel", "ar1")
