"""Metadata lives in setup.cfg; this file adds the compiled REML kernel of core.mixed.

The extension is optional: without a C compiler the install still succeeds and core.mixed uses its numpy
path (the same steps, 2.6x slower; see README.rst, "Mixed effects"). The build records the SHA-256 of its
source, which tests/test_group_mixed.py compares with the file to catch a stale build.
"""
import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "glmx_workflows/core/_reml.c"
DIGEST = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("glmx_workflows.core._reml", [SOURCE], optional=True,
                             define_macros=[("GLMX_REML_SOURCE_SHA256", f'"{DIGEST}"')])])
