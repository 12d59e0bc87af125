"""The README's code and the shipped configs are run, so the documentation cannot drift from the code."""

import ast
import importlib
import json
import re
import runpy
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from glmx_workflows.api import Subject
from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.spec.model import load_spec

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.rst").read_text(encoding="utf-8")


def code_blocks(text):
    """``(section title, code)`` of every ``.. code-block:: python`` in an RST text."""
    lines = text.splitlines()
    section, out = None, []
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"=+", lines[i + 1]) and line.strip() and len(lines[i + 1]) >= len(line):
            section = line.strip()
        if line.strip() == ".. code-block:: python":
            body = []
            for follow in lines[i + 1:]:
                if follow.strip() and not follow.startswith("    "):
                    break
                body.append(follow[4:])
            out.append((section, "\n".join(body).strip("\n") + "\n"))
    return out


def test_readme_code_blocks_parse_and_import_real_names():
    blocks = code_blocks(README)
    assert {"Python", "Embedding in a Nipype pipeline", "Group level"} <= {s for s, _ in blocks}
    for section, code in blocks:
        tree = ast.parse(code)  # a syntax error in the docs fails here
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("glmx_workflows"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"README ({section}) imports {node.module}.{alias.name}"


def test_readme_embedding_example_runs(tmp_path):
    section, code = next(b for b in code_blocks(README) if b[0] == "Embedding in a Nipype pipeline")
    bids = make_example_dataset(tmp_path / "bids", n_subjects=1, n_runs=1, shape=(8, 10, 8), n_volumes=50, seed=7)
    assert '"/data/bids", "/data/work"' in code
    script = tmp_path / "embedding_example.py"
    # nipype's Function node reads its function's source, so the example runs from a file, as a user's would
    script.write_text(code.replace('"/data/bids"', repr(str(bids))).replace('"/data/work"', repr(str(tmp_path / "w"))))
    namespace = runpy.run_path(str(script), run_name="readme_example")

    maps = namespace["maps"]
    labels = sorted(re.search(r"contrast-(\w+?)_stat-z", Path(m).name)[1] for m in maps)
    spec = json.loads((bids / "task_information.json").read_text())["flanker"]
    assert set(spec["design_contrasts"]) <= set(labels)
    for path in maps:
        data = np.asanyarray(nb.load(path).dataobj)
        assert data.ndim == 3 and np.isfinite(data).all() and np.abs(data).max() > 0
    # embedding publishes nothing into the dataset
    assert not (bids / "derivatives" / "glmx").exists()


def test_shipped_configs_load_and_plan(tmp_path):
    task_spec = REPO / "configs" / "task_information.json"
    spec = load_spec(task_spec)  # strict JSON and every key validated
    entry = spec["flanker"]
    assert len(entry["description"]) > 200 and entry["block_identifier"] and entry["modulators"]
    assert any(isinstance(f, list) for f in entry["design_contrasts"].values())  # an F contrast

    bids = make_example_dataset(tmp_path / "bids", n_subjects=1, n_runs=2, shape=(10, 12, 10), n_volumes=60, seed=1)
    plan = Subject("01", "flanker", bids, spec=task_spec).plan()
    assert {"conflict", "conflictAvB", "rt", "conflictEitherBlock"} <= set(plan.contrasts)
    assert plan.contrasts["conflictEitherBlock"]["type"] == "F"
    assert plan.settings["dummy_scans"] == 2 and plan.settings["fd_threshold"] == 0.9

    rest = load_spec(REPO / "configs" / "rest.json")
    assert rest["rest"]["analysis"] == "connectivity" and rest["rest"]["description"]


@pytest.mark.parametrize("name", ["task_information.json", "rest.json"])
def test_configs_are_in_the_readme(name):
    assert f"configs/{name}" in README
