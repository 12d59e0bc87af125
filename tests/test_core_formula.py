import numpy as np
import pytest

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.core.formula import (bids_label, contrast_matrix, default_contrasts, parse_formula,
                                         sanitize_name)


def test_parse_linear_combinations():
    assert parse_formula("0.5*a + 0.5*b - c") == {"a": 0.5, "b": 0.5, "c": -1.0}
    assert parse_formula("(a + b)/2 - c") == {"a": 0.5, "b": 0.5, "c": -1.0}
    assert parse_formula("-(a - 2*b)") == {"a": -1.0, "b": 2.0}
    assert parse_formula("a - a + b") == {"b": 1.0}


@pytest.mark.parametrize("bad", ["a -", "a * b", "a / b", "a + 1", "", "a ** 2", "f(a)", "a - a"])
def test_bad_formulas_raise_one_line(bad):
    with pytest.raises(GlmxError) as err:
        parse_formula(bad)
    assert "\n" not in str(err.value)


def test_contrast_matrix_and_missing_regressor():
    cols = ["a", "b", "constant"]
    mat = contrast_matrix([{"a": 1, "b": -1}], cols)
    np.testing.assert_array_equal(mat, [[1, -1, 0]])
    assert contrast_matrix([{"c": 1}], cols) is None


def test_names_and_defaults():
    assert sanitize_name("parametric gain") == "parametric_gain"
    assert sanitize_name("2back") == "c2back"
    assert bids_label("AvB") == "AvB"
    assert bids_label("face_vs_house") == "faceVsHouse"
    assert default_contrasts(["b", "a", "c"]) == {"aVb": "a - b", "aVc": "a - c", "bVc": "b - c"}
