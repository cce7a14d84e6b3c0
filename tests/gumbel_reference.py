"""Slow, plain-Python reference of `cython_mcts.run_gumbel_mcts` (docs/design.md section 3.1b).

Written for clarity from the contract (Gumbel MuZero with the semantics of mctx's
`gumbel_muzero_policy` and `qtransform_completed_by_mix_value`), one `Node` object per node,
sharing no code with the compiled search. The tests run both side by side and require identical
actions, visit counts and calls of `recurrent_fn`, and improved policies within 1e-5.

Reading of the contract made explicit here:

- Tree protocol as in `tests/mcts_reference.py` (section 3.1): simulation s (1-based) makes node
  s, `recurrent_fn(parent_ids, actions, depths)` is called once per simulation for all roots;
  reward(child) = prefix(child) - prefix(parent) in value-prefix mode unless the parent's depth
  is a multiple of `lstm_horizon_len` (then the prefix itself); otherwise the first output is the
  reward. A node's visit count and value sum start at 1 and its predicted ("raw") value when it
  is made (the root: its given value); a backup of leaf value v walks from the new leaf to the
  root adding v and one visit, then v = reward(node) + discount * v.
- Priors: softmax of the node's logits; at the root over the legal actions only (illegal: 0).
- Completed Q of node x (mctx `qtransform_completed_by_mix_value`, value_scale, maxvisit_init,
  epsilon 1e-8, rescaling on, mixed value on), over all A actions of x:
    q(a) = reward(child) + discount * value_sum(child) / visits(child) for a visited child;
    N = sum of the children's visits, p(a) = max(prior(a), DBL_MIN) (mctx clamps at the float
    dtype's smallest normal; the computation here is in double precision),
    mixed = (raw(x) + N * sum_visited p(a) * q(a) / sum_visited p) / (N + 1)  (N = 0: raw(x));
    completed(a) = q(a) if visited else mixed (at the root also for illegal actions, which thus
    count in the min and max: mctx does the same);
    sigma(a) = ((maxvisit_init + max visits) * value_scale) * ((completed(a) - lo) / d),
    lo, hi = min, max of completed over all A actions, d = max(hi - lo, 1e-8).
- `q_normalization="tree"` replaces the rescaling (lo, hi, d above) by the pUCT search's
  (section 3.1, as in `tests/mcts_reference.py`): lo, hi = min, max of the Q of every non-root
  node of the tree, each node's Q (reward + discount * value_sum / visits) taken during every
  backup right after its visit is added; normalised(c) = (c - lo) / max(hi - lo,
  value_delta_max) if hi > lo, else c; then clipped to [0, 1]; sigma(a) = scale * normalised.
- Root selection at simulation i (0-based, i = the sum of the root children's visits): with
  m = min(max_num_considered_actions, number of legal actions) and k = mctx's
  `get_sequence_of_considered_visits(m, num_simulations)[i]`, the first legal action with the
  highest max(-1e9, (g(a) + (logit(a) - max legal logit)) + sigma(a)) among the legal actions
  visited exactly k times. (If none were visited k times, which the schedule rules out, the
  restriction to k is dropped.)
- Interior selection (mctx `gumbel_muzero_interior_action_selection`): the first action with the
  highest pi(a) - n(a) / (1 + N), pi = softmax(logits + sigma) over all actions.
- Outputs: action = the root selection rule with k = the largest root visit count, after the
  search; improved_policy = softmax(logit + sigma) over the legal root actions (0 elsewhere);
  visit counts of the root's children; root value = value_sum / visits of the root.

All arithmetic is done with Python floats (IEEE double), in the operation order written above;
every argmax keeps the first of equal scores (strict >).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np

EPSILON = 1e-8
LOW_LOGIT = -1e9
DBL_MIN = sys.float_info.min


def mctx_considered_visits(max_num_considered_actions: int, num_simulations: int) -> list[int]:
    """mctx's `seq_halving.get_sequence_of_considered_visits`, step by step as published:
    a list of virtual visit counts, the first `num_considered` of them visited in every pass,
    `num_considered` halved (not below 2) after each round."""
    if max_num_considered_actions <= 1:
        return list(range(num_simulations))
    log2max = int(math.ceil(math.log2(max_num_considered_actions)))
    sequence: list[int] = []
    visits = [0] * max_num_considered_actions
    num_considered = max_num_considered_actions
    while len(sequence) < num_simulations:
        num_extra_visits = max(1, int(num_simulations / (log2max * num_considered)))
        for _ in range(num_extra_visits):
            sequence.extend(visits[:num_considered])
            for i in range(num_considered):
                visits[i] += 1
        num_considered = max(2, num_considered // 2)
    return sequence[:num_simulations]


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = 0.0
    for e in exps:
        total = total + e
    return [e / total for e in exps]


class Node:
    def __init__(self, node_id: int, depth: int, reward: float, prefix: float, raw: float,
                 logits: list[float], priors: list[float]):
        self.node_id = node_id
        self.depth = depth
        self.reward = reward
        self.prefix = prefix
        self.raw = raw
        self.logits = logits
        self.priors = priors
        self.visits = 1
        self.value_sum = raw
        self.children: dict[int, Node] = {}


class GumbelRootSearch:
    """The tree of one root."""

    def __init__(self, logits, value, legal, gumbel, cfg, max_num_considered_actions: int,
                 value_scale: float, maxvisit_init: float, q_normalization: str = "node"):
        self.cfg = cfg
        self.q_normalization = q_normalization
        self.tree_qs: list[float] = []  # every non-root Q taken in the backups
        self.num_actions = len(logits)
        self.legal = [bool(x) for x in legal]
        self.gumbel = [float(x) for x in gumbel]
        self.value_scale = float(value_scale)
        self.maxvisit_init = float(maxvisit_init)
        legal_ids = [a for a in range(self.num_actions) if self.legal[a]]
        root_logits = [float(x) for x in logits]
        probs = softmax([root_logits[a] for a in legal_ids])
        priors = [0.0] * self.num_actions
        for a, p in zip(legal_ids, probs, strict=True):
            priors[a] = p
        self.root = Node(0, 0, 0.0, 0.0, float(value), root_logits, priors)
        self.shift = max(root_logits[a] for a in legal_ids)
        self.schedule = mctx_considered_visits(
            min(max_num_considered_actions, len(legal_ids)), cfg.num_simulations)
        self.path: list[Node] = []
        self.pending_action = -1
        self.root_choices: list[tuple[int, int]] = []   # (scheduled count, chosen action)

    # -- Q values ---------------------------------------------------------------------------

    def q(self, child: Node) -> float:
        return child.reward + self.cfg.discount * (child.value_sum / child.visits)

    def sigma_completed_q(self, node: Node) -> list[float]:
        visited = [a for a in range(self.num_actions) if a in node.children]
        q = {a: self.q(node.children[a]) for a in visited}
        sum_n = 0.0
        max_n = 0.0
        for a in visited:
            sum_n = sum_n + node.children[a].visits
            max_n = max(max_n, float(node.children[a].visits))
        sum_p = 0.0
        for a in visited:
            sum_p = sum_p + max(node.priors[a], DBL_MIN)
        weighted = 0.0
        for a in visited:
            weighted = weighted + (max(node.priors[a], DBL_MIN) * q[a]) / sum_p
        mixed = (node.raw + sum_n * weighted) / (sum_n + 1.0)
        completed = [q[a] if a in q else mixed for a in range(self.num_actions)]
        scale = (self.maxvisit_init + max_n) * self.value_scale
        if self.q_normalization == "tree":
            return [scale * self.tree_normalized(c) for c in completed]
        lo, hi = min(completed), max(completed)
        d = max(hi - lo, EPSILON)
        return [scale * ((c - lo) / d) for c in completed]

    def tree_normalized(self, c: float) -> float:
        if self.tree_qs:
            lo, hi = min(self.tree_qs), max(self.tree_qs)
            if hi > lo:
                c = (c - lo) / max(hi - lo, self.cfg.value_delta_max)
        return min(1.0, max(0.0, c))

    # -- selection --------------------------------------------------------------------------

    def visit_count(self, node: Node, action: int) -> int:
        child = node.children.get(action)
        return 0 if child is None else child.visits

    def root_choice(self, considered_visit: int) -> int:
        sigma = self.sigma_completed_q(self.root)
        legal = [a for a in range(self.num_actions) if self.legal[a]]
        candidates = [a for a in legal if self.visit_count(self.root, a) == considered_visit]
        if not candidates:  # not reachable with mctx's schedule
            candidates = legal
        best, best_a = -math.inf, -1
        for a in candidates:
            score = (self.gumbel[a] + (self.root.logits[a] - self.shift)) + sigma[a]
            score = max(LOW_LOGIT, score)
            if score > best:
                best, best_a = score, a
        return best_a

    def interior_choice(self, node: Node) -> int:
        sigma = self.sigma_completed_q(node)
        pi = softmax([node.logits[a] + sigma[a] for a in range(self.num_actions)])
        total = 0.0
        for a in range(self.num_actions):
            total = total + self.visit_count(node, a)
        best, best_a = -math.inf, 0
        for a in range(self.num_actions):
            score = pi[a]
            if a in node.children:
                score = score - node.children[a].visits / (1.0 + total)
            if score > best:
                best, best_a = score, a
        return best_a

    def select(self) -> tuple[int, int, int]:
        sim_index = sum(child.visits for child in self.root.children.values())
        considered_visit = self.schedule[sim_index]
        action = self.root_choice(considered_visit)
        self.root_choices.append((considered_visit, action))
        node = self.root
        path = [node]
        while action in node.children:
            node = node.children[action]
            path.append(node)
            action = self.interior_choice(node)
        self.path = path
        self.pending_action = action
        return node.node_id, action, node.depth + 1

    # -- expansion and backup ---------------------------------------------------------------

    def expand_and_backup(self, sim: int, prefix: float, value: float, logits) -> None:
        cfg = self.cfg
        parent = self.path[-1]
        if cfg.value_prefix and parent.depth % cfg.lstm_horizon_len != 0:
            reward = prefix - parent.prefix
        else:
            reward = prefix
        child_logits = [float(x) for x in logits]
        leaf = Node(sim, parent.depth + 1, reward, prefix, value, child_logits,
                    softmax(child_logits))
        leaf.visits = 0
        leaf.value_sum = 0.0
        parent.children[self.pending_action] = leaf
        v = value
        for node in reversed([*self.path, leaf]):
            node.value_sum = node.value_sum + v
            node.visits += 1
            if node is not self.root:
                self.tree_qs.append(self.q(node))
            v = node.reward + cfg.discount * v

    # -- outputs ----------------------------------------------------------------------------

    def outputs(self) -> tuple[int, list[float], list[int], float]:
        counts = [self.visit_count(self.root, a) for a in range(self.num_actions)]
        action = self.root_choice(max(counts))
        sigma = self.sigma_completed_q(self.root)
        legal = [a for a in range(self.num_actions) if self.legal[a]]
        probs = softmax([self.root.logits[a] + sigma[a] for a in legal])
        policy = [0.0] * self.num_actions
        for a, p in zip(legal, probs, strict=True):
            policy[a] = p
        return action, policy, counts, self.root.value_sum / self.root.visits


def reference_gumbel_mcts(
    root_logits: np.ndarray,
    root_values: np.ndarray,
    recurrent_fn: Callable,
    cfg,
    gumbel: np.ndarray,
    legal_actions: np.ndarray | None = None,
    max_num_considered_actions: int = 16,
    value_scale: float = 0.1,
    maxvisit_init: float = 50.0,
    q_normalization: str = "node",
    trees_out: list | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (action int64 [B], improved_policy float64 [B, A], visit_counts int64 [B, A],
    root_values float64 [B]). No input validation. `trees_out`, if given, receives the trees."""
    root_logits = np.asarray(root_logits, dtype=np.float32)
    root_values = np.asarray(root_values, dtype=np.float32)
    gumbel = np.asarray(gumbel, dtype=np.float32)
    batch, num_actions = root_logits.shape
    if legal_actions is None:
        legal_actions = np.ones((batch, num_actions), dtype=bool)
    trees = [
        GumbelRootSearch(root_logits[b], root_values[b], legal_actions[b], gumbel[b], cfg,
                         max_num_considered_actions, value_scale, maxvisit_init, q_normalization)
        for b in range(batch)
    ]
    for sim in range(1, cfg.num_simulations + 1):
        picks = [tree.select() for tree in trees]
        parent_ids = np.array([p[0] for p in picks], dtype=np.int64)
        actions = np.array([p[1] for p in picks], dtype=np.int64)
        depths = np.array([p[2] for p in picks], dtype=np.int64)
        prefix, value, logits = recurrent_fn(parent_ids, actions, depths)
        prefix = np.asarray(prefix, dtype=np.float32)
        value = np.asarray(value, dtype=np.float32)
        logits = np.asarray(logits, dtype=np.float32)
        for b, tree in enumerate(trees):
            tree.expand_and_backup(sim, float(prefix[b]), float(value[b]), logits[b])
    results = [tree.outputs() for tree in trees]
    if trees_out is not None:
        trees_out.extend(trees)
    return (np.array([r[0] for r in results], dtype=np.int64),
            np.array([r[1] for r in results], dtype=np.float64),
            np.array([r[2] for r in results], dtype=np.int64),
            np.array([r[3] for r in results], dtype=np.float64))
