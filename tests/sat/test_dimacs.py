"""DIMACS parsing and writing."""

import warnings

import pytest

from respax.sat import CNF, format_dimacs, parse_dimacs, read_dimacs, write_dimacs


def test_round_trip(tmp_path):
    f = CNF.from_clauses([[1, -2], [3], [-1, 2, 3]], num_vars=5)
    write_dimacs(f, tmp_path / "f.cnf", comments=["hello"])
    g = read_dimacs(tmp_path / "f.cnf")
    assert g.num_vars == 5 and g.clauses() == f.clauses()
    assert parse_dimacs(format_dimacs(f)).clauses() == f.clauses()


def test_multiline_clauses_comments_and_percent():
    text = "c hi\np cnf 3 2\n1 -2\n 3 0 -1\n0\n%\n0\n"
    assert parse_dimacs(text).clauses() == [(1, -2, 3), (-1,)]


def test_projection_lines_warn():
    with pytest.warns(UserWarning, match="c p show"):
        f = parse_dimacs("p cnf 2 1\nc p show 1 0\n1 2 0\n")
    assert f.num_clauses == 1


@pytest.mark.parametrize(
    "text, match",
    [
        ("1 2 0\n", "line 1: clause before"),
        ("p cnf 2\n1 0\n", "line 1: header must be"),
        ("p cnf x 1\n", "line 1: header counts"),
        ("p cnf 2 1\n1 3 0\n", "line 2: literal 3 is beyond"),
        ("p cnf 2 1\n1 a 0\n", "line 2: 'a' is not an integer"),
        ("p cnf 2 2\n1 0\n", "line 1: the header says 2 clauses, found 1"),
        ("p cnf 2 1\n1 2\n", "line 2: the last clause is not terminated"),
        ("p cnf 2 1\np cnf 2 1\n", "line 2: second 'p' header"),
        ("c nothing\n", "no 'p cnf"),
    ],
)
def test_malformed(text, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match):
            parse_dimacs(text)


def test_cnf_validation():
    with pytest.raises(ValueError, match="literal 4"):
        CNF.from_clauses([[4]], num_vars=3)
    with pytest.raises(ValueError, match="nonzero"):
        CNF.from_clauses([[0]])
    with pytest.raises(TypeError, match="num_vars"):
        CNF(1.5, [], [0])
