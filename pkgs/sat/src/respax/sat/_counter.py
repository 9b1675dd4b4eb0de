"""`count`: the exact model counter (compiled search, Python-int counts, limits as status)."""

import dataclasses
import sys
import time
from collections.abc import Callable

import numpy as np
from jaxtyping import Float, Int

from . import _core as core
from ._cnf import CNF

#: Run statuses: "ok" (the count is exact), "decision_limit", "time_limit" (count is None).
STATUSES = ("ok", "decision_limit", "time_limit")


@dataclasses.dataclass(frozen=True)
class CountInfo:
    """The result of one `count` run.

    Attributes:
        count: the exact number of models (a Python int), or None when a limit stopped the run.
        status: "ok", "decision_limit" or "time_limit".
        decisions: branching decisions (sharpSAT's `num_decisions_`; each branch variable once).
        conflicts: propagation conflicts.
        cache_hits: components answered by the exact component cache.
        cache_stores: components stored in the cache.
        cache_clears: times the cache was full and emptied.
        propagations: literals propagated.
        policy_calls: calls of a Python branching policy (0 for VSADS / TD).
        seconds: wall-clock of the search (excluding the first-call numba compile, which `count`
            triggers on a 1-variable formula before timing).
        learned_clauses: 1-UIP clauses learned at conflicts (deleted ones included).
        cache_invalidations: cache entries removed because a sibling component turned out
            unsatisfiable (see `respax.sat._core`).
        failed_literals: literals found failed by probing (`probing=True`).
        backjumps: non-chronological backjumps (`backjumping=True`).
        deleted_clauses: learned clauses deleted by the reductions of the learned-clause
            database (see `clause_deletion_interval` of `count`).
        clause_reductions: reductions of the learned-clause database.

    Example:
        >>> info = count(CNF.from_clauses([[1, 2]]))
        >>> info.count, info.status
        (3, 'ok')
    """

    count: int | None
    status: str
    decisions: int
    conflicts: int
    cache_hits: int
    cache_stores: int
    cache_clears: int
    propagations: int
    policy_calls: int
    seconds: float
    learned_clauses: int = 0
    cache_invalidations: int = 0
    failed_literals: int = 0
    backjumps: int = 0
    deleted_clauses: int = 0
    clause_reductions: int = 0


@dataclasses.dataclass(frozen=True)
class ComponentView:
    """What a branching policy sees of the current component.

    Attributes:
        variables: the component's unassigned variables, 1-based (int32, in search order).
        edge_literal: per incidence edge, the component-local literal index `2*i + (negative)` of
            `variables[i]` (only unassigned literals of active clauses).
        edge_clause: per incidence edge, the component-local clause index.
        num_clauses: active clauses of the component.
        vsads: the VSADS score of each variable.
        activity: literal activities, shape (len(variables), 2) (positive, negative).
    """

    variables: Int[np.ndarray, " k"]
    edge_literal: Int[np.ndarray, " e"]
    edge_clause: Int[np.ndarray, " e"]
    num_clauses: int
    vsads: Float[np.ndarray, " k"]
    activity: Float[np.ndarray, "k 2"]


#: A branching policy: gets the component, returns a DIMACS literal of one of its variables, or
#: 0 to let VSADS choose.
BranchingPolicy = Callable[[ComponentView], int]


