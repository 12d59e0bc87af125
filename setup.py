"""Metadata lives in setup.cfg; this file adds the compiled REML kernel of core.mixed.

The extension is optional: without a C compiler the install still succeeds and core.mixed uses its numpy
path (the same steps, 2.6x slower; see README.rst, "Mixed effects").
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("glmx_workflows.core._reml", ["glmx_workflows/core/_reml.c"], optional=True)])
