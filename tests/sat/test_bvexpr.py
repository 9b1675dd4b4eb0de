"""The bv_expr family: counts against evaluating the expression tree on every assignment."""

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from respax.sat import bv_expr, bv_expr_count, count, random_bv_tree


@given(st.integers(3, 8), st.integers(2, 4), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_count_equals_enumeration(size, width, seed):
    inst = bv_expr(size, 4, width, seed=seed)
    info = count(inst.cnf)
    assert info.status == "ok"
    assert info.count == bv_expr_count(size, 4, width, seed=seed)


def test_tree_shape_and_seeding():
    t = random_bv_tree(7, 4, 8, seed=3)
    assert t.op in ("==", "!=", "<", "<=", ">", ">=") and len(t.args) == 2
    assert str(t) == str(random_bv_tree(7, 4, 8, seed=3))
    names = {str(random_bv_tree(7, 4, 8, seed=s)) for s in range(20)}
    assert len(names) > 10
    # each variable word is used at most once
    for s in range(50):
        text = str(random_bv_tree(9, 4, 8, seed=s))
        assert all(text.count(f"x{i}") <= 1 for i in range(4))
    assert bv_expr(5, 4, 8, seed=1).name == "bv_expr(5,4,8)#1"


def test_bad_arguments():
    with pytest.raises(ValueError, match="size must be >= 3"):
        bv_expr(2, 4, 8, seed=0)
    with pytest.raises(ValueError, match="width >= 2"):
        bv_expr(5, 4, 1, seed=0)
    with pytest.raises(ValueError, match="too many to enumerate"):
        bv_expr_count(9, 4, 8, seed=next(s for s in range(100) if str(
            random_bv_tree(9, 4, 8, seed=s)).count("x") == 4))  # fmt: skip
