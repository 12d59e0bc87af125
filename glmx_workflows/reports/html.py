"""Building blocks of self-contained HTML reports.

A report is one file a person can mail or open offline: every image is embedded (PNG as a base64
data URI, SVG inline with its ids made unique), the style sheet is inline, and nothing is loaded
from the network (no script, font or style sheet). Text is escaped here, so callers pass plain
strings; a :class:`Raw` string is trusted HTML that is inserted as it is.
"""

import base64
import html
import io
import re
from pathlib import Path

from ..io.atomic import write_text

STYLE = """body{font-family:sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.35}
h1{font-size:1.6em}h2{border-bottom:2px solid #ccc;margin-top:2em}h3{margin-top:1.5em}
img{max-width:100%;height:auto}.svg svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.none{color:#777}.warn{color:#a40}.flag{background:#fdd;font-weight:bold}.ok{background:#dfd}
.failed{background:#fdd}.excluded{background:#eee;color:#666}.missing{background:#ffe9c6}
code{background:#f4f4f4;padding:0 2px}.scroll{overflow-x:auto;max-width:100%}nav ul{columns:3}figure{margin:1em 0}figcaption{font-size:.9em;color:#444}"""


class Raw(str):
    """Trusted HTML: inserted without escaping by :func:`table` and :func:`join`."""


def esc(value):
    """Escape a value for HTML text or attributes.

    Parameters
    ----------
    value : object
        Converted with ``str``; a :class:`Raw` value is returned unchanged.

    Returns
    -------
    str
        The escaped text (quotes included), or the :class:`Raw` value itself.
    """
    if isinstance(value, Raw):
        return value
    return html.escape(str(value), quote=True)


def join(*parts):
    """Concatenate HTML parts, escaping those that are not :class:`Raw`.

    Parameters
    ----------
    *parts : str or Raw
        Text (escaped) or HTML (:class:`Raw`, kept).

    Returns
    -------
    Raw
        The concatenated HTML.
    """
    return Raw("".join(esc(p) for p in parts))


def tag(name, content="", **attrs):
    """One element: ``tag('p', 'text', cls='warn')`` → ``<p class="warn">text</p>``.

    Parameters
    ----------
    name : str
        Element name.
    content : str or Raw
        Escaped unless :class:`Raw`.
    **attrs
        Attributes (``cls`` for ``class``); None values are left out.

    Returns
    -------
    Raw
        The element's HTML.
    """
    text = "".join(f' {"class" if k == "cls" else k.replace("_", "-")}="{esc(v)}"'
                   for k, v in attrs.items() if v is not None)
    return Raw(f"<{name}{text}>{esc(content)}</{name}>")


