"""Reports a person opens: the first-level report and the dataset index, checked for content against
independent computations and opened in a real headless Chromium."""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from glmx_workflows.api import Aggregator
from glmx_workflows.cli.run import main
from glmx_workflows.io.example import make_example_dataset
from glmx_workflows.reports import html as H
from glmx_workflows.reports.first_level import build_subject_report, cluster_table, design_diagnostics
from glmx_workflows.reports.index import build_index, read_status, record_status

TASK = "flanker"
DUMMY, FD = 3, 0.35
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


class _Page(HTMLParser):
    """Ids, links, images, tables of a page (stdlib parser: no browser needed)."""

    def __init__(self, text):
        super().__init__()
        self.ids, self.links, self.srcs, self.tags = [], [], [], []
        self.tables, self._table, self._row, self._cell = [], None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if "src" in a:
            self.srcs.append(a["src"])
        if tag == "table":
            self._table = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [a.get("class", ""), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None

    def table_with(self, header):
        return next(t for t in self.tables if [c[1] for c in t[0]][:len(header)] == header)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """sub-01 and sub-04 fitted, sub-02 broken (confounds one row short), sub-03 excluded; then the group."""
    tmp = tmp_path_factory.mktemp("reports")
    root = make_example_dataset(tmp / "bids", n_subjects=4, n_runs=2, shape=(23, 27, 23), n_volumes=80, seed=3)
    spec = json.loads((root / "task_information.json").read_text())
    spec[TASK]["excludes"] = ["sub-03"]
    spec[TASK]["dummy_scans"] = DUMMY
    spec[TASK]["fd_threshold"] = FD
    # the spec's contrasts only (no per-condition maps) and an intercept-only group model for two subjects:
    # few figures, so the report node stays cheap
    spec[TASK]["condition_maps"] = False
    spec[TASK]["group_level_regressors"] = []
    (root / "task_information.json").write_text(json.dumps(spec, indent=1))
    broken = next((root / "derivatives").rglob("sub-02_task-flanker_run-1*desc-confounds_timeseries.tsv"))
    broken.write_text("".join(broken.read_text().splitlines(keepends=True)[:-1]))
    out = tmp / "out"
    report = Aggregator(root, TASK, output_dir=out, work_dir=tmp / "work").run(n_procs=2, progress=False)
    code = main([str(root), str(out), "group", "--task", TASK, "--contrast", "incongruentVcongruent",
                 "--inference", "uncorrected", "--work-dir", str(tmp / "group_work")])
    assert code == 0
    return root, out, report


def _report_path(out):
    return out / "sub-01" / "sub-01_task-flanker_report.html"


def test_first_level_report_content(dataset):
    root, out, run = dataset
    assert run.done == ["01", "04"] and list(run.failed) == ["02"] and run.excluded == ["03"]
    text = _report_path(out).read_text()
    page = _Page(text)

    # self-contained: nothing fetched from the network, no script
    assert not re.search(r'(src|href)="https?:', text) and "@import" not in text and "<script" not in text
    assert all(s.startswith("data:image/png;base64,") for s in page.srcs) and page.srcs
    assert len(page.ids) == len(set(page.ids)), "duplicate ids (two inline SVGs sharing a clip path id?)"
    assert text.count('<div class="svg"') == 2  # one design matrix per run

    for run_label in ("1", "2"):
        design = pd.read_csv(out / "sub-01" / "func" / f"sub-01_task-flanker_run-{run_label}_design.tsv", sep="\t")
        confounds = pd.read_csv(next((root / "derivatives").rglob(
            f"sub-01_task-flanker_run-{run_label}_*desc-confounds_timeseries.tsv")), sep="\t")
        fd = confounds["framewise_displacement"].to_numpy(float)
        censored = (np.arange(len(fd)) < DUMMY) | (np.nan_to_num(fd) > FD)
        assert f"{int(censored.sum())} of {len(fd)} volumes censored" in text
        # VIF against a formula the report does not use: the diagonal of the inverse correlation matrix
        kept = design.loc[~censored, design.std() > 0]
        reference = pd.Series(np.diag(np.linalg.inv(np.corrcoef(kept.to_numpy().T))), index=kept.columns)
        vif = page.tables[[i for i, t in enumerate(page.tables) if [c[1] for c in t[0]] == ["regressor", "VIF"]]
                          [int(run_label) - 1]]
        shown = {row[0][1]: float(row[1][1]) for row in vif[1:]}
        assert set(shown) == {"congruent", "incongruent", "congruent_x_response_time", "incongruent_x_response_time"}
        for name, value in shown.items():
            assert value == pytest.approx(reference[name], rel=0.01), name

    # contrast matrix: the weights of the spec's formula
    matrix = page.table_with(["contrast"])
    header = [c[1] for c in matrix[0]]
    row = next(r for r in matrix[1:] if r[0][1] == "incongruentVcongruent")
    weights = {h: float(c[1]) for h, c in zip(header[1:], row[1:])}
    assert weights["incongruent"] == 1 and weights["congruent"] == -1

    # every subject-level contrast has its section, two figures and a cluster table
    labels = sorted({re.search(r"contrast-([A-Za-z0-9]+)_stat", p.name)[1]
                     for p in (out / "sub-01" / "func").glob("sub-01_task-flanker_space-*_stat-z_statmap.nii.gz")})
    assert labels == ["incongruentVcongruent", "rt", "task"]
    for label in labels:
        assert f"contrast-{label}" in page.ids
    assert text.count('alt="glass brain:') == 3 and text.count('alt="slices:') == 3

    # the planted conflict effect (dACC, 0 22 40 mm) is the top cluster of its contrast
    section = text[text.index('id="contrast-incongruentVcongruent"'):]
    clusters = _Page(section).table_with(["Cluster ID", "X", "Y", "Z"])
    peak = np.array([float(c[1]) for c in clusters[1][1:4]])
    assert np.linalg.norm(peak - [0, 22, 40]) < 16, peak  # two 8 mm voxels
    z = nb.load(next((out / "sub-01" / "func").glob("*_contrast-incongruentVcongruent_stat-z_statmap.nii.gz")))
    assert float(clusters[1][4][1]) == pytest.approx(float(np.asanyarray(z.dataobj).max()), abs=0.01)
    # the slices cut through the top cluster's peak
    cut = re.search(r"Slices through the peak of the top cluster \(x=(-?\d+), y=(-?\d+), z=(-?\d+) mm\)", section)
    assert np.allclose([float(v) for v in cut.groups()], peak, atol=0.5)


def test_fit_writes_the_mean_image_the_report_shows(tmp_path):
    """fit_glm's mean image (the report's underlay, instead of a second read of the run) is nilearn's mean
    of the kept volumes, inside the mask."""
    from nilearn.image import mean_img

    from glmx_workflows.interfaces.glm import FitGLM

    root = make_example_dataset(tmp_path / "bids", n_subjects=1, n_runs=1, shape=(16, 19, 16), n_volumes=40, seed=1)
    bold = next((root / "derivatives").rglob("*_desc-preproc_bold.nii.gz"))
    mask = next((root / "derivatives").rglob("*_desc-brain_mask.nii.gz"))
    keep = np.ones(40, bool)
    keep[:3] = False
    pd.DataFrame({"volume": range(40), "kept": keep.astype(int)}).to_csv(tmp_path / "censor.tsv", sep="\t",
                                                                         index=False)
    frame = np.arange(40) * 2.0
    pd.DataFrame({"cos": np.cos(frame / 40), "constant": np.ones(40)}).to_csv(tmp_path / "design.tsv", sep="\t",
                                                                             index=False)
    result = FitGLM(bold_file=str(bold), mask_file=str(mask), design_file=str(tmp_path / "design.tsv"),
                    censor_file=str(tmp_path / "censor.tsv"), noise_model="ols").run(cwd=str(tmp_path))
    ours = nb.load(result.outputs.mean_file)
    inside = np.asanyarray(nb.load(str(mask)).dataobj) > 0
    reference = mean_img(nb.load(str(bold)).slicer[..., 3:], copy_header=True).get_fdata()
    assert ours.shape == inside.shape and np.allclose(ours.affine, nb.load(str(bold)).affine)
    assert np.allclose(ours.get_fdata()[inside], reference[inside], rtol=1e-5)
    assert not ours.get_fdata()[~inside].any()


def test_correlated_regressors_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    task = rng.standard_normal(n)
    design = pd.DataFrame({"cond": task, "other": rng.standard_normal(n),
                           "motion": task + 0.3 * rng.standard_normal(n), "constant": np.ones(n)})
    diag = design_diagnostics(design, confound_columns=["motion"])
    assert diag["task"] == ["cond", "other"]
    flagged = diag["flagged"]
    assert list(flagged[["regressor_a", "regressor_b"]].iloc[0]) == ["cond", "motion"]
    assert flagged["r"].iloc[0] == pytest.approx(np.corrcoef(task, design["motion"])[0, 1])
    assert len(flagged) == 1 and flagged["involves_task"].all()

    censor = pd.DataFrame({"volume": range(n), "kept": [0, 0] + [1] * (n - 2), "reason": ["dummy"] * 2 + [""] * (n - 2)})
    contrasts = {"c": {"label": "c", "rows": [{"cond": 1.0}], "type": "t"}}
    path = build_subject_report(tmp_path / "r.html", "x", "t", [{"label": "1", "design": design, "design_figure": None,
                                                                  "confounds": ["motion"], "censor": censor}],
                                contrasts, {})
    page = _Page(path.read_text())
    pairs = page.table_with(["regressor", "regressor", "r"])
    assert [c[1] for c in pairs[1][:2]] == ["cond", "motion"] and "flag" in pairs[1][2][0].split()
    assert "2 of 80 volumes censored" in path.read_text() and "0–1" in path.read_text()
    assert "No subject-level map" in path.read_text()


def _smooth_map(seed, shape=(30, 36, 30)):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    return (data / data.std() * 2.5).astype(np.float32)


AFFINE_2MM = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


@pytest.mark.parametrize("seed,height,extent,two_sided", [(0, 3.09, 5, True), (1, 2.3, 0, True), (2, 3.09, 5, False)])
def test_cluster_table_equals_nilearns(seed, height, extent, two_sided):
    """Same rows (ids, peaks, sub-peaks, sizes) as nilearn's get_clusters_table, value for value."""
    from nilearn.reporting import get_clusters_table

    img = nb.Nifti1Image(_smooth_map(seed), AFFINE_2MM)
    ref = get_clusters_table(img, stat_threshold=height, cluster_threshold=extent, two_sided=two_sided)
    ours = cluster_table(img, height, extent, two_sided=two_sided)
    assert len(ref) > 20  # several clusters with sub-peaks, both signs when two-sided
    assert list(ours.columns) == list(ref.columns)
    assert (ours.astype(str).to_numpy() == ref.astype(str).to_numpy()).all()
    assert ours.attrs["n_clusters"] == ref["Cluster Size (mm3)"].astype(str).str.len().gt(0).sum()


def test_cluster_table_plateaus_and_truncation():
    from nilearn.reporting import get_clusters_table

    data = np.zeros((20, 20, 20), np.float32)
    data[3:6, 3:6, 3:6] = 5  # a flat cube: its centre is the peak
    data[12:18, 3:9, 3:9] = 4
    data[14:16, 5:7, 5:7] = 0  # a hollow cube: the centre of mass is outside, the nearest voxel is reported
    data[15, 15, 14:17] = 6
    data[8:10, 12:18, 14] = -5
    img = nb.Nifti1Image(data, AFFINE_2MM)
    ref = get_clusters_table(img, stat_threshold=3.09, cluster_threshold=1, two_sided=True)
    ours = cluster_table(img, 3.09, 1, two_sided=True)
    assert len(ref) == 4 and (ours.astype(str).to_numpy() == ref.astype(str).to_numpy()).all()
    top = cluster_table(img, 3.09, 1, two_sided=True, max_clusters=1)
    assert list(top["Cluster ID"]) == [1, 2] and top["Peak Stat"].tolist() == [6.0, -5.0]
    assert top.attrs["n_clusters"] == 4


def test_index_table_and_links(dataset):
    root, out, _ = dataset
    text = (out / "index.html").read_text()
    page = _Page(text)
    table = page.table_with(["subject", "status", "report"])
    rows = {r[0][1]: [c[1] for c in r[1:]] for r in table[1:]}
    assert rows == {"sub-01": ["done", "report"] + ["done"] * 3, "sub-02": ["failed", ""] + ["failed"] * 3,
                    "sub-03": ["excluded", ""] + ["excluded"] * 3, "sub-04": ["done", "report"] + ["done"] * 3}
    failures = page.table_with(["subject", "reason"])
    assert failures[1][0][1] == "sub-02" and "79 rows" in failures[1][1][1]
    # every link resolves, down to the contrast's anchor in the subject's report
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids
            continue
        parts = urlsplit(href)
        target = out / unquote(parts.path)
        assert target.is_file(), href
        if parts.fragment:
            assert f'id="{parts.fragment}"' in target.read_text(), href
    assert "sub-01/sub-01_task-flanker_report.html" in page.links
    assert "group/task-flanker_report.html" in page.links  # the group run rebuilt the index


def test_index_merges_batches_and_lists_group_reports(tmp_path):
    record_status(tmp_path, "t", done=["01"], failed={"02": ("boom", None)})
    record_status(tmp_path, "t", done=["02"], excluded=["03"])  # a later batch
    assert {s: v["status"] for s, v in read_status(tmp_path, "t").items()} == {
        "01": "done", "02": "done", "03": "excluded"}
    (tmp_path / "group").mkdir()
    H.write_page(tmp_path / "group" / "task-t_report.html", "g", [H.tag("p", "group")])
    page = _Page(build_index(tmp_path).read_text())
    assert "group/task-t_report.html" in page.links


def test_svg_ids_are_made_unique_and_text_escaped():
    svg = '<?xml version="1.0"?><svg><defs><clipPath id="p1"><rect/></clipPath></defs>' \
          '<g clip-path="url(#p1)"><use xlink:href="#p1"/></g></svg>'
    a, b = H.svg_inline(svg, "a"), H.svg_inline(svg, "b")
    assert 'id="a-p1"' in a and "url(#a-p1)" in a and 'href="#a-p1"' in a and "<?xml" not in a
    assert 'id="b-p1"' in b
    assert str(H.tag("p", "<script>&")) == "<p>&lt;script&gt;&amp;</p>"
    assert str(H.table([["<b>", H.Raw("<i>x</i>")]])).count("&lt;b&gt;") == 1


# ------------------------------------------------------------------------------------------ browser


def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(tools/ci/setup.d/20-browser.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


_MEASURE = """return {
  images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
  svgs: Array.from(document.querySelectorAll('svg')).map(s => {const r = s.getBBox(); const c = s.getBoundingClientRect();
                                                            return [r.width, r.height, c.width, c.height]}),
  title: document.title, text: document.body.innerText.length};"""


def test_reports_render_in_headless_chromium(dataset, tmp_path):
    _, out, _ = dataset
    group_report = out / "group" / "task-flanker_report.html"
    driver = _browser()
    try:
        pages = {}
        for path in (_report_path(out), group_report, out / "index.html"):
            driver.get(path.resolve().as_uri())
            pages[path.name] = driver.execute_script(_MEASURE)
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not severe, (path.name, severe)
            for alt, complete, width, height in pages[path.name]["images"]:
                assert complete and width > 0 and height > 0, (path.name, alt)
            for bbox_w, bbox_h, w, h in pages[path.name]["svgs"]:
                assert min(bbox_w, bbox_h, w, h) > 0, path.name
        report = pages[_report_path(out).name]
        assert report["title"].startswith("sub-01") and report["text"] > 1000
        assert len(report["images"]) >= 2 * 3 + 2  # per contrast glass brain + slices; a correlation matrix a run
        assert len(report["svgs"]) == 2  # a design matrix a run
        group = pages[group_report.name]
        assert group["text"] > 500 and group["images"] and group["svgs"]  # maps (PNG) and the group design (SVG)
        index = pages["index.html"]
        assert index["title"].startswith("glmx outputs") and not index["images"]
        # a broken image is caught (the check can fail)
        bad = tmp_path / "bad.html"
        bad.write_text(H.page("bad", H.Raw('<img alt="broken" src="data:image/png;base64,AAAA">')))
        driver.get(bad.as_uri())
        assert driver.execute_script(_MEASURE)["images"][0][2] == 0
    finally:
        driver.quit()
