"""respax.sat: DIMACS I/O and an exact #SAT counter with learned branching (Neuro#)."""

from importlib.metadata import version as _version

from ._bvexpr import (
    BVNode as BVNode,
    bv_expr as bv_expr,
    bv_expr_count as bv_expr_count,
    random_bv_tree as random_bv_tree,
)
from ._cnf import (
    CNF as CNF,
    brute_force_count as brute_force_count,
    format_dimacs as format_dimacs,
    parse_dimacs as parse_dimacs,
    read_dimacs as read_dimacs,
    write_dimacs as write_dimacs,
)
from ._counter import (
    STATUSES as STATUSES,
    BranchingPolicy as BranchingPolicy,
    ComponentView as ComponentView,
    CountInfo as CountInfo,
    count as count,
)
from ._es import (
    ESConfig as ESConfig,
    ESState as ESState,
    SerialExecutor as SerialExecutor,
    centered_ranks as centered_ranks,
    es_init as es_init,
    es_step as es_step,
    make_logits_fn as make_logits_fn,
    policy_decisions as policy_decisions,
    process_pool as process_pool,
    ray_executor as ray_executor,
    rollout_decisions as rollout_decisions,
)
from ._families import (
    Instance as Instance,
    cellular_automaton as cellular_automaton,
    grid_colouring as grid_colouring,
    pigeonhole as pigeonhole,
    random_kcnf as random_kcnf,
    sample_filtered as sample_filtered,
    sudoku as sudoku,
)
from ._gridworld import (
    grid_world as grid_world,
    grid_world_layout as grid_world_layout,
    grid_world_trajectories as grid_world_trajectories,
    perlin_noise as perlin_noise,
)
from ._policy import (
    GNNPolicy as GNNPolicy,
    LiteralClauseGraph as LiteralClauseGraph,
    NeuroSharpGNN as NeuroSharpGNN,
    graph_from_edges as graph_from_edges,
    literal_clause_graph as literal_clause_graph,
    parameter_count as parameter_count,
    scores_to_branching as scores_to_branching,
)
from ._td import primal_graph as primal_graph, td_bias as td_bias

__version__ = _version("respax-sat")
