"""The Python facades: ``Subject`` (first level), ``Aggregator`` (first level of a whole dataset),
``GroupLevel`` (second level) and ``RestingState`` (connectivity).

Each one validates the spec, finds the inputs, builds the Nipype workflow and runs it.
"""

__all__ = ["Subject", "Aggregator", "RunReport", "GroupLevel", "RestingState"]

# Imported on first use: the group and connectivity facades pull in scipy, nilearn and matplotlib
# (seconds), which a first-level run, above all a rerun with nothing to do, does not need.
_WHERE = {"Subject": "subject", "Aggregator": "subject", "RunReport": "subject", "GroupLevel": "group",
          "RestingState": "rest"}


def __getattr__(name):
    if name in _WHERE:
        from importlib import import_module

        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
