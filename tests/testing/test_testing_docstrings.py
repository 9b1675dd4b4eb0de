"""The examples in the docstrings of `respax.testing` run and give what they show."""

import doctest
import importlib

import pytest

MODULES = ["_dense", "_finite_differences", "_strategies", "_trees"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"respax.testing.{name}")
    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0, f"no examples in {module.__name__}"
    assert results.failed == 0, f"{results.failed} docstring examples of {module.__name__} failed"
