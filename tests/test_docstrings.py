"""Every example in a respax docstring runs and prints what it says (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import respax


def _modules():
    names = []
    for info in pkgutil.walk_packages(respax.__path__, prefix="respax."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"
