"""The compiled search core (numba, nopython): watched-literal unit propagation, 1-UIP clause
learning, component decomposition of the residual formula, an exact component cache and VSADS
branching.

Clause learning (sharpSAT-style, see `branch`): a conflict right after a branch literal is
assigned at decision level d is analysed to its first unique implication point; the learned
clause goes into the clause database (with watches, so it propagates everywhere afterwards) but
never into a component: components and cache keys are built from the original clauses only
(`vocc`). After the conflict the search moves to the other branch of the same variable and
first asserts the learned clause's UIP literal, which is unit there. When both branches fail in
propagation, the two conflicts resolved on the branch variable (`analyze_below`) give a clause
that is false below the frame; if its highest decision level j is below the parent's, the
search jumps back to frame j (`try_backjump`: the frames in between return 0 without caching)
and learns that clause for frame j's other branch. Optional failed-literal probing
(`implicit_bcp`, sharpSAT's "implicit BCP") runs after each branch's propagation.

Learned clauses are implied by the formula, so they cannot change a count, with one exception
known from Cachet (Sang et al. 2004): while a component is counted, another still-open
component may be unsatisfiable, and then clauses learned from it can make the first
component's count too small. The product at that branch is then 0 anyway; `cache_invalidate`
removes every cache entry stored since the branch began (only there could such a wrong count
have been stored), so the cache only keeps counts that were computed while all open components
were satisfiable. Learned clauses are deleted as in sharpSAT / MiniSat's `reduceDB`
(`reduce_learned`): every `ctr[DEL_INTERVAL]` learned clauses (default 10,000), or when their
pool is full, about half of them go: never a reason of an assigned literal (locked) nor a binary
clause; of the others the least active (a clause's activity is bumped when conflict analysis
resolves on it and decays with the literal activities). The table, literal pool and watch lists
are compacted and every live clause id (the trail's reasons, `ctr[JUMP_CL]`) is remapped; the
reduction runs only before a frame branches, where no other clause id is alive. Deleting an
implied clause never changes a count. Decision levels are labels: an asserted literal is
labelled one level below the branch it is asserted in (it does not depend on that branch), so a
literal labelled l is always implied by the branch literals of levels <= l.

Counts inside the core are arbitrary-precision unsigned integers stored as little-endian
32-bit limbs in `uint64` arrays of fixed length `L = num_vars // 32 + 2` (a count never exceeds
`2**num_vars`); products and sums carry between limbs. They become Python ints at the boundary.

Literals: variable `v` (0-based) has literals `2v` (positive) and `2v + 1` (negative).
The kernels are compiled with numba's `cache=True`: the first process compiles them (~30 s) and
writes the machine code next to this file (`__pycache__`) or to `NUMBA_CACHE_DIR`; later processes
load it. Where no cache directory is writable (a read-only install), `_njit` warns once and
compiles in memory in every process instead.
"""

import inspect
import typing
import warnings

import numba
import numpy as np
from numba import types as nbt

# ---- counters kept in one int64 array (`ctr`) --------------------------------------------------
TRAIL, QHEAD, STAMP, DECISIONS, CONFLICTS, HITS, STORES, ABORT = range(8)
ENTRIES, KEY_USED, CNT_USED, MAX_DEC, DEADLINE, CLEARS, LIMBS, PROPS = range(8, 16)
NCL, LIT_USED, M_ORIG, DLEVEL, LEARNED, TOMBS, INVALIDATED, SEEN = range(16, 24)
PROBE, LSTAMP, FAILED, BACKJUMP, JUMP, JUMP_CL, JUMPS = range(24, 31)
DEL_INTERVAL, DEL_NEXT, DEL_DUE, DELETED, REDUCTIONS = range(31, 36)
NCTR = 40
ABORT_DECISIONS, ABORT_TIME = 1, 2

# libc's clock_gettime as an external symbol (resolved by name when the code is loaded, so the
# kernels stay cacheable; a ctypes function pointer would be baked in as an address).
_clock_gettime = nbt.ExternalFunction("clock_gettime", nbt.int32(nbt.int32, nbt.voidptr))
_MASK = np.uint64(0xFFFFFFFF)
_CACHE_WARNED = [False]


def _njit(fn):
    """numba.njit(cache=True) of the undecorated function (the test suite's jaxtyping import hook
    wraps every function of `respax` in a runtime type checker that numba cannot compile).

    Where numba finds no writable cache directory it raises at decoration time; we then warn once
    and compile without the on-disk cache (slower start, same code).
    """
    fn = inspect.unwrap(fn)
    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError as err:
        if "no locator available" not in str(err):
            raise
        if not _CACHE_WARNED[0]:
            warnings.warn(
                f"respax.sat: numba found no writable cache directory ({err}); the counter is "
                "compiled in memory in every process (set NUMBA_CACHE_DIR to a writable path)",
                RuntimeWarning,
                stacklevel=2,
            )
            _CACHE_WARNED[0] = True
        return numba.njit(cache=False)(fn)


