"""Group-level figures (subject mosaic, contrast maps) and the self-contained HTML report of a task.

The report embeds every image (PNG as base64 data URIs, SVG inline) and uses no script, font or
style sheet from the network, so it opens offline.
"""

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, write_text
from .figures import plt


def _save(fig, path):
    fmt = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=80, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return Path(path)


def _projections(vol, mask):
    """Signed maximum-|value| projections along each axis, side by side (sagittal, coronal, axial);
    NaN outside the mask's projection."""
    views = []
    for axis in (0, 1, 2):
        idx = np.abs(vol).argmax(axis=axis)
        proj = np.take_along_axis(vol, np.expand_dims(idx, axis), axis=axis).squeeze(axis)
        proj = np.where(mask.any(axis=axis), proj, np.nan)
        views.append(np.rot90(proj))
    height = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, height - v.shape[0]), (0, 1)), constant_values=np.nan) for v in views]
    return np.concatenate(padded, axis=1)


def plot_subject_mosaic(Y, mask, subjects, path, title=""):
    """Every subject's map as signed maximum-intensity projections on one shared colour scale.

    glm-express's ``plot_brain_mosaic``: an outlier subject (flipped sign, huge values, a hole) is
    seen at a glance before it is averaged.

    Parameters
    ----------
    Y : numpy.ndarray, shape (n_subjects, n_voxels)
        Subject maps, in-mask voxels only.
    mask : numpy.ndarray of bool, shape (x, y, z)
        Group mask whose True voxels are the columns of ``Y``.
    subjects : list of str
        Row labels in the row order of ``Y``, titled ``sub-<label>`` (a subject, or "01 congruent" for a
        within-subject design's rows).
    path : str or Path
        PNG or SVG.
    title : str
        Figure title.

    Returns
    -------
    Path
        The written figure.
    """
    Y = np.asarray(Y, dtype=np.float64)
    vmax = float(np.nanpercentile(np.abs(Y), 99)) or 1.0
    n = len(subjects)
    cols = min(n, 6)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.3 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    image = None
    for i, sub in enumerate(subjects):
        vol = np.zeros(mask.shape)
        vol[mask] = np.nan_to_num(Y[i])
        proj = _projections(vol, mask)
        ax = axes.ravel()[i]
        image = ax.imshow(proj, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_title(f"sub-{sub}", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, fraction=0.02)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_stat_figures(z_img, out_prefix, threshold=None, title="", kinds=("glass", "slices")):
    """A glass brain and axial slices of a z map (thresholded maps: zero below the threshold).

    Parameters
    ----------
    z_img : nibabel image
        z map to draw.
    out_prefix : str or Path
        ``<prefix>_glass.png`` and ``<prefix>_slices.png`` are written.
    threshold : float, optional
        Values with smaller magnitude are not drawn.
    title : str
        Figure title.
    kinds : sequence of {'glass', 'slices'}
        Figures to draw.

    Returns
    -------
    list of Path
        The written figures (glass brain first when both are drawn).
    """
    import warnings

    from nilearn import plotting

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak = float(np.abs(np.asanyarray(z_img.dataobj)).max())
        vmax = max(peak, 1e-6)
        for kind, draw in (("glass", lambda fig: plotting.plot_glass_brain(
                z_img, plot_abs=False, colorbar=True, threshold=threshold, vmax=vmax, figure=fig, title=title)),
                           ("slices", lambda fig: plotting.plot_stat_map(
                z_img, display_mode="z", cut_coords=6, bg_img=None, threshold=threshold, vmax=vmax, figure=fig,
                title=title, colorbar=True))):
            if kind not in kinds:
                continue
            fig = plt.figure(figsize=(8, 3))
            display = draw(fig)
            target = Path(f"{out_prefix}_{kind}.png")
            with atomic_path(target) as tmp:
                display.savefig(str(tmp), dpi=70)
            display.close()
            plt.close(fig)
            out.append(target)
    return out


def _img_tag(path, alt):
    path = Path(path)
    if path.suffix == ".svg":
        text = path.read_text(encoding="utf-8")
        start = text.find("<svg")
        return f'<div class="svg">{text[start:]}</div>' if start >= 0 else ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(tsv_path):
    import pandas as pd

    table = pd.read_csv(tsv_path, sep="\t", dtype=str, keep_default_na=False)
    if table.empty:
        return "<p class='none'>No cluster above the height threshold.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-top:1.5em}
img{max-width:100%}.svg svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eee}.none{color:#777}.warn{color:#a40}code{background:#f4f4f4}"""


def build_group_report(task, sections, summary, path):
    """Write the task's group-level HTML report.

    Parameters
    ----------
    task : str
        Task name.
    sections : list of dict
        One per first-level contrast: ``contrast``, ``subjects``, ``missing`` (subjects without a map),
        ``design_figure`` (SVG path), ``mosaic`` (PNG path), ``group_contrasts``: a list of
        ``{'name', 'figures': [{'path', 'caption'}], 'clusters': TSV path or None, 'notes': [str]}``.
    summary : dict
        ``excluded`` (list of subjects), ``settings`` (dict shown as a table).
    path : str or Path
        The HTML file (self-contained: figures are embedded).

    Returns
    -------
    Path
        The written report.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>glmx group level: task {html.escape(task)}"
             f"</title><style>{_STYLE}</style></head><body>",
             f"<h1>Group level: task <code>{html.escape(task)}</code></h1>"]
    excluded = summary.get("excluded", [])
    parts.append("<p>Subjects excluded by the spec: "
                 + (", ".join(f"sub-{html.escape(s)}" for s in excluded) if excluded else "none") + ".</p>")
    settings = summary.get("settings", {})
    if settings:
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                                         for k, v in settings.items()) + "</table>")
    parts.append("<ul>" + "".join(f"<li><a href='#c-{html.escape(s['contrast'])}'>{html.escape(s['contrast'])}</a></li>"
                                   for s in sections) + "</ul>")
    for sec in sections:
        parts.append(f"<h2 id='c-{html.escape(sec['contrast'])}'>First-level contrast "
                     f"<code>{html.escape(sec['contrast'])}</code></h2>")
        # a within-subject design has a row per subject and contrast: name each subject once
        subjects = list(dict.fromkeys(sec["subjects"]))
        per_subject = (f", {len(sec['subjects']) // len(subjects)} maps each" if subjects
                       and len(sec["subjects"]) > len(subjects) else "")
        parts.append(f"<p>{len(subjects)} subject(s){per_subject}: "
                     + ", ".join(f"sub-{html.escape(s)}" for s in subjects) + ".</p>")
        if sec.get("missing"):
            parts.append("<p class='warn'>Left out (no subject-level map): "
                         + ", ".join(f"sub-{html.escape(s)}" for s in sec["missing"]) + ".</p>")
        parts.append("<h3>Design</h3>" + _img_tag(sec["design_figure"], "design matrix"))
        if sec.get("mosaic"):  # (none on surfaces)
            parts.append("<h3>Subject maps</h3>" + _img_tag(sec["mosaic"], "subject mosaic"))
        for gc in sec["group_contrasts"]:
            parts.append(f"<h3>Group contrast <code>{html.escape(gc['name'])}</code></h3>")
            for note in gc.get("notes", []):
                parts.append(f"<p>{html.escape(note)}</p>")
            for fig in gc["figures"]:
                parts.append(f"<p>{html.escape(fig['caption'])}</p>" + _img_tag(fig["path"], fig["caption"]))
            if gc.get("clusters"):
                parts.append("<h4>Clusters</h4>" + _table_html(gc["clusters"]))
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))
