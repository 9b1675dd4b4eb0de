"""The committed regression set (counts cross-checked against d4solver when it was made)."""

import json
import pathlib

import pytest

from respax.sat import count, parse_dimacs

_DATA = json.loads((pathlib.Path(__file__).parent / "data" / "regression.json").read_text())


def test_regression_set_size():
    assert len(_DATA) >= 50


@pytest.mark.parametrize("item", _DATA, ids=[d["name"] for d in _DATA])
def test_regression_count(item):
    info = count(parse_dimacs(item["dimacs"]))
    assert info.status == "ok" and info.count == int(item["count"])
