"""Parts of a report (HTML fragments holding their embedded figures) kept under the key of what they show.

A subject's report is rebuilt whenever any of its inputs changes, e.g. when one contrast is added to the
spec. Drawing is most of its cost (a run's correlation matrix, a contrast's glass brain and slices), so
each part is stored in a folder under a digest of everything it is drawn from (the map's or design's
bytes, thresholds, labels, and the drawing code itself): a rebuild draws only the parts whose material
changed and reads the others back. A part is never stale: different material is a different key. Parts
not used by the latest rebuild are deleted by :meth:`PartCache.prune`, so the folder holds one report's
worth.
"""

import hashlib
import json
import re
from pathlib import Path

from ..io.atomic import write_text
from ..io.parts import code_digest, remove_unused
from .html import Raw

_PART = re.compile(r"^(?P<kind>[a-z]+)-(?P<name>[A-Za-z0-9]+)-(?P<key>[0-9a-f]{40})\.html$")


def _code_digest():
    """The drawing code: the report modules' bytes (a changed figure routine never reuses old parts)."""
    return code_digest(("reports/cache.py", "reports/first_level.py", "reports/html.py", "reports/figures.py"))


def material_digest(material):
    """SHA-1 of a part's material.

    Parameters
    ----------
    material : list
        JSON-able items; ``bytes`` items (array buffers) are hashed as they are.

    Returns
    -------
    str
        40 hex digits.
    """
    h = hashlib.sha1(_code_digest().encode())
    for item in material:
        if isinstance(item, (bytes, bytearray, memoryview)):
            h.update(b"b")
            h.update(bytes(item))
        else:
            h.update(b"j")
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()


class PartCache:
    """Report parts in ``folder``, one file ``<kind>-<name>-<digest>.html`` each.

    Parameters
    ----------
    folder : str or Path or None
        Where parts are kept; None keeps nothing (every part is drawn).

    Attributes
    ----------
    drawn : list of str
        File names of the parts drawn (not read back) since the cache was made.
    used : set of str
        File names of every part asked for.
    """

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder else None
        self.drawn = []
        self.used = set()

    def part(self, kind, name, material, draw):
        """The part for ``material``: read back when kept, else drawn by ``draw()`` and kept.

        Parameters
        ----------
        kind : str
            Lower-case letters: what the part is (``run``, ``contrast``).
        name : str
            Which one (a run or contrast label; other characters are dropped from the file name).
        material : list
            Everything the part is drawn from (see :func:`material_digest`).
        draw : callable
            Returns the part's HTML (str or Raw).

        Returns
        -------
        Raw
            The part's HTML.
        """
        fname = f"{kind}-{re.sub('[^A-Za-z0-9]', '', str(name)) or 'x'}-{material_digest(material)}.html"
        self.used.add(fname)
        if self.folder is not None:
            path = self.folder / fname
            try:
                return Raw(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                pass  # not kept yet, or unreadable: drawn again
        html = Raw(draw())
        self.drawn.append(fname)
        if self.folder is not None:
            write_text(self.folder / fname, str(html))
        return html

    def prune(self):
        """Delete the kept parts that were not asked for since the cache was made.

        Returns
        -------
        list of Path
            The deleted files (only files named like parts are ever deleted).
        """
        return remove_unused(self.folder, self.used, _PART)
