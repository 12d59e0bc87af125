"""Public functions, classes and methods of the documented modules have numpydoc docstrings (issue #8).

Every module of the package is imported (so a module that no longer imports fails here too); the objects
checked are those defined in DOCUMENTED files: a docstring, a ``Parameters`` section when they take
arguments, a ``Returns`` (or ``Yields``) section when their body returns a value.
"""

import ast
import importlib
import inspect
import pkgutil
import textwrap
from pathlib import Path

import pytest

import glmx_workflows

PACKAGE_DIR = Path(glmx_workflows.__file__).resolve().parent

DOCUMENTED = [
    "planning.py", "spec/model.py", "spec/keys.py", "io/bids.py", "io/derivatives.py", "io/tables.py",
    "io/atomic.py", "io/example.py", "core/formula.py", "core/events.py", "core/confounds.py",
    "core/errors.py", "api/subject.py", "api/dataset.py", "api/group.py", "cli/group.py", "engine/run.py", "engine/crashes.py", "engine/cluster.py",
    "engine/progress.py", "engine/state.py", "engine/dataset.py", "engine/safety.py", "io/lock.py",
    "workflows/first_level.py", "workflows/group_level.py", "workflows/rest.py", "interfaces/events.py",
    "interfaces/confounds.py", "interfaces/design.py", "interfaces/sink.py", "interfaces/report.py",
    "interfaces/group.py", "interfaces/connectivity.py", "reports/figures.py", "reports/index.py",
    "reports/html.py", "reports/group.py", "reports/rest.py", "cli/run.py", "cli/rest.py", "api/rest.py",
    "core/group.py", "core/tfce.py", "core/connectivity.py", "io/atlases.py", "io/group_inputs.py",
    "io/example_rest.py", "interfaces/glm.py",
    "core/glm.py", "core/design.py", "core/timing.py", "core/clusters.py", "core/signal.py", "core/smoothing.py", "io/images.py", "io/fastread.py", "core/glm_reference.py", "core/simulate.py", "spec/group_keys.py", "reports/first_level.py",
    "core/single_trial.py", "interfaces/single_trial.py",
    "bsm.py", "spec/bsm.py", "io/parts.py", "cli/outcome.py",
]


def _all_modules():
    mods = {}
    for info in pkgutil.walk_packages(glmx_workflows.__path__, prefix="glmx_workflows."):
        mods[info.name] = importlib.import_module(info.name)
    return mods


