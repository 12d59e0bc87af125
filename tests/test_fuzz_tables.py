"""Randomly corrupted events and confounds tables through the real CLI: every outcome is a success or
the one-line error naming the file, never a traceback and never a partial output."""

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glmx_workflows.cli.run import main
from glmx_workflows.io.example import make_example_dataset

TASK = "flanker"
EVENTS = f"sub-01/func/sub-01_task-{TASK}_run-1_events.tsv"
CONFOUNDS = f"derivatives/fmriprep/sub-01/func/sub-01_task-{TASK}_run-1_desc-confounds_timeseries.tsv"
BASE = {}


def _base():
    if "root" not in BASE:
        root = Path(tempfile.mkdtemp(prefix="glmx-fuzz-")) / "bids"
        make_example_dataset(root, n_subjects=1, n_runs=1, shape=(8, 10, 8), n_volumes=50, seed=3)
        BASE["root"] = root
    return BASE["root"]


CELL = st.one_of(st.just("n/a"), st.just(""), st.text(max_size=6), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(-10 ** 6, 10 ** 6))


@st.composite
def table_edit(draw, columns, n_rows):
    """One corruption of a table, as a function of the DataFrame (or of the raw text)."""
    kind = draw(st.sampled_from(["cell", "column", "drop_column", "rows", "duplicate", "shuffle", "text"]))
    col = draw(st.sampled_from(columns))
    if kind == "cell":
        rows = draw(st.lists(st.integers(0, n_rows - 1), min_size=1, max_size=4))
        value = draw(CELL)

        def edit(t):
            t[col] = t[col].astype(object)
            for r in rows:
                t.iloc[r, t.columns.get_loc(col)] = value
            return t
    elif kind == "column":
        value = draw(CELL)

        def edit(t):
            t[col] = value
            return t
    elif kind == "drop_column":
        def edit(t):
            return t.drop(columns=col)
    elif kind == "rows":
        keep = draw(st.integers(0, n_rows + 3))

        def edit(t):
            return t.iloc[:keep] if keep <= len(t) else pd.concat([t, t.iloc[: keep - len(t)]])
    elif kind == "duplicate":
        def edit(t):
            return pd.concat([t, t])
    elif kind == "shuffle":
        seed = draw(st.integers(0, 1000))

        def edit(t):
            return t.sample(frac=1.0, random_state=seed)
    else:
        cut = draw(st.floats(0.0, 1.0))
        junk = draw(st.binary(max_size=12))

        def edit(raw):
            return raw[: int(len(raw) * cut)] + junk
        edit.raw = True
    edit.kind = f"{kind}:{col}"
    return edit


def _apply(path, edit):
    if getattr(edit, "raw", False):
        path.write_bytes(edit(path.read_bytes()))
        return
    table = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    edit(table).to_csv(path, sep="\t", index=False)


def _columns(rel):
    table = pd.read_csv(_base() / rel, sep="\t", nrows=1)
    n_rows = sum(1 for _ in open(_base() / rel)) - 1
    return list(table.columns), n_rows


@pytest.mark.parametrize("rel", [EVENTS, CONFOUNDS], ids=["events", "confounds"])
def test_corrupted_tables(rel):
    columns, n_rows = _columns(rel)
    if rel == CONFOUNDS:
        # the spec's own confound columns are where corruption matters
        columns = [c for c in columns if c.startswith(("trans_", "rot_", "framewise", "a_comp_cor_0"))] or columns

    outcomes = []

    @settings(max_examples=12, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(edits=st.lists(table_edit(columns, n_rows), min_size=1, max_size=2))
    def check(edits):
        tmp = Path(tempfile.mkdtemp(prefix="glmx-fuzz-case-"))
        try:
            root = tmp / "bids"
            shutil.copytree(_base(), root)
            for edit in edits:
                _apply(root / rel, edit)
            out = tmp / "out"
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main([str(root), str(out), "participant", "--task", TASK, "--quiet", "--plugin", "Linear",
                             "--work-dir", str(tmp / "work")])
            lines = err.getvalue().strip().splitlines()
            kinds = [e.kind for e in edits]
            outcomes.append((code, kinds, lines[-1][:160] if lines else ""))
            assert "Traceback" not in err.getvalue(), (kinds, err.getvalue())
            maps = list(out.rglob("*_statmap.nii.gz")) if out.exists() else []
            if code == 0:
                assert maps, kinds
                for m in maps:
                    assert np.isfinite(np.asanyarray(__import__("nibabel").load(m).dataobj)).all(), (kinds, m)
            else:
                assert len(lines) == 1 and lines[0].startswith("glmx: error: "), (kinds, lines)
                assert Path(rel).name in lines[0], (kinds, lines)
                assert not maps, (kinds, maps)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    check()
    # the corruptions must reach both outcomes, or the test checks less than it claims
    codes = {c for c, _, _ in outcomes}
    assert 0 in codes and codes - {0}, outcomes
