"""BIDS TSV tables: reading with errors that name the file, writing atomically."""

from pathlib import Path

import pandas as pd

from ..core.errors import GlmxError
from .atomic import atomic_path


def read_tsv(path, what="table"):
    """Read a BIDS TSV (tab-separated, ``n/a`` for missing values).

    Parameters
    ----------
    path : str or Path
        The TSV file.
    what : str
        What the file is, for messages ("events file", "confounds file").

    Returns
    -------
    pandas.DataFrame
        The table, column names stripped, ``n/a`` (and empty cells) as NaN.

    Raises
    ------
    GlmxError
        The file is missing, empty or not a readable tab-separated table.
    """
    path = Path(path)
    if not path.is_file():
        raise GlmxError(f"{what} not found", file=path)
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a", "N/A", "NaN", "nan", ""], keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise GlmxError(f"{what} is empty; expected a header row and data rows", file=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise GlmxError(f"{what} is not a readable tab-separated table ({str(exc).splitlines()[0]})",
                        file=path) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def write_tsv(frame, path, index=False):
    """Write a DataFrame as a BIDS TSV (``n/a`` for missing), atomically.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table.
    path : str or Path
        Target file; folders are created.
    index : bool, optional
        Write the index as the first column.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=index, na_rep="n/a")
    return Path(path)
