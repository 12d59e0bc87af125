"""Shared test helpers."""

import os
from pathlib import Path

import pytest


def shared_data_dir():
    """The project's shared real-data folder (``../shared/data`` beside the repository), or None."""
    candidates = [os.environ.get("GLMX_SHARED_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data",
                  "/work/shared/data"]
    for c in candidates:
        if c and (Path(c) / "haxby2001" / "dataset_description.json").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def shared_data():
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder not found: set GLMX_SHARED_DATA to the folder holding haxby2001/")
    return path
