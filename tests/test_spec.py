import json

import pytest

from glmx_workflows.core.errors import GlmxError
from glmx_workflows.spec.model import load_spec, subject_settings, task_entry


def _write(tmp_path, text):
    path = tmp_path / "task_information.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def test_defaults_and_overrides(tmp_path):
    path = _write(tmp_path, {"t": {"excludes": ["sub-02", "03"], "overrides": {"sub-01": {"tr": 2.5}},
                                   "design_contrasts": {"AvB": "a - b"}}})
    entry = task_entry(load_spec(path), "t", path)
    assert entry["excludes"] == ["02", "03"] and entry["noise_model"] == "ar1" and entry["hrf_model"] == "glover"
    s = subject_settings(entry, "sub-01", dummy_scans=3)
    assert s["tr"] == 2.5 and s["dummy_scans"] == 3
    assert subject_settings(entry, "04")["tr"] is None


@pytest.mark.parametrize("text, needle", [
    ('{"t": {"tr": 2,}}', "line 1 column"),
    ('{"t": {"tr": NaN}}', "NaN"),
    ({"t": {"noise_modle": "ols"}}, "did you mean 'noise_model'"),
    ({"t": {"tr": "2"}}, "t.tr"),
    ({"t": {"design_contrasts": {"x": "a -"}}}, "t.design_contrasts.x"),
    ('{"t": {"design_contrasts": {"x": "a", "x": "b"}}}', "appears twice"),
    ({"t": {"overrides": {"sub-01": {"excludes": []}}}}, "unknown key 'excludes'"),
    ([], "one entry per task"),
    # a value of the right kind with one wrong part: the message names that part
    ({"t": {"group_design": {"type": "paired", "contrasts": ["a", "a"]}}},
     't.group_design.contrasts: names an item twice: ["a", "a"]'),
    ({"t": {"group_design": {"type": "bogus", "contrasts": ["a", "b"]}}},
     't.group_design.type: expected one of "paired", "repeated", got "bogus"'),
    ({"t": {"group_design": {"type": "repeated", "contrasts": ["a"]}}},
     't.group_design.contrasts: needs at least 2 item(s)'),
    ({"t": {"group_design": {"type": "repeated"}}}, "t.group_design: missing key 'contrasts'"),
    ({"t": {"group_design": {"type": "paired", "contrasts": ["a", "b"], "nmae": "x"}}},
     "t.group_design: unknown key 'nmae' (did you mean 'name'?)"),
    ({"t": {"confound_regressors": ["a", 3]}}, "t.confound_regressors[1]: expected a string, got 3"),
    ({"t": {"group_design": 5}}, "t.group_design: expected null or an object, got 5"),
])
def test_bad_specs_give_one_line_naming_file(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(GlmxError) as err:
        load_spec(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg


def test_missing_task(tmp_path):
    path = _write(tmp_path, {"flanker": {}})
    with pytest.raises(GlmxError, match="did you mean 'flanker'"):
        task_entry(load_spec(path), "flanke", path)