class State(typing.NamedTuple):
    """All mutable search state (arrays only, so numba can take it as one argument)."""

    cl_lits: np.ndarray  # int32 literal pool: original clauses, then learned ones; positions 0
    # and 1 of a clause are its watched literals (a learned unit clause has no watches)
    cl_start: np.ndarray  # int64 (m + max learned + 1); clause c is cl_lits[cl_start[c]:[c+1]]
    cl_act: np.ndarray  # float64 (m + max learned + 1): activity of learned clause c (deletion
    # order); the last entry is the current bump (`bump_clause`)
    vocc_start: np.ndarray  # int64 (n+1)
    vocc: np.ndarray  # int32: original clauses containing each variable
    w_head: np.ndarray  # int32 (2n): first watch node of each literal, -1 none
    w_next: np.ndarray  # int32 (2 * clauses): node 2c / 2c+1 are clause c's two watches
    val: np.ndarray  # int8 (n): -1 unassigned, 0 false, 1 true
    level: np.ndarray  # int32 (n): decision level of the assignment
    reason: np.ndarray  # int32 (n): implying clause, -1 for a branch literal / root unit
    tpos: np.ndarray  # int32 (n): trail position of the assignment
    seen: np.ndarray  # int64 (n): conflict-analysis marks (== ctr[SEEN])
    lbuf: np.ndarray  # int32 (n): the clause being learned
    lstamp: np.ndarray  # int64 (2n): literal marks for the failed-literal candidates
    tbuf: np.ndarray  # int32 (2n): failed-literal candidates
    jbuf: np.ndarray  # int32 (n): the clause behind a backjump
    trail: np.ndarray  # int32 (n)
    act: np.ndarray  # float64 (2n) literal activities
    bias: np.ndarray  # float64 (n) added to the VSADS score (TD penalty; 0 for VSADS)
    pol: np.ndarray  # int8 (n): first branch 1 positive, 0 negative, -1 by activity
    vstamp: np.ndarray  # int64 (n)
    cstamp: np.ndarray  # int64 (m)
    freq: np.ndarray  # int64 (n) scratch
    ctr: np.ndarray  # int64 (NCTR)
    tab_off: np.ndarray  # int64 (T) key offset or -1
    tab_cnt: np.ndarray  # int64 (T) count offset
    tab_hash: np.ndarray  # uint64 (T)
    tab_order: np.ndarray  # int64 (T): table slot of the e-th entry since the last clear
    keys: np.ndarray  # int32 key pool
    cnts: np.ndarray  # uint64 count pool
    clock: np.ndarray  # int64 (2) timespec buffer


@_njit
def now_us(st):
    _clock_gettime(1, st.clock.ctypes)
    return st.clock[0] * 1000000 + st.clock[1] // 1000


# ---- bignums -----------------------------------------------------------------------------------
@_njit
def bn_used(a):
    k = a.size
    while k > 0 and a[k - 1] == 0:
        k -= 1
    return k


