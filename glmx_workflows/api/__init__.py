"""The Python facades: ``Subject`` (first level), ``Aggregator`` (first level of a whole dataset),
``GroupLevel`` (second level) and ``RestingState`` (connectivity).

Each one validates the spec, finds the inputs, builds the Nipype workflow and runs it.
"""

from .group import GroupLevel
from .rest import RestingState
from .subject import Aggregator, RunReport, Subject

__all__ = ["Subject", "Aggregator", "RunReport", "GroupLevel", "RestingState"]
