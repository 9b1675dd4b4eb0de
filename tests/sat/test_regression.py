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


def test_regression_counts_with_probing():
    """Failed-literal probing (off by default) keeps every committed count."""
    for item in _DATA:
        info = count(parse_dimacs(item["dimacs"]), probing=True)
        assert info.status == "ok" and info.count == int(item["count"]), item["name"]


def test_cnfgen_rand75_seed75300():
    """cnfgen's RandomKCNF(3, 75, 225, seed=75300) (the file sharpSAT's 33,581 decisions refer
    to; generated once with cnfgen 0.9.6, count checked against d4solver)."""
    from respax.sat import read_dimacs

    path = pathlib.Path(__file__).parent / "data" / "cnfgen_rand75_seed75300.cnf"
    info = count(read_dimacs(path))
    assert info.count == 270_970_663


def test_regression_counts_with_frequent_clause_deletion():
    """A reduction of the learned clauses after every 2 learned ones (default 10,000), with and
    without probing: every committed count is kept, and clauses were deleted."""
    deleted = 0
    for probing in (False, True):
        for item in _DATA:
            info = count(parse_dimacs(item["dimacs"]), probing=probing, clause_deletion_interval=2)
            assert info.status == "ok" and info.count == int(item["count"]), item["name"]
            deleted += info.deleted_clauses
    assert deleted > 0


def test_cnfgen_rand75_seed75300_with_clause_deletion():
    from respax.sat import read_dimacs

    path = pathlib.Path(__file__).parent / "data" / "cnfgen_rand75_seed75300.cnf"
    info = count(read_dimacs(path), clause_deletion_interval=50)
    assert info.count == 270_970_663 and info.deleted_clauses > 0
