"""Neuro#'s branching policy: a GIN-style GNN over the literal-clause incidence graph."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._cnf import CNF
from ._counter import ComponentView


class LiteralClauseGraph(eqx.Module):
    """The literal-clause incidence graph, padded to power-of-two sizes (shape buckets).

    Attributes:
        edge_literal: per edge the literal index (`2 v + negative`), padding = `num_literals`.
        edge_clause: per edge the clause index, padding = `num_clauses`.
        num_literals: padded literal count (a power of two >= 2 * variables).
        num_clauses: padded clause count.
        literal_mask: True for real literals.
        features: per-literal features, shape (num_literals, f).
    """

    edge_literal: Int[Array, " e"]
    edge_clause: Int[Array, " e"]
    literal_mask: Array
    features: Float[Array, "l f"]
    num_literals: int = eqx.field(static=True)
    num_clauses: int = eqx.field(static=True)


def _bucket(x: int) -> int:
    return 1 << max(3, int(np.ceil(np.log2(max(x, 1)))))


def graph_from_edges(edge_literal, edge_clause, num_vars, num_clauses, features=None):
    """Pad an edge list to a `LiteralClauseGraph`.

    `features`: per-literal array (2 * num_vars, f) or None (no features: f = 0).
    """
    el = np.asarray(edge_literal, np.int32)
    ec = np.asarray(edge_clause, np.int32)
    nl, nc, ne = _bucket(2 * num_vars), _bucket(num_clauses), _bucket(el.size)
    pad = ne - el.size
    el = np.concatenate([el, np.full(pad, nl, np.int32)])
    ec = np.concatenate([ec, np.full(pad, nc, np.int32)])
    mask = np.arange(nl) < 2 * num_vars
    f = np.zeros((nl, 0 if features is None else np.shape(features)[1]), np.float32)
    if features is not None:
        f[: 2 * num_vars] = features
    return LiteralClauseGraph(
        jnp.asarray(el), jnp.asarray(ec), jnp.asarray(mask), jnp.asarray(f), nl, nc
    )


def literal_clause_graph(cnf: CNF, time_step=None) -> LiteralClauseGraph:
    """The whole formula's graph; `time_step` (per variable) becomes a one-column feature.

    Example:
        >>> g = literal_clause_graph(CNF.from_clauses([[1, -2]]))
        >>> g.num_literals, int(g.literal_mask.sum())
        (8, 4)
    """
    lits = cnf.literals.astype(np.int64)
    el = 2 * (np.abs(lits) - 1) + (lits < 0)
    ec = np.repeat(np.arange(cnf.num_clauses), np.diff(cnf.offsets))
    feats = None if time_step is None else np.repeat(np.asarray(time_step, np.float32), 2)[:, None]
    return graph_from_edges(el, ec, cnf.num_vars, cnf.num_clauses, feats)


def _mlp(sizes, key):
    keys = jax.random.split(key, len(sizes) - 1)
    return tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys))


def _run_mlp(layers, x, norm=None):
    for i, layer in enumerate(layers):
        x = jax.vmap(layer)(x)
        if i == 0 and norm is not None:
            x = jax.vmap(norm)(x)
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


class NeuroSharpGNN(eqx.Module):
    """Neuro#'s GNN (Vaezipoor et al. 2021): d=32, T=2 GIN rounds on the literal-clause graph.

    Round t: clause <- MLP_C((1+eps) c + sum of its literals); literal <- MLP_L([h_l; h_-l]) with
    h_l = (1+eps) l + sum of its clauses (NeuroSAT's flip: each literal sees its negation). The
    head [d + f -> 256 -> 64 -> 1] gives one logit per literal; the policy is the argmax.

    Example:
        >>> model = NeuroSharpGNN(key=jax.random.PRNGKey(0), num_features=1)
        >>> g = literal_clause_graph(CNF.from_clauses([[1, -2]]), time_step=[0.0, 1.0])
        >>> model(g).shape
        (8,)
    """

    literal_init: Float[Array, " d"]
    clause_init: Float[Array, " d"]
    eps: Float[Array, ""]
    clause_mlps: tuple
    literal_mlps: tuple
    clause_norms: tuple
    literal_norms: tuple
    head: tuple
    num_features: int = eqx.field(static=True)

    def __init__(self, *, key: PRNGKeyArray, dim: int = 32, rounds: int = 2, num_features=0):
        keys = jax.random.split(key, 2 * rounds + 3)
        self.literal_init = 0.1 * jax.random.normal(keys[0], (dim,))
        self.clause_init = 0.1 * jax.random.normal(keys[1], (dim,))
        self.eps = jnp.array(0.2)
        self.clause_mlps = tuple(_mlp([dim, dim, dim], keys[2 + t]) for t in range(rounds))
        self.literal_mlps = tuple(
            _mlp([2 * dim, dim, dim], keys[2 + rounds + t]) for t in range(rounds)
        )
        self.clause_norms = tuple(eqx.nn.LayerNorm(dim) for _ in range(rounds))
        self.literal_norms = tuple(eqx.nn.LayerNorm(dim) for _ in range(rounds))
        self.head = _mlp([dim + num_features, 256, 64, 1], keys[-1])
        self.num_features = num_features

    def __call__(self, graph: LiteralClauseGraph) -> Float[Array, " l"]:
        nl, nc = graph.num_literals, graph.num_clauses
        el, ec = jnp.asarray(graph.edge_literal), jnp.asarray(graph.edge_clause)
        lit = jnp.broadcast_to(self.literal_init, (nl, self.literal_init.size))
        cls = jnp.broadcast_to(self.clause_init, (nc, self.clause_init.size))
        for cm, lm, cn, ln in zip(
            self.clause_mlps, self.literal_mlps, self.clause_norms, self.literal_norms
        ):
            lpad = jnp.concatenate([lit, jnp.zeros_like(lit[:1])])
            agg_c = jax.ops.segment_sum(lpad[el], ec, num_segments=nc + 1)[:nc]
            cls = _run_mlp(cm, (1 + self.eps) * cls + agg_c, cn)
            cpad = jnp.concatenate([cls, jnp.zeros_like(cls[:1])])
            h = (1 + self.eps) * lit + jax.ops.segment_sum(cpad[ec], el, num_segments=nl + 1)[:nl]
            flip = h.reshape(nl // 2, 2, -1)[:, ::-1].reshape(nl, -1)
            lit = _run_mlp(lm, jnp.concatenate([h, flip], axis=1), ln)
        x = jnp.concatenate([lit, jnp.asarray(graph.features, lit.dtype)], axis=1)
        logits = _run_mlp(self.head, x)[:, 0]
        return jnp.where(jnp.asarray(graph.literal_mask), logits, -jnp.inf)


def parameter_count(model: eqx.Module) -> int:
    """Number of scalars in the model's inexact arrays.

    Example:
        >>> parameter_count(NeuroSharpGNN(key=jax.random.PRNGKey(0), num_features=1)) < 40_000
        True
    """
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(x.size for x in leaves))


def scores_to_branching(logits, num_vars: int, scale: float = 1e4):
    """Root-mode policy: literal logits -> (variable_bias, polarity) for `count`.

    The bias `scale * max(logit(v), logit(-v))` dominates VSADS, so in every component the
    counter branches on the argmax literal of the policy (Neuro#'s rule), with the GNN queried
    once per formula instead of once per decision; VSADS only breaks ties.

    Example:
        >>> b, p = scores_to_branching(np.array([0.0, 1.0, 2.0, -1.0]), 2)
        >>> p.tolist()
        [0, 1]
    """
    lg = np.asarray(logits, np.float64)[: 2 * num_vars].reshape(num_vars, 2)
    best = lg.max(axis=1)
    best = best - best.mean() if num_vars else best
    return scale * best, (lg[:, 0] >= lg[:, 1]).astype(np.int8)


class GNNPolicy:
    """Component-mode policy: a `BranchingPolicy` that runs the GNN on each queried component
    (use with `count(..., branching=GNNPolicy(model), policy_min_vars=k)`).

    The call is jitted once per shape bucket (powers of two), inside this object.

    Example:
        >>> from respax.sat import count
        >>> policy = GNNPolicy(NeuroSharpGNN(key=jax.random.PRNGKey(0)))
        >>> count(CNF.from_clauses([[1, 2], [-1, 3]]), branching=policy, policy_min_vars=1).count
        4
    """

    def __init__(self, model: NeuroSharpGNN, time_step=None):
        self.model = model
        self.time_step = None if time_step is None else np.asarray(time_step, np.float32)
        self._forward = eqx.filter_jit(lambda m, g: m(g))

    def __call__(self, view: ComponentView) -> int:
        k = view.variables.size
        feats = None
        if self.model.num_features:
            ts = self.time_step[view.variables - 1] if self.time_step is not None else np.zeros(k)
            feats = np.repeat(ts.astype(np.float32), 2)[:, None]
        g = graph_from_edges(view.edge_literal, view.edge_clause, k, view.num_clauses, feats)
        logits = np.asarray(self._forward(self.model, g))[: 2 * k]
        j = int(np.argmax(logits))
        v = int(view.variables[j // 2])
        return -v if j % 2 else v