def _prepare(cnf: CNF, bias, polarity, cache_mb: float, deletion_interval: int | None = None):
    """Normalised clauses (duplicates removed, tautologies dropped) and the numba state."""
    n = cnf.num_vars
    lits = cnf.literals.astype(np.int64)
    offs = cnf.offsets
    enc = 2 * (np.abs(lits) - 1) + (lits < 0)
    # vectorised per clause: sort its literals, drop repeats, drop tautologies (x and -x)
    total = cnf.num_clauses
    cid = np.repeat(np.arange(total), np.diff(offs))
    order = np.lexsort((enc, cid))
    e, c = enc[order], cid[order]
    fresh = np.ones(e.size, bool)
    fresh[1:] = (c[1:] != c[:-1]) | (e[1:] != e[:-1])
    e, c = e[fresh], c[fresh]
    taut = np.zeros(total, bool)
    clash = (c[1:] == c[:-1]) & ((e[1:] >> 1) == (e[:-1] >> 1))
    taut[c[1:][clash]] = True
    size = np.bincount(c, minlength=total)
    empty = bool(np.any(size == 0))
    units = e[(size[c] == 1) & ~taut[c]].tolist()
    is_long = (size > 1) & ~taut
    m = int(is_long.sum())
    sizes = size[is_long].astype(np.int64)
    cl_start = np.zeros(m + 1, np.int64)
    cl_start[1:] = np.cumsum(sizes)
    cl_lits = e[is_long[c]].astype(np.int32)
    owner = np.repeat(np.arange(m, dtype=np.int32), sizes)
    var_of = cl_lits >> 1
    order = np.argsort(var_of, kind="stable")
    vocc = owner[order].astype(np.int32)
    vocc_start = np.zeros(n + 1, np.int64)
    vocc_start[1:] = np.cumsum(np.bincount(var_of, minlength=n))
    lit_count = np.bincount(cl_lits, minlength=2 * n).astype(np.int64)
    # room for learned clauses (np.empty: pages are only touched when used)
    max_cls = m + _MAX_LEARNED
    pool = np.empty(cl_lits.size + _LEARNED_LITS, np.int32)
    pool[: cl_lits.size] = cl_lits
    starts = np.empty(max_cls + 1, np.int64)
    starts[: m + 1] = cl_start
    cl_act = np.zeros(max_cls + 1, np.float64)
    cl_act[-1] = 1.0  # the clause-activity bump
    unit_count = np.bincount(np.array(units, np.int64), minlength=2 * n) if units else 0
    act = (lit_count + unit_count).astype(np.float64)
    nbytes = int(cache_mb * 2**20)
    table = 1 << max(10, int(np.log2(max(nbytes * 0.15 / 24, 1))))
    ctr = np.zeros(core.NCTR, np.int64)
    ctr[core.MAX_DEC] = -1
    ctr[core.DEADLINE] = -1
    ctr[core.LIMBS] = n // 32 + 2
    ctr[core.NCL] = m
    ctr[core.M_ORIG] = m
    ctr[core.JUMP] = -1
    ctr[core.LIT_USED] = cl_lits.size
    ctr[core.DEL_INTERVAL] = -1 if deletion_interval is None else deletion_interval
    ctr[core.DEL_NEXT] = ctr[core.DEL_INTERVAL]
    st = core.State(
        cl_lits=pool,
        cl_start=starts,
        cl_act=cl_act,
        vocc_start=vocc_start,
        vocc=vocc,
        w_head=np.full(max(2 * n, 1), -1, np.int32),
        w_next=np.empty(2 * max_cls, np.int32),
        val=np.full(n, -1, np.int8),
        level=np.zeros(n, np.int32),
        reason=np.full(n, -1, np.int32),
        tpos=np.zeros(n, np.int32),
        seen=np.zeros(n, np.int64),
        lbuf=np.zeros(max(n, 1), np.int32),
        lstamp=np.zeros(max(2 * n, 1), np.int64),
        tbuf=np.zeros(max(2 * n, 1), np.int32),
        jbuf=np.zeros(max(n, 1), np.int32),
        trail=np.zeros(max(n, 1), np.int32),
        act=act,
        bias=np.zeros(n) if bias is None else np.asarray(bias, np.float64).copy(),
        pol=np.full(n, -1, np.int8) if polarity is None else np.asarray(polarity, np.int8).copy(),
        vstamp=np.zeros(n, np.int64),
        cstamp=np.zeros(max(m, 1), np.int64),
        freq=np.zeros(n, np.int64),
        ctr=ctr,
        tab_off=np.full(table, -1, np.int64),
        tab_cnt=np.zeros(table, np.int64),
        tab_hash=np.zeros(table, np.uint64),
        tab_order=np.zeros(table, np.int64),
        keys=np.empty(max(int(nbytes * 0.6 / 4), 1024), np.int32),
        cnts=np.empty(max(int(nbytes * 0.25 / 8), 1024), np.uint64),
        clock=np.zeros(2, np.int64),
    )
    core.init_watches(st)
    return st, np.array(units, np.int32), empty


