"""sharpSAT-TD's tree-decomposition branching score, on networkx's min-fill-in decomposition."""

import math

import networkx as nx
import numpy as np
from jaxtyping import Float

from ._cnf import CNF


def primal_graph(cnf: CNF) -> nx.Graph:
    """Variables 0..n-1, an edge between two variables that share a clause.

    Example:
        >>> sorted(primal_graph(CNF.from_clauses([[1, -2, 3]])).edges())
        [(0, 1), (0, 2), (1, 2)]
    """
    g = nx.Graph()
    g.add_nodes_from(range(cnf.num_vars))
    for c in cnf.clauses():
        vs = sorted({abs(x) - 1 for x in c})
        g.add_edges_from((a, b) for i, a in enumerate(vs) for b in vs[i + 1 :])
    return g


def td_bias(cnf: CNF) -> Float[np.ndarray, " n"]:
    """Per-variable score offset `-C * d(x)` of sharpSAT-TD (Korhonen & Järvisalo, MC 2021).

    `d(x)` is the distance from the decomposition's root bag to the nearest bag holding `x`,
    divided by the largest such distance; `C = 100 exp(n / w) / n` (w = width; the exponent is
    capped at 30). The decomposition is `networkx.algorithms.approximation.treewidth_min_fill_in`
    of the primal graph (sharpSAT-TD uses FlowCutter); the root is the tree's centroid, standing in
    for FlowCutter's balanced-separator root. The counter adds it to its VSADS score.

    Example:
        >>> td_bias(CNF.from_clauses([[1, 2], [2, 3]])).shape
        (3,)
    """
    n = cnf.num_vars
    if n == 0:
        return np.zeros(0)
    g = primal_graph(cnf)
    width, tree = nx.algorithms.approximation.treewidth_min_fill_in(g)
    if tree.number_of_nodes() == 0 or width == 0:
        return np.zeros(n)
    # The centroid: the bag whose largest remaining subtree is smallest.
    best, best_size = None, math.inf
    for comp in nx.connected_components(tree):
        sub = tree.subgraph(comp)
        for node in sub:
            rest = sub.copy()
            rest.remove_node(node)
            biggest = max((len(c) for c in nx.connected_components(rest)), default=0)
            if biggest < best_size:
                best, best_size = node, biggest
            if sub.number_of_nodes() > 200:  # exact centroid search is quadratic
                break
    dist = np.full(n, np.inf)
    for comp in nx.connected_components(tree):
        root = best if best in comp else next(iter(comp))
        for bag, d in nx.single_source_shortest_path_length(tree, root).items():
            for v in bag:
                dist[v] = min(dist[v], d)
    dist[~np.isfinite(dist)] = 0.0
    dmax = dist.max()
    if dmax > 0:
        dist /= dmax
    c = 100.0 * math.exp(min(n / width, 30.0)) / n
    return -c * dist
