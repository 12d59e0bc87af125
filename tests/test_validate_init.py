"""``glmx validate`` reports every problem at once without fitting; ``glmx init`` writes a usable spec."""

import json
import shutil

import pytest

from glmx_workflows.cli.run import main
from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.spec.model import load_spec, task_entry

TASK = "flanker"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate") / "bids"
    make_example_dataset(root, n_subjects=3, n_runs=2, shape=(8, 10, 8), n_volumes=50, seed=4)
    return root


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_validate_clean_dataset(base, capsys):
    before = _listing(base)
    assert main(["validate", str(base)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok       flanker sub-") == 3 and "0 problem(s)" in out
    assert _listing(base) == before  # nothing written, nothing touched


def test_validate_reports_every_problem(base, tmp_path, capsys):
    root = tmp_path / "bids"
    shutil.copytree(base, root)
    conf = next((root / "derivatives/fmriprep/sub-01/func").glob("*run-2_desc-confounds_timeseries.tsv"))
    conf.unlink()
    events = root / "sub-02/func/sub-02_task-flanker_run-1_events.tsv"
    lines = events.read_text().splitlines()
    events.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")  # drop 'onset'
    spec = json.loads((root / "task_information.json").read_text())
    spec["flanker"]["design_contrasts"]["typo"] = "incongruent - congrunt"
    spec["other"] = {"tr": "2"}
    (root / "task_information.json").write_text(json.dumps(spec))

    assert main(["validate", str(root), "--participant-label", "01", "02", "03", "07"]) == 1
    captured = capsys.readouterr()
    problems = [line for line in captured.out.splitlines() if line.startswith("PROBLEM")]
    text = "\n".join(problems)
    assert "sub-01" in text and "no confounds file" in text
    assert "sub-02" in text and "column 'onset'" in text
    assert "sub-03" in text and "congrunt" in text  # the contrast typo hits every remaining subject
    assert "sub-07" in text and "not found" in text
    assert "other" in text and "other.tr" in text
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("glmx: error: ")


def test_init_writes_a_spec_that_runs(base, tmp_path, capsys):
    root = tmp_path / "bids"
    shutil.copytree(base, root)
    (root / "task_information.json").unlink()
    assert main(["init", str(root)]) == 0
    entry = task_entry(load_spec(root / "task_information.json"), TASK, root / "task_information.json")
    assert entry["tr"] == 2.0
    assert entry["condition_identifier"] == "trial_type"
    assert set(entry["conditions"]) == {"congruent", "incongruent"}
    assert "trans_?" in entry["confound_regressors"]

    # refuses to overwrite, one line naming the file
    assert main(["init", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task_information.json" in err[0] and "--force" in err[0]

    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--task", TASK, "--quiet", "--participant-label", "01",
                 "--work-dir", str(tmp_path / "work")]) == 0
    assert list(out.rglob("sub-01_task-flanker_space-*_contrast-congruentVincongruent_stat-z_statmap.nii.gz"))