def anchor(text):
    """A valid, stable HTML id from any text (``'a - b'`` → ``'a-b'``).

    Parameters
    ----------
    text : str
        Any text (e.g. a contrast name).

    Returns
    -------
    str
        Runs of other characters than letters, digits, ``_`` and ``-`` replaced by ``-``; ``'x'``
        when nothing is left.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-")
    return slug or "x"


def png_tag(data, alt):
    """An ``<img>`` holding a PNG as a base64 data URI.

    Parameters
    ----------
    data : bytes or str or Path
        PNG bytes or a PNG file.
    alt : str
        Alternative text.

    Returns
    -------
    Raw
        The ``<img>`` element.

    Raises
    ------
    ValueError
        When the data is not a PNG.
    """
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    if not data.startswith(b"\x89PNG"):
        raise ValueError(f"not a PNG image: {alt}")
    encoded = base64.b64encode(data).decode("ascii")
    return Raw(f'<img alt="{esc(alt)}" src="data:image/png;base64,{encoded}">')


_ID = re.compile(r'\bid="([^"]+)"')


def svg_inline(svg, prefix, alt=""):
    """An SVG document inlined in the page, its ids prefixed so that several SVGs can share a page.

    Matplotlib names clip paths and glyphs after their content; two figures inlined in one page
    would otherwise declare the same id twice, and the browser would use the first declaration for
    both.

    Parameters
    ----------
    svg : str or Path
        SVG text or an SVG file.
    prefix : str
        Unique within the page (made id-safe).
    alt : str
        Accessible label (``aria-label`` of the wrapper).

    Returns
    -------
    Raw
        A ``<div class="svg">`` holding the ``<svg>`` element.

    Raises
    ------
    ValueError
        When the text holds no ``<svg>`` element.
    """
    text = svg if isinstance(svg, str) and svg.lstrip().startswith("<") else Path(svg).read_text(encoding="utf-8")
    start = text.find("<svg")
    if start < 0:
        raise ValueError(f"no <svg> element in {alt or 'the SVG given'}")
    text = text[start:]
    prefix = anchor(prefix)
    ids = set(_ID.findall(text))
    if ids:
        pattern = re.compile(r'(\bid="|url\(#|href="#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len,
                                                                                                 reverse=True)) + r')\b')
        text = pattern.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)
    return Raw(f'<div class="svg" role="img" aria-label="{esc(alt)}">{text}</div>')


def image(path, alt, prefix=None):
    """Embed an image file by its type: PNG as a data URI, SVG inline.

    Parameters
    ----------
    path : str or Path
        PNG or SVG file (by suffix).
    alt : str
        Alternative text.
    prefix : str, optional
        Id prefix of an SVG (default: the file name).

    Returns
    -------
    Raw
        The embedded image (see :func:`png_tag`, :func:`svg_inline`).
    """
    path = Path(path)
    if path.suffix.lower() == ".svg":
        return svg_inline(path, prefix or path.stem, alt)
    return png_tag(path, alt)


def figure(fig, alt, fmt="png", dpi=80, prefix=None, close=True):
    """Render a matplotlib figure into the page (and close it).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to render.
    alt : str
        Alternative text.
    fmt : {'png', 'svg'}
        Embedded format.
    dpi : int
        Resolution of a PNG.
    prefix : str, optional
        Id prefix of an SVG (default: the alt text).
    close : bool
        Close the figure afterwards (False to draw it again).

    Returns
    -------
    Raw
        The embedded image.
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        if fmt == "svg":
            fig.savefig(buf, format="svg", metadata={"Date": None})
            return svg_inline(buf.getvalue().decode("utf-8"), prefix or alt, alt)
        fig.savefig(buf, format="png", dpi=dpi)
        return png_tag(buf.getvalue(), alt)
    finally:
        if close:
            plt.close(fig)


def table(rows, header=None, cell_classes=None, numeric=True):
    """An HTML table.

    Parameters
    ----------
    rows : list of list, or pandas.DataFrame
        Cells (escaped unless :class:`Raw`); a DataFrame gives its columns as the header.
    header : list of str, optional
        Column titles.
    cell_classes : list of list of (str or None), optional
        CSS class of each cell (same shape as ``rows``), e.g. ``'flag'``.
    numeric : bool
        Right-align cells holding numbers.

    Returns
    -------
    Raw
        The table, wrapped in a scrolling ``<div>``; floats are rounded for display (NaN as n/a).
    """
    if hasattr(rows, "columns"):
        header = [str(c) for c in rows.columns] if header is None else header
        rows = rows.values.tolist()
    out = ['<div class="scroll"><table>']
    if header:
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cells = []
        for j, value in enumerate(row):
            classes = []
            if cell_classes is not None and cell_classes[i][j]:
                classes.append(cell_classes[i][j])
            if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
                classes.append("num")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{esc(_fmt(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return Raw("".join(out))


def _fmt(value):
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value in (float("inf"), float("-inf")):
            return "∞" if value > 0 else "-∞"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return value


def page(title, body):
    """A complete HTML document.

    Parameters
    ----------
    title : str
        Document title (escaped).
    body : str or Raw or list
        Body content; a list is joined with :func:`join`.

    Returns
    -------
    str
        The document, with the report style sheet inlined.
    """
    if isinstance(body, (list, tuple)):
        body = join(*body)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{esc(body)}\n</body></html>\n")


def write_page(path, title, body):
    """Write a report page atomically (an identical file is left untouched).

    Parameters
    ----------
    path : str or Path
        The HTML file.
    title : str
        Document title.
    body : str or Raw or list
        As for :func:`page`.

    Returns
    -------
    Path
        The written file.
    """
    return write_text(path, page(title, body))
