"""Reading and validating task_information.json.

Every error is one line naming the spec file, the task and the key.
"""

import copy
import difflib
import json
from pathlib import Path

import jsonschema

from ..core.timing import check_tr
from ..core.errors import GlmxError
from ..core.formula import parse_formula
from .keys import NOT_OVERRIDABLE, TASK_KEYS, defaults


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def read_spec_file(path):
    """Parse a spec file as strict JSON (no NaN/Infinity, no duplicate keys).

    Parameters
    ----------
    path : str or Path
        task_information.json.

    Returns
    -------
    dict
        ``{task: raw entry}``.

    Raises
    ------
    GlmxError
        The file is missing, not strict JSON, has a duplicate key, or is not a non-empty object.
    """
    path = Path(path)
    if not path.is_file():
        raise GlmxError("spec file not found; pass --spec FILE or create one with 'glmx init BIDS_DIR'", file=path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GlmxError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save the spec "
                        "as UTF-8", file=path) from None
    except OSError as exc:
        raise GlmxError(f"spec file cannot be read ({exc.strerror or exc})", file=path) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise GlmxError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=path) from None
    except _Duplicate as exc:
        raise GlmxError(f"key '{exc.key}' appears twice in the same object; each name must be unique",
                        file=path, field=exc.key) from None
    except ValueError as exc:
        raise GlmxError(str(exc), file=path) from None
    if not isinstance(data, dict) or not data:
        raise GlmxError("expected a JSON object with one entry per task, e.g. {\"flanker\": {...}}", file=path)
    return data


def _suggest(key, choices):
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(entry, where, path, allowed):
    if not isinstance(entry, dict):
        raise GlmxError(f"expected an object of settings, got {type(entry).__name__}", file=path, field=where)
    for key in entry:
        if key not in allowed:
            raise GlmxError(f"unknown key '{key}'{_suggest(key, allowed)}", file=path, field=where)


def _type_name(schema):
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema:
        return " or ".join(_type_name(s) for s in schema["anyOf"])
    kind = schema.get("type", "value")
    if kind == "array" and "items" in schema:
        return f"a list of {_type_name(schema['items'])}s"
    if kind == "object":
        return "an object"
    limits = [f"{'>' if 'exclusive' in k else '>='} {schema[k]}" for k in ("exclusiveMinimum", "minimum") if k in schema]
    return {"number": "a number", "integer": "an integer", "string": "a string", "boolean": "true or false",
            "null": "null"}.get(kind, kind) + (" " + " ".join(limits) if limits else "")


def _inner_problem(error):
    """What is wrong inside an object or list of the right kind, in words; None for the value as a whole."""
    if not error.absolute_path and error.validator not in ("required", "additionalProperties"):
        return None
    value = error.instance
    if error.validator in ("type", "enum", "const"):
        return f"expected {_type_name(error.schema)}, got {json.dumps(value)}"
    if error.validator == "uniqueItems":
        return f"names an item twice: {json.dumps(value)}"
    if error.validator == "minItems":
        return f"needs at least {error.validator_value} item(s), got {json.dumps(value)}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"missing key '{missing[0]}' (required: {', '.join(error.validator_value)})"
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        return f"unknown key '{extra[0]}'{_suggest(extra[0], allowed)} (keys: {', '.join(allowed)})"
    return error.message


def _check_types(entry, where, path):
    for key, value in entry.items():
        schema = TASK_KEYS[key][0]
        error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(value))
        if error is not None:
            # a value of the right kind with one wrong part is named by that part (group_design.type), not
            # by the whole schema ("expected null or an object" for an object)
            inner = _inner_problem(error)
            field = f"{where}.{key}" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                                for p in error.absolute_path)
            raise GlmxError(inner or f"expected {_type_name(schema)}, got {json.dumps(value)}", file=path,
                            field=field)
        if key == "tr" and value is not None:  # a number, but one that cannot be seconds is a unit mistake
            check_tr(value, path, f"{where}.tr")


def _check_contrasts(contrasts, where, path):
    if contrasts == "default":
        return
    for name, formula in contrasts.items():
        if not name.strip():
            raise GlmxError("contrast name is empty", file=path, field=f"{where}.design_contrasts")
        rows = formula if isinstance(formula, list) else [formula]
        for row in rows:
            try:
                parse_formula(row)
            except GlmxError as exc:
                raise GlmxError(exc.message, file=path, field=f"{where}.design_contrasts.{name}") from None