#: Capacity for learned clauses per run (clauses, literals); when full, a reduction of the learned
#: clauses is due at the next decision (learning stops until then, and for good when
#: `clause_deletion_interval=None`).
_MAX_LEARNED = 1 << 18
_LEARNED_LITS = 1 << 22


def _to_int(limbs: np.ndarray) -> int:
    return sum(int(x) << (32 * i) for i, x in enumerate(limbs.tolist()) if x)


def _to_limbs(x: int, size: int) -> np.ndarray:
    out = np.zeros(size, np.uint64)
    i = 0
    while x:
        out[i] = x & 0xFFFFFFFF
        x >>= 32
        i += 1
    return out


def _check_limit(name, x, kind):
    if x is None:
        return
    if isinstance(x, bool) or not isinstance(x, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number or None, got {type(x).__name__}")
    if kind is int and x != int(x) or x < 0:
        raise ValueError(f"{name} must be a non-negative {kind.__name__}, got {x!r}")


def count(
    cnf: CNF,
    *,
    branching: str | BranchingPolicy = "vsads",
    variable_bias: Float[np.ndarray, " n"] | None = None,
    polarity: Int[np.ndarray, " n"] | None = None,
    policy_min_vars: int = 64,
    max_decisions: int | None = None,
    max_seconds: float | None = None,
    cache_mb: float = 64.0,
    probing: bool = False,
    backjumping: bool = True,
    clause_deletion_interval: int | None = 10_000,
) -> CountInfo:
    """Count the models of `cnf` exactly (#SAT), sharpSAT-style.

    The search (unit propagation with two watched literals, 1-UIP clause learning at conflicts,
    connected components of the residual formula, an exact component cache keyed by the
    component's variable and original-clause ids) runs in numba-compiled code. Counts are
    multi-limb integers inside and a Python int here.

    Args:
        cnf: the formula.
        branching: "vsads" (sharpSAT's score), "td" (sharpSAT-TD's tree-decomposition-weighted
            score, see `td_bias`), or a `BranchingPolicy` callable queried from Python on every
            component with at least `policy_min_vars` variables (smaller ones use VSADS in the
            compiled core, with `variable_bias`).
        variable_bias: per-variable number added to the VSADS score (0-based variables), e.g. a
            learned policy's scores computed once for the whole formula.
        polarity: per variable, 1 to branch on the positive literal first, 0 negative, -1 by
            activity (sharpSAT).
        policy_min_vars: the component size from which a callable `branching` is queried.
        max_decisions: stop with status "decision_limit" after this many decisions.
        max_seconds: stop with status "time_limit" after this many seconds of search.
        cache_mb: size of the component cache; when full it is emptied (slower, never wrong).
        probing: sharpSAT's "implicit BCP" after every branch (failed-literal probing of the
            most active candidate literals; a failed literal's 1-UIP clause is learned and its
            asserting literal set). Off by default: on random 3-CNF and grid colouring it cost
            more decisions than it saved (benchmarks/RESULTS.md); on pigeonhole it saves ~2.4x.
        backjumping: conflict-directed backjumping when both branches of a decision fail in
            propagation: the two conflicts resolved on the branch variable give a clause whose
            highest decision level j is where the search resumes (the frames between j and the
            conflict have no models; their counts are not cached). False: chronological.
        clause_deletion_interval: learned clauses between two reductions of the learned-clause
            database (sharpSAT's 10,000, growing by 0.1% per reduction); a reduction also runs
            when the learned-clause pool is full. It deletes about half of the learned clauses:
            never a reason of an assigned literal nor a binary clause, the least active of the
            others (activity: use in conflict analysis, decaying). Never changes a count
            (learned clauses are implied). None: keep every learned clause (learning stops when
            the pool is full).

    Returns:
        A `CountInfo`; `count` is None unless `status == "ok"`.

    Example:
        >>> count(CNF.from_clauses([[1, -2], [2, 3]], num_vars=4)).count
        8
    """
    if not isinstance(cnf, CNF):
        raise TypeError(f"cnf must be a CNF, got {type(cnf).__name__}")
    _check_limit("max_decisions", max_decisions, int)
    _check_limit("max_seconds", max_seconds, float)
    if not (isinstance(cache_mb, int | float) and cache_mb > 0):
        raise ValueError(f"cache_mb must be a positive number, got {cache_mb!r}")
    n = cnf.num_vars
    for name, arr in (("variable_bias", variable_bias), ("polarity", polarity)):
        if arr is not None and np.shape(arr) != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {np.shape(arr)}")
    policy = None
    if callable(branching):
        policy = branching
    elif branching == "td":
        from ._td import td_bias

        tb = td_bias(cnf)
        variable_bias = tb if variable_bias is None else tb + np.asarray(variable_bias)
    elif branching != "vsads":
        raise ValueError(f"branching must be 'vsads', 'td' or a callable, got {branching!r}")
    for name, flag in (("probing", probing), ("backjumping", backjumping)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if not isinstance(policy_min_vars, int) or policy_min_vars < 1:
        raise ValueError(f"policy_min_vars must be a positive int, got {policy_min_vars!r}")
    cdi = clause_deletion_interval
    if cdi is not None and (
        isinstance(cdi, bool) or not isinstance(cdi, int | np.integer) or cdi < 1
    ):
        raise ValueError(f"clause_deletion_interval must be a positive int or None, got {cdi!r}")
    st, units, empty = _prepare(
        cnf, variable_bias, polarity, cache_mb, None if cdi is None else int(cdi)
    )
    if empty:
        return CountInfo(0, "ok", 0, 0, 0, 0, 0, 0, 0, 0.0)
    _warm_up()
    t0 = time.perf_counter()
    st.ctr[core.PROBE] = int(probing)
    st.ctr[core.BACKJUMP] = int(backjumping)
    if max_decisions is not None:
        st.ctr[core.MAX_DEC] = int(max_decisions)
    if max_seconds is not None:
        st.ctr[core.DEADLINE] = core.now_us(st) + int(max_seconds * 1e6)
    if policy is None:
        value = _to_int(core.root(st, units, n))
        calls = 0
    else:
        driver = _PolicyDriver(st, policy, policy_min_vars)
        value = driver.root(units, n)
        calls = driver.calls
    c = st.ctr
    status = {0: "ok", core.ABORT_DECISIONS: "decision_limit", core.ABORT_TIME: "time_limit"}
    s = status[int(c[core.ABORT])]
    return CountInfo(
        count=value if s == "ok" else None,
        status=s,
        decisions=int(c[core.MAX_DEC] if s == "decision_limit" else c[core.DECISIONS]),
        conflicts=int(c[core.CONFLICTS]),
        cache_hits=int(c[core.HITS]),
        cache_stores=int(c[core.STORES]),
        cache_clears=int(c[core.CLEARS]),
        propagations=int(c[core.PROPS]),
        policy_calls=calls,
        seconds=time.perf_counter() - t0,
        learned_clauses=int(c[core.LEARNED]),
        cache_invalidations=int(c[core.INVALIDATED]),
        failed_literals=int(c[core.FAILED]),
        backjumps=int(c[core.JUMPS]),
        deleted_clauses=int(c[core.DELETED]),
        clause_reductions=int(c[core.REDUCTIONS]),
    )


_WARM = [False]


def _warm_up() -> None:
    """Compile the core once per process on a tiny formula, so `seconds` excludes compilation."""
    if _WARM[0]:
        return
    st, units, _ = _prepare(CNF.from_clauses([[1, 2], [-1, 3], [2, 3, 4]]), None, None, 1.0)
    core.root(st, units, 4)
    _WARM[0] = True


class _PolicyDriver:
    """The top of the search in Python: a policy chooses the literal on large components; the
    compiled core counts the small ones and does propagation, splitting and caching."""

    def __init__(self, st, policy, min_vars):
        self.st, self.policy, self.min_vars, self.calls = st, policy, min_vars, 0
        self.L = int(st.ctr[core.LIMBS])

    def root(self, units, n):
        st = self.st
        for lit in units:
            v = core.lit_value(st, lit)
            if v == 0:
                return 0
            if v < 0:
                core.assign(st, lit, -1)
        if core.propagate(st) >= 0:
            return 0
        m = int(st.ctr[core.M_ORIG])
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 4 * n + 1000))
        try:
            return self._children(np.arange(n, dtype=np.int32), max(m, 1))
        finally:
            sys.setrecursionlimit(limit)

    def _children(self, vars_, ncls):
        st = self.st
        out_vars = np.empty(vars_.size, np.int32)
        out_vstart = np.empty(vars_.size + 1, np.int64)
        out_cls = np.empty(max(ncls, 1), np.int32)
        out_cstart = np.empty(vars_.size + 1, np.int64)
        clears, entries = core.cache_mark(st)
        ncomp, nfree = core.split(st, vars_, out_vars, out_vstart, out_cls, out_cstart)
        prod = 1 << int(nfree)
        for k in range(ncomp):
            sub = self._count(
                out_vars[out_vstart[k] : out_vstart[k + 1]].copy(),
                out_cls[out_cstart[k] : out_cstart[k + 1]].copy(),
            )
            if st.ctr[core.ABORT]:
                return 0
            if sub == 0:
                if ncomp > 1:  # see core: counts stored meanwhile may be too small
                    core.cache_invalidate(st, clears, entries)
                return 0
            prod *= sub
        return prod

    def _count(self, vars_, clauses):
        st = self.st
        if vars_.size < self.min_vars:
            sub = _to_int(core.count_rec(st, vars_, clauses))
            st.ctr[core.JUMP] = -1  # a backjump past the compiled frames ends here (a zero)
            return sub
        key = core.make_key(vars_, clauses)
        h = np.uint64(core.key_hash(key))
        slot = core.cache_lookup(st, key, h)
        if slot >= 0:
            st.ctr[core.HITS] += 1
            return _to_int(core.cache_get(st, slot))
        lit = self._ask(vars_, clauses)
        if not core.note_decision(st):
            return 0
        total = 0
        d = int(st.ctr[core.DLEVEL]) + 1
        st.ctr[core.DLEVEL] = d
        learned = -1
        for lb in (lit, lit ^ 1):
            mark = int(st.ctr[core.TRAIL])
            ok, learned, _ = core.branch(st, lb, learned, d)
            if not ok:
                core.backtrack(st, mark)
                continue
            sub = self._children(vars_, clauses.size)
            core.backtrack(st, mark)
            if st.ctr[core.ABORT]:
                st.ctr[core.DLEVEL] = d - 1
                return 0
            total += sub
        st.ctr[core.DLEVEL] = d - 1
        core.cache_store(st, key, h, _to_limbs(total, self.L))
        return total

    def _ask(self, vars_, clauses):
        st = self.st
        el, ec = core.component_graph(st, vars_, clauses)
        scores = core.vsads_scores(st, vars_, clauses)
        act = st.act.reshape(-1, 2)[vars_]
        view = ComponentView(vars_ + 1, el, ec, int(clauses.size), scores, act)
        self.calls += 1
        choice = self.policy(view)
        if isinstance(choice, bool) or not isinstance(choice, int | np.integer):
            raise TypeError(f"the branching policy must return an int, got {type(choice)}")
        choice = int(choice)
        if choice == 0:
            return int(core.choose_vsads(st, vars_, clauses))
        v = abs(choice) - 1
        if v >= st.val.size or st.val[v] >= 0 or v not in set(vars_.tolist()):
            raise ValueError(
                f"the branching policy returned {choice}, not a literal of the component"
            )
        return 2 * v + (choice < 0)
