"""The counter against brute force (hypothesis), bignum counts, limits, the policy path."""

import hypothesis.strategies as st
import jaxtyping
import numpy as np
import pytest
from hypothesis import given, settings

from respax.sat import CNF, brute_force_count, count


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    """Compile the numba core once for this module (the first call pays it)."""
    count(CNF.from_clauses([[1, 2]]))


@st.composite
def small_cnfs(draw, max_vars=10, max_clauses=30):
    n = draw(st.integers(0, max_vars))
    if n == 0:
        return CNF.from_clauses([], num_vars=0)
    lit = st.integers(1, n).flatmap(lambda v: st.sampled_from([v, -v]))
    clauses = draw(st.lists(st.lists(lit, min_size=1, max_size=4), max_size=max_clauses))
    return CNF.from_clauses(clauses, num_vars=n)


@given(small_cnfs())
@settings(max_examples=150)
def test_count_equals_brute_force(cnf):
    info = count(cnf)
    assert info.status == "ok"
    assert info.count == brute_force_count(cnf)


@given(small_cnfs(), st.sampled_from(["td", "policy"]))
@settings(max_examples=15)
def test_other_branchings_equal_brute_force(cnf, how):
    if how == "policy":

        def first_var_negative(view):
            return -int(view.variables[0])

        info = count(cnf, branching=first_var_negative, policy_min_vars=1)
        assert info.policy_calls == info.decisions
    else:
        info = count(cnf, branching="td")
    assert info.count == brute_force_count(cnf)


def test_empty_clause_counts_zero():
    assert count(CNF.from_clauses([[1, 2], []], num_vars=2)).count == 0


def test_count_above_two_to_the_64():
    """Disjoint copies of a small formula: count = c**k > 2**64, c from brute force."""
    base = [[1, 2, -3], [-1, 3], [2, 4], [-2, -4, 5]]
    c = brute_force_count(CNF.from_clauses(base, num_vars=5))
    k = 40
    clauses = [[np.sign(x) * (abs(x) + 5 * i) for x in cl] for i in range(k) for cl in base]
    f = CNF.from_clauses([[int(x) for x in cl] for cl in clauses], num_vars=5 * k + 3)
    expected = c**k * 2**3
    assert expected > 2**64
    assert count(f).count == expected


def test_limits_are_reported_as_status():
    rng = np.random.default_rng(1)
    clauses = [
        [int(v) * int(rng.choice([-1, 1])) for v in rng.choice(60, 3, False) + 1]
        for _ in range(180)
    ]
    f = CNF.from_clauses(clauses, num_vars=60)
    info = count(f, max_decisions=5)
    assert (info.status, info.count, info.decisions) == ("decision_limit", None, 5)
    info = count(f, max_seconds=0.0)
    assert info.status in ("time_limit", "ok")
    assert info.status == "ok" or info.count is None
    full = count(f)
    assert full.status == "ok" and full.count > 0


def test_tiny_cache_is_still_exact():
    rng = np.random.default_rng(2)
    clauses = [
        [int(v) * int(rng.choice([-1, 1])) for v in rng.choice(18, 3, False) + 1] for _ in range(40)
    ]
    f = CNF.from_clauses(clauses, num_vars=18)
    info = count(f, cache_mb=0.001)
    assert info.count == brute_force_count(f)


def test_bad_arguments():
    f = CNF.from_clauses([[1]])
    with pytest.raises((TypeError, jaxtyping.TypeCheckError)):
        count([[1]])
    with pytest.raises(ValueError, match="branching"):
        count(f, branching="nope")
    with pytest.raises(TypeError, match="probing"):
        count(f, probing=1)
    with pytest.raises(ValueError, match="max_decisions"):
        count(f, max_decisions=-1)
    with pytest.raises(ValueError, match="variable_bias"):
        count(f, variable_bias=np.zeros(3))
    with pytest.raises(ValueError, match="not a literal"):
        count(CNF.from_clauses([[1, 2]]), branching=lambda v: 7, policy_min_vars=1)


def test_read_only_install_warns_and_compiles_in_memory(monkeypatch):
    """No writable numba cache directory: a warning, then the kernel still runs (uncached)."""
    import numba.core.config

    from respax.sat import _core

    monkeypatch.setattr(numba.core.config, "CACHE_LOCATOR_CLASSES", "ZipCacheLocator")
    monkeypatch.setattr(_core, "_CACHE_WARNED", [False])

    def add_one(x):
        return x + 1

    with pytest.warns(RuntimeWarning, match="no writable cache directory"):
        kernel = _core._njit(add_one)
    assert kernel(2) == 3 and type(kernel._cache).__name__ == "NullCache"


def _blocks_formula(rng):
    """2-3 dense random blocks of 3-6 variables joined by 1-3 random 3-clauses: conflicts (clause
    learning) and components of which one is unsatisfiable (cache invalidation) are frequent."""
    sizes = rng.integers(3, 7, int(rng.integers(2, 4)))
    off = np.concatenate([[0], np.cumsum(sizes)])
    n = int(off[-1])
    clauses = []
    for b in range(sizes.size):
        vs = np.arange(off[b], off[b + 1]) + 1
        for _ in range(int(rng.integers(2, 4 * sizes[b]))):
            k = min(int(rng.integers(2, 4)), vs.size)
            clauses.append([int(v) * int(rng.choice([-1, 1])) for v in rng.choice(vs, k, False)])
    for _ in range(int(rng.integers(1, 4))):
        clauses.append([int(v) * int(rng.choice([-1, 1])) for v in rng.choice(n, 3, False) + 1])
    return CNF.from_clauses(clauses, num_vars=n)


