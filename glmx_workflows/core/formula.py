"""Contrast formulas: ``"0.5*a + 0.5*b - c"`` → weights over design-matrix columns.

A formula is parsed once into ``{regressor: weight}``; turning it into a vector for a particular
run's design is a separate, trivial step, so that one formula can serve runs whose columns differ.
"""

import ast
import itertools
import re

import numpy as np

from .errors import GlmxError

_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sanitize_name(value):
    """Make a condition/modulator label usable as a regressor name in formulas.

    Characters other than letters, digits and ``_`` become ``_``; a leading digit gets a ``c``
    prefix. ``"parametric gain"`` → ``"parametric_gain"``, ``"2back"`` → ``"c2back"``.

    Parameters
    ----------
    value : object
        Label (converted with ``str`` and stripped).

    Returns
    -------
    str
        A valid regressor name (``"_"`` for an empty label).
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", str(value).strip())
    if not name:
        name = "_"
    if name[0].isdigit():
        name = "c" + name
    return name


def bids_label(name):
    """Contrast name → BIDS entity value (alphanumeric only).

    Alphanumeric names are kept verbatim; otherwise the name is split on every other character and
    rejoined in camel case: ``"face_vs_house"`` → ``"faceVsHouse"``, ``"a-b"`` → ``"aB"``.

    Parameters
    ----------
    name : str
        Contrast name.

    Returns
    -------
    str
        Alphanumeric label for the ``contrast-`` entity.

    Raises
    ------
    GlmxError
        The name has no letter or digit.
    """
    if name.isalnum():
        return name
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name) if p]
    if not parts:
        raise GlmxError(f"contrast name {name!r} has no letter or digit to build a BIDS label from")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _linear(node, formula):
    """Evaluate an AST node into (weights dict, constant)."""
    if isinstance(node, ast.Expression):
        return _linear(node.body, formula)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return {}, float(node.value)
    if isinstance(node, ast.Name):
        return {node.id: 1.0}, 0.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        w, c = _linear(node.operand, formula)
        s = -1.0 if isinstance(node.op, ast.USub) else 1.0
        return {k: s * v for k, v in w.items()}, s * c
    if isinstance(node, ast.BinOp):
        lw, lc = _linear(node.left, formula)
        rw, rc = _linear(node.right, formula)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            s = 1.0 if isinstance(node.op, ast.Add) else -1.0
            out = dict(lw)
            for k, v in rw.items():
                out[k] = out.get(k, 0.0) + s * v
            return out, lc + s * rc
        if isinstance(node.op, ast.Mult):
            if lw and rw:
                raise GlmxError(f"contrast formula {formula!r} multiplies two regressors; "
                                "expected a linear combination such as '0.5*a + 0.5*b - c'")
            scale, (w, c) = (lc, (rw, rc)) if not lw else (rc, (lw, lc))
            return {k: scale * v for k, v in w.items()}, scale * c
        if isinstance(node.op, ast.Div):
            if rw:
                raise GlmxError(f"contrast formula {formula!r} divides by a regressor; "
                                "expected a linear combination such as '(a + b)/2 - c'")
            if rc == 0:
                raise GlmxError(f"contrast formula {formula!r} divides by zero")
            return {k: v / rc for k, v in lw.items()}, lc / rc
    raise GlmxError(f"contrast formula {formula!r} has unsupported syntax "
                    f"({type(node).__name__}); expected a linear combination such as '0.5*a + 0.5*b - c'")


def parse_formula(formula):
    """Parse a contrast formula into regressor weights.

    Parameters
    ----------
    formula : str
        A linear combination of regressor names, e.g. ``"0.5*a + 0.5*b - c"`` or ``"(a + b)/2"``.

    Returns
    -------
    dict
        ``{regressor_name: weight}`` with zero weights removed, in order of first appearance.

    Raises
    ------
    GlmxError
        On syntax errors, non-linear terms, constants, or a formula with no regressor.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise GlmxError(f"contrast formula {formula!r} is empty; expected e.g. 'a - b'")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as exc:
        raise GlmxError(f"contrast formula {formula!r} is not valid syntax ({exc.msg}); "
                        "expected e.g. '0.5*a + 0.5*b - c'") from None
    weights, const = _linear(tree, formula)
    if const != 0:
        raise GlmxError(f"contrast formula {formula!r} contains a constant term; "
                        "only regressor names with weights are allowed")
    weights = {k: v for k, v in weights.items() if v != 0}
    if not weights:
        raise GlmxError(f"contrast formula {formula!r} names no regressor with a non-zero weight")
    return weights


def default_contrasts(conditions):
    """glm-express's ``"default"`` contrasts: every pairwise difference of conditions.

    Parameters
    ----------
    conditions : list of str
        Condition regressor names, in design order.

    Returns
    -------
    dict
        ``{"aVb": "a - b"}`` for each ordered pair (a before b) of ``sorted(conditions)``.
    """
    out = {}
    for a, b in itertools.combinations(sorted(conditions), 2):
        out[bids_label(f"{a}V{b}")] = f"{a} - {b}"
    return out


def contrast_matrix(weight_rows, columns):
    """Weights (one dict per row) → contrast matrix over ``columns``.

    Parameters
    ----------
    weight_rows : list of dict
        One ``{regressor: weight}`` per row (one row for t, several for F).
    columns : list of str
        Design-matrix columns, length n_regressors.

    Returns
    -------
    numpy.ndarray of shape (n_rows, n_regressors), or None
        None when some named regressor is not a column (the run cannot carry this contrast).
    """
    index = {c: i for i, c in enumerate(columns)}
    mat = np.zeros((len(weight_rows), len(columns)))
    for r, weights in enumerate(weight_rows):
        for name, w in weights.items():
            if name not in index:
                return None
            mat[r, index[name]] = w
    return mat


def unknown_regressors(weight_rows, known):
    """Names used by the rows that are not in ``known`` (sorted).

    Parameters
    ----------
    weight_rows : iterable of dict
        Parsed contrast rows, ``{regressor: weight}``.
    known : iterable of str
        Regressor names of the design.

    Returns
    -------
    list of str
        Unknown names, sorted.
    """
    used = set(itertools.chain.from_iterable(weight_rows))
    return sorted(used - set(known))


def valid_identifier(name):
    """True when ``name`` can appear in a formula as is.

    Parameters
    ----------
    name : str
        Regressor name.

    Returns
    -------
    bool
        ``name`` is a letter or ``_`` followed by letters, digits or ``_``.
    """
    return bool(_NAME_OK.match(name))
