"""A user's own Nipype pipeline embeds the subject-level workflow after a node of its own."""

import json

import numpy as np
import nibabel as nb
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from glmx_workflows.api import Subject
from glmx_workflows.io.example import make_example_dataset


def _copy_runs(bold_files):
    """A user's step: here it copies the BOLD runs (it could be their own preprocessing)."""
    import os
    import shutil

    out = []
    for i, f in enumerate(bold_files):
        dst = os.path.abspath(f"custom_run{i}.nii.gz")
        shutil.copyfile(f, dst)
        out.append(dst)
    return out


def _z_maps(manifest):
    import json

    with open(manifest) as fh:
        return [m["path"] for m in json.load(fh) if m["entities"]["stat"] == "z"]


def test_subject_workflow_embeds_in_an_outer_pipeline(tmp_path):
    root = tmp_path / "bids"
    make_example_dataset(root, n_subjects=1, n_runs=2, shape=(10, 12, 10), n_volumes=60, seed=4)
    subj = Subject("01", "flanker", root, output_dir=tmp_path / "out", work_dir=tmp_path / "work")
    plan = subj.plan()
    inner = subj.workflow(plan, name="glm", output_dir=False)  # no sinks: the outer pipeline takes the outputs

    outer = pe.Workflow(name="my_pipeline", base_dir=str(tmp_path / "outer_work"))
    outer.config["execution"]["crashdump_dir"] = str(tmp_path / "crash")
    supply = pe.Node(Function(input_names=["bold_files"], output_names=["bold_files"], function=_copy_runs),
                     name="my_preprocessing")
    supply.inputs.bold_files = [r.bold for r in plan.runs]
    collect = pe.Node(Function(input_names=["manifest"], output_names=["z_maps"], function=_z_maps), name="collect")
    outer.connect([(supply, inner, [("bold_files", "inputnode.bold_files")]),
                   (inner, collect, [("outputnode.subject_manifest", "manifest")])])
    graph = outer.run(plugin="Linear")

    node = next(n for n in graph.nodes() if n.name == "collect")
    z_maps = node.result.outputs.z_maps
    assert any("incongruentVcongruent" in z for z in z_maps)
    fit = next(n for n in graph.nodes() if n.name == "fit_glm")
    assert all("custom_run" in str(b) for b in fit.inputs.bold_file)

    # the embedded result equals the stand-alone run
    subj.run(n_procs=1)
    ours = next(z for z in z_maps if "contrast-incongruentVcongruent_stat-z" in z)
    ref = next((tmp_path / "out").rglob("sub-01_task-flanker_space-*_contrast-incongruentVcongruent_stat-z_statmap.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nb.load(ours).dataobj), np.asarray(nb.load(ref).dataobj))
    assert json.loads((tmp_path / "out" / "dataset_description.json").read_text())["DatasetType"] == "derivative"