@given(st.integers(0, 2**32 - 1), st.sampled_from([64.0, 0.001]), st.booleans(), st.booleans())
@settings(max_examples=80)
def test_learning_on_joined_blocks_equals_brute_force(seed, cache_mb, probing, backjumping):
    f = _blocks_formula(np.random.default_rng(seed))
    info = count(f, cache_mb=cache_mb, probing=probing, backjumping=backjumping)
    assert info.count == brute_force_count(f)
    assert backjumping or info.backjumps == 0
    assert info.learned_clauses <= info.conflicts + info.failed_literals
    assert probing or info.failed_literals == 0


@pytest.mark.parametrize("seed", [4, 73, 238])
def test_cache_invalidation_path_is_exact(seed):
    """Seeds where a component turned out unsatisfiable next to a counted sibling, so cache
    entries were invalidated (the Cachet rule); counts still equal brute force."""
    f = _blocks_formula(np.random.default_rng(seed))
    for cache_mb in (64.0, 0.001):
        info = count(f, cache_mb=cache_mb, backjumping=False)  # (the seeds were found so)
        assert info.cache_invalidations > 0 and info.learned_clauses > 0
        assert info.count == brute_force_count(f)


@pytest.mark.parametrize("seed", [42, 65, 6])
def test_backjumps_keep_counts_exact(seed):
    """Random 3-CNF seeds where conflict-directed backjumps happen (two satisfiable with 13 and
    11 models, one unsatisfiable): equal to brute force with and without backjumping."""
    from respax.sat import random_kcnf

    f = random_kcnf(3, 16, 72, seed=seed).cnf if seed != 6 else random_kcnf(3, 14, 70, seed=6).cnf
    ref = brute_force_count(f)
    on = count(f)
    assert on.backjumps > 0 and on.count == ref
    assert count(f, backjumping=False).count == ref


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 3]),
    st.sampled_from([64.0, 0.001]),
    st.booleans(),
    st.booleans(),
)
@settings(max_examples=80)
def test_clause_deletion_keeps_counts_exact(seed, interval, cache_mb, probing, backjumping):
    """A reduction of the learned clauses after every 1 or 3 learned clauses (the default waits
    for 10,000): ids remapped in reasons, backjump clauses and watch lists must stay right."""
    f = _blocks_formula(np.random.default_rng(seed))
    info = count(
        f,
        cache_mb=cache_mb,
        probing=probing,
        backjumping=backjumping,
        clause_deletion_interval=interval,
    )
    assert info.count == brute_force_count(f)
    assert info.deleted_clauses <= info.learned_clauses


@pytest.mark.parametrize("probing", [False, True])
def test_clause_deletion_happens_and_is_exact(probing):
    """Random 3-CNF with many conflicts and an interval of 2: deletions do happen (the test is
    not vacuous), and every count equals brute force and the run without deletion."""
    from respax.sat import random_kcnf

    deleted = 0
    for seed in range(12):
        f = random_kcnf(3, 18, 70, seed=seed).cnf
        ref = brute_force_count(f)
        info = count(f, probing=probing, clause_deletion_interval=2)
        keep = count(f, probing=probing, clause_deletion_interval=None)
        assert info.count == keep.count == ref
        assert keep.deleted_clauses == 0 and keep.clause_reductions == 0
        deleted += info.deleted_clauses
    assert deleted > 0


def test_full_learned_pool_triggers_deletion(monkeypatch):
    """A learned pool of 6 clauses: it fills, a reduction runs at the next decision and learning
    goes on (more clauses learned than fit); without deletion learning stops at the capacity."""
    from respax.sat import _counter, random_kcnf

    monkeypatch.setattr(_counter, "_MAX_LEARNED", 6)
    monkeypatch.setattr(_counter, "_LEARNED_LITS", 200)
    deleted = 0
    for seed in range(8):
        f = random_kcnf(3, 18, 70, seed=seed).cnf
        ref = brute_force_count(f)
        info = count(f)
        assert info.count == ref
        deleted += info.deleted_clauses
        off = count(f, clause_deletion_interval=None)
        assert off.count == ref and off.learned_clauses <= 6
    assert deleted > 0


def test_clause_deletion_with_a_policy_keeps_counts_exact():
    """The Python policy driver calls `note_decision` too (a reduction can run there)."""
    from respax.sat import random_kcnf

    def first_var(view):
        return int(view.variables[0])

    deleted = 0
    for seed in range(6):
        f = random_kcnf(3, 16, 66, seed=seed).cnf
        info = count(f, branching=first_var, policy_min_vars=8, clause_deletion_interval=1)
        assert info.count == brute_force_count(f)
        deleted += info.deleted_clauses
    assert deleted > 0


def test_bad_clause_deletion_interval():
    f = CNF.from_clauses([[1, 2]])
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="clause_deletion_interval"):
            count(f, clause_deletion_interval=bad)
    for bad in (1.5, "10"):  # (the test suite's runtime type checker may answer first)
        with pytest.raises(
            (ValueError, jaxtyping.TypeCheckError), match="clause_deletion_interval"
        ):
            count(f, clause_deletion_interval=bad)
    assert count(f, clause_deletion_interval=None).count == 3