def validate_entry(entry, task, path):
    """Validate one task entry (keys, types, contrast syntax, overrides).

    Parameters
    ----------
    entry : dict
        The raw task entry.
    task : str
        Task name, used as the field path in messages.
    path : str or Path
        The spec file, named in messages.

    Raises
    ------
    GlmxError
        An unknown key, a value of the wrong type, a contrast that does not parse, or a bad override.
    """
    _check_keys(entry, task, path, TASK_KEYS)
    _check_types(entry, task, path)
    if "design_contrasts" in entry:
        _check_contrasts(entry["design_contrasts"], task, path)
    for sub, over in entry.get("overrides", {}).items():
        where = f"{task}.overrides.{sub}"
        if not sub.startswith("sub-"):
            raise GlmxError("override keys are subject labels like 'sub-03'", file=path, field=where)
        allowed = {k: v for k, v in TASK_KEYS.items() if k not in NOT_OVERRIDABLE}
        _check_keys(over, where, path, allowed)
        _check_types(over, where, path)
        if "design_contrasts" in over:
            _check_contrasts(over["design_contrasts"], where, path)


def load_spec(path, problems=None):
    """Read and validate every task entry of a spec file.

    Parameters
    ----------
    path : str or Path
        task_information.json.
    problems : list, optional
        When given, an invalid entry is left out and ``(task, GlmxError)`` appended here instead of
        raised, so that ``glmx validate`` reports every entry's problem at once.

    Returns
    -------
    dict
        ``{task: entry}`` with defaults filled in; each entry also carries ``_spec_file``.

    Raises
    ------
    GlmxError
        The file or an entry is invalid (entries only when ``problems`` is None).
    """
    path = Path(path)
    raw = read_spec_file(path)
    out = {}
    for task, entry in raw.items():
        try:
            validate_entry(entry, task, path)
        except GlmxError as exc:
            if problems is None:
                raise
            problems.append((task, exc))
            continue
        full = defaults()
        full.update(copy.deepcopy(entry))
        full["excludes"] = sorted({normalize_subject(s) for s in full["excludes"]})
        full["overrides"] = {normalize_subject(k): v for k, v in full["overrides"].items()}
        full["_spec_file"] = str(path)
        full["_task"] = task
        out[task] = full
    return out


def normalize_subject(label):
    """'sub-01' or '01' → '01'.

    Parameters
    ----------
    label : str or int
        Subject label, with or without ``sub-``.

    Returns
    -------
    str
        The label without ``sub-`` and surrounding whitespace.
    """
    label = str(label).strip()
    return label[4:] if label.startswith("sub-") else label


def task_entry(spec, task, path):
    """The entry of ``task``, or an error listing the tasks the spec has.

    Parameters
    ----------
    spec : dict
        ``{task: entry}`` from :func:`load_spec`.
    task : str
        Task name.
    path : str or Path
        The spec file, named in the message.

    Returns
    -------
    dict
        The task's entry.

    Raises
    ------
    GlmxError
        The spec has no entry for ``task``.
    """
    if task not in spec:
        raise GlmxError(f"task '{task}' is not in the spec{_suggest(task, spec)}; tasks: {', '.join(sorted(spec))}",
                        file=path, field=task)
    return spec[task]


def subject_settings(entry, subject, **overrides):
    """Settings of one subject: the task entry, then its ``overrides``, then keyword overrides.

    Parameters
    ----------
    entry : dict
        A loaded task entry (from :func:`load_spec`).
    subject : str
        Subject label with or without 'sub-'.
    **overrides
        Values given in Python (``Subject(..., tr=2.5)``); None means "not given".

    Returns
    -------
    dict
        A new dict of settings, with ``_subject`` (label without ``sub-``).

    Raises
    ------
    GlmxError
        A keyword override is unknown, not overridable or of the wrong type.
    """
    sub = normalize_subject(subject)
    out = copy.deepcopy(entry)
    out.update(copy.deepcopy(entry["overrides"].get(sub, {})))
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        where = f"{entry['_task']} (keyword arguments for sub-{sub})"
        allowed = {k: v for k, v in TASK_KEYS.items() if k not in NOT_OVERRIDABLE}
        _check_keys(given, where, entry["_spec_file"], allowed)
        _check_types(given, where, entry["_spec_file"])
        if "design_contrasts" in given:
            _check_contrasts(given["design_contrasts"], where, entry["_spec_file"])
        out.update(copy.deepcopy(given))
    out["_subject"] = sub
    return out
