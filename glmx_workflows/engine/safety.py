"""Where a run may write: never into an input dataset."""

import os
import tempfile
from pathlib import Path

from ..core.errors import GlmxError


def check_output_dir(output_dir, bids_root):
    """Refuse an OUTPUT_DIR inside the raw dataset (outside derivatives/) or one that cannot be written.

    Parameters
    ----------
    output_dir : str or Path
        OUTPUT_DIR; need not exist yet (its nearest existing parent is probed with a real write).
    bids_root : str or Path
        The raw BIDS dataset.

    Returns
    -------
    Path
        ``output_dir`` resolved.

    Raises
    ------
    GlmxError
        OUTPUT_DIR is the dataset or inside it outside ``derivatives/``, or is not writable.
    """
    out = Path(output_dir).resolve()
    root = Path(bids_root).resolve()
    if out == root or (root in out.parents and (root / "derivatives") not in [out, *out.parents]):
        raise GlmxError("output directory is inside the raw BIDS dataset; choose a folder outside it or under "
                        f"{root / 'derivatives'}", file=out, field="OUTPUT_DIR")
    probe = out
    while not probe.exists():
        probe = probe.parent
    # os.access says yes to root everywhere; only a real write answers (read-only mounts, /proc, quotas)
    try:
        if not probe.is_dir():
            raise OSError("not a directory")
        fd, tmp = tempfile.mkstemp(prefix=".glmx-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise GlmxError(f"output directory is not writable ({exc.strerror or exc})", file=probe,
                        field="OUTPUT_DIR") from None
    return out