def _returns_value(func):
    """True when the function's own body (not a nested def or lambda) has ``return <expr>``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return False
    top = tree.body[0]
    stack = list(top.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _params(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")]


def _nipype_kind(obj):
    """``"interface"``, ``"spec"`` or None: Nipype classes document their parameters as traits."""
    if not inspect.isclass(obj):
        return None
    from nipype.interfaces.base import BaseInterface, BaseTraitedSpec
    if issubclass(obj, BaseInterface):
        return "interface"
    if issubclass(obj, BaseTraitedSpec):
        return "spec"
    return None


def _undescribed_traits(spec_class):
    """Names of the traits a spec class adds (not Nipype's own) that have no ``desc=``."""
    from nipype.interfaces.base import BaseInterfaceInputSpec, TraitedSpec
    inherited = set(BaseInterfaceInputSpec().trait_names()) | set(TraitedSpec().trait_names())
    spec = spec_class()
    return [name for name in spec.trait_names()
            if name not in inherited and not name.startswith("trait_")
            and not (spec.trait(name).desc or "").strip()]


def problems_of(obj, what):
    """Missing parts of one object's docstring, as messages."""
    doc = inspect.getdoc(obj) if obj.__doc__ else ""
    if not doc or not doc.strip():
        return [f"{what}: no docstring"]
    kind = _nipype_kind(obj)
    if kind is not None:
        # a Nipype interface's parameters are its input traits, documented by desc=; a spec class's
        # traits are documented the same way
        spec = obj.input_spec if kind == "interface" else obj
        missing = _undescribed_traits(spec) if spec is not None else []
        if kind == "interface" and obj.output_spec is not None:
            missing += _undescribed_traits(obj.output_spec)
        return [f"{what}: trait {name} has no desc" for name in missing]
    out = []
    if _params(obj) and "Parameters\n----------" not in doc:
        out.append(f"{what}: takes {', '.join(_params(obj))} but has no Parameters section")
    if inspect.isfunction(obj) and _returns_value(obj) and not any(
            f"{s}\n{'-' * len(s)}" in doc for s in ("Returns", "Yields")):
        out.append(f"{what}: returns a value but has no Returns section")
    return out


def _public_objects(module, path):
    """(qualified name, object) of public functions, classes and methods defined in ``path``."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        # unwrap decorated functions (contextmanager) to find the file they were written in
        if Path(inspect.getsourcefile(inspect.unwrap(obj))).resolve() != path:
            continue
        yield name, obj
        if inspect.isclass(obj):
            for mname, member in vars(obj).items():
                if mname.startswith("_") or isinstance(member, property):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member):
                    yield f"{name}.{mname}", member


@pytest.fixture(scope="module")
def modules():
    return _all_modules()


def test_every_module_imports_and_documented_files_are_modules(modules):
    files = {Path(m.__file__).resolve() for m in modules.values()}
    missing = [f for f in DOCUMENTED if (PACKAGE_DIR / f).resolve() not in files]
    assert not missing, f"documented files that are not imported modules: {missing}"


@pytest.mark.parametrize("relpath", DOCUMENTED)
def test_public_api_has_numpydoc_docstrings(modules, relpath):
    path = (PACKAGE_DIR / relpath).resolve()
    module = next(m for m in modules.values() if Path(m.__file__).resolve() == path)
    checked = list(_public_objects(module, path))
    assert checked, f"no public function or class found in {relpath}"
    found = [msg for name, obj in checked for msg in problems_of(obj, f"{relpath}:{name}")]
    assert not found, "\n".join(found)


def test_checker_flags_what_it_should():
    # the checker itself: each of these must be reported, else the test above could pass on anything
    def no_doc(x):
        return x

    def no_params(x):
        """Summary.

        Returns
        -------
        int
            x.
        """
        return x

    def no_returns(x):
        """Summary.

        Parameters
        ----------
        x : int
            A value.
        """
        return x + 1

    def nested_return_only(x):
        """Summary.

        Parameters
        ----------
        x : int
            A value.
        """
        def inner():
            return x

        inner()

    class Undocumented:
        def __init__(self, a):
            self.a = a

    assert problems_of(no_doc, "f") == ["f: no docstring"]
    assert "no Parameters section" in problems_of(no_params, "f")[0]
    assert "no Returns section" in problems_of(no_returns, "f")[0]
    assert problems_of(nested_return_only, "f") == []
    assert problems_of(Undocumented, "C") == ["C: no docstring"]
    assert _returns_value(no_doc) and not _returns_value(nested_return_only)


def test_checker_judges_nipype_classes_by_their_traits():
    from nipype.interfaces.base import BaseInterfaceInputSpec, SimpleInterface, TraitedSpec, traits

    class InSpec(BaseInterfaceInputSpec):
        """Inputs."""
        described = traits.Int(desc="a described input")
        bare = traits.Int()

    class OutSpec(TraitedSpec):
        """Outputs."""
        out = traits.Int(desc="a described output")

    class Iface(SimpleInterface):
        """An interface."""
        input_spec = InSpec
        output_spec = OutSpec

    class Undocumented(SimpleInterface):
        input_spec = InSpec

    assert problems_of(OutSpec, "S") == []
    assert problems_of(InSpec, "S") == ["S: trait bare has no desc"]
    assert problems_of(Iface, "I") == ["I: trait bare has no desc"]
    assert problems_of(Undocumented, "I") == ["I: no docstring"]
