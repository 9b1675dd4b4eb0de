"""One meaning per public name: a name exported by two respax packages is the same object.

A shared name is re-exported from one place (`respax.curvature.hutchinson_trace is
respax.core.hutchinson_trace`), or the names differ. This binds every package, including those
still to come: the test discovers them under the `respax` namespace.
"""

import importlib
import pkgutil
import types

import respax


def _packages():
    names = sorted(m.name for m in pkgutil.iter_modules(respax.__path__, "respax."))
    return {name: importlib.import_module(name) for name in names}


def _public(module):
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names if not n.startswith("_")}


def test_every_package_is_discovered():
    found = set(_packages())
    assert {"respax.core", "respax.curvature", "respax.implicit_diff", "respax.interp"} <= found


def test_a_public_name_means_one_object_across_packages():
    owners: dict[str, tuple[str, object]] = {}
    clashes = []
    for package, module in _packages().items():
        for name, obj in _public(module).items():
            if isinstance(obj, types.ModuleType):
                continue  # submodules (e.g. `interp.superposition`) are namespaces, not names
            if name in owners and owners[name][1] is not obj:
                clashes.append(f"{name}: {owners[name][0]} and {package}")
            owners.setdefault(name, (package, obj))
    assert not clashes, "public names bound to different objects:\n" + "\n".join(clashes)