@_njit
def bn_pow2(L, k):
    out = np.zeros(L, np.uint64)
    out[k // 32] = np.uint64(1) << np.uint64(k % 32)
    return out


@_njit
def bn_mul(a, b):
    L = a.size
    out = np.zeros(L, np.uint64)
    ua, ub = bn_used(a), bn_used(b)
    for i in range(ua):
        ai = a[i]
        if ai == 0:
            continue
        carry = np.uint64(0)
        for j in range(ub):
            if i + j >= L:
                break
            t = out[i + j] + ai * b[j] + carry
            out[i + j] = t & _MASK
            carry = t >> np.uint64(32)
        k = i + ub
        while carry != 0 and k < L:
            t = out[k] + carry
            out[k] = t & _MASK
            carry = t >> np.uint64(32)
            k += 1
    return out


@_njit
def bn_add_into(a, b):
    carry = np.uint64(0)
    for i in range(a.size):
        t = a[i] + b[i] + carry
        a[i] = t & _MASK
        carry = t >> np.uint64(32)


# ---- assignment and propagation ----------------------------------------------------------------
@_njit
def lit_value(st, lit):
    """1 true, 0 false, -1 unassigned."""
    a = st.val[lit >> 1]
    if a < 0:
        return -1
    return a ^ (lit & 1)


@_njit
def assign(st, lit, reason):
    v = lit >> 1
    st.val[v] = 1 - (lit & 1)
    st.level[v] = st.ctr[DLEVEL]
    st.reason[v] = reason
    t = st.ctr[TRAIL]
    st.tpos[v] = t
    st.trail[t] = lit
    st.ctr[TRAIL] = t + 1


@_njit
def backtrack(st, mark):
    for i in range(mark, st.ctr[TRAIL]):
        st.val[st.trail[i] >> 1] = -1
    st.ctr[TRAIL] = mark
    st.ctr[QHEAD] = mark


@_njit
def watch(st, c):
    """Put clause c's two watch nodes on the lists of its literals at positions 0 and 1."""
    s = st.cl_start[c]
    for pos in range(2):
        lit = st.cl_lits[s + pos]
        node = 2 * c + pos
        st.w_next[node] = st.w_head[lit]
        st.w_head[lit] = node


@_njit
def init_watches(st):
    """Watch every clause (called once, with the original clauses only, all of length >= 2)."""
    st.w_head[:] = -1
    for c in range(st.ctr[NCL]):
        watch(st, c)


@_njit
def propagate(st):
    """Unit propagation over the trail with two watched literals (linked watch lists, original
    and learned clauses alike); the conflict clause or -1."""
    cl, cs = st.cl_lits, st.cl_start
    wh, wn = st.w_head, st.w_next
    while st.ctr[QHEAD] < st.ctr[TRAIL]:
        p = st.trail[st.ctr[QHEAD]]
        st.ctr[QHEAD] += 1
        st.ctr[PROPS] += 1
        fl = p ^ 1
        prev = -1
        node = wh[fl]
        while node >= 0:
            nxt = wn[node]
            c = node >> 1
            s = cs[c]
            if cl[s] == fl:
                cl[s] = cl[s + 1]
                cl[s + 1] = fl
            first = cl[s]
            fv = lit_value(st, first)
            if fv == 1:
                prev = node
                node = nxt
                continue
            found = False
            for k in range(s + 2, cs[c + 1]):
                lk = cl[k]
                if lit_value(st, lk) != 0:
                    cl[s + 1] = lk
                    cl[k] = fl
                    if prev < 0:
                        wh[fl] = nxt
                    else:
                        wn[prev] = nxt
                    wn[node] = wh[lk]
                    wh[lk] = node
                    found = True
                    break
            if found:
                node = nxt
                continue
            if fv == 0:
                st.ctr[QHEAD] = st.ctr[TRAIL]
                return c
            assign(st, first, c)
            prev = node
            node = nxt
    return -1


# ---- clause learning --------------------------------------------------------------------------
@_njit
def analyze(st, conf, d):
    """First-UIP conflict analysis at decision level d: writes the learned clause to `st.lbuf`
    (position 0: the negated UIP, false now) and returns its length, or 0 when the conflict has
    no literal of level d. Bumps the activity of the clause's literals (sharpSAT's VSADS) and of
    the learned clauses resolved on the way (the deletion order, `reduce_learned`)."""
    cl, cs = st.cl_lits, st.cl_start
    st.ctr[SEEN] += 1
    mark = st.ctr[SEEN]
    buf = st.lbuf
    nout = 1
    pathc = 0
    idx = st.ctr[TRAIL] - 1
    c = conf
    pv = -1
    p = -1
    while True:
        bump_clause(st, c)
        for k in range(cs[c], cs[c + 1]):
            q = cl[k]
            v = q >> 1
            if v == pv or st.seen[v] == mark or st.level[v] == 0:
                continue
            st.seen[v] = mark
            if st.level[v] == d:
                pathc += 1
            else:
                buf[nout] = q
                nout += 1
        if pathc == 0:
            return 0
        while st.seen[st.trail[idx] >> 1] != mark:
            idx -= 1
        p = st.trail[idx]
        idx -= 1
        pv = p >> 1
        st.seen[pv] = 0
        pathc -= 1
        if pathc == 0:
            break
        c = st.reason[pv]
        if c < 0:  # cannot happen (only the branch literal lacks a reason, and it comes last)
            return 0
    buf[0] = p ^ 1
    for i in range(nout):
        st.act[buf[i]] += 1.0
    return nout


@_njit
def add_learned(st, n):
    """Store `st.lbuf[:n]` as a clause (watching position 0 and the latest-assigned other
    literal); its id, or -1 when the learned-clause pool is full (then a reduction is due at the
    next decision, `note_decision`). A new clause starts with the current bump as its activity
    (MiniSat), so it is not the first to go at the next reduction."""
    c = st.ctr[NCL]
    s = st.ctr[LIT_USED]
    if c + 1 >= st.cl_start.size or s + n > st.cl_lits.size:
        st.ctr[DEL_DUE] = 1
        return -1
    st.cl_act[c] = st.cl_act[-1]
    for i in range(n):
        st.cl_lits[s + i] = st.lbuf[i]
    best = 1
    for i in range(2, n):
        if st.tpos[st.cl_lits[s + i] >> 1] > st.tpos[st.cl_lits[s + best] >> 1]:
            best = i
    if n >= 2:
        t = st.cl_lits[s + 1]
        st.cl_lits[s + 1] = st.cl_lits[s + best]
        st.cl_lits[s + best] = t
    st.cl_start[c + 1] = s + n
    st.ctr[NCL] = c + 1
    st.ctr[LIT_USED] = s + n
    st.ctr[LEARNED] += 1
    if n >= 2:
        watch(st, c)
    return c


@_njit
def bump_clause(st, c):
    """Raise learned clause c's activity (it took part in a conflict analysis). The bump doubles
    every 128 decisions (`note_decision`), which halves all activities relative to new bumps, as
    sharpSAT halves its clause scores with the literal activities."""
    if c >= st.ctr[M_ORIG]:
        st.cl_act[c] += st.cl_act[-1]


@_njit
def reduce_learned(st, again=False):
    """Delete about half of the learned clauses (MiniSat's `reduceDB`, sharpSAT's
    `deleteConflictClauses`) and compact the clause table, the literal pool and the watch lists.

    Learned clauses are implied by the formula, so deleting any of them never changes a count;
    what must not happen is a stored clause id pointing at a deleted or moved clause. Kept are:
    the clauses that are the reason of an assigned literal (locked: conflict analysis will resolve
    on them), binary clauses (cheap and strong), and of the others (length >= 3) the more active
    half; unlocked learned unit clauses (they have no watches and are only ever asserted through
    the `learned` id of `branch`) are deleted. Original clauses keep their ids (components and
    cache keys refer to them), kept learned clauses move down in their order, so their relative
    order, their literal order (positions 0 and 1 are the watches) and the order of every watch
    list stay the same and the watch invariants of the current assignment still hold.

    Called only from `note_decision`, before a frame branches: there the clause ids alive are
    the reasons of the trail's literals and `ctr[JUMP_CL]` (the `learned` id of every frame on
    the stack is -1 or dead while its children are counted, and no conflict clause is pending);
    both are remapped.
    """
    if again:  # never taken: the self-call keeps LLVM from inlining this large, rarely run
        reduce_learned(st)  # function into `note_decision` and so into the search frames (where
        return  # it cost 2-4% of the decisions per second)
    m = st.ctr[M_ORIG]
    ncl = st.ctr[NCL]
    nl = ncl - m
    st.ctr[REDUCTIONS] += 1
    st.ctr[DEL_DUE] = 0
    iv = st.ctr[DEL_INTERVAL]
    st.ctr[DEL_NEXT] = st.ctr[LEARNED] + iv + iv * st.ctr[REDUCTIONS] // 1000
    if nl <= 0:
        return
    cs = st.cl_start
    keep = np.zeros(nl, np.bool_)
    for t in range(st.ctr[TRAIL]):
        r = st.reason[st.trail[t] >> 1]
        if r >= m:
            keep[r - m] = True
    cand = np.empty(nl, np.int64)
    nc = 0
    for i in range(nl):
        c = m + i
        size = cs[c + 1] - cs[c]
        if keep[i] or size < 2:
            continue
        if size == 2:
            keep[i] = True
        else:
            cand[nc] = i
            nc += 1
    if nc > 0:
        acts = np.empty(nc, np.float64)
        for j in range(nc):
            acts[j] = st.cl_act[m + cand[j]]
        order = np.argsort(acts, kind="mergesort")  # stable: among equals the older go first
        for j in range(nc // 2, nc):
            keep[cand[order[j]]] = True
    # compact: kept clauses move down (new id <= old id), literals and activities with them
    newid = np.full(ncl, -1, np.int64)
    for c in range(m):
        newid[c] = c
    w = cs[m]
    nxt = m
    s_old = cs[m]
    for i in range(nl):
        c = m + i
        e_old = cs[c + 1]
        if keep[i]:
            for k in range(s_old, e_old):
                st.cl_lits[w + k - s_old] = st.cl_lits[k]
            w += e_old - s_old
            st.cl_act[nxt] = st.cl_act[c]
            cs[nxt + 1] = w
            newid[c] = nxt
            nxt += 1
        s_old = e_old
    deleted = ncl - nxt
    st.ctr[NCL] = nxt
    st.ctr[LIT_USED] = w
    st.ctr[DELETED] += deleted
    if deleted == 0:
        return
    for t in range(st.ctr[TRAIL]):
        v = st.trail[t] >> 1
        if st.reason[v] >= 0:
            st.reason[v] = newid[st.reason[v]]
    if st.ctr[JUMP_CL] >= 0:
        st.ctr[JUMP_CL] = newid[st.ctr[JUMP_CL]]
    # the watch lists, in their order, without the deleted clauses' nodes (node 2c + pos)
    old_next = st.w_next[: 2 * ncl].copy()
    for lit in range(st.w_head.size):
        node = st.w_head[lit]
        prev = -1
        while node >= 0:
            nc_ = newid[node >> 1]
            if nc_ >= 0:
                nn = 2 * nc_ + (node & 1)
                if prev < 0:
                    st.w_head[lit] = nn
                else:
                    st.w_next[prev] = nn
                prev = nn
            node = old_next[node]
        if prev < 0:
            st.w_head[lit] = -1
        else:
            st.w_next[prev] = -1


@_njit
def implicit_bcp(st, start, d):
    """sharpSAT's "implicit BCP" (failed-literal probing) after the propagation of level d that
    began at trail position `start`; the conflict clause at level d or -1.

    Candidates are the negations of the unassigned literals of the unsatisfied original clauses
    that the new assignments shortened; of those, the 10 + (new assignments)/20 with the highest
    activity are probed: assigned at level d + 1 and propagated. A conflict there is analysed to
    a 1-UIP clause, which is stored and whose first literal is then asserted at level d (it is
    implied there). Repeats while the assertions assign new literals.
    """
    cl, cs = st.cl_lits, st.cl_start
    ofs = start
    while st.ctr[TRAIL] > ofs:
        st.ctr[LSTAMP] += 1
        mark = st.ctr[LSTAMP]
        nt = 0
        end = st.ctr[TRAIL]
        for t in range(ofs, end):
            v = st.trail[t] >> 1
            for q in range(st.vocc_start[v], st.vocc_start[v + 1]):
                c = st.vocc[q]
                sat = False
                for k in range(cs[c], cs[c + 1]):
                    if lit_value(st, cl[k]) == 1:
                        sat = True
                        break
                if sat:
                    continue
                for k in range(cs[c], cs[c + 1]):
                    lk = cl[k]
                    if st.val[lk >> 1] < 0 and st.lstamp[lk ^ 1] != mark:
                        st.lstamp[lk ^ 1] = mark
                        st.tbuf[nt] = lk ^ 1
                        nt += 1
        keep = 10 + (end - ofs) // 20
        ofs = end
        if nt == 0:
            break
        threshold = -1.0
        if nt > keep:
            sc = np.empty(nt, np.float64)
            for i in range(nt):
                sc[i] = st.act[st.tbuf[i]]
            threshold = np.sort(sc)[nt - keep]
        for i in range(nt):
            t = st.tbuf[i]
            if st.val[t >> 1] >= 0 or st.act[t] < threshold:
                continue
            sz = st.ctr[TRAIL]
            st.ctr[DLEVEL] = d + 1
            assign(st, t, -1)
            conf = propagate(st)
            n = 0
            if conf >= 0:
                n = analyze(st, conf, d + 1)
            st.ctr[DLEVEL] = d
            backtrack(st, sz)
            if conf < 0:
                continue
            st.ctr[FAILED] += 1
            if n == 0:
                continue
            c = add_learned(st, n)
            a = st.lbuf[0]
            if c >= 0 and lit_value(st, a) < 0:  # (pool full: no assertion without a reason)
                assign(st, a, c)
                conf = propagate(st)
                if conf >= 0:
                    return conf
    return -1


@_njit
def analyze_below(st, conf, mark, out, nout):
    """Resolve the conflict clause with the reasons of all literals assigned at trail positions
    >= `mark`, appending the literals assigned before `mark` (level > 0) to `out[nout:]` (no
    duplicates of `out[:nout]`). Returns (new length, whether a literal without a reason at or
    after `mark`, i.e. the branch literal, was involved). `out[:length]` plus the negation of
    that branch literal is a clause implied by the formula and false now."""
    st.ctr[SEEN] += 1
    stamp = st.ctr[SEEN]
    for i in range(nout):
        st.seen[out[i] >> 1] = stamp
    pending = 0
    dec = False
    idx = st.ctr[TRAIL] - 1
    c = conf
    while True:
        if c >= 0:
            bump_clause(st, c)
            for k in range(st.cl_start[c], st.cl_start[c + 1]):
                q = st.cl_lits[k]
                v = q >> 1
                if st.seen[v] == stamp or st.level[v] == 0:
                    continue
                st.seen[v] = stamp
                if st.tpos[v] >= mark:
                    pending += 1
                else:
                    out[nout] = q
                    nout += 1
        if pending == 0:
            break
        while st.seen[st.trail[idx] >> 1] != stamp:
            idx -= 1
        p = st.trail[idx]
        idx -= 1
        pending -= 1
        c = st.reason[p >> 1]
        if c < 0:
            dec = True
    return nout, dec


@_njit
def try_backjump(st, k, d):
    """`st.jbuf[:k]` is an implied clause falsified by assignments before this frame's branch:
    when its highest level j is below d - 1, every frame between j and d is in a branch with no
    models; record the jump (ctr[JUMP] = j) and learn the clause for frame j's other branch.
    Returns whether to jump."""
    j = 0
    best = -1
    for i in range(k):
        v = st.jbuf[i] >> 1
        if st.level[v] > j:
            j = st.level[v]
        if best < 0 or st.tpos[v] > st.tpos[st.jbuf[best] >> 1]:
            best = i
    if j >= d - 1:
        return False
    st.ctr[JUMP] = j
    st.ctr[JUMPS] += 1
    st.ctr[JUMP_CL] = -1
    if k >= 1:
        for i in range(k):
            st.lbuf[i] = st.jbuf[i]
        t = st.lbuf[0]
        st.lbuf[0] = st.lbuf[best]
        st.lbuf[best] = t
        st.ctr[JUMP_CL] = add_learned(st, k)
    return True


@_njit
def branch(st, lit, learned, d):
    """Enter one branch of a decision at level d: returns (no conflict, learned clause id,
    conflict clause id or -1).

    With `learned >= 0` (the clause learned in the other branch of this variable), its first
    literal is asserted first when it is unit (labelled level d - 1: it does not depend on this
    level's branch literal). Then `lit` is assigned at level d (unless the assertion already
    decided it) and propagated, followed by `implicit_bcp` when `ctr[PROBE]` is set; a conflict
    is analysed and its 1-UIP clause stored (id returned, -1 when none was learned).
    """
    start = st.ctr[TRAIL]
    if learned >= 0:
        s, e = st.cl_start[learned], st.cl_start[learned + 1]
        a = st.cl_lits[s]
        unit = lit_value(st, a) < 0
        for k in range(s + 1, e):
            if lit_value(st, st.cl_lits[k]) != 0:
                unit = False
                break
        if unit:
            st.ctr[DLEVEL] = d - 1
            assign(st, a, learned)
            conf = propagate(st)
            st.ctr[DLEVEL] = d
            if conf >= 0:
                st.ctr[CONFLICTS] += 1
                return False, -1, conf
    v = lit_value(st, lit)
    if v == 0:
        return False, -1, -1
    conf = -1
    if v < 0:
        assign(st, lit, -1)
        conf = propagate(st)
    if conf < 0 and st.ctr[PROBE] != 0:
        conf = implicit_bcp(st, start, d)
    if conf < 0:
        return True, -1, -1
    st.ctr[CONFLICTS] += 1
    n = analyze(st, conf, d)
    if n == 0:
        return False, -1, conf
    return False, add_learned(st, n), conf


# ---- components ---------------------------------------------------------------------------------
@_njit
def split(st, vars_, out_vars, out_vstart, out_cls, out_cstart):
    """Connected components of the residual formula over the unassigned variables in `vars_`.

    Writes component k's variables to `out_vars[out_vstart[k]:out_vstart[k+1]]` and its active
    (unsatisfied) clauses likewise; returns (number of components, number of free variables), a
    free variable being an unassigned one in no active clause.
    """
    st.ctr[STAMP] += 1
    stamp = st.ctr[STAMP]
    cl, cs = st.cl_lits, st.cl_start
    nv = 0
    nc = 0
    ncomp = 0
    nfree = 0
    out_vstart[0] = 0
    out_cstart[0] = 0
    for r in range(vars_.size):
        v0 = vars_[r]
        if st.val[v0] >= 0 or st.vstamp[v0] == stamp:
            continue
        st.vstamp[v0] = stamp
        vbeg, cbeg = nv, nc
        out_vars[nv] = v0
        nv += 1
        h = vbeg
        while h < nv:
            u = out_vars[h]
            h += 1
            for q in range(st.vocc_start[u], st.vocc_start[u + 1]):
                c = st.vocc[q]
                if st.cstamp[c] == stamp:
                    continue
                st.cstamp[c] = stamp
                sat = False
                for k in range(cs[c], cs[c + 1]):
                    if lit_value(st, cl[k]) == 1:
                        sat = True
                        break
                if sat:
                    continue
                out_cls[nc] = c
                nc += 1
                for k in range(cs[c], cs[c + 1]):
                    w = cl[k] >> 1
                    if st.val[w] < 0 and st.vstamp[w] != stamp:
                        st.vstamp[w] = stamp
                        out_vars[nv] = w
                        nv += 1
        if nc == cbeg:  # a variable in no active clause
            nfree += nv - vbeg
            nv = vbeg
            continue
        ncomp += 1
        out_vstart[ncomp] = nv
        out_cstart[ncomp] = nc
    return ncomp, nfree


# ---- the exact component cache ----------------------------------------------------------------
@_njit
def key_hash(skey):
    h = np.uint64(1469598103934665603)
    for i in range(skey.size):
        h = (h ^ np.uint64(skey[i] + 1)) * np.uint64(1099511628211)
    return h


@_njit
def make_key(vars_, clauses):
    """[nvars, vars sorted..., clauses sorted...]: identifies the residual component exactly."""
    key = np.empty(1 + vars_.size + clauses.size, np.int32)
    key[0] = vars_.size
    key[1 : 1 + vars_.size] = np.sort(vars_)
    key[1 + vars_.size :] = np.sort(clauses)
    return key


@_njit
def cache_lookup(st, key, h):
    """Index of the table slot holding `key`, or -1 (-1 marks an empty slot, -2 a removed one)."""
    T = st.tab_off.size
    i = np.int64(h & np.uint64(T - 1))
    while st.tab_off[i] != -1:
        if st.tab_off[i] >= 0 and st.tab_hash[i] == h:
            off = st.tab_off[i]
            n = st.keys[off]
            if n == key.size:
                same = True
                for k in range(key.size):
                    if st.keys[off + 1 + k] != key[k]:
                        same = False
                        break
                if same:
                    return i
        i = (i + 1) & (T - 1)
    return -1


@_njit
def cache_get(st, slot):
    L = st.ctr[LIMBS]
    out = np.zeros(L, np.uint64)
    off = st.tab_cnt[slot]
    n = np.int64(st.cnts[off])
    for k in range(n):
        out[k] = st.cnts[off + 1 + k]
    return out


@_njit
def cache_clear(st):
    st.tab_off[:] = -1
    st.ctr[ENTRIES] = 0
    st.ctr[TOMBS] = 0
    st.ctr[KEY_USED] = 0
    st.ctr[CNT_USED] = 0
    st.ctr[CLEARS] += 1


@_njit
def cache_store(st, key, h, count):
    """Insert; when the table or a pool is full, the whole cache is cleared first (never wrong,
    only slower)."""
    T = st.tab_off.size
    u = bn_used(count)
    if key.size + 1 > st.keys.size or u + 1 > st.cnts.size:
        return
    if (
        2 * (st.ctr[ENTRIES] + st.ctr[TOMBS] + 1) > T
        or st.ctr[KEY_USED] + key.size + 1 > st.keys.size
        or st.ctr[CNT_USED] + u + 1 > st.cnts.size
    ):
        cache_clear(st)
    i = np.int64(h & np.uint64(T - 1))
    while st.tab_off[i] >= 0:
        i = (i + 1) & (T - 1)
    if st.tab_off[i] == -2:
        st.ctr[TOMBS] -= 1
    st.tab_order[st.ctr[ENTRIES]] = i
    ko = st.ctr[KEY_USED]
    st.keys[ko] = key.size
    st.keys[ko + 1 : ko + 1 + key.size] = key
    st.ctr[KEY_USED] += key.size + 1
    co = st.ctr[CNT_USED]
    st.cnts[co] = u
    st.cnts[co + 1 : co + 1 + u] = count[:u]
    st.ctr[CNT_USED] += u + 1
    st.tab_off[i] = ko
    st.tab_cnt[i] = co
    st.tab_hash[i] = h
    st.ctr[ENTRIES] += 1
    st.ctr[STORES] += 1


@_njit
def cache_mark(st):
    """(clears, entries) now: where `cache_invalidate` rewinds to."""
    return st.ctr[CLEARS], st.ctr[ENTRIES]


@_njit
def cache_invalidate(st, clears, entries):
    """Remove every entry stored since `cache_mark` returned (clears, entries) (all entries when
    the cache was cleared meanwhile); the pools are append-only, so they are rewound too."""
    e0 = entries if st.ctr[CLEARS] == clears else 0
    n = st.ctr[ENTRIES]
    if e0 >= n:
        return
    slot0 = st.tab_order[e0]
    st.ctr[KEY_USED] = st.tab_off[slot0]
    st.ctr[CNT_USED] = st.tab_cnt[slot0]
    for e in range(e0, n):
        st.tab_off[st.tab_order[e]] = -2
    st.ctr[TOMBS] += n - e0
    st.ctr[INVALIDATED] += n - e0
    st.ctr[ENTRIES] = e0


# ---- branching ----------------------------------------------------------------------------------
@_njit
def vsads_scores(st, vars_, clauses):
    """VSADS score per variable of the component (sharpSAT): freq + 10 (act(v) + act(-v)) + bias.

    `freq` = occurrences in the component's active clauses. Written into `st.freq` too.
    """
    for v in vars_:
        st.freq[v] = 0
    for c in clauses:
        for k in range(st.cl_start[c], st.cl_start[c + 1]):
            w = st.cl_lits[k] >> 1
            if st.val[w] < 0:
                st.freq[w] += 1
    out = np.empty(vars_.size, np.float64)
    for i in range(vars_.size):
        v = vars_[i]
        out[i] = st.freq[v] + 10.0 * (st.act[2 * v] + st.act[2 * v + 1]) + st.bias[v]
    return out


@_njit
def choose_vsads(st, vars_, clauses):
    sc = vsads_scores(st, vars_, clauses)
    v = vars_[np.argmax(sc)]
    if st.pol[v] >= 0:
        return 2 * v + 1 - st.pol[v]
    return 2 * v if st.act[2 * v] >= st.act[2 * v + 1] else 2 * v + 1


@_njit
def component_graph(st, vars_, clauses):
    """Literal-clause incidence edges of a component, in component-local indices."""
    st.ctr[STAMP] += 1
    stamp = st.ctr[STAMP]
    for i in range(vars_.size):
        st.vstamp[vars_[i]] = stamp
        st.freq[vars_[i]] = i
    ne = 0
    for c in clauses:
        for k in range(st.cl_start[c], st.cl_start[c + 1]):
            if st.val[st.cl_lits[k] >> 1] < 0:
                ne += 1
    el = np.empty(ne, np.int32)
    ec = np.empty(ne, np.int32)
    e = 0
    for j in range(clauses.size):
        c = clauses[j]
        for k in range(st.cl_start[c], st.cl_start[c + 1]):
            lit = st.cl_lits[k]
            if st.val[lit >> 1] < 0:
                el[e] = 2 * st.freq[lit >> 1] + (lit & 1)
                ec[e] = j
                e += 1
    return el, ec


@_njit
def note_decision(st):
    """Count a decision, decay activities, reduce the learned clauses when due, check the
    limits; False when a limit stops the run.

    A reduction (`reduce_learned`) is due when `ctr[DEL_INTERVAL]` > 0 and either that many
    clauses were learned since the last one (the interval grows by 0.1% per reduction, sharpSAT's
    10000 + 10 per cleaning) or the learned pool was found full. It runs here because before a
    frame branches no clause id other than the trail's reasons and `ctr[JUMP_CL]` is alive.
    """
    st.ctr[DECISIONS] += 1
    d = st.ctr[DECISIONS]
    if d % 128 == 0:
        a = st.act
        for i in range(a.size):
            a[i] *= 0.5
        st.cl_act[-1] *= 2.0
        if st.cl_act[-1] > 1e100:  # rescale (only the order of activities matters)
            for c in range(st.ctr[M_ORIG], st.ctr[NCL]):
                st.cl_act[c] *= 1e-100
            st.cl_act[-1] *= 1e-100
    if st.ctr[DEL_INTERVAL] > 0 and (st.ctr[DEL_DUE] != 0 or st.ctr[LEARNED] >= st.ctr[DEL_NEXT]):
        reduce_learned(st)
    if st.ctr[MAX_DEC] >= 0 and d > st.ctr[MAX_DEC]:
        st.ctr[ABORT] = ABORT_DECISIONS
        return False
    if st.ctr[DEADLINE] >= 0 and d % 64 == 0 and now_us(st) > st.ctr[DEADLINE]:
        st.ctr[ABORT] = ABORT_TIME
        return False
    return True


# ---- the search ---------------------------------------------------------------------------------
@_njit
def count_rec(st, vars_, clauses):
    """Model count of one connected component (its unassigned variables and active clauses)."""
    L = st.ctr[LIMBS]
    if st.ctr[ABORT] != 0:
        return np.zeros(L, np.uint64)
    key = make_key(vars_, clauses)
    h = key_hash(key)
    slot = cache_lookup(st, key, h)
    if slot >= 0:
        st.ctr[HITS] += 1
        return cache_get(st, slot)
    lit = choose_vsads(st, vars_, clauses)
    if not note_decision(st):
        return np.zeros(L, np.uint64)
    total = np.zeros(L, np.uint64)
    out_vars = np.empty(vars_.size, np.int32)
    out_vstart = np.empty(vars_.size + 1, np.int64)
    out_cls = np.empty(clauses.size, np.int32)
    out_cstart = np.empty(vars_.size + 1, np.int64)
    d = st.ctr[DLEVEL] + 1
    st.ctr[DLEVEL] = d
    learned = -1
    k0 = -1  # length of branch 0's clause below the branch (-1: none)
    a0 = st.jbuf[:0].copy()
    for b in range(2):
        lb = lit if b == 0 else lit ^ 1
        mark = st.ctr[TRAIL]
        ok, learned, conf = branch(st, lb, learned, d)
        if not ok:
            # conflict-directed backjumping: a clause false below this branch (both branches
            # resolved on `lit`, or one that does not depend on it) whose highest level is
            # below d - 1 proves the branches of all frames between that level and d empty
            jump = False
            empty = False
            if conf >= 0 and st.ctr[BACKJUMP] != 0:
                if b == 0:
                    k0, dec = analyze_below(st, conf, mark, st.jbuf, 0)
                    a0 = st.jbuf[:k0].copy()
                    if not dec:  # the state below this branch has no models: skip branch 1
                        jump = try_backjump(st, k0, d)
                        empty = True
                else:
                    nk = 0
                    if k0 >= 0:
                        st.jbuf[:k0] = a0
                        nk = k0
                    k1, dec = analyze_below(st, conf, mark, st.jbuf, nk)
                    if k0 >= 0 or not dec:
                        jump = try_backjump(st, k1, d)
            backtrack(st, mark)
            if jump:
                st.ctr[DLEVEL] = d - 1
                return np.zeros(L, np.uint64)
            if empty:
                break
            continue
        clears, entries = cache_mark(st)
        ncomp, nfree = split(st, vars_, out_vars, out_vstart, out_cls, out_cstart)
        prod = bn_pow2(L, nfree)
        for k in range(ncomp):
            sub = count_rec(
                st,
                out_vars[out_vstart[k] : out_vstart[k + 1]],
                out_cls[out_cstart[k] : out_cstart[k + 1]],
            )
            if st.ctr[ABORT] != 0:
                backtrack(st, mark)
                st.ctr[DLEVEL] = d - 1
                return total
            if st.ctr[JUMP] >= 0:  # a backjump through or to this frame
                cache_invalidate(st, clears, entries)
                if st.ctr[JUMP] < d:
                    backtrack(st, mark)
                    st.ctr[DLEVEL] = d - 1
                    return np.zeros(L, np.uint64)
                st.ctr[JUMP] = -1
                learned = st.ctr[JUMP_CL]
                prod[:] = 0
                break
            if bn_used(sub) == 0:
                prod[:] = 0
                if ncomp > 1:  # counts stored meanwhile may be too small (see the module doc)
                    cache_invalidate(st, clears, entries)
                break
            prod = bn_mul(prod, sub)
        bn_add_into(total, prod)
        backtrack(st, mark)
    st.ctr[DLEVEL] = d - 1
    cache_store(st, key, h, total)
    return total


@_njit
def root(st, units, n):
    """Assign the unit clauses, propagate, and count every component (numba path, no policy)."""
    L = st.ctr[LIMBS]
    for lit in units:
        v = lit_value(st, lit)
        if v == 0:
            return np.zeros(L, np.uint64)
        if v < 0:
            assign(st, lit, -1)
    if propagate(st) >= 0:
        st.ctr[CONFLICTS] += 1
        return np.zeros(L, np.uint64)
    all_vars = np.arange(n).astype(np.int32)
    m = st.ctr[M_ORIG]
    out_vars = np.empty(n, np.int32)
    out_vstart = np.empty(n + 1, np.int64)
    out_cls = np.empty(max(m, 1), np.int32)
    out_cstart = np.empty(n + 1, np.int64)
    ncomp, nfree = split(st, all_vars, out_vars, out_vstart, out_cls, out_cstart)
    prod = bn_pow2(L, nfree)
    for k in range(ncomp):
        sub = count_rec(
            st,
            out_vars[out_vstart[k] : out_vstart[k + 1]],
            out_cls[out_cstart[k] : out_cstart[k + 1]],
        )
        if st.ctr[ABORT] != 0:
            return prod
        st.ctr[JUMP] = -1
        if bn_used(sub) == 0:
            return np.zeros(L, np.uint64)
        prod = bn_mul(prod, sub)
    return prod
